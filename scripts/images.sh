#!/usr/bin/env bash
# `make images`: builds the runtime and the operator images with podman, on this
# machine, with no Docker engine and no registry (docs/containers.md).
#
#  1. installs podman, buildah, runc and mmdebstrap (Debian packages) if missing;
#  2. makes the base image once: Debian bookworm (with its updates and security
#     updates) and its python3 (3.11, as the python:3.11 base the Dockerfiles name
#     for `docker build` on a laptop), built with mmdebstrap from the Debian mirrors
#     apt already uses, imported into podman (skipped when `podman image exists`
#     finds it, made from the same recipe);
#  3. builds Dockerfile.runtime and Dockerfile.operator on that base, tagged as the
#     chart and `make kind-up` name them (modelfleet/{runtime,operator}:<version>),
#     with podman's layer cache (in /var/lib/containers, shared by every clone on
#     the machine): after a source change only the project's wheel is rebuilt.
#
# pip inside the build reaches the package index with this machine's CA bundle,
# bind-mounted read-only for the RUN steps only: it ends up in no image layer
# (tests/containers/test_images.py checks it).
#
# Settings (environment): MODELFLEET_TAG (default: the version in pyproject.toml),
# MODELFLEET_BASE_IMAGE (default localhost/modelfleet/base:bookworm),
# MODELFLEET_DEBIAN_MIRROR and MODELFLEET_DEBIAN_SECURITY_MIRROR (default: the URIs
# of apt's debian.sources).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "==> $*" >&2; }

TAG=${MODELFLEET_TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)}
BASE=${MODELFLEET_BASE_IMAGE:-localhost/modelfleet/base:bookworm}
PACKAGES=(podman buildah runc mmdebstrap)

install_tools() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "images.sh: ${missing[*]} missing; install them (Debian: apt-get install ${PACKAGES[*]})," \
      "or build with docker: docs/containers.md" >&2
    exit 1
  fi
  say "installing ${missing[*]} (Debian packages, once per machine)"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" >&2
}

# Several clones share the machine's image store: one build at a time.
lock() {
  local dir=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}
  mkdir -p "$dir"
  exec 7>"$dir/images.lock"
  if ! flock -n 7; then
    say "waiting for another 'make images' on this machine"
    flock 7
  fi
}

# apt's Debian and Debian-security mirrors (debian.sources), or the defaults.
mirrors() {
  local sources=/etc/apt/sources.list.d/debian.sources debian="" security=""
  if [ -f "$sources" ]; then
    debian=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$sources" | grep -v -- '-security' | head -n1 || true)
    security=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$sources" | grep -- '-security' | head -n1 || true)
  fi
  debian=${MODELFLEET_DEBIAN_MIRROR:-${debian:-http://deb.debian.org/debian}}
  security=${MODELFLEET_DEBIAN_SECURITY_MIRROR:-${security:-http://deb.debian.org/debian-security}}
  printf '%s\n' "deb $debian bookworm main" "deb $debian bookworm-updates main" \
    "deb $security bookworm-security main"
}

# What the base is made of: when this changes, the base is made again.
BASE_RECIPE="bookworm minbase +python3,python3-venv,python-is-python3,ca-certificates
-doc,man,locale; main,updates,security"
BASE_KEY=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)

base_image() {
  local tmp start=$SECONDS key="" sources
  if podman image exists "$BASE"; then
    key=$(podman image inspect --format '{{index .Labels "io.modelfleet.base-recipe"}}' "$BASE")
    if [ "$key" = "$BASE_KEY" ]; then
      say "base image $BASE: present"
      return
    fi
    say "base image $BASE: made from another recipe, making it again"
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  mapfile -t sources < <(mirrors)
  say "making the base image $BASE (Debian bookworm minbase + python3, once per machine, about a minute)"
  mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$tmp/base.tar" "${sources[@]}" >&2
  podman import --quiet --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL io.modelfleet.base-recipe=$BASE_KEY" \
    "$tmp/base.tar" "$BASE" >/dev/null
  say "base image $BASE made in $((SECONDS - start)) s"
}

# The machine's CA bundle (it holds the CA of the proxy the package index is reached
# through here), over the image's own for the build's RUN steps only: Debian's pip
# trusts /etc/ssl/certs/ca-certificates.crt. A bind mount over a file the image has
# leaves the image's file as it was; one over a path it lacks would leave an empty
# file behind, which is why /etc/pip.conf is not mounted (this machine's pip.conf
# only names the same bundle).
build_mounts() {
  local cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$cert" ]; then echo "--volume=$cert:/etc/ssl/certs/ca-certificates.crt:ro"; fi
}

build() {
  local component=$1 image="modelfleet/$1:$TAG" start=$SECONDS size mounts
  mapfile -t mounts < <(build_mounts)
  say "building $image from Dockerfile.$component (cached layers are reused)"
  podman build --isolation=chroot --network=host --pull=never --layers \
    --build-arg "BASE=$BASE" "${mounts[@]}" \
    -f "Dockerfile.$component" -t "$image" . >&2
  size=$(podman image inspect --format '{{.Size}}' "$image")
  say "$image built in $((SECONDS - start)) s, $((size / 1000000)) MB"
}

install_tools
lock
base_image
build operator
build runtime
say "images: modelfleet/operator:$TAG modelfleet/runtime:$TAG (podman images --filter reference=modelfleet/*)"
