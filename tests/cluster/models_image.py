"""The runtime image plus the test suite's model architectures, for the cluster tests'
containers.

Some cluster tests serve architectures that live in the test suite, not in the
product (``tests.runtime.models:slow``, ``tests.cluster.flaky_models:flaky_mlp``);
the runtime image rightly lacks them. In containers mode those pools run from
``localhost/modelfleet/runtime-tests:<version>``: the runtime image with the two
modules (and their packages' ``__init__.py``) copied to ``/opt/test-models`` and that
folder on ``PYTHONPATH``. One layer of files, no RUN step: building it takes a second
or two, and podman's layer cache keeps it until those files change. Everything else
(user, entrypoint, read-only root) is the runtime image's, unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from modelfleet.version import VERSION

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_IMAGE = f"modelfleet/runtime:{VERSION}"
TEST_MODELS_IMAGE = f"localhost/modelfleet/runtime-tests:{VERSION}"
MODULES = (
    "tests/__init__.py",
    "tests/runtime/__init__.py",
    "tests/runtime/models.py",
    "tests/cluster/__init__.py",
    "tests/cluster/flaky_models.py",
)
"""What the image adds: the architectures the cluster tests name, importable as
``tests.runtime.models`` and ``tests.cluster.flaky_models``."""
CONTAINERFILE = """\
ARG RUNTIME
FROM ${RUNTIME}
COPY --chown=0:0 tests/ /opt/test-models/tests/
ENV PYTHONPATH=/opt/test-models
"""


class ImageBuildError(RuntimeError):
    """podman could not build the test-models image; the message has its output."""


def build_test_models_image(runtime: str = RUNTIME_IMAGE) -> str:
    """Builds (or finds cached) the test-models image on ``runtime``; returns its tag."""
    with tempfile.TemporaryDirectory(prefix="mf-test-models-") as tmp:
        context = Path(tmp)
        for name in MODULES:
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, context / name)
        (context / "Containerfile").write_text(CONTAINERFILE)
        done = subprocess.run(
            ["podman", "build", "--isolation=chroot", "--pull=never", "--layers",
             "--build-arg", f"RUNTIME={runtime}", "-f", str(context / "Containerfile"),
             "-t", TEST_MODELS_IMAGE, str(context)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if done.returncode != 0:
        raise ImageBuildError(
            f"podman build of {TEST_MODELS_IMAGE} (FROM {runtime}) exited {done.returncode}: "
            f"{(done.stdout + done.stderr)[-3000:]}"
        )
    return TEST_MODELS_IMAGE
