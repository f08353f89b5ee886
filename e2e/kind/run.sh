#!/usr/bin/env bash
# The end-to-end run on a real Kubernetes: a kind cluster, the two images built from source
# and loaded into it, the operator installed with Helm from charts/, the example ChatSystem
# (e2e/examples/chatsystem.yaml) applied with the local image and a NodePort gateway, then the
# end-to-end suite against the gateway at 127.0.0.1:9000/9001, the web client it serves (loaded
# and logged in from a headless Chromium on the host), and the day-2 operations, each followed
# by a short scenario: scale the gateway to 2 (and push across the two pods), change a
# configuration value, upgrade the image; finally delete the ChatSystem and check that the
# garbage collector removed every child. See e2e/kind/README.md.
#
#   e2e/kind/run.sh             # everything, then delete the cluster
#   e2e/kind/run.sh --keep      # leave the cluster (and the ChatSystem) running afterwards
#   e2e/kind/run.sh --dry-run   # print the steps and check the prerequisites; change nothing
#
# Needs Docker (with BuildKit), Go (kind, Helm and kubectl are built from the Go module proxy,
# cached; kubectl at the cluster's Kubernetes version), cargo, curl; espeak-ng (the speech
# scenario's audio) is installed with apt when missing. Each step is timed; the times are printed
# at the end (also in ~/.cache/chatmesh/kind/<cluster>/times.txt). Settings (environment):
#   CHATMESH_KIND_CLUSTER        cluster name [chatmesh-e2e]
#   CHATMESH_KIND_DOCKER         the docker client [docker from PATH]; e2e/kind/airgap/build.sh
#                                sets Debian's /usr/bin/docker (kind then runs it too)
#   CHATMESH_KIND_NODE_IMAGE     kind node image [kind's default for its version]
#   CHATMESH_KIND_IMAGE          chatmesh image repository [chatmesh.local/chatmesh]
#   CHATMESH_KIND_OPERATOR_IMAGE operator image repository [chatmesh.local/chatmesh-operator]
#   CHATMESH_KIND_TAG            image tag [e2e-<git commit>]; the upgrade uses <tag>-next
#   CHATMESH_KIND_BUILD_ARGS     extra `docker build` arguments (e.g. base image mirrors:
#                                "--build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...")
#   CHATMESH_KIND_{MYSQL,REDIS,RABBITMQ,ELASTICSEARCH}_IMAGE
#                                server images for the managed dependencies [the operator's];
#                                loaded into kind when present locally, else pulled by the node
#   CHATMESH_KIND_SMS_PORT       port of the fake SMS endpoint on the host [18090]
#   CHATMESH_KIND_HTTP_PORT, CHATMESH_KIND_WS_PORT
#                                the host ports of the gateway's NodePorts [9000, 9001]
#   CHATMESH_KIND_STEPS          upgrade: after the install, only the upgrade steps (e2e/kind/upgrade.sh)
#   CHATMESH_KIND_PREBUILT       1: use $CHATMESH_KIND_IMAGE:<tag> and the operator's image as they
#                                are in Docker, built beforehand (e2e/kind/airgap/build.sh), instead
#                                of building them; the upgrade needs <tag>-next as well
#                                (build.sh builds it: one test-only migration more) [0]
# Diagnostics on stderr; non-zero exit on the first failure (with the operator's log tail).
set -euo pipefail
INFRA_NAME=kind
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../infra/lib.sh
source "$ROOT/e2e/infra/lib.sh"
# shellcheck source-path=SCRIPTDIR source=tools.sh
source "$ROOT/e2e/kind/tools.sh"
cd "$ROOT"
RUN_STARTED=$SECONDS

DRY_RUN=0
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $arg (--dry-run, --keep, --help)" ;;
  esac
done

CLUSTER="${CHATMESH_KIND_CLUSTER:-chatmesh-e2e}"
IMAGE="${CHATMESH_KIND_IMAGE:-chatmesh.local/chatmesh}"
OPERATOR_IMAGE="${CHATMESH_KIND_OPERATOR_IMAGE:-chatmesh.local/chatmesh-operator}"
TAG="${CHATMESH_KIND_TAG:-e2e-$(git rev-parse --short=12 HEAD 2>/dev/null || echo local)}"
PREBUILT="${CHATMESH_KIND_PREBUILT:-0}"
NEXT_TAG="$TAG-next"
SMS_PORT="${CHATMESH_KIND_SMS_PORT:-18090}"
NS=chat
OP_NS=chatmesh-system
NAME=chat # metadata.name of e2e/examples/chatsystem.yaml
HTTP_PORT="${CHATMESH_KIND_HTTP_PORT:-9000}" # kind-config.yaml maps the node's 30900/30901 to these on 127.0.0.1
WS_PORT="${CHATMESH_KIND_WS_PORT:-9001}"
WORK="$TOOLS_CACHE/kind/$CLUSTER"
export KUBECONFIG="$WORK/kubeconfig"
mkdir -p "$WORK"
KIND_CONFIG="$WORK/kind-config.yaml" # kind-config.yaml with this run's host ports
sed -e "s/hostPort: 9000$/hostPort: $HTTP_PORT/; s/hostPort: 9001$/hostPort: $WS_PORT/" kind-config.yaml >"$KIND_CONFIG"
# The docker client, this script's and kind's: a directory holding only it goes first on PATH.
if [[ -n "${CHATMESH_KIND_DOCKER:-}" ]]; then
  [[ -x "$CHATMESH_KIND_DOCKER" ]] || die "CHATMESH_KIND_DOCKER=$CHATMESH_KIND_DOCKER is not an executable"
  mkdir -p "$WORK/docker-bin" && ln -sfn "$CHATMESH_KIND_DOCKER" "$WORK/docker-bin/docker"
  export PATH="$WORK/docker-bin:$PATH"
fi

# Every step is timed: phase NAME starts the next one (ending the one before).
step_no=0
TIMES=()
phase_name=""
phase_started=$SECONDS
phase() {
  [[ -z "$phase_name" ]] || TIMES+=("$(printf '%5d s  %s' $((SECONDS - phase_started)) "$phase_name")")
  phase_name="$*"
  phase_started=$SECONDS
}
step() {
  local what="$*"
  step_no=$((step_no + 1))
  phase "step $step_no: ${what:0:70}"
  log "---- step $step_no: $*"
}
print_times() { # the time of each step, on stderr and in $WORK/times.txt
  phase ""
  TIMES+=("$(printf '%5d s  %s' $((SECONDS - RUN_STARTED)) "total ($1)")")
  printf '%s\n' "${TIMES[@]}" >"$WORK/times.txt"
  log "step times:"
  printf '  %s\n' "${TIMES[@]}" >&2
}
# run CMD...: run it, or with --dry-run print it.
run() {
  if ((DRY_RUN)); then
    printf '  $ %s\n' "$*"
  else
    "$@"
  fi
}

# ---- prerequisites ---------------------------------------------------------------------------
missing=()
check() { # check WHAT CMD...: note WHAT as missing when CMD fails.
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then log "prerequisite ok: $what"; else
    log "prerequisite MISSING: $what"
    missing+=("$what")
  fi
}
check "docker client" command -v docker
check "docker daemon (docker info)" docker info
if ((PREBUILT)); then
  check "pre-built images $IMAGE:$TAG, $OPERATOR_IMAGE:$TAG" docker image inspect "$IMAGE:$TAG" "$OPERATOR_IMAGE:$TAG"
else
  check "docker buildx/BuildKit" docker buildx version
fi
check "go (builds kind $KIND_VERSION and helm $HELM_VERSION, unless cached)" \
  bash -c "command -v go || [[ -x '$TOOLS_BIN/kind-$KIND_VERSION' && -x '$TOOLS_BIN/helm-$HELM_VERSION' ]]"
check "cargo (runs the end-to-end suite)" command -v cargo
check "curl" command -v curl
check "apt-get, or chromium and node (the web client step: e2e/infra/browser.sh)" \
  bash -c "command -v apt-get || { command -v chromium && command -v node; }"
check "kind-config.yaml maps 30900->$HTTP_PORT and 30901->$WS_PORT" \
  bash -c "grep -q 'containerPort: 30900' $KIND_CONFIG && grep -q 'hostPort: $HTTP_PORT' $KIND_CONFIG &&
    grep -q 'containerPort: 30901' $KIND_CONFIG && grep -q 'hostPort: $WS_PORT' $KIND_CONFIG"
cluster_exists() { [[ -x "$TOOLS_BIN/kind-$KIND_VERSION" ]] && "$TOOLS_BIN/kind-$KIND_VERSION" get clusters 2>/dev/null | grep -qx "$CLUSTER"; }
if ! cluster_exists; then
  check "127.0.0.1:$HTTP_PORT free" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT) 2>/dev/null"
  check "127.0.0.1:$WS_PORT free" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$WS_PORT) 2>/dev/null"
fi
if ((${#missing[@]} > 0)) && ((!DRY_RUN)); then
  die "missing prerequisites: ${missing[*]}"
fi

# ---- tools -------------------------------------------------------------------------------------
if ((DRY_RUN)); then
  # Print-only: use what is there; any kubectl renders the ChatSystem locally.
  KIND="$TOOLS_BIN/kind-$KIND_VERSION"
  HELM="$TOOLS_BIN/helm-$HELM_VERSION"
  KUBECTL="$(command -v kubectl)" || need_kubectl
else
  phase "tools: kind, helm, kubectl $KUBECTL_VERSION (built once, cached), espeak-ng"
  need_kind
  need_helm
  need_kubectl
  command -v espeak-ng >/dev/null || apt_install espeak-ng
  command -v jq >/dev/null || apt_install jq
  # The end-to-end tests compile while the cluster starts (2 cores: the wait is mostly idle).
  log "compiling the end-to-end tests in the background (log: $WORK/cargo-build.log)"
  nice -n 10 cargo test -p chatmesh-e2e --locked --tests --no-run >"$WORK/cargo-build.log" 2>&1 &
  CARGO_BUILD_PID=$!
fi
k() { "$KUBECTL" "$@"; }
# kubectl_matches: kubectl's minor version is the cluster's (kubectl supports one minor either way;
# the same minor is what this suite is run with).
kubectl_matches() {
  local v client server
  v="$(k version -o json 2>/dev/null)" || fail "kubectl version: the cluster does not answer"
  client="$(jq -r '.clientVersion.major + "." + .clientVersion.minor' <<<"$v")"
  server="$(jq -r '.serverVersion.major + "." + .serverVersion.minor' <<<"$v")"
  [[ "$client" == "$server" ]] || fail "kubectl $KUBECTL ($client) does not match the cluster's Kubernetes $server"
  log "kubectl $client matches the cluster's Kubernetes $server"
}

# The host's address on kind's Docker network: the pods reach the fake SMS endpoint there.
sms_host() {
  docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -m1 -E '^[0-9]+(\.[0-9]+){3}$'
}

# chatsystem TAG SMS_HOST: the example ChatSystem made fit for this run (local image, NodePort
# gateway on the mapped ports, one gateway to start with, SMS through the suite's fake Aliyun,
# backups on: the day-2 step restores one).
chatsystem_base() {
  local tag=$1 sms_host=$2 infra="" server var image
  for server in mysql redis rabbitmq elasticsearch; do
    var="CHATMESH_KIND_${server^^}_IMAGE"
    image="${!var:-}"
    [[ -n "$image" ]] && infra+=", \"$server\": {\"managed\": {\"image\": \"$image\"}}"
  done
  k patch --local -f e2e/examples/chatsystem.yaml --type merge -o yaml -p "{
    \"spec\": {
      \"image\": {\"repository\": \"$IMAGE\", \"tag\": \"$tag\", \"pullPolicy\": \"Never\"},
      \"services\": {
        \"gateway\": {\"replicas\": 1},
        \"user\": {\"env\": [{\"name\": \"CHATMESH_SMS_RESEND_INTERVAL\", \"value\": \"1s\"}]}
      },
      \"gateway\": {\"service\": {\"type\": \"NodePort\", \"httpNodePort\": 30900, \"websocketNodePort\": 30901}},
      \"sms\": {\"provider\": \"aliyun\", \"signName\": \"chatmesh\", \"templateCode\": \"SMS_0001\",
        \"endpoint\": \"http://$sms_host:$SMS_PORT\", \"credentialsSecret\": \"$NAME-sms\"},
      \"backup\": {}$infra
    }}"
}

# CHATMESH_KIND_CHATSYSTEM_PATCH: an extra merge patch, e.g. lower CPU requests.
chatsystem() {
  if [[ -n "${CHATMESH_KIND_CHATSYSTEM_PATCH:-}" ]]; then
    chatsystem_base "$@" | k patch --local -f - --type merge -o yaml -p "$CHATMESH_KIND_CHATSYSTEM_PATCH"
  else
    chatsystem_base "$@"
  fi
}
if ((DRY_RUN)); then
  log "dry run: the ChatSystem it would apply is in $WORK/chatsystem.yaml"
  chatsystem "$TAG" "$(sms_host || echo 172.18.0.1)" >"$WORK/chatsystem.yaml"
fi

# ---- helpers for the real run ------------------------------------------------------------------
PF_PIDS=()
cleanup() {
  local rc=$? pid
  for pid in "${PF_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -z "${CARGO_BUILD_PID:-}" ]] || kill "$CARGO_BUILD_PID" 2>/dev/null || true
  if ((!DRY_RUN)); then
    if ((rc == 0)); then print_times passed; else print_times "FAILED in: ${phase_name:-setup}"; fi
  fi
  if ((!DRY_RUN && !KEEP)) && [[ -x "${KIND:-}" ]] && cluster_exists; then
    log "deleting the cluster $CLUSTER (--keep leaves it)"
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
  fi
}
trap cleanup EXIT

operator_logs() {
  k -n "$OP_NS" logs deploy/chatmesh-operator --tail=40 >"$WORK/operator.log" 2>&1 || true
  echo "$WORK/operator.log"
}
fail() { # fail MESSAGE: with the ChatSystem's status and the operator's log.
  k -n "$NS" get chatsystem "$NAME" -o yaml >&2 2>/dev/null || true
  k -n "$NS" get pods -o wide >&2 2>/dev/null || true
  die "$1" "$(operator_logs)"
}
# settled: the operator has seen the latest spec, and the system is Ready.
settled() {
  [[ "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.metadata.generation}')" == \
    "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.status.observedGeneration}')" ]] &&
    [[ "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] &&
    [[ "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.status.conditions[?(@.type=="Progressing")].status}')" != True ]]
}
wait_settled() { # wait_settled WHAT
  log "waiting for the ChatSystem to be Ready ($1)"
  wait_until 900 settled || fail "the ChatSystem did not become Ready ($1)"
  local dep
  for dep in $(k -n "$NS" get deploy -l "app.kubernetes.io/instance=$NAME" -o name); do
    k -n "$NS" rollout status "$dep" --timeout=5m >&2 || fail "$dep did not roll out ($1)"
  done
}
gateway_answers() { # gateway_answers BASE_URL: a login reaches the user service.
  curl -sf -m 5 "$1/service/user/username_login" -H 'content-type: application/json' \
    -d '{"request_id":"kind","nickname":"nobody-kind","password":"nothing_1"}' | grep -q '"success":false'
}
# suite FILTER...: the end-to-end tests whose names match, against the NodePort gateway (every
# test binary runs, so one run shows every failure). A test that skips against the external
# gateway (support/mod.rs: it needs processes or flags of its own) is a scenario that did not
# run in the cluster: that fails the run, with its reason.
suite() {
  local out="$WORK/suite-$step_no.log" skipped passed
  CHATMESH_E2E_GATEWAY_HTTP="http://127.0.0.1:$HTTP_PORT" CHATMESH_E2E_GATEWAY_WS="ws://127.0.0.1:$WS_PORT" \
    CHATMESH_E2E_SMS_LISTEN="$SMS_HOST:$SMS_PORT" \
    cargo test -p chatmesh-e2e --locked --tests --no-fail-fast -- --show-output "$@" 2>&1 | tee "$out" >&2 ||
    fail "end-to-end tests failed: $* (output: $out)"
  passed="$(awk '/^test result:/ {n += $4} END {print n + 0}' "$out")"
  skipped="$(awk '/^---- .* stdout ----$/ {t = $2} /skipped against the external gateway/ {print "  " t ": " $0}' "$out")"
  [[ -z "$skipped" ]] || fail "tests skipped instead of running in the cluster:
$skipped"
  ((passed > 0)) || fail "no test matched $*"
  log "$passed tests passed in the cluster ($*)"
}
# day2_test NAME: one test of e2e/tests/cluster.rs (alone: each disrupts the whole system), with
# e2e/kind/day2.sh as its day-2 operations.
day2_test() {
  local out="$WORK/day2-$1.log"
  CHATMESH_E2E_GATEWAY_HTTP="http://127.0.0.1:$HTTP_PORT" CHATMESH_E2E_GATEWAY_WS="ws://127.0.0.1:$WS_PORT" \
    CHATMESH_E2E_DAY2="bash $ROOT/e2e/kind/day2.sh" KUBECTL="$KUBECTL" CHATMESH_KIND_NS="$NS" CHATMESH_KIND_NAME="$NAME" \
    cargo test -p chatmesh-e2e --locked --test cluster -- --exact "$1" --nocapture 2>&1 | tee "$out" >&2 ||
    fail "$1 failed (output: $out)"
  if ! grep -q 'test result: ok. 1 passed' "$out" || grep -q '^skipped:' "$out"; then fail "$1 did not run (output: $out)"; fi
}
# The short scenario after each change: accounts, friends, every message type.
short_scenario() {
  suite real::register_login_and_read_profile real::three_users_from_search_to_group \
    real::every_type_flows_and_is_stored
  # The account made after the first run still logs in: data outlives every change.
  curl -sf "http://127.0.0.1:$HTTP_PORT/service/user/username_login" -H 'content-type: application/json' \
    -d "{\"request_id\":\"kind\",\"nickname\":\"$KEEPER\",\"password\":\"keeper_pass1\"}" | grep -q '"success":true' ||
    fail "the account $KEEPER made before the change no longer logs in"
}
KEEPER="keeper$(date +%s)"
# shellcheck source-path=SCRIPTDIR source=upgrade.sh
source "$ROOT/e2e/kind/upgrade.sh"

# ---- the run -------------------------------------------------------------------------------
step "kind cluster $CLUSTER (kind $KIND_VERSION, kind-config.yaml)"
if cluster_exists; then
  log "cluster $CLUSTER exists: reusing it"
  run "$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  node_image=()
  [[ -n "${CHATMESH_KIND_NODE_IMAGE:-}" ]] && node_image=(--image "$CHATMESH_KIND_NODE_IMAGE")
  run "$KIND" create cluster --name "$CLUSTER" --config "$KIND_CONFIG" --kubeconfig "$KUBECONFIG" \
    "${node_image[@]}" --wait 180s
fi
((DRY_RUN)) || kubectl_matches

if ((PREBUILT)); then step "load the pre-built images into the cluster"; else step "build the images from source and load them into the cluster"; fi
read -r -a build_args <<<"${CHATMESH_KIND_BUILD_ARGS:-}"
build_image() { # build_image DOCKERFILE IMAGE: docker build, unless CHATMESH_KIND_PREBUILT
  if ((PREBUILT)); then log "pre-built (CHATMESH_KIND_PREBUILT): $2"; else
    run docker build "${build_args[@]}" -f "$1" -t "$2" .
  fi
}
build_image services/chatmesh/Dockerfile "$IMAGE:$TAG"
build_image operator/Dockerfile "$OPERATOR_IMAGE:$TAG"
run "$KIND" load docker-image --name "$CLUSTER" "$IMAGE:$TAG" "$OPERATOR_IMAGE:$TAG"
for server in MYSQL REDIS RABBITMQ ELASTICSEARCH; do
  var="CHATMESH_KIND_${server}_IMAGE"
  image="${!var:-}"
  if [[ -n "$image" ]] && { ((DRY_RUN)) || docker image inspect "$image" >/dev/null 2>&1; }; then
    run "$KIND" load docker-image --name "$CLUSTER" "$image"
  fi
done

step "install the operator with Helm (charts/chatmesh-operator)"
run "$HELM" upgrade --install chatmesh-operator charts/chatmesh-operator --namespace "$OP_NS" --create-namespace \
  --set fullnameOverride=chatmesh-operator --set image.repository="$OPERATOR_IMAGE" --set image.tag="$TAG" \
  --set image.pullPolicy=Never --set chatmesh.defaultTag="$TAG" --wait --timeout 5m

step "apply the example ChatSystem (local image, NodePort 30900/30901, SMS to the suite's fake Aliyun)"
if ((DRY_RUN)); then
  run "$KUBECTL" create namespace "$NS"
  run "$KUBECTL" -n "$NS" create secret generic "$NAME-sms" --from-literal=accessKeyId=test-key-id \
    --from-literal=accessKeySecret=test-key-secret
  run "$KUBECTL" -n "$NS" apply -f "$WORK/chatsystem.yaml"
else
  SMS_HOST="$(sms_host)" || fail "cannot find the host's address on the kind Docker network"
  log "the pods reach the fake SMS endpoint at http://$SMS_HOST:$SMS_PORT"
  k get namespace "$NS" >/dev/null 2>&1 || k create namespace "$NS" >&2
  # The fake accepts only fake_aliyun::KEY_ID (e2e/tests/support/fake_aliyun.rs).
  k -n "$NS" create secret generic "$NAME-sms" --from-literal=accessKeyId=test-key-id \
    --from-literal=accessKeySecret=test-key-secret --dry-run=client -o yaml | k apply -f - >&2
  chatsystem "$TAG" "$SMS_HOST" >"$WORK/chatsystem.yaml"
  k -n "$NS" apply -f "$WORK/chatsystem.yaml" >&2
fi

step "wait for Ready and for the gateway at 127.0.0.1:$HTTP_PORT"
run "$KUBECTL" -n "$NS" wait --for=condition=Ready "chatsystem/$NAME" --timeout=15m
if ((!DRY_RUN)); then
  wait_settled "first install"
  wait_until 120 gateway_answers "http://127.0.0.1:$HTTP_PORT" || fail "the gateway does not answer on 127.0.0.1:$HTTP_PORT"
fi
[[ "${CHATMESH_KIND_STEPS:-all}" != upgrade ]] || { upgrade_only; exit 0; }

step "the mesh from a pod: the gateway answers, an internal port does not (policy), and without the policies a call with no client certificate fails (mTLS)"
# A throwaway pod in the ChatSystem's namespace (the chatmesh image: bash's /dev/tcp, openssl),
# labelled as no ChatSystem component, so the policies admit it to the gateway's public ports only.
if ((DRY_RUN)); then
  run "$KUBECTL" -n "$NS" run mesh-probe --image "$IMAGE:$TAG" --image-pull-policy Never --restart Never --command -- sleep 900
else
  # The enforcement: kindnet's policy controller online, kube-network-policies in the air-gapped
  # node image (e2e/kind/airgap/node/files/kind/manifests/default-cni.yaml).
  if k -n kube-system get ds kube-network-policies >/dev/null 2>&1; then
    k -n kube-system rollout status ds/kube-network-policies --timeout=120s >&2 ||
      fail "kube-network-policies (NetworkPolicy enforcement) is not running"
  fi
  k -n "$NS" delete pod mesh-probe --ignore-not-found --wait=true >&2
  k -n "$NS" run mesh-probe --image "$IMAGE:$TAG" --image-pull-policy Never --restart Never \
    --labels chatmesh.io/role=mesh-probe --command -- sleep 900 >&2
  k -n "$NS" wait --for=condition=Ready pod/mesh-probe --timeout=120s >&2 || fail "the probe pod did not start"
  # probe SCRIPT [ARG...]: bash -c SCRIPT in the probe pod (ARGs are its $1...).
  probe() { k -n "$NS" exec mesh-probe -- bash -c "$1" probe "${@:2}"; }
  user_addr="$NAME-user:10003"
  # (a) The gateway's public port answers (and reaches the user service behind it).
  # shellcheck disable=SC2016 # expanded by the pod's bash
  answer="$(probe 'exec 3<>"/dev/tcp/$2/9000" &&
    printf "POST /service/user/username_login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" "${#1}" "$1" >&3 &&
    timeout 10 cat <&3' '{"request_id":"kind","nickname":"nobody-kind","password":"nothing_1"}' "$NAME-gateway" 2>&1 || true)"
  if ! grep -q '^HTTP/1.1 200' <<<"$answer" || ! grep -q '"success":false' <<<"$answer"; then
    fail "(a) the gateway did not answer the probe pod: $answer"
  fi
  log "(a) from a pod: the gateway answers ($(head -1 <<<"$answer" | tr -d '\r'))"
  # connect_rc HOST PORT: bash's exit code for a TCP connect within 5 s (124: timed out).
  # shellcheck disable=SC2016 # expanded by the pod's bash
  connect_rc() { local rc=0; probe 'timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2"' "$1" "$2" >/dev/null 2>&1 || rc=$?; echo "$rc"; }
  user_connects() { [[ "$(connect_rc "$NAME-user" 10003)" == 0 ]]; }
  policies() { k -n "$NS" get networkpolicy -l "app.kubernetes.io/instance=$NAME" -o name; }
  no_policies() { ! policies | grep -q .; }
  some_policies() { policies | grep -q .; }
  # (b) The user service's gRPC port: the policy drops the connection (a timeout, not a refusal).
  rc="$(connect_rc "$NAME-user" 10003)"
  ((rc == 124)) || fail "(b) a connection from the probe pod to $user_addr did not time out (exit $rc: 0 = connected, 1 = refused): the NetworkPolicy is not enforced"
  log "(b) from a pod: $user_addr times out (NetworkPolicy)"
  # (c) Without the policies the port is reachable, and TLS without a client certificate fails.
  k -n "$NS" patch chatsystem "$NAME" --type merge -p '{"spec":{"networkPolicy":{"enabled":false}}}' >&2
  wait_settled "networkPolicy.enabled=false"
  wait_until 60 no_policies || fail "(c) the NetworkPolicies are still there: $(policies | tr '\n' ' ')"
  wait_until 30 user_connects ||
    fail "(c) with the NetworkPolicies deleted, $user_addr still does not accept a connection from the probe pod"
  # -ign_eof: in TLS 1.3 the server refuses a missing client certificate after the client's
  # Finished, so s_client must keep reading after its input ends to see the alert (else a slow
  # server loses the race and the refusal goes unseen).
  # shellcheck disable=SC2016 # expanded by the pod's bash
  tls="$(probe 'printf "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" | timeout 10 openssl s_client -ign_eof -connect "$1:$2" -servername "$1" -alpn h2 2>&1' \
    "$NAME-user" 10003 || true)"
  grep -q '^CONNECTED' <<<"$tls" || fail "(c) openssl did not connect to $user_addr: $tls"
  grep -q -i -E 'alert (certificate required|handshake failure|bad certificate)|alert number (116|40|42)' <<<"$tls" ||
    fail "(c) TLS without a client certificate was not refused by $user_addr: $tls"
  log "(c) without the policies: $user_addr refuses TLS without a client certificate ($(grep -i -o -E 'alert[^:]*' <<<"$tls" | head -1))"
  k -n "$NS" patch chatsystem "$NAME" --type merge -p '{"spec":{"networkPolicy":{"enabled":true}}}' >&2
  wait_settled "networkPolicy.enabled=true"
  wait_until 60 some_policies || fail "the NetworkPolicies did not come back"
  rc="$(connect_rc "$NAME-user" 10003)"
  ((rc == 124)) || fail "with the policies back, $user_addr did not time out again (exit $rc)"
  log "policies back on: $user_addr times out again"
  k -n "$NS" delete pod mesh-probe --wait=false >&2
fi

step "the end-to-end suite against the cluster (every real:: scenario)"
if ((DRY_RUN)); then
  printf '  $ %s\n' "CHATMESH_E2E_GATEWAY_HTTP=http://127.0.0.1:$HTTP_PORT CHATMESH_E2E_GATEWAY_WS=ws://127.0.0.1:$WS_PORT CHATMESH_E2E_SMS_LISTEN=<kind network gateway>:$SMS_PORT cargo test -p chatmesh-e2e --locked --tests -- real::"
else
  phase "compile the end-to-end tests (started in the background before step 1)"
  wait "$CARGO_BUILD_PID" || { CARGO_BUILD_PID=""; die "compiling the end-to-end tests failed" "$WORK/cargo-build.log"; }
  CARGO_BUILD_PID=""
  phase "step $step_no: the end-to-end suite (every real:: scenario)"
  suite real::
  curl -sf "http://127.0.0.1:$HTTP_PORT/service/user/username_register" -H 'content-type: application/json' \
    -d "{\"request_id\":\"kind\",\"nickname\":\"$KEEPER\",\"password\":\"keeper_pass1\"}" | grep -q '"success":true' ||
    fail "could not register $KEEPER"
fi

step "the web client served by the in-cluster gateway loads and logs in (headless Chromium on the host)"
# The image carries the built client (CHATMESH_WEB_DIR); e2e/infra/browser.sh installs Chromium,
# Node and web/'s packages on the host.
run bash e2e/infra/browser.sh >&2
if ((DRY_RUN)); then
  printf '  $ %s\n' "node web/tests/smoke.mjs http://127.0.0.1:$HTTP_PORT"
else
  node web/tests/smoke.mjs "http://127.0.0.1:$HTTP_PORT" >&2 || fail "the web client did not load or log in"
fi

step "delete the transmit and message pods during a stream of sends: nothing acknowledged is lost"
if ((DRY_RUN)); then
  run bash e2e/kind/day2.sh delete-pods
else
  day2_test pods_deleted_mid_stream_lose_nothing_acknowledged
  wait_settled "transmit and message pods replaced"
fi

step "back up (a Job from the operator's CronJob), drop the message table, restore as operator/README.md says: the history is back"
if ((DRY_RUN)); then
  run bash e2e/kind/day2.sh backup
  run bash e2e/kind/day2.sh drop-table message
  run bash e2e/kind/day2.sh restore chatmesh-YYYYmmddTHHMMSSZ.sql.gz
else
  day2_test backup_then_dropped_table_then_restore_brings_history_back
  wait_settled "restored and resumed"
  wait_until 120 gateway_answers "http://127.0.0.1:$HTTP_PORT" || fail "the gateway does not answer after the restore"
fi

step "scale the gateway to 2; pushes cross between the two pods"
run "$KUBECTL" -n "$NS" patch chatsystem "$NAME" --type merge -p '{"spec":{"services":{"gateway":{"replicas":2}}}}'
if ((!DRY_RUN)); then
  wait_settled "gateway replicas 2"
  mapfile -t pods < <(k -n "$NS" get pods -l "app.kubernetes.io/instance=$NAME,app.kubernetes.io/component=gateway" \
    --field-selector=status.phase=Running -o name)
  ((${#pods[@]} == 2)) || fail "expected 2 gateway pods, found ${#pods[@]}"
  # One port-forward per pod: the test's two clients talk to different gateway instances.
  pf=$((HTTP_PORT + 10400)) # 19400-19411 with the default ports; another run's are apart
  k -n "$NS" port-forward "${pods[0]}" $pf:9000 $((pf + 1)):9001 >"$WORK/pf0.log" 2>&1 &
  PF_PIDS+=($!)
  k -n "$NS" port-forward "${pods[1]}" $((pf + 10)):9000 $((pf + 11)):9001 >"$WORK/pf1.log" 2>&1 &
  PF_PIDS+=($!)
  wait_until 30 gateway_answers http://127.0.0.1:$pf || fail "port-forward to ${pods[0]} failed"
  wait_until 30 gateway_answers http://127.0.0.1:$((pf + 10)) || fail "port-forward to ${pods[1]} failed"
  CHATMESH_E2E_GATEWAY_HTTP=http://127.0.0.1:$pf CHATMESH_E2E_GATEWAY_WS=ws://127.0.0.1:$((pf + 1)) \
    CHATMESH_E2E_GATEWAY2_HTTP=http://127.0.0.1:$((pf + 10)) CHATMESH_E2E_GATEWAY2_WS=ws://127.0.0.1:$((pf + 11)) \
    cargo test -p chatmesh-e2e --locked --test messages -- pushes_cross_gateways >&2 ||
    fail "pushes did not cross between the gateway pods"
  for pid in "${PF_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  PF_PIDS=()
  short_scenario
fi

step "change a configuration value (SMS template: every service's ConfigMap, so every pod rolls)"
# (The hash before the patch: the operator may have applied the change before a read after it.)
((DRY_RUN)) || before="$(k -n "$NS" get deploy "$NAME-user" -o jsonpath='{.spec.template.metadata.annotations.chatmesh\.io/config-hash}')"
run "$KUBECTL" -n "$NS" patch chatsystem "$NAME" --type merge -p '{"spec":{"sms":{"templateCode":"SMS_0002"}}}'
if ((!DRY_RUN)); then
  wait_settled "templateCode SMS_0002"
  after="$(k -n "$NS" get deploy "$NAME-user" -o jsonpath='{.spec.template.metadata.annotations.chatmesh\.io/config-hash}')"
  [[ "$before" != "$after" ]] || fail "the configuration change did not change the pods' config hash"
  [[ "$(k -n "$NS" get configmap "$NAME-config" -o jsonpath='{.data.CHATMESH_ALIYUN_TEMPLATE_CODE}')" == SMS_0002 ]] ||
    fail "the ConfigMap does not carry the new template code"
  short_scenario
fi

# An upgrade with a schema change and its rollback by restore + pin (upgrade.sh).
upgrade_steps

step "delete the ChatSystem: the garbage collector removes every child but the retained data"
run "$KUBECTL" -n "$NS" delete chatsystem "$NAME" --cascade=foreground --timeout=10m
if ((!DRY_RUN)); then
  # spec.retention Retain (the default): the volume claims and the credentials Secret stay,
  # for a ChatSystem re-created with the same name to adopt; everything else goes.
  kinds=deployments,statefulsets,jobs,cronjobs,services,configmaps,secrets,persistentvolumeclaims,ingresses,pods
  children() {
    k -n "$NS" get "$kinds" -l "app.kubernetes.io/instance=$NAME" -o name 2>/dev/null |
      grep -v -e '^persistentvolumeclaim/' -e "^secret/$NAME-credentials\$"
  }
  none_left() { ! children | grep -q .; }
  wait_until 300 none_left ||
    fail "children left after deleting the ChatSystem: $(children | tr '\n' ' ')"
  k -n "$NS" get secret "$NAME-credentials" >/dev/null || fail "the credentials Secret was not retained"
  k -n "$NS" get pvc "$NAME-files" >/dev/null || fail "the files claim was not retained"
  log "every child is gone but the retained claims and credentials; deleting those (the run is over)"
  k -n "$NS" delete pvc -l "app.kubernetes.io/instance=$NAME" --wait=false >/dev/null
  k -n "$NS" delete secret "$NAME-credentials" >/dev/null
fi

if ((DRY_RUN)); then
  if ((${#missing[@]} > 0)); then
    log "dry run done; NOT ready to run here, missing: ${missing[*]}"
  else
    log "dry run done; every prerequisite is there"
  fi
else
  log "kind end-to-end run passed"
fi
