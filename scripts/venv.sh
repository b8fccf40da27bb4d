#!/usr/bin/env bash
# Creates (once) and prints the path of this clone's Python environment, `.venv`.
#
# Two layers, so that a second clone, or CI on the same machine, does not download
# torch (several GB) again:
#  * the dependencies live in a shared environment outside the clone, in
#    ${MODELFLEET_CACHE:-~/.cache/modelfleet}/venv-<key>, keyed by a hash of the
#    dependency lists in pyproject.toml, requirements.lock and the Python version;
#    requirements.lock pins every package to the version CI tested (pip constraints);
#    scripts/lock.sh regenerates it;
#  * `.venv` in the clone (git-ignored, made in seconds) sees the shared packages
#    through a .pth file and holds the project itself, installed editable: the
#    `modelfleet` command and `import modelfleet` run this clone's sources, with no
#    PYTHONPATH. It is made again when the shared environment or pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON_BIN=${PYTHON_BIN:-python3.11}
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3
CACHE=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}

read -r key reqs < <("$PYTHON_BIN" - <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in ("runtime", "operator", "dev"):
    deps += project["optional-dependencies"][extra]
lock = open("requirements.lock").read()
blob = json.dumps([sys.version_info[:2], sorted(deps), lock]).encode()
print(hashlib.sha256(blob).hexdigest()[:12], json.dumps(deps))
PY
)
shared="$CACHE/venv-$key"

shared_env() {
  if [ -x "$shared/bin/python" ] && [ -f "$shared/.complete" ]; then return; fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/venv.lock"
  flock 9
  if [ -f "$shared/.complete" ]; then return; fi
  {
    echo "==> creating the shared environment $shared"
    echo "    (first run on this machine: downloads torch and the test tools, a few minutes)"
    rm -rf "$shared"   # a half-made one from an interrupted run
    "$PYTHON_BIN" -m venv "$shared"
    "$shared/bin/python" -m pip install --quiet --upgrade pip
    mapfile -t list < <("$shared/bin/python" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$reqs")
    "$shared/bin/python" -m pip install --progress-bar off -c requirements.lock "${list[@]}"
    touch "$shared/.complete"
    echo "==> shared environment ready: $shared"
  } >&2
}

clone_env() {
  local venv="$ROOT/.venv" stamp
  stamp="$shared $(sha256sum pyproject.toml | cut -c1-16)"
  if [ -f "$venv/.modelfleet" ] && [ "$(cat "$venv/.modelfleet")" = "$stamp" ]; then return; fi
  exec 8>"$ROOT/.venv.lock"
  flock 8
  if [ -f "$venv/.modelfleet" ] && [ "$(cat "$venv/.modelfleet")" = "$stamp" ]; then return; fi
  {
    echo "==> installing this clone into $venv (editable, over $shared)"
    rm -rf "$venv"
    "$PYTHON_BIN" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
      > "$site/_modelfleet_shared.pth"
    # (setuptools warns that an editable install is editable: said above, once)
    PYTHONWARNINGS=ignore "$shared/bin/python" -m pip --python "$venv/bin/python" install \
      --quiet --no-deps --no-build-isolation --editable "$ROOT"
    echo "$stamp" > "$venv/.modelfleet"
  } >&2
}

shared_env
clone_env
echo "$ROOT/.venv"
