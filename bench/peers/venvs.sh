#!/usr/bin/env bash
# Creates (once) one virtual environment per peer server, cached outside the
# clone and keyed by its requirements file: their pins conflict with each other
# and with ours (MLServer pins older FastAPI and tritonclient).
#
# torch is several GB: instead of a copy per peer, each environment gets a .pth
# file, written after pip has finished, that appends the project's environment
# to sys.path. The peer's own packages come first; only what it lacks (torch,
# safetensors, the example architectures' dependencies) comes from ours.
# Prints "name path" for each environment that is ready, and why for any that is not.
set -uo pipefail
cd "$(dirname "$0")"
CACHE=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}
main_venv=$(bash ../../scripts/venv.sh)
main_site=$("$main_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$CACHE/peers"
for req in requirements-*.txt; do
  name=${req#requirements-}; name=${name%.txt}
  key=$(sha256sum "$req" | cut -c1-12)
  venv="$CACHE/peers/$name-$key"
  if [ ! -f "$venv/.complete" ]; then
    echo "==> installing $name into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --progress-bar off -r "$req" >"$venv.log" 2>&1; then
      echo "$name unavailable: pip install -r $req failed (see $venv.log)" >&2
      tail -3 "$venv.log" >&2
      continue
    fi
    touch "$venv/.complete"
  fi
  # Point at the project's current environment (its path changes with its dependencies).
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$main_site" > "$site/zz_modelfleet_shared.pth"
  echo "$name $venv"
done
