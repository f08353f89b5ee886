# shellcheck shell=bash
# shellcheck disable=SC2317 # the small functions below are called through until_ok
# rbac_check: runs the operator binary ($CHATMESH_OPERATOR_BIN) as the chart's ServiceAccount
# (a token from the TokenRequest API), so it has exactly the chart's RBAC, and takes an example
# ChatSystem through create -> migrated -> Ready -> a change that creates and deletes children
# (ingress added, Redis switched to external, new image: new migration Job, old one deleted).
# Any permission missing shows as a forbidden call: in the operator's log, or as the ChatSystem
# never getting where it must. Sourced by e2e/chart-check.sh, which has installed the chart as
# $RELEASE in $OP_NS watching $APP_NS, and defines k (kubectl), log, die, $WORK, $ROOT.
#
# The API server of e2e/infra/kube.sh has no controllers: like the operator's own tests, this
# writes the Job's and the workloads' status itself.

rbac_check() {
  local sa="$RELEASE-chatmesh-operator" kc="$WORK/operator.kubeconfig" oplog="$WORK/operator.log"
  local token server ca port op_pid
  token="$(k -n "$OP_NS" create token "$sa" --duration=30m)" || die "cannot create a token for $sa"
  server="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(k config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  cat >"$kc" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "$server", certificate-authority-data: "$ca"}
users:
- name: operator
  user: {token: "$token"}
contexts:
- name: operator
  context: {cluster: test, user: operator}
current-context: operator
EOF
  port=18480
  while port_open 127.0.0.1 "$port"; do port=$((port + 1)); done
  log "running $CHATMESH_OPERATOR_BIN as serviceaccount $OP_NS/$sa (log: $oplog)"
  env KUBECONFIG="$kc" CHATMESH_OPERATOR_NAMESPACE="$APP_NS" CHATMESH_OPERATOR_LEASE_NAMESPACE="$OP_NS" \
    CHATMESH_OPERATOR_LISTEN="127.0.0.1:$port" \
    CHATMESH_OPERATOR_LOG=info,chatmesh_operator=debug CHATMESH_OPERATOR_LOG_FORMAT=text CHATMESH_OPERATOR_RESYNC=5s \
    NO_COLOR=1 "$CHATMESH_OPERATOR_BIN" </dev/null >"$oplog" 2>&1 &
  op_pid=$!
  # Stop it however this function ends.
  trap 'kill "$op_pid" 2>/dev/null || true; rm -rf "$WORK"' EXIT

  # The operator must stay up, and never be refused a call.
  alive() {
    kill -0 "$op_pid" 2>/dev/null || die "the operator exited" "$oplog"
    if grep -qi forbidden "$oplog"; then
      grep -i -m 3 forbidden "$oplog" >&2
      die "the operator was refused a call: the chart's RBAC lacks a permission (above)"
    fi
  }
  # until_ok TIMEOUT WHAT CMD...: poll CMD (the operator must stay up meanwhile).
  until_ok() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
      alive
      ((SECONDS < deadline)) || die "timed out waiting for $what" "$oplog"
      sleep 0.5
    done
  }
  ready() { curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; }
  until_ok 60 "the operator's /readyz" ready

  local sel="app.kubernetes.io/instance=chat,app.kubernetes.io/managed-by=chatmesh-operator"
  names() { k -n "$APP_NS" get "$1" -l "$sel" -o name 2>/dev/null; }
  count_is() { [[ "$(names "$1" | grep -c .)" == "$2" ]]; }
  has() { names "$1" | grep -qx "$2"; }
  lacks() { ! has "$@"; }
  # Fails while there is none (a pipe would report head's success).
  job() { names jobs | head -n 1 | grep .; }
  finish_job() {
    local now=2026-01-01T00:00:00Z
    k -n "$APP_NS" patch "$1" --subresource=status --type=merge -p "{\"status\": {\"startTime\": \"$now\",
      \"completionTime\": \"$now\", \"succeeded\": 1, \"conditions\": [
      {\"type\": \"SuccessCriteriaMet\", \"status\": \"True\", \"lastTransitionTime\": \"$now\"},
      {\"type\": \"Complete\", \"status\": \"True\", \"lastTransitionTime\": \"$now\"}]}}" >/dev/null
  }
  mark_ready() {
    local kind name gen n extra
    for kind in deployments statefulsets; do
      extra=""
      [[ $kind == statefulsets ]] && extra=', "currentReplicas": 1'
      while read -r name gen n; do
        [[ -n "$name" ]] || continue
        k -n "$APP_NS" patch "$kind/$name" --subresource=status --type=merge -p "{\"status\": {
          \"observedGeneration\": $gen, \"replicas\": ${n:-1}, \"updatedReplicas\": ${n:-1},
          \"readyReplicas\": ${n:-1}, \"availableReplicas\": ${n:-1}$extra}}" >/dev/null
      done < <(k -n "$APP_NS" get "$kind" -l "$sel" \
        -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.generation} {.spec.replicas}{"\n"}{end}')
    done
  }
  condition() {
    k -n "$APP_NS" get chatsystem chat -o jsonpath="{.status.conditions[?(@.type==\"$1\")].status}"
  }
  is_ready() { [[ "$(condition Ready)" == True ]]; }

  # Create: Secrets, ConfigMap, claim, Services, StatefulSets, the migration Job; the services'
  # Deployments only once the Job succeeded.
  k -n "$APP_NS" apply -f "$ROOT/e2e/examples/chatsystem.yaml" >/dev/null
  until_ok 60 "the migration Job" job
  local first_job
  first_job="$(job)"
  until_ok 30 "4 StatefulSets" count_is statefulsets 4
  finish_job "$first_job"
  until_ok 60 "the 7 service Deployments" count_is deployments 7
  mark_ready
  until_ok 60 "Ready=True" is_ready

  # Change: an Ingress appears, Redis goes external (its StatefulSet and Service are deleted),
  # a new image makes a new migration Job (and the old one is deleted), external Secret read.
  k -n "$APP_NS" create secret generic chat-redis --from-literal=url=redis://redis.example:6379 \
    --dry-run=client -o yaml | k -n "$APP_NS" apply -f - >/dev/null
  k -n "$APP_NS" patch chatsystem chat --type=merge -p '{"spec": {
    "image": {"tag": "rbac-check-2"},
    "gateway": {"ingress": {"host": "chat.example.com"}},
    "redis": {"managed": null, "external": {"urlSecret": {"name": "chat-redis"}}}}}' >/dev/null
  until_ok 60 "the Ingress" has ingresses ingress.networking.k8s.io/chat-public
  until_ok 60 "the managed Redis to be deleted" lacks statefulsets statefulset.apps/chat-redis
  until_ok 60 "the old migration Job to be deleted" lacks jobs "$first_job"
  until_ok 60 "the new migration Job" job
  finish_job "$(job)"
  on_new_image() {
    [[ "$(k -n "$APP_NS" get deploy/chat-gateway -o jsonpath='{.spec.template.spec.containers[0].image}')" == *:rbac-check-2 ]]
  }
  until_ok 60 "the Deployments on the new image" on_new_image
  mark_ready
  until_ok 60 "Ready=True after the change" is_ready

  local events
  events="$(k -n "$APP_NS" get events.events.k8s.io -o name | grep -c .)" || true
  ((events > 0)) || die "the operator recorded no Events" "$oplog"
  if grep -qi forbidden "$oplog"; then die "the operator was refused a call (see 'forbidden' below)" "$oplog"; fi
  [[ "$(condition Degraded)" != True ]] || die "the ChatSystem is Degraded: $(k -n "$APP_NS" get chatsystem chat -o yaml)"
  log "operator: $(grep -c . "$oplog") log lines, $events events, no forbidden call"

  kill "$op_pid" 2>/dev/null || true
  wait "$op_pid" 2>/dev/null || true
  trap 'rm -rf "$WORK"' EXIT
  # No garbage collector here: remove what the pass made.
  k -n "$APP_NS" delete chatsystem chat --wait=false >/dev/null
  k -n "$APP_NS" delete deploy,sts,job,svc,secret,cm,pvc,ingress,networkpolicy -l "$sel" --wait=false >/dev/null
  k -n "$APP_NS" delete secret chat-redis --wait=false >/dev/null
}
