#!/usr/bin/env bash
# Builds the Kubernetes node and control plane the e2e tests drive plinth through, from
# the Go module proxy, into OUTDIR/bin. The versions come from the environment (mk/k8s.mk
# pins them); each binary carries a stamp (its version and Go's), so a second run with the
# same pins builds nothing, and a changed pin rebuilds only what it names.
#   usage: build-k8s.sh OUTDIR
# Environment: K8S_VERSION K8S_STAGING_VERSION CONTAINERD_VERSION CNI_PLUGINS_VERSION
#              ETCD_VERSION CRI_TOOLS_VERSION DISTRIBUTION_VERSION (all required),
#              GOMODCACHE, GOCACHE.
set -euo pipefail
out=${1:?usage: build-k8s.sh OUTDIR}
: "${K8S_VERSION:?}" "${K8S_STAGING_VERSION:?}" "${CONTAINERD_VERSION:?}" "${CNI_PLUGINS_VERSION:?}"
: "${ETCD_VERSION:?}" "${CRI_TOOLS_VERSION:?}" "${DISTRIBUTION_VERSION:?}"
export PATH="/usr/local/go/bin:$PATH"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
clone=$(cd "$(dirname "$0")/../.." && pwd)
# CI clones afresh: a cache inside the clone would be a 20-minute rebuild every run.
for d in "$out" "$(go env GOMODCACHE)" "$(go env GOCACHE)"; do
  case "$(realpath -m "$d")/" in
    "$clone"/*) echo "build-k8s: $d is inside the clone $clone; give a cache outside it" >&2; exit 2 ;;
  esac
done
mkdir -p "$out/bin" "$out/stamps" "$out/src"
gov=$(go env GOVERSION)
built=0

# fresh NAME VERSION: true when bin/NAME was built from VERSION by this Go.
fresh() { [ -x "$out/bin/$1" ] && [ "$(cat "$out/stamps/$1" 2>/dev/null)" = "$2 $gov" ]; }
stamp() { echo "$2 $gov" >"$out/stamps/$1"; built=$((built + 1)); }

# moddir MODULE@VERSION: the module's source in the module cache (downloaded if absent).
moddir() {
  go mod download -json "$1" | python3 -c \
    'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))'
}

# gobuild NAME VERSION DIR PKG LDFLAGS...: builds PKG from module dir DIR as bin/NAME.
gobuild() {
  local name=$1 version=$2 dir=$3 pkg=$4; shift 4
  fresh "$name" "$version" && return 0
  echo "build-k8s: $name $version"
  local t0=$SECONDS
  go -C "$dir" build -trimpath -ldflags "-s -w $*" -o "$out/bin/$name.tmp" "$pkg"
  mv "$out/bin/$name.tmp" "$out/bin/$name"
  stamp "$name" "$version"
  echo "build-k8s: $name built in $((SECONDS - t0)) s"
}

# wrapper NAME GOMOD TOOLS: a module of ours (out/src/NAME) whose go.mod is GOMOD and
# whose tools.go imports the commands in TOOLS, tidied once per go.mod.
wrapper() {
  local dir="$out/src/$1"
  mkdir -p "$dir"
  if [ "$(cat "$dir/go.mod.in" 2>/dev/null)" != "$2" ] || [ ! -s "$dir/go.sum" ]; then
    printf '%s\n' "$2" >"$dir/go.mod.in"
    printf '%s\n' "$2" >"$dir/go.mod"
    { echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
      for t in $3; do echo "	_ \"$t\""; done; echo ')'; } >"$dir/tools.go"
    rm -f "$dir/go.sum"
    (cd "$dir" && go mod tidy)
  fi
  echo "$dir"
}

# Kubernetes: k8s.io/kubernetes replaces each k8s.io staging module with ./staging/...,
# which a dependent module cannot see; ours points each at the published staging release.
k8s_dir=$(moddir "k8s.io/kubernetes@$K8S_VERSION")
staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/k8s.io/.*#\1#p' "$k8s_dir/go.mod")
[ -n "$staging" ] || { echo "build-k8s: no staging replaces in $k8s_dir/go.mod" >&2; exit 1; }
k8s_cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
k8s_mod=$(
  echo "module plinth.test/k8s"; echo; echo "go ${gov#go}"; echo
  echo "require k8s.io/kubernetes $K8S_VERSION"; echo; echo "replace ("
  for m in $staging; do echo "	$m => $m $K8S_STAGING_VERSION"; done; echo ")"
)
need=0
for c in $k8s_cmds; do fresh "$c" "$K8S_VERSION" || need=1; done
if [ $need = 1 ]; then
  dir=$(wrapper kubernetes "$k8s_mod" "$(for c in $k8s_cmds; do echo "k8s.io/kubernetes/cmd/$c"; done)")
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}; major=${K8S_VERSION#v}; major=${major%%.*}
  x=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    x+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for c in $k8s_cmds; do
    gobuild "$c" "$K8S_VERSION" "$dir" "k8s.io/kubernetes/cmd/$c" "$x"
  done
fi

# etcd: server/v3's go.mod replaces its sibling modules with ../, so it too is built
# through a module of ours; its version is a constant of go.etcd.io/etcd/api/v3.
if ! fresh etcd "$ETCD_VERSION"; then
  dir=$(wrapper etcd "$(printf 'module plinth.test/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s' "${gov#go}" "$ETCD_VERSION")" \
    go.etcd.io/etcd/server/v3)
  gobuild etcd "$ETCD_VERSION" "$dir" go.etcd.io/etcd/server/v3
fi

# containerd, the CNI plugins and cri-tools build in their own module, with their go.sum.
need=0
for c in containerd containerd-shim-runc-v2 ctr; do fresh "$c" "$CONTAINERD_VERSION" || need=1; done
if [ $need = 1 ]; then
  dir=$(moddir "github.com/containerd/containerd/v2@$CONTAINERD_VERSION")
  x="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  x+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
  for c in containerd containerd-shim-runc-v2 ctr; do
    gobuild "$c" "$CONTAINERD_VERSION" "$dir" "./cmd/$c" "$x"
  done
fi

need=0
for c in bridge host-local loopback portmap; do fresh "$c" "$CNI_PLUGINS_VERSION" || need=1; done
if [ $need = 1 ]; then
  dir=$(moddir "github.com/containernetworking/plugins@$CNI_PLUGINS_VERSION")
  x="-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
  gobuild bridge "$CNI_PLUGINS_VERSION" "$dir" ./plugins/main/bridge "$x"
  gobuild host-local "$CNI_PLUGINS_VERSION" "$dir" ./plugins/ipam/host-local "$x"
  gobuild loopback "$CNI_PLUGINS_VERSION" "$dir" ./plugins/main/loopback "$x"
  gobuild portmap "$CNI_PLUGINS_VERSION" "$dir" ./plugins/meta/portmap "$x"
fi

if ! fresh crictl "$CRI_TOOLS_VERSION" || ! fresh critest "$CRI_TOOLS_VERSION"; then
  dir=$(moddir "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION")
  x="-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"
  gobuild crictl "$CRI_TOOLS_VERSION" "$dir" ./cmd/crictl "$x"
  # critest is cri-tools' ginkgo suite compiled as a test binary, as its Makefile does.
  if ! fresh critest "$CRI_TOOLS_VERSION"; then
    echo "build-k8s: critest $CRI_TOOLS_VERSION"
    go -C "$dir" test -c -trimpath -ldflags "-s -w $x" -o "$out/bin/critest.tmp" ./cmd/critest
    mv "$out/bin/critest.tmp" "$out/bin/critest"
    stamp critest "$CRI_TOOLS_VERSION"
  fi
fi

# critest pulls every image it runs, and no registry is reachable: the tests serve the
# project's images from a registry of their own (CNCF distribution) in the namespace.
if ! fresh registry "$DISTRIBUTION_VERSION"; then
  dir=$(moddir "github.com/distribution/distribution/v3@$DISTRIBUTION_VERSION")
  gobuild registry "$DISTRIBUTION_VERSION" "$dir" ./cmd/registry \
    "-X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION"
fi

echo "build-k8s: $built built, $(ls "$out/bin" | wc -l) binaries in $out/bin"
