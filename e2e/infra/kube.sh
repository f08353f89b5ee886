#!/usr/bin/env bash
# Start a throw-away Kubernetes control plane (etcd + kube-apiserver, no
# kubelet, scheduler or controller-manager) on loopback, for the operator's
# integration tests. Without Docker or downloads of prebuilt binaries: both
# are built from source out of the Go module proxy on first use and cached in
# ${CHATMESH_CACHE:-$HOME/.cache/chatmesh}/bin (cold build: several minutes;
# afterwards a start takes seconds). Idempotent: a no-op when the API server
# already answers. Prints `export CHATMESH_TEST_KUBECONFIG=...`.
#
# Nothing garbage-collects, schedules or reports workload status here: tests
# that need a Deployment's or Job's status write it themselves.
#
# `kube.sh --build-only etcd|kube-apiserver|all`: only build (and cache) the binaries, start
# nothing and print nothing on stdout (e2e/kind/airgap/build.sh takes etcd from here).
set -euo pipefail
INFRA_NAME=kube
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BUILD_ONLY=""
if [[ "${1:-}" == --build-only ]]; then
  BUILD_ONLY="${2:-all}"
  [[ "$BUILD_ONLY" =~ ^(etcd|kube-apiserver|all)$ ]] || die "--build-only etcd|kube-apiserver|all, not $BUILD_ONLY"
elif (($#)); then
  die "unknown argument $1 (--build-only etcd|kube-apiserver|all)"
fi

# Kubernetes 1.34 matches the operator's k8s-openapi feature (v1_34). Its
# staging modules (k8s.io/api, ...) are published as v0.34.x.
K8S_VERSION="${CHATMESH_KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${CHATMESH_ETCD_VERSION:-v3.6.16}"
ETCD_PORT=12379 # not etcd's usual 2379/2380, to stay clear of a real one
ETCD_PEER_PORT=12380
API_PORT=16443

CACHE="${CHATMESH_CACHE:-$HOME/.cache/chatmesh}"
BIN="$CACHE/bin"
DIR="$INFRA_DIR/kube"
APISERVER="$BIN/kube-apiserver-$K8S_VERSION"
ETCD="$BIN/etcd-$ETCD_VERSION"
KUBECONFIG_FILE="$DIR/kubeconfig"
TOKEN_FILE="$DIR/admin.token"
mkdir -p "$BIN" "$DIR/pki"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

# build_apiserver: a wrapper module that requires k8s.io/kubernetes and points
# every staging module (which kubernetes' own go.mod replaces with
# ./staging/..., ignored outside its repo) at its published v0.X.Y.
build_apiserver() {
  local src="$CACHE/build/kube-apiserver-$K8S_VERSION" gomod staging
  mkdir -p "$src"
  gomod="$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"
  staging="v0.${K8S_VERSION#v1.}"
  {
    echo "module chatmesh.test/kube-apiserver"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  # The version the server reports at /version (default v0.0.0-master).
  local pkg=k8s.io/component-base/version major minor
  major="${K8S_VERSION#v}" && major="${major%%.*}"
  minor="${K8S_VERSION#v*.}" && minor="${minor%%.*}"
  (cd "$src" && go build -mod=mod -trimpath -o "$APISERVER.tmp" \
    -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor" \
    k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$APISERVER.tmp" "$APISERVER"
}

# build_etcd: etcd's own main is a one-liner over etcdmain.Main.
build_etcd() {
  local src="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  cat >"$src/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  printf 'module chatmesh.test/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$src/go.mod"
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$ETCD.tmp" .)
  mv "$ETCD.tmp" "$ETCD"
}

want_etcd=1 want_apiserver=1
[[ "$BUILD_ONLY" == etcd ]] && want_apiserver=0
[[ "$BUILD_ONLY" == kube-apiserver ]] && want_etcd=0
if { ((want_apiserver)) && [[ ! -x "$APISERVER" ]]; } || { ((want_etcd)) && [[ ! -x "$ETCD" ]]; }; then
  command -v go >/dev/null || die "go is required to build kube-apiserver and etcd"
  (
    # One builder at a time; a second caller waits and then finds the binaries.
    flock -w 3600 9 || die "timed out waiting for another build of the control plane"
    started=$SECONDS
    if ((want_etcd)) && [[ ! -x "$ETCD" ]]; then
      log "building etcd $ETCD_VERSION from the Go module proxy (log: $DIR/build-etcd.log)"
      build_etcd >"$DIR/build-etcd.log" 2>&1 || die "building etcd failed" "$DIR/build-etcd.log"
    fi
    if ((want_apiserver)) && [[ ! -x "$APISERVER" ]]; then
      log "building kube-apiserver $K8S_VERSION from the Go module proxy (log: $DIR/build-apiserver.log)"
      build_apiserver >"$DIR/build-apiserver.log" 2>&1 || die "building kube-apiserver failed" "$DIR/build-apiserver.log"
    fi
    log "control plane built in $((SECONDS - started)) s (cached in $BIN)"
  ) 9>"$BIN/.build.lock"
fi

[[ -z "$BUILD_ONLY" ]] || exit 0

# Credentials: a CA, the API server's serving certificate for 127.0.0.1 (a
# separate leaf: rustls refuses a CA certificate as a server's), the service
# account signing key, and one static admin token. Made once, kept.
PKI="$DIR/pki"
if [[ ! -s "$PKI/server.crt" ]]; then
  log "creating certificates in $PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=chatmesh-test-ca \
      -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout server.key -out server.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc" \
      basicConstraints=CA:FALSE keyUsage=critical,digitalSignature,keyEncipherment \
      extendedKeyUsage=serverAuth >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$DIR/openssl.log" 2>&1 || die "openssl failed" "$DIR/openssl.log"
fi
[[ -s "$TOKEN_FILE" ]] || openssl rand -hex 24 >"$TOKEN_FILE"
TOKEN="$(cat "$TOKEN_FILE")"
# system:masters: every permission under RBAC, as a cluster admin has.
printf '%s,chatmesh-admin,chatmesh-admin,"system:masters"\n' "$TOKEN" >"$DIR/tokens.csv"

cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chatmesh-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: chatmesh-test
  context: {cluster: chatmesh-test, user: admin, namespace: default}
current-context: chatmesh-test
EOF

etcd_healthy() { curl -sf "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
port_free() { ! port_open 127.0.0.1 "$1"; }

# stop_ours PIDFILE BINARY: stop a server this script started earlier (its pid file names it,
# and it still runs BINARY), waiting for its ports to close; a no-op otherwise.
stop_ours() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 0
  if [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$2"; then
    log "stopping the earlier $(basename "$2") (pid $pid)"
    kill "$pid" 2>/dev/null || true
    wait_until 10 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
api_ready() {
  curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$API_PORT/readyz" | grep -q '^ok$'
}

if api_ready; then
  log "already up on https://127.0.0.1:$API_PORT"
else
  # Half up (e.g. etcd died under a running API server): restart what is not healthy.
  stop_ours "$DIR/kube-apiserver.pid" "$APISERVER"
  if etcd_healthy; then
    log "etcd already up on 127.0.0.1:$ETCD_PORT"
  else
    stop_ours "$DIR/etcd.pid" "$ETCD"
    # A server stopped a moment ago may still hold its ports.
    wait_until 15 port_free "$ETCD_PORT" || die "port $ETCD_PORT is taken by something that is not a healthy etcd"
    wait_until 15 port_free "$ETCD_PEER_PORT" || die "port $ETCD_PEER_PORT is taken by something that is not our etcd"
    # A fresh store each start: tests must not depend on old objects.
    rm -rf "$DIR/etcd-data"
    log "starting etcd (log: $DIR/etcd.log)"
    # --unsafe-no-fsync: a test store, durability buys nothing and costs time.
    start_bg "$DIR/etcd.log" "$ETCD" --name chatmesh-test --data-dir "$DIR/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "chatmesh-test=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync --log-level warn
    echo "$BG_PID" >"$DIR/etcd.pid"
    wait_up 60 etcd_healthy || die "etcd did not become healthy within 60 s" "$DIR/etcd.log"
  fi
  wait_until 15 port_free "$API_PORT" || die "port $API_PORT is taken by something that is not our API server"
  log "starting kube-apiserver (log: $DIR/kube-apiserver.log)"
  start_bg "$DIR/kube-apiserver.log" "$APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/server.crt" --tls-private-key-file "$PKI/server.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$DIR/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --cert-dir "$DIR/apiserver-certs" --profiling=false --v=1
  echo "$BG_PID" >"$DIR/kube-apiserver.pid"
  wait_up 120 api_ready || die "kube-apiserver did not become ready within 120 s" "$DIR/kube-apiserver.log"
fi

echo "export CHATMESH_TEST_KUBECONFIG=$KUBECONFIG_FILE"
