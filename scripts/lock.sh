#!/usr/bin/env bash
# Writes requirements.lock afresh: resolves pyproject.toml's dependency ranges (the
# base list and the runtime, operator and dev extras) in a new, empty environment,
# newest versions allowed, and pins what it got. Downloads torch (several GB):
# minutes. Run `make test` after it; the next `scripts/venv.sh` builds the
# environment the new lock describes (the lock is part of its cache key).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON_BIN:-python3.11}
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mapfile -t deps < <("$PYTHON_BIN" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in ("runtime", "operator", "dev"):
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))
PY
)
echo "==> resolving ${#deps[@]} dependencies in a fresh environment ($tmp)" >&2
"$PYTHON_BIN" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --progress-bar off "${deps[@]}"
{
  sed -n '/^#/p' requirements.lock
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^modelfleet'
} > "$tmp/lock"
mv "$tmp/lock" requirements.lock
echo "==> wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)" >&2
