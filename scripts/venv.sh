#!/usr/bin/env bash
# Creates (once) and prints the path of the project's virtual environment.
#
# The environment lives outside the clone, in ${MODELFLEET_CACHE:-~/.cache/modelfleet},
# keyed by a hash of the dependency lists in pyproject.toml, requirements.lock and
# the Python version: a second clone, or CI on the same machine, reuses it instead
# of downloading torch (several GB) again. requirements.lock pins every package to
# the version CI tested (pip constraints); scripts/lock.sh regenerates it. The project itself is not installed
# into it; the Makefile and pytest put the source folders on PYTHONPATH, so one
# environment serves every clone.
set -euo pipefail
cd "$(dirname "$0")/.."

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
venv="$CACHE/venv-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/venv.lock"
flock 9
if [ -f "$venv/.complete" ]; then echo "$venv"; exit 0; fi

{
  echo "==> creating the virtual environment $venv"
  echo "    (first run on this machine: downloads torch and the test tools, a few minutes)"
  rm -rf "$venv"   # a half-made one from an interrupted run
  "$PYTHON_BIN" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  mapfile -t list < <("$venv/bin/python" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$reqs")
  "$venv/bin/python" -m pip install --progress-bar off -c requirements.lock "${list[@]}"
  touch "$venv/.complete"
  echo "==> environment ready: $venv"
} >&2
echo "$venv"
