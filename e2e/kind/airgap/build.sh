#!/usr/bin/env bash
# The air-gapped path of the kind end-to-end run (see README.md here): builds, on this machine
# and from package registries only (Debian apt, the Go module proxy, crates.io, PyPI, Maven),
# everything the kind cluster and the run need that would otherwise be pulled from a container
# registry, and caches it under ~/.cache/chatmesh/airgap. Idempotent: each product carries the
# hash of its inputs and is rebuilt only when they changed.
#
#   e2e/kind/airgap/build.sh [STEP...]   # default: every step, in order
#
# Steps:
#   dockerd   docker.io + runc-wrapper as the default runtime, dockerd started (dockerd.sh)
#   base      chatmesh-airgap/debian:trixie      debootstrap (minbase) + `docker import`
#   rust      chatmesh-airgap/rust:1.95-trixie   the base + gcc + this machine's Rust toolchain
#   kube      kubelet, kubeadm, kubectl and the control plane from k8s.io/kubernetes (Go proxy)
#   k8simages the images kubeadm expects (registry.k8s.io/...), coredns built from Go, pause from C
#   node      chatmesh-airgap/kind-node:<k8s version>  the kind node image (see node/Dockerfile)
#   infra     chatmesh-airgap.local/{mariadb,redis,rabbitmq,elasticsearch}:<suite>  (images/<server>/)
#   apps      chatmesh.local/chatmesh and chatmesh.local/chatmesh-operator:<run.sh's tag>
#   smoke     `kind create cluster --image <node>` until the node is Ready, then delete it
# Unfinished steps are listed at the top of README.md.
#
# Prints, at the end, the environment for e2e/kind/run.sh (CHATMESH_KIND_NODE_IMAGE=..., ...).
# Settings: CHATMESH_AIRGAP_DEBIAN_MIRROR [http://deb.debian.org/debian],
# CHATMESH_AIRGAP_K8S_VERSION [v1.34.4], CHATMESH_AIRGAP_SUITE [trixie].
# shellcheck disable=SC2317 # the step functions are called indirectly ("step_$name")
set -euo pipefail
INFRA_NAME=airgap
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../../infra/lib.sh
source "$ROOT/e2e/infra/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../tools.sh
source "$ROOT/e2e/kind/tools.sh"

CACHE="$TOOLS_CACHE/airgap"
LOGS="$CACHE/logs"
STAMPS="$CACHE/stamps"
mkdir -p "$LOGS" "$STAMPS"
MIRROR="${CHATMESH_AIRGAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${CHATMESH_AIRGAP_SUITE:-trixie}"
K8S_VERSION="${CHATMESH_AIRGAP_K8S_VERSION:-v1.34.4}"
ETCD_BUILD_VERSION="${CHATMESH_ETCD_VERSION:-v3.6.16}" # e2e/infra/kube.sh's build, reused
RUST_VERSION="$(rustc --version 2>/dev/null | awk '{print $2}' || true)"

BASE_IMAGE="chatmesh-airgap/debian:$SUITE"
RUST_IMAGE="chatmesh-airgap/rust:${RUST_VERSION:-none}-$SUITE"
NODE_BASE_IMAGE="chatmesh-airgap/kind-node-base:$SUITE"
NODE_IMAGE="chatmesh-airgap/kind-node:$K8S_VERSION"
KUBE_OUT="$CACHE/build/kubernetes-$K8S_VERSION/out"
# The storage provisioner's images, as named in node/files/kind/manifests/default-storage.yaml.
LPP_VERSION=v0.0.30
LPP_IMAGE="chatmesh-airgap.local/local-path-provisioner:$LPP_VERSION"
LPP_HELPER_IMAGE="chatmesh-airgap.local/local-path-helper:$SUITE"
# NetworkPolicy enforcement beside the bridge CNI (node/files/kind/manifests/default-cni.yaml).
NETPOL_VERSION=v0.8.0
NETPOL_IMAGE="chatmesh-airgap.local/kube-network-policies:$NETPOL_VERSION"
NETPOL_PATCH="$HERE/netpol/nfqueue-xt.patch"

# Always the client of Debian's docker.io, which the dockerd step installs (chosen by path, not
# looked up when the script loads: on a fresh machine it is not there yet, and another client on
# PATH, e.g. Docker 28's, insists on buildx under DOCKER_BUILDKIT=1; Docker 20.10's builds with
# BuildKit without it). kind runs `docker` from PATH: a directory holding only this client goes
# first on PATH.
DOCKER=/usr/bin/docker
DOCKER_SHIM="$CACHE/docker-bin"
mkdir -p "$DOCKER_SHIM" && ln -sfn "$DOCKER" "$DOCKER_SHIM/docker"
export PATH="$DOCKER_SHIM:$PATH"
export DOCKER_BUILDKIT=1
NICE=(nice -n 10)
# need_go: kube, k8simages and node build from the Go module proxy (Go is not an apt package at
# the version these modules need).
need_go() { command -v go >/dev/null || die "go (1.24 or later, https://go.dev/dl) is required to build $1"; }
# need_docker: the steps after dockerd need its daemon and client.
need_docker() {
  if [[ ! -x "$DOCKER" ]] || ! "$DOCKER" info >/dev/null 2>&1; then
    die "Docker is not set up: run \`build.sh dockerd\` first (build.sh without steps does)"
  fi
}

# ---- caching -----------------------------------------------------------------------------------
# hash_of ARG...: a hash over strings and, for ARGs that are files or directories, their content.
hash_of() {
  local arg
  for arg in "$@"; do
    if [[ -d "$arg" ]]; then
      (cd "$arg" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    elif [[ -f "$arg" ]]; then
      sha256sum <"$arg"
    else
      printf '%s\n' "$arg"
    fi
  done | sha256sum | cut -c1-16
}
# fresh NAME HASH: true when NAME was last built from inputs with this hash.
fresh() { [[ "$(cat "$STAMPS/$1" 2>/dev/null)" == "$2" ]]; }
done_stamp() { printf '%s\n' "$2" >"$STAMPS/$1"; }
image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
# timed NAME CMD...: run CMD with its output in $LOGS/NAME.log, logging how long it took.
timed() {
  local name=$1 started=$SECONDS
  shift
  log "$name: building (log: $LOGS/$name.log)"
  # Not `"$@" || die`: errexit does not apply inside a command that is the left side of `||`.
  local rc
  set +e
  (
    set -e
    "$@"
  ) >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  ((rc == 0)) || die "$name failed" "$LOGS/$name.log"
  log "$name: done in $((SECONDS - started)) s"
}

# ---- dockerd -----------------------------------------------------------------------------------
step_dockerd() { "$HERE/dockerd.sh"; }

# ---- base: debootstrap + docker import -------------------------------------------------------
# build_base HASH: the root filesystem (kept in the cache: a changed mirror or suite redoes it),
# then the image.
build_base() {
  local rootfs="$CACHE/rootfs/debian-$SUITE"
  if [[ "$(cat "$rootfs.done" 2>/dev/null)" != "$1" ]]; then
    rm -rf "$rootfs" "$rootfs.done"
    mkdir -p "$CACHE/rootfs"
    command -v debootstrap >/dev/null || apt_install debootstrap
    "${NICE[@]}" debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR"
    printf '%s\n' "$1" >"$rootfs.done"
  fi
  # As the official slim images: no package lists or apt caches in the image.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$rootfs/etc/apt/sources.list"
  tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE_IMAGE"
}
step_base() {
  local h
  h="$(hash_of base "$SUITE" "$MIRROR")"
  if fresh base "$h" && image_exists "$BASE_IMAGE"; then log "base: $BASE_IMAGE is up to date"; return; fi
  timed base build_base "$h"
  done_stamp base "$h"
}

# ---- rust: the base + gcc + this machine's Rust toolchain --------------------------------------
build_rust() {
  local ctx="$CACHE/build/rust-image" sysroot
  sysroot="$(rustc --print sysroot)"
  rm -rf "$ctx" && mkdir -p "$ctx/rust"
  # The toolchain without docs and sources: bin/, lib/ (rustc's libraries and the std rlibs).
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
  # This machine's own CAs (its egress re-signs TLS): crates.io and PyPI are reached through it.
  # The images' CA bundles come from this image, so they trust these too.
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  rm -rf "$ctx/rust/lib/rustlib/src" "$ctx/rust/lib/rustlib/"*/analysis
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev pkg-config \\
 && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && for b in /usr/local/rust/bin/*; do ln -s "\$b" /usr/local/cargo/bin/; done \\
 && cargo --version && rustc --version
EOF
  "${NICE[@]}" "$DOCKER" build -t "$RUST_IMAGE" "$ctx"
  rm -rf "$ctx"
}
step_rust() {
  [[ -n "$RUST_VERSION" ]] || die "rustc is needed (its toolchain goes into $RUST_IMAGE)"
  local h
  h="$(hash_of rust "$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null)" "$(rustc -vV)" "sysroot=$(rustc --print sysroot)" "$("$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE")")"
  if fresh rust "$h" && image_exists "$RUST_IMAGE"; then log "rust: $RUST_IMAGE is up to date"; return; fi
  timed rust build_rust
  done_stamp rust "$h"
}

# ---- kube: Kubernetes binaries from the Go module proxy ----------------------------------------
# tools.sh's kube_go_build (the wrapper module of e2e/infra/kube.sh, reusing its Go caches).
KUBE_CMDS=(kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
build_kube() { kube_go_build "$CACHE/build/kubernetes-$K8S_VERSION" "$K8S_VERSION" "${KUBE_CMDS[@]}"; }
step_kube() {
  need_go "the kube step"
  local h cmd ok=1
  h="$(hash_of kube "$K8S_VERSION" "${KUBE_CMDS[@]}")"
  for cmd in "${KUBE_CMDS[@]}"; do [[ -x "$KUBE_OUT/$cmd" ]] || ok=0; done
  if ((ok)) && fresh kube "$h"; then log "kube: Kubernetes $K8S_VERSION binaries are up to date"; return; fi
  timed kube build_kube
  done_stamp kube "$h"
}

# ---- k8simages: the images kubeadm's static pods and add-ons run -----------------------------
# kubeadm_image NAME: the image kubeadm $K8S_VERSION expects for NAME (pause, etcd, coredns, ...).
kubeadm_image() { "$KUBE_OUT/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null | grep -m1 "/$1:"; }
# import_binary IMAGE BINARY NAME [ENTRYPOINT]: a one-file image via `docker import`: BINARY as
# /usr/local/bin/NAME (where the official images have it; kubeadm's static pods run NAME from
# PATH), also at ENTRYPOINT when given (e.g. /pause, /coredns), which is the image's entrypoint.
import_binary() {
  local image=$1 binary=$2 name=$3 entry="${4:-/usr/local/bin/$3}" dir
  dir="$(mktemp -d "$CACHE/build/img.XXXXXX")"
  mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/etc"
  chmod 1777 "$dir/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
  cp "$binary" "$dir/usr/local/bin/$name"
  [[ "$entry" == "/usr/local/bin/$name" ]] || cp "$binary" "$dir$entry"
  tar --numeric-owner --owner=0 --group=0 -C "$dir" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change "ENTRYPOINT [\"$entry\"]" - "$image"
  rm -rf "$dir"
}
# netpol_bin: kube-network-policies from the Go module proxy with netpol/nfqueue-xt.patch applied
# (the module's source, copied out of the module cache, patched, built with its own go.sum), cached.
netpol_bin() {
  local bin src
  bin="$CACHE/bin/kube-network-policies-$NETPOL_VERSION-$(hash_of "$NETPOL_PATCH")"
  if [[ ! -x "$bin" ]]; then
    src="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kube-network-policies@$NETPOL_VERSION" |
      sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [[ -d "$src/cmd" ]] || die "kube-network-policies $NETPOL_VERSION is not in the module cache"
    command -v patch >/dev/null || apt_install patch
    rm -rf "$CACHE/build/kube-network-policies"
    cp -a "$src" "$CACHE/build/kube-network-policies" && chmod -R u+w "$CACHE/build/kube-network-policies"
    patch -d "$CACHE/build/kube-network-policies" -p1 --quiet <"$NETPOL_PATCH"
    mkdir -p "$CACHE/bin"
    (cd "$CACHE/build/kube-network-policies" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" GOTOOLCHAIN=local \
      "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$bin.tmp" ./cmd) >&2
    mv "$bin.tmp" "$bin" && rm -rf "$CACHE/build/kube-network-policies"
  fi
  echo "$bin"
}
build_k8simages() {
  local etcd="$TOOLS_CACHE/bin/etcd-$ETCD_BUILD_VERSION" coredns_version coredns_bin img
  # etcd: e2e/infra/kube.sh's build, without starting its test servers.
  [[ -x "$etcd" ]] || "$ROOT/e2e/infra/kube.sh" --build-only etcd || die "e2e/infra/kube.sh --build-only etcd failed"
  # pause: static C (gcc, libc6-dev's libc.a, binutils' strip).
  if ! command -v gcc >/dev/null || ! command -v strip >/dev/null || [[ "$(gcc -print-file-name=libc.a 2>/dev/null)" != /* ]]; then
    apt_install gcc libc6-dev binutils
  fi
  mkdir -p "$CACHE/build/pause"
  gcc -static -O2 -o "$CACHE/build/pause/pause" "$HERE/images/pause.c"
  strip "$CACHE/build/pause/pause"
  import_binary "$(kubeadm_image pause)" "$CACHE/build/pause/pause" pause /pause
  import_binary "$(kubeadm_image etcd)" "$etcd" etcd
  for img in kube-apiserver kube-controller-manager kube-scheduler; do
    import_binary "$(kubeadm_image "$img")" "$KUBE_OUT/$img" "$img"
  done
  # kube-proxy runs iptables: Debian with iptables, nftables and conntrack.
  local ctx="$CACHE/build/kube-proxy-image"
  rm -rf "$ctx" && mkdir -p "$ctx" && cp "$KUBE_OUT/kube-proxy" "$ctx/"
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables nftables conntrack kmod \\
 && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
EOF
  "${NICE[@]}" "$DOCKER" build -t "$(kubeadm_image kube-proxy)" "$ctx"
  rm -rf "$ctx"
  # CoreDNS from github.com/coredns/coredns at the version kubeadm names.
  img="$(kubeadm_image coredns)"
  coredns_version="${img##*:}"
  coredns_bin="$CACHE/bin/coredns-$coredns_version"
  if [[ ! -x "$coredns_bin" ]]; then
    local gobin
    gobin="$(mktemp -d "$CACHE/build/gobin.XXXXXX")"
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$gobin" "${NICE[@]}" \
      go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version"
    mkdir -p "$CACHE/bin" && mv "$gobin/coredns" "$coredns_bin" && rm -rf "$gobin"
  fi
  import_binary "$img" "$coredns_bin" coredns /coredns
  # The default StorageClass (node/files/kind/manifests/default-storage.yaml, as kind's):
  # rancher.io/local-path-provisioner from the Go module proxy; its helper pods run the base.
  local lpp_bin="$CACHE/bin/local-path-provisioner-$LPP_VERSION"
  if [[ ! -x "$lpp_bin" ]]; then
    local gobin
    gobin="$(mktemp -d "$CACHE/build/gobin.XXXXXX")"
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$gobin" "${NICE[@]}" \
      go install -trimpath -ldflags "-s -w" "github.com/rancher/local-path-provisioner@$LPP_VERSION"
    mkdir -p "$CACHE/bin" && mv "$gobin/local-path-provisioner" "$lpp_bin" && rm -rf "$gobin"
  fi
  import_binary "$LPP_IMAGE" "$lpp_bin" local-path-provisioner
  "$DOCKER" tag "$BASE_IMAGE" "$LPP_HELPER_IMAGE"
  import_binary "$NETPOL_IMAGE" "$(netpol_bin)" kube-network-policies
  # All of them in one archive, for the node image's containerd.
  mapfile -t imgs < <("$KUBE_OUT/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
  imgs+=("$LPP_IMAGE" "$LPP_HELPER_IMAGE" "$NETPOL_IMAGE")
  "$DOCKER" save -o "$CACHE/build/k8s-images.tar.tmp" "${imgs[@]}"
  mv "$CACHE/build/k8s-images.tar.tmp" "$CACHE/build/k8s-images.tar"
}
step_k8simages() {
  need_go "the k8simages step"
  local h
  h="$(hash_of k8simages "$K8S_VERSION" "$ETCD_BUILD_VERSION" "$HERE/images/pause.c" "$LPP_VERSION" \
    "$NETPOL_VERSION" "$NETPOL_PATCH" "$("$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE")" \
    "$KUBE_OUT/kube-apiserver" "$KUBE_OUT/kube-controller-manager" "$KUBE_OUT/kube-scheduler" "$KUBE_OUT/kube-proxy")"
  if fresh k8simages "$h" && [[ -s "$CACHE/build/k8s-images.tar" ]]; then log "k8simages: up to date"; return; fi
  timed k8simages build_k8simages
  done_stamp k8simages "$h"
}

# ---- node: the kind node image -----------------------------------------------------------------
# crictl_bin: crictl (kind's `load` inspects images with it) from the Go module proxy, cached.
CRICTL_VERSION=v1.34.0
crictl_bin() {
  local bin="$CACHE/bin/crictl-$CRICTL_VERSION" gobin
  if [[ ! -x "$bin" ]]; then
    gobin="$(mktemp -d "$CACHE/build/gobin.XXXXXX")"
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$gobin" "${NICE[@]}" \
      go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" >&2
    mkdir -p "$CACHE/bin" && mv "$gobin/crictl" "$bin" && rm -rf "$gobin"
  fi
  echo "$bin"
}
# kind's own node files (entrypoint, systemd units, mount helpers), taken from the kind module
# the Go module proxy serves, at the pinned version: used as they are, not copied into this repo.
kind_base_files() {
  local dir
  dir="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir/images/base/files" ]] || die "kind $KIND_VERSION's images/base/files not in the module cache"
  echo "$dir/images/base/files"
}
build_node() {
  local ctx="$CACHE/build/node-image" id cmd kind_files
  rm -rf "$ctx" && mkdir -p "$ctx/files"
  kind_files="$(kind_base_files)"
  cp -a "$kind_files/." "$ctx/files/" && chmod -R u+w "$ctx/files"
  # Ours on top: containerd's configuration, the CNI and storage manifests.
  cp -a "$HERE/node/." "$ctx/" && cp "$HERE/runc-wrapper" "$ctx/"
  # Debian's containerd lives in /usr/bin, not kind's /usr/local/bin.
  sed -i 's|^ExecStart=/usr/local/bin/containerd$|ExecStart=/usr/bin/containerd|' \
    "$ctx/files/etc/systemd/system/containerd.service"
  "${NICE[@]}" "$DOCKER" build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$NODE_BASE_IMAGE" "$ctx"
  rm -rf "$ctx"
  # As kind's `build node-image`: a container that sleeps, the binaries copied in, the images
  # imported into its containerd (content only: unpacked when the node starts), committed.
  id=chatmesh-airgap-node-build # (a failed run's container is removed by the next)
  "$DOCKER" rm -f "$id" >/dev/null 2>&1 || true
  "$DOCKER" run -d --name "$id" --entrypoint=sleep --security-opt seccomp=unconfined "$NODE_BASE_IMAGE" infinity
  for cmd in kubelet kubeadm kubectl; do "$DOCKER" cp "$KUBE_OUT/$cmd" "$id:/usr/bin/$cmd"; done
  "$DOCKER" cp "$(crictl_bin)" "$id:/usr/local/bin/crictl"
  "$DOCKER" exec "$id" bash -c "mkdir -p /kind && echo $K8S_VERSION >/kind/version"
  "$DOCKER" exec "$id" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
  # shellcheck disable=SC2016 # expanded in the container
  "$DOCKER" exec "$id" bash -c 'for i in $(seq 60); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1'
  "$DOCKER" exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
    --all-platforms --no-unpack --digests - <"$CACHE/build/k8s-images.tar"
  "$DOCKER" exec "$id" ctr --namespace=k8s.io images list -q
  # shellcheck disable=SC2016 # expanded in the container
  "$DOCKER" exec "$id" bash -c 'pkill containerd; for i in $(seq 30); do ps -C containerd -o stat= | grep -qv Z || exit 0; sleep 1; done; exit 1'
  "$DOCKER" exec "$id" rm -f /tmp/containerd.log
  "$DOCKER" commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' --change 'CMD []' "$id" "$NODE_IMAGE"
  "$DOCKER" rm -f "$id"
}
step_node() {
  need_go "the node step"
  local h
  h="$(hash_of node "$CRICTL_VERSION" "$KIND_VERSION" "$HERE/node" "$HERE/runc-wrapper" "$("$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE")" \
    "$KUBE_OUT/kubelet" "$KUBE_OUT/kubeadm" "$KUBE_OUT/kubectl" "$CACHE/build/k8s-images.tar")"
  if fresh node "$h" && image_exists "$NODE_IMAGE"; then log "node: $NODE_IMAGE is up to date"; return; fi
  timed node build_node
  done_stamp node "$h"
}

# ---- infra: the managed dependencies' server images -------------------------------------------
# images/<server>/Dockerfile on the base, with the official images' interface as the operator
# uses it (operator/src/build/infra.rs). Elasticsearch's jars are resolved with Maven on this
# machine (e2e/infra/es-runner/pom.xml, as e2e/infra/elasticsearch.sh) and go in its context.
INFRA_SERVERS=(mariadb redis rabbitmq elasticsearch)
infra_image() { echo "chatmesh-airgap.local/$1:$SUITE"; }
# es_jars DIR: the Elasticsearch runner's jars, copied into DIR.
es_jars() {
  local pom="$ROOT/e2e/infra/es-runner/pom.xml" cp_file jars jar
  cp_file="$CACHE/build/es-classpath-$(sha1sum "$pom" | cut -c1-12).txt"
  if [[ ! -s "$cp_file" ]]; then
    command -v mvn >/dev/null || apt_install maven
    mvn -B -f "$pom" dependency:build-classpath -Dmdep.outputFile="$cp_file" </dev/null >&2
  fi
  IFS=: read -r -a jars <"$cp_file" || true
  mkdir -p "$1"
  for jar in "${jars[@]}"; do cp "$jar" "$1/"; done
}
build_infra() { # build_infra SERVER
  local ctx="$CACHE/build/infra-$1"
  rm -rf "$ctx" && cp -a "$HERE/images/$1" "$ctx"
  [[ "$1" == elasticsearch ]] && es_jars "$ctx/lib"
  "${NICE[@]}" "$DOCKER" build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$(infra_image "$1")" "$ctx"
  rm -rf "$ctx"
}
step_infra() {
  local server h
  for server in "${INFRA_SERVERS[@]}"; do
    h="$(hash_of infra "$HERE/images/$server" "$("$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE")")"
    [[ "$server" == elasticsearch ]] && h="$(hash_of "$h" "$ROOT/e2e/infra/es-runner/pom.xml")"
    if fresh "infra-$server" "$h" && image_exists "$(infra_image "$server")"; then
      log "infra-$server: $(infra_image "$server") is up to date"
      continue
    fi
    timed "infra-$server" build_infra "$server"
    done_stamp "infra-$server" "$h"
  done
}

# ---- apps: the chatmesh and operator images from our Dockerfiles -------------------------------
# The Dockerfiles' base-image ARGs point at the images above. Debian's Docker 20.10 has BuildKit
# but not buildx, and its BuildKit would pull the `# syntax=docker/dockerfile:1` frontend from
# Docker Hub: the Dockerfile goes in on stdin without that line (the built-in frontend reads it
# the same). The web stage's packages come from npm, the speech stage's wheels from PyPI.
# The tag is e2e/kind/run.sh's default (e2e-<commit>), or CHATMESH_KIND_TAG.
APP_TAG="${CHATMESH_KIND_TAG:-e2e-$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo local)}"
APP_IMAGE="${CHATMESH_KIND_IMAGE:-chatmesh.local/chatmesh}"
APP_OPERATOR_IMAGE="${CHATMESH_KIND_OPERATOR_IMAGE:-chatmesh.local/chatmesh-operator}"
# Where the binaries come from (CHATMESH_KIND_APP_BUILD):
#   host    (default) this machine's cargo build in the dev profile, the one e2e/test.sh builds
#           (after the test suite, as in CI, there is nothing left to compile), put in the images
#           by the Dockerfiles' BUILD=prebuilt stage; the images are otherwise the same.
#   source  the Dockerfiles' own release build inside Docker, as a user's `docker build` does
#           (crates from crates.io inside the build; ~30 min more on a cold 2-core machine).
APP_BUILD="${CHATMESH_KIND_APP_BUILD:-host}"
DOCKERFILE_BUILD=source
[[ "$APP_BUILD" == host ]] && DOCKERFILE_BUILD=prebuilt
PREBUILT="$ROOT/e2e/kind/prebuilt"
# The Dockerfiles' RUNTIME_IMAGE: the base with this machine's CAs (as the rust image has them),
# because the chatmesh image's web stage runs npm on it and npm reaches its registry through
# this machine's egress; NODE_EXTRA_CA_CERTS because Node may keep its own CA list.
RUNTIME_IMAGE="chatmesh-airgap/runtime:$SUITE"
build_runtime() {
  local ctx="$CACHE/build/runtime-image"
  rm -rf "$ctx" && mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  printf '%s\n' "FROM $BASE_IMAGE" "COPY ca/ /usr/local/share/ca-certificates/" "RUN update-ca-certificates" \
    "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt" >"$ctx/Dockerfile"
  "${NICE[@]}" "$DOCKER" build -t "$RUNTIME_IMAGE" "$ctx"
  rm -rf "$ctx"
}
build_app() { # build_app DOCKERFILE IMAGE [DOCKER BUILD ARG...]
  sed '/^# syntax=/d' "$ROOT/$1" | "${NICE[@]}" "$DOCKER" build -f - --build-arg BUILD="$DOCKERFILE_BUILD" \
    --build-arg RUST_IMAGE="$RUST_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" -t "$2" "${@:3}" "$ROOT"
}
# host_binary PACKAGE NAME [CARGO ARG...]: cargo build of PACKAGE's binary on this machine, copied
# to $PREBUILT/NAME without its debug info (the symbols stay, for panics' backtraces).
host_binary() {
  local target="${CARGO_TARGET_DIR:-target}"
  (cd "$ROOT" && "${NICE[@]}" cargo build --locked -p "$1" --bin "$1" "${@:3}")
  [[ "$target" == /* ]] || target="$ROOT/$target"
  mkdir -p "$PREBUILT"
  objcopy --strip-debug "$target/debug/$1" "$PREBUILT/$2"
}
build_host_binaries() {
  host_binary chatmesh chatmesh-next --features chatmesh-common/kind-next-migration
  host_binary chatmesh chatmesh
  host_binary chatmesh-operator chatmesh-operator
}
# The binaries link this machine's glibc: the images' Debian must have the same or a newer one.
check_glibc() {
  local host image
  host="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
  image="$("$DOCKER" run --rm "$BASE_IMAGE" getconf GNU_LIBC_VERSION | awk '{print $2}')"
  [[ "$(printf '%s\n' "$host" "$image" | sort -V | tail -1)" == "$image" ]] ||
    die "this machine's glibc $host is newer than $SUITE's $image: its binaries would not run there (CHATMESH_KIND_APP_BUILD=source builds them inside Docker)"
}
step_apps() {
  [[ "$APP_BUILD" == host || "$APP_BUILD" == source ]] || die "CHATMESH_KIND_APP_BUILD is host or source, not $APP_BUILD"
  timed runtime-image build_runtime
  if [[ "$APP_BUILD" == host ]]; then
    check_glibc
    command -v objcopy >/dev/null || apt_install binutils
    # The -next variant first, so that the last build leaves target/debug/chatmesh as the tests use it.
    timed host-binaries build_host_binaries
  fi
  # No input hash: the Docker build cache makes an unchanged rebuild a no-op.
  timed operator-image build_app operator/Dockerfile "$APP_OPERATOR_IMAGE:$APP_TAG"
  timed chatmesh-image build_app services/chatmesh/Dockerfile "$APP_IMAGE:$APP_TAG"
  # run.sh's upgrade: the same image plus one test-only migration (a real schema change).
  [[ "$APP_BUILD" == source ]] || cp "$PREBUILT/chatmesh-next" "$PREBUILT/chatmesh"
  timed chatmesh-next-image build_app services/chatmesh/Dockerfile "$APP_IMAGE:$APP_TAG-next" \
    --build-arg CARGO_FEATURES=chatmesh-common/kind-next-migration
  rm -rf "$PREBUILT"
}

# ---- smoke: a cluster from the node image reaches Ready ---------------------------------------
smoke() {
  local name=chatmesh-airgap-smoke kubeconfig="$CACHE/smoke.kubeconfig"
  need_kind
  "$KIND" delete cluster --name "$name" >/dev/null 2>&1 || true
  "$KIND" create cluster --name "$name" --image "$NODE_IMAGE" --kubeconfig "$kubeconfig" --wait 300s --retain ||
    { "$DOCKER" exec "$name-control-plane" journalctl --no-pager -n 80 || true; return 1; }
  need_kubectl
  "$KUBECTL" --kubeconfig "$kubeconfig" get nodes -o wide
  # (The provisioner may restart once: it can start before kube-proxy has the Service rules.)
  "$KUBECTL" --kubeconfig "$kubeconfig" -n kube-system rollout status deploy/coredns --timeout=180s
  "$KUBECTL" --kubeconfig "$kubeconfig" -n kube-system rollout status ds/kube-proxy --timeout=180s
  "$KUBECTL" --kubeconfig "$kubeconfig" -n local-path-storage rollout status deploy/local-path-provisioner --timeout=180s
  "$KUBECTL" --kubeconfig "$kubeconfig" get pods -A -o wide
  "$KIND" delete cluster --name "$name"
}
step_smoke() { timed smoke smoke; }

ALL_STEPS=(dockerd base rust kube k8simages node infra apps)
# On failure the last line on stdout is `false`, so `eval "$(build.sh)" && run.sh` stops here
# (the eval of an empty output would succeed) and run.sh does not start on missing images.
trap 'rc=$?; ((rc == 0)) || echo "false # e2e/kind/airgap/build.sh failed (exit $rc): see its messages above"' EXIT
main() {
  local steps=("$@") s started=$SECONDS t times=()
  ((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
  for s in "${steps[@]}"; do
    declare -F "step_$s" >/dev/null || die "unknown step $s (steps: ${ALL_STEPS[*]} smoke)"
  done
  # The Go and cargo caches, the images and the cluster's copies of them take ~15 GB on a cold
  # machine: say so before a step fails on "no space left on device".
  local free_gb
  free_gb="$(df -P --block-size=1G "$CACHE" | awk 'NR == 2 {print $4}')"
  ((free_gb >= 15)) || log "WARNING: $free_gb GB free under $CACHE; a cold build and run need about 15 GB"
  for s in "${steps[@]}"; do
    [[ "$s" == dockerd ]] || need_docker
    t=$SECONDS
    "step_$s"
    times+=("$(printf '%-10s %5d s' "$s" $((SECONDS - t)))")
  done
  times+=("$(printf '%-10s %5d s' total $((SECONDS - started)))")
  # Each step's time (0-1 s: up to date), also in $LOGS/times.txt for e2e/kind/test.sh.
  printf '%s\n' "${times[@]}" >"$LOGS/times.txt"
  log "step times:"
  printf '  %s\n' "${times[@]}" >&2
  echo "export CHATMESH_KIND_DOCKER=$DOCKER"
  echo "export CHATMESH_KIND_NODE_IMAGE=$NODE_IMAGE"
  echo "export CHATMESH_KIND_MYSQL_IMAGE=$(infra_image mariadb)"
  echo "export CHATMESH_KIND_REDIS_IMAGE=$(infra_image redis)"
  echo "export CHATMESH_KIND_RABBITMQ_IMAGE=$(infra_image rabbitmq)"
  echo "export CHATMESH_KIND_ELASTICSEARCH_IMAGE=$(infra_image elasticsearch)"
  echo "export CHATMESH_KIND_TAG=$APP_TAG CHATMESH_KIND_PREBUILT=1"
  # A 2-core node cannot fit the example's CPU requests next to the control plane.
  local cpu_patch='{"spec":{"services":{"gateway":{"resources":{"requests":{"cpu":"10m"}}},"user":{"resources":{"requests":{"cpu":"10m"}}},"friend":{"resources":{"requests":{"cpu":"10m"}}},"file":{"resources":{"requests":{"cpu":"10m"}}},"message":{"resources":{"requests":{"cpu":"10m"}}},"transmit":{"resources":{"requests":{"cpu":"10m"}}},"speech":{"resources":{"requests":{"cpu":"10m"}}}},"mysql":{"managed":{"resources":{"requests":{"cpu":"10m"}}}},"redis":{"managed":{"resources":{"requests":{"cpu":"10m"}}}},"rabbitmq":{"managed":{"resources":{"requests":{"cpu":"10m"}}}},"elasticsearch":{"managed":{"resources":{"requests":{"cpu":"10m"}}}}}}'
  printf "export CHATMESH_KIND_CHATSYSTEM_PATCH='%s'\n" "$cpu_patch"
}
# On one line: bash reads a script as it runs it, so editing this file during a run is safe.
main "$@"; exit
