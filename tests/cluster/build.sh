#!/usr/bin/env bash
# Builds the test cluster's binaries from upstream Go modules, once per machine:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm.
# Cached outside the clone, keyed by versions; a second run returns at once.
#
#   tests/cluster/build.sh          prints the bin folder (progress on stderr)
#
# Each component is built in its own throw-away wrapper module, so resolving one's
# dependencies cannot move another's. k8s.io/kubernetes replaces its staging
# modules with local paths, so its wrapper replaces each of them with the
# published k8s.io/X v0.34.N, the list generated from k8s.io/kubernetes's own go.mod.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

CACHE=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/cluster
BIN="$CACHE/bin-k8s${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}"
NAMES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

complete() { for n in "${NAMES[@]}"; do [ -x "$BIN/$n" ] || return 1; done; [ -f "$BIN/kwok-stages.yaml" ]; }
if complete; then echo "$BIN"; exit 0; fi

# kwok's own "fast" stage set (node initialise + heartbeat with lease, pod ready,
# complete, delete), taken from the kwok module's kustomize/stage folder.
install_stages() {
  local dir
  dir=$(GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local stage="$dir/kustomize/stage"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$stage/$f"; echo "---"
  done > "$1/kwok-stages.yaml.tmp"
  mv "$1/kwok-stages.yaml.tmp" "$1/kwok-stages.yaml"
}

binaries_done() { for n in "${NAMES[@]}"; do [ -x "$BIN/$n" ] || return 1; done; }
if binaries_done; then install_stages "$BIN"; echo "$BIN"; exit 0; fi
command -v go >/dev/null || { echo "build.sh: Go is missing (needed to build the cluster binaries)" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9
if complete; then echo "$BIN"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
out="$work/bin"
mkdir -p "$out"
started=$SECONDS
step=0
note() { step=$((step + 1)); echo "==> [$step/4] $* ($((SECONDS - started)) s so far)" >&2; }

# wrapper DIR MODULE VERSION STAGING_PREFIX STAGING_VERSION
# Creates a module that requires MODULE@VERSION and carries over its replace
# directives: local-path ones (staging) become STAGING_PREFIX/X => X STAGING_VERSION.
wrapper() {
  local dir=$1 module=$2 version=$3 staging_version=${4:-}
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod init "modelfleet.test/wrap/$(basename "$dir")" >/dev/null 2>&1
    go mod edit -require="$module@$version"
    gomod=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    python3 - "$gomod" "$staging_version" <<'PY' | while read -r spec; do go mod edit -replace="$spec"; done
import re, sys
text = open(sys.argv[1]).read()
staging_version = sys.argv[2]
blocks = re.findall(r"^replace\s*\((.*?)^\)", text, re.S | re.M)
lines = [l for b in blocks for l in b.splitlines()]
lines += re.findall(r"^replace\s+([^(\n].*)$", text, re.M)
for line in lines:
    line = line.split("//")[0].strip()
    if "=>" not in line:
        continue
    old, new = (s.strip() for s in line.split("=>"))
    old_path = old.split()[0]
    target = new.split()
    if target[0].startswith("."):
        if not staging_version:
            continue  # a local path we cannot follow outside the repository
        print(f"{old_path}={old_path}@{staging_version}")
    elif len(target) == 2:
        print(f"{old}={target[0]}@{target[1]}".replace(" ", "@", 1) if " " in old else f"{old_path}={target[0]}@{target[1]}")
PY
  )
}

ldk8s="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldk8s+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${K8S_VERSION#v1.}"
  ldk8s+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ldk8s=${ldk8s//gitMinor=${K8S_VERSION#v1.}/gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)}

note "etcd $ETCD_VERSION"
wrapper "$work/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
(cd "$work/etcd" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 && \
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)

note "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION"
staging="v0.${K8S_VERSION#v1.}"
wrapper "$work/k8s" k8s.io/kubernetes "$K8S_VERSION" "$staging"
(
  cd "$work/k8s"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    go get "k8s.io/kubernetes/cmd/$c@$K8S_VERSION" >/dev/null 2>&1 || true
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    echo "    building $c ($((SECONDS - started)) s so far)" >&2
    go build -trimpath -ldflags "$ldk8s" -o "$out/$c" "k8s.io/kubernetes/cmd/$c"
  done
)

note "kwok $KWOK_VERSION"
wrapper "$work/kwok" sigs.k8s.io/kwok "$KWOK_VERSION"
(cd "$work/kwok" && go get "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >/dev/null 2>&1 && \
  go build -trimpath -ldflags "-s -w" -o "$out/kwok" sigs.k8s.io/kwok/cmd/kwok)

note "helm $HELM_VERSION"
wrapper "$work/helm" helm.sh/helm/v3 "$HELM_VERSION"
(cd "$work/helm" && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 && \
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$out/helm" helm.sh/helm/v3/cmd/helm)

install_stages "$out"
rm -rf "$BIN"
mv "$out" "$BIN"
echo "==> cluster binaries built in $((SECONDS - started)) s: $BIN" >&2
echo "$BIN"
