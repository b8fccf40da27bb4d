"""`make images`: both images built, tagged as the chart names them, small and clean."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.containers.conftest import BASE_IMAGE, BUILD_TIMEOUT_S, ROOT, Images, podman, run_in

pytestmark = [
    pytest.mark.integration,
    # The first test builds the images (scripts/images.sh): minutes on a fresh machine.
    pytest.mark.timeout(BUILD_TIMEOUT_S + 300),
]

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""This machine's bundle: Debian's plus the CA of the TLS-intercepting proxy pip
goes through. The build mounts it for its RUN steps; no image may keep it."""

INSPECT = r"""
import hashlib, json, os, shutil, sys
def digest(path):
    try:
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    except OSError:
        return None
caches, tools = [], {}
for top, dirs, files in os.walk("/"):
    if top in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for d in dirs:
        if d == ".cache" or (d in ("pip", "http", "http-v2", "wheels") and "/.cache" in top):
            caches.append(os.path.join(top, d))
for tool in ("gcc", "cc", "c++", "g++", "clang", "tcc", "ld", "as", "make"):
    tools[tool] = shutil.which(tool)
print(json.dumps({
    "ca_bundle": digest("/etc/ssl/certs/ca-certificates.crt"),
    "pip_conf": digest("/etc/pip.conf"), "caches": caches,
    "compilers": {k: v for k, v in tools.items() if v},
    "torch": __import__("importlib.util").util.find_spec("torch") is not None,
}))
"""


def inspect(image: str) -> dict[str, object]:
    """What ``image`` holds: its CA bundle, caches, compilers (looked at as root, so
    that no folder is left out for want of permission)."""
    done = run_in(image, "-c", INSPECT, entrypoint="python", user="0:0")
    assert done.returncode == 0, f"{image}: python failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_make_images_builds_both_images_with_the_tags_the_chart_uses(images: Images) -> None:
    values = (ROOT / "charts/modelfleet/values.yaml").read_text()
    chart = (ROOT / "charts/modelfleet/Chart.yaml").read_text()
    app_version = re.search(r'^appVersion: "?([^"\n]+)"?$', chart, re.M)
    assert app_version, "Chart.yaml has no appVersion"
    for image in (images.runtime, images.operator):
        repository, tag = image.rsplit(":", 1)
        assert f"repository: {repository}\n" in values, f"values.yaml does not name {repository}"
        assert tag == app_version.group(1), f"{image}: the chart's default tag is {app_version[1]}"
        assert podman("image", "exists", image) == ""


@pytest.mark.parametrize("which", ["runtime", "operator"])
def test_images_run_as_a_numeric_non_root_user(images: Images, which: str) -> None:
    image = getattr(images, which)
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).strip()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{image}: USER {user!r} is not numeric uid:gid"
    assert int(uid) != 0 and int(gid) != 0, f"{image}: USER {user!r} is root"
    ids = run_in(image, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python")
    assert ids.returncode == 0, ids.stderr[-2000:]
    assert ids.stdout.split() == [uid, gid], f"{image}: processes run as {ids.stdout.strip()}"


@pytest.mark.parametrize("which", ["runtime", "operator"])
def test_images_hold_no_compiler_no_pip_cache_and_not_the_build_machines_ca_bundle(
    images: Images, which: str
) -> None:
    image = getattr(images, which)
    seen, base = inspect(image), inspect_base()
    assert seen["compilers"] == {}, f"{image} holds compilers: {seen['compilers']}"
    assert seen["caches"] == [], f"{image} holds caches: {seen['caches']}"
    assert seen["pip_conf"] is None, f"{image} holds /etc/pip.conf (the build machine's?)"
    assert seen["ca_bundle"] is not None, f"{image} has no CA bundle"
    if HOST_CA_BUNDLE.exists():
        host = hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()
        assert seen["ca_bundle"] != host, f"{image} holds this machine's CA bundle"
    assert seen["ca_bundle"] == base["ca_bundle"], f"{image}: the CA bundle is not Debian's own"


def inspect_base() -> dict[str, object]:
    """The base image the build used (its CA bundle is Debian's, from the package)."""
    base = podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE)
    return inspect(base.strip())


def test_the_operator_image_starts_and_holds_no_torch(images: Images) -> None:
    helped = run_in(images.operator, "operator", "--help")
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--all-namespaces" in helped.stdout
    imported = run_in(
        images.operator, "-c", "import kopf, modelfleet.operator.main, sys; "
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))",
        entrypoint="python",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == "[]"
    assert inspect(images.operator)["torch"] is False, "torch is installed in the operator image"


def test_the_runtime_image_also_runs_the_gateway_and_has_torch(images: Images) -> None:
    helped = run_in(images.runtime, "gateway", "--help")
    assert helped.returncode == 0 and "--routes" in helped.stdout, helped.stderr[-2000:]
    imported = run_in(
        images.runtime, "-c", "import modelfleet.gateway.main, modelfleet.runtime.main, torch; "
        "print(torch.__version__)", entrypoint="python",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.startswith("2."), imported.stdout


@pytest.mark.parametrize("which", ["runtime", "operator"])
def test_images_install_the_locked_versions(images: Images, which: str) -> None:
    """Every distribution in the image is the version requirements.lock pins (the
    versions CI tested), apart from the venv's own pip and setuptools."""
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version
    done = run_in(
        getattr(images, which), "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        entrypoint="python",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in json.loads(done.stdout).items()}
    assert installed.pop("modelfleet") == images.runtime.rsplit(":", 1)[1]
    off = {
        name: (version, lock.get(name))
        for name, version in installed.items()
        if name not in ("pip", "setuptools") and lock.get(name) != version
    }
    assert off == {}, f"{which} image: installed (version, locked): {off}"


def test_a_source_change_rebuilds_the_wheel_and_keeps_the_dependency_layer(
    images: Images, tmp_path: Path
) -> None:
    """After a .py file changes, `make images` reuses the layer that installed torch
    and rebuilds only the project's wheel and the layer installing it (seconds). The
    runtime image is checked (the operator image, built first, shares the wheel stage)."""
    tree = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("runtime", "gateway", "operator", "scripts"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "requirements.lock", ".dockerignore",
                 "Dockerfile.runtime", "Dockerfile.operator"):  # fmt: skip
        shutil.copy(ROOT / name, tree / name)
    with (tree / "runtime/modelfleet/cli.py").open("a") as f:
        f.write(f"# a change of the sources, {time.time_ns()}\n")  # new each run
    tag = "layer-cache-test"
    try:
        done = subprocess.run(
            ["bash", "scripts/images.sh"], cwd=tree, capture_output=True, text=True,
            timeout=600, env={**os.environ, "MODELFLEET_TAG": tag},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
    finally:
        for which in ("runtime", "operator"):
            podman("rmi", f"modelfleet/{which}:{tag}", check=False)
    runtime_build = done.stderr[done.stderr.index(f"building modelfleet/runtime:{tag}") :]
    lines = runtime_build.splitlines()
    steps = {
        line.split(": ", 1)[1]: lines[i + 1].startswith("--> Using cache")
        for i, line in enumerate(lines[:-1])
        if re.match(r"^\[\d+/\d+\] STEP \d+/\d+: ", line)
    }
    dependencies = next(s for s in steps if "-c requirements.lock -r requirements.txt" in s)
    project = next(s for s in steps if s.startswith("RUN pip install") and "dist/*.whl" in s)
    assert steps[dependencies], f"the dependency layer was rebuilt:\n{runtime_build[-4000:]}"
    assert not steps[project], f"the changed project was not installed:\n{runtime_build[-4000:]}"


def test_the_cluster_tests_image_is_the_runtime_image_plus_the_test_architectures(
    images: Images,
) -> None:
    """``localhost/modelfleet/runtime-tests`` (tests/cluster/models_image.py), which the
    cluster tests' pools run from: the suite's architectures import in it, run read-only
    as the runtime image's user, and it adds those modules and nothing else."""
    from tests.cluster.models_image import MODULES, build_test_models_image

    image = build_test_models_image(images.runtime)
    script = (
        "import os, tests.runtime.models, tests.cluster.flaky_models\n"
        "root = '/opt/test-models'\n"
        "files = sorted(os.path.relpath(os.path.join(d, f), root)\n"
        "               for d, _, fs in os.walk(root) for f in fs)\n"
        "print(os.getuid(), os.getgid(), *files)"
    )
    done = run_in(image, "-c", script, entrypoint="python")
    assert done.returncode == 0, done.stderr[-2000:]
    uid, gid, *files = done.stdout.split()
    assert (uid, gid) == ("65532", "65532")
    assert files == sorted(MODULES)
    runtime_layers = podman(
        "image", "inspect", "--format", "{{len .RootFS.Layers}}", images.runtime
    )
    layers = podman("image", "inspect", "--format", "{{len .RootFS.Layers}}", image)
    assert int(layers) == int(runtime_layers) + 1  # one COPY layer over the runtime image
