#!/usr/bin/env bash
# Prints the folder of a real Kubernetes control plane's binaries (etcd,
# kube-apiserver, kube-controller-manager, kuberay-operator): the value of
# KUBEBUILDER_ASSETS, as controller-runtime's envtest names it. tests/cluster/
# starts them; `make test` and .ci/run call this script first.
#
# Where the binaries come from, in order:
#   1. $KUBEBUILDER_ASSETS, when it already holds kube-apiserver;
#   2. .venv/envtest/bin, unpacked earlier from the same archive;
#   3. the archive in ../shared/envtest (or $RAYRELAY_ENVTEST_DIR), checked
#      against the sha256 in its VERSIONS file, unpacked into .venv/envtest/;
#   4. the official envtest release for this Kubernetes version (network);
#   5. none: prints nothing and says on stderr how to get them (the cluster
#      tests then skip with that reason).
# A corrupt archive is an error (exit 1), never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.35.0
dest=.venv/envtest
shared=${RAYRELAY_ENVTEST_DIR:-../shared/envtest}
archive=$shared/envtest-linux-amd64.tar.xz

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

if [ -f "$archive" ]; then
  want=$(awk '$1 == "sha256" {print $2}' "$shared/VERSIONS")
  if [ -x "$dest/bin/kube-apiserver" ] && [ "$(cat "$dest/.sha256" 2>/dev/null)" = "$want" ]; then
    echo "$PWD/$dest/bin"
    exit 0
  fi
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "envtest: $archive has sha256 $got, but $shared/VERSIONS says $want" >&2
    exit 1
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  tar -C "$dest.tmp" -xJf "$archive"
  if [ -d "$shared/crds" ]; then cp -r "$shared/crds" "$dest.tmp/kuberay-crds"; fi
  echo "$want" > "$dest.tmp/.sha256"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "$PWD/$dest/bin"
  exit 0
fi

if [ -x "$dest/bin/kube-apiserver" ]; then
  echo "$PWD/$dest/bin"
  exit 0
fi

# The official archive (controller-tools' envtest releases: etcd, kube-apiserver, kubectl).
url="https://github.com/kubernetes-sigs/controller-tools/releases/download/envtest-v${K8S_VERSION}/envtest-v${K8S_VERSION}-linux-amd64.tar.gz"
tmp=$(mktemp -d)
if curl -fsSL --max-time 120 -o "$tmp/envtest.tgz" "$url" 2>/dev/null; then
  mkdir -p "$dest/bin"
  tar -C "$tmp" -xzf "$tmp/envtest.tgz"
  cp "$tmp"/controller-tools/envtest/* "$dest/bin/"
  rm -rf "$tmp"
  echo "$PWD/$dest/bin"
  exit 0
fi
rm -rf "$tmp"
echo "envtest: no control-plane binaries: set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver," \
  "or put the archive in $shared (see docs/install.md); the tests in tests/cluster/ will skip" >&2
exit 0
