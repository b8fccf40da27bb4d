"""The images as a user runs them: built by `make images` (scripts/images.sh), run
with podman as the operator's pods run them (read-only root, numeric non-root user).

The first test that needs an image builds both: scripts/images.sh installs podman
if missing, makes the base image once and reuses podman's layer cache, so on a
machine that built them before this takes seconds. When it cannot, the tests fail
saying what is missing; they never skip (a release without images is broken).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from modelfleet.api.runtime_document import ModelConfig
from modelfleet.version import VERSION
from tests.cluster.podman_pods import PODMAN_RUN

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_IMAGE = f"modelfleet/runtime:{VERSION}"
OPERATOR_IMAGE = f"modelfleet/operator:{VERSION}"
"""The tags the chart uses (values.yaml repositories, the appVersion as tag) and
`make kind-up` builds."""
BASE_IMAGE = os.environ.get("MODELFLEET_BASE_IMAGE", "localhost/modelfleet/base:bookworm")
"""The Debian base scripts/images.sh makes and builds on."""
BUILD_TIMEOUT_S = 3600
"""A first build downloads torch's CUDA wheels (several GB)."""


@dataclass(frozen=True)
class Images:
    runtime: str
    operator: str
    build_log: str


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Runs podman and returns its stdout; fails with its stderr."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}")
    return done.stdout


def run_in(
    image: str, *command: str, entrypoint: str = "", user: str = ""
) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` in a throw-away container of ``image`` (read-only, as in a
    pod), as the image's user unless ``user`` is given."""
    args = [*PODMAN_RUN, "--rm", "--read-only", "--network=none"]
    if entrypoint:
        args += ["--entrypoint", entrypoint]
    if user:
        args += ["--user", user]
    return subprocess.run([*args, image, *command], capture_output=True, text=True, timeout=120)


def example_models(folder: Path) -> Path:
    """The example models in ``folder``, readable by a pod's user (a model store)."""
    from modelfleet.runtime.examples import write_examples

    folder.mkdir(parents=True, exist_ok=True)
    write_examples(folder)
    folder.chmod(0o755)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def mlp() -> ModelConfig:
    """The example MLP's entry of examples/fleet.yaml, as the operator would place it."""
    fleet = yaml.safe_load((ROOT / "examples/fleet.yaml").read_text())
    return ModelConfig.model_validate(next(m for m in fleet["models"] if m["name"] == "mlp"))


@pytest.fixture(scope="session")
def images() -> Images:
    """Both images, built (or found up to date) by scripts/images.sh."""
    return build_images()


def build_images() -> Images:
    """Runs scripts/images.sh (`make images`); fails the test saying what is missing."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "images.sh")], cwd=ROOT, capture_output=True,
        text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(
            f"scripts/images.sh (make images) exited {done.returncode}; its last lines:\n"
            f"{(done.stdout + done.stderr)[-4000:]}"
        )
    if shutil.which("podman") is None:
        pytest.fail("podman is missing after scripts/images.sh: see docs/containers.md")
    for image in (RUNTIME_IMAGE, OPERATOR_IMAGE):
        exists = subprocess.run(["podman", "image", "exists", image], capture_output=True)
        if exists.returncode != 0:
            pytest.fail(f"make images did not leave {image} in podman's image store")
    return Images(RUNTIME_IMAGE, OPERATOR_IMAGE, done.stderr)
