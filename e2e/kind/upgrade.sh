# shellcheck shell=bash disable=SC2153 # NAME, IMAGE, ...: run.sh's settings
# The upgrade steps of the kind run (issue 13), sourced by run.sh, whose helpers they use (step,
# run, k, log, fail, wait_settled, short_scenario, build_image and its settings):
#
#   upgrade      to <tag>-next, which carries one test-only migration (e2e/kind/next-migration/):
#                a real schema change, after a backup
#   rollback     the documented path (operator/README.md, "Upgrades"): paused, the pre-upgrade
#                backup restored, the old tag pinned, unpaused: the old migration Job succeeds,
#                the services run the old image with the pre-upgrade history
#
# The checks that talk to the system are the tests of e2e/tests/kind_day2.rs.
# `CHATMESH_KIND_STEPS=upgrade run.sh --keep` runs only these steps (after the install).

DAY2_HISTORY="$WORK/day2-history.json"
DAY2_SERVICES="app.kubernetes.io/instance=$NAME,app.kubernetes.io/part-of=chatmesh"
DAY2_SERVICE_PODS="$DAY2_SERVICES,app.kubernetes.io/component in (gateway,user,friend,file,message,transmit,speech)"

# upgrade_test TEST [VAR=VALUE...]: one test of e2e/tests/kind_day2.rs against the NodePort gateway.
upgrade_test() {
  local name=$1 out="$WORK/day2-$1.log"
  shift
  if ((DRY_RUN)); then
    printf '  $ %s\n' "$* cargo test -p chatmesh-e2e --test kind_day2 -- --exact $name"
    return
  fi
  env "$@" CHATMESH_E2E_GATEWAY_HTTP="http://127.0.0.1:$HTTP_PORT" CHATMESH_E2E_GATEWAY_WS="ws://127.0.0.1:$WS_PORT" \
    cargo test -p chatmesh-e2e --locked --test kind_day2 -- --exact "$name" --nocapture 2>&1 | tee "$out" >&2 ||
    fail "kind_day2::$name failed (output: $out)"
  grep -q '^test result: ok. 1 passed' "$out" || fail "kind_day2::$name did not run (output: $out)"
}

# day2_sql SQL: one statement in the managed MariaDB's chatmesh database, as root; prints the rows.
day2_sql() {
  # shellcheck disable=SC2016 # expanded in the pod
  k -n "$NS" exec "$NAME-mysql-0" -- sh -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb --user=root -N -B chatmesh -e "$1"' \
    sh "$1"
}

# day2_backup JOB: runs the backup CronJob now as JOB; sets DAY2_DUMP to the dump it wrote.
day2_backup() {
  run "$KUBECTL" -n "$NS" create job --from="cronjob/$NAME-backup" "$1"
  ((DRY_RUN)) && return
  k -n "$NS" wait --for=condition=complete "job/$1" --timeout=10m >&2 || fail "the backup job $1 did not complete"
  # The job lists the claim after its dump; the names sort by time, the newest is this one's.
  DAY2_DUMP="$(k -n "$NS" logs "job/$1" | grep -oE 'chatmesh-[0-9]{8}T[0-9]{6}Z\.sql\.gz' | tail -1)"
  [[ -n "$DAY2_DUMP" ]] || fail "the backup job $1 names no dump in its log"
  log "backup $1 wrote $DAY2_DUMP"
}

# day2_restore_job DUMP: the restore Job of operator/README.md ("Backups"), for this system.
day2_restore_job() {
  local image
  image="$(k -n "$NS" get statefulset "$NAME-mysql" -o jsonpath='{.spec.template.spec.containers[0].image}')"
  cat <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $NAME-restore}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {app.kubernetes.io/name: chatmesh, app.kubernetes.io/instance: $NAME, app.kubernetes.io/component: backup}
    spec:
      restartPolicy: Never
      securityContext: {runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true}
      containers:
        - name: restore
          image: $image
          command: ["/bin/sh", "-c", "gunzip -c /backups/\$DUMP | mariadb --host=$NAME-mysql --user=root"]
          env:
            - {name: DUMP, value: $1}
            - name: MYSQL_PWD
              valueFrom: {secretKeyRef: {name: $NAME-credentials, key: mysql-root-password}}
          volumeMounts: [{name: backups, mountPath: /backups, readOnly: true}]
      volumes: [{name: backups, persistentVolumeClaim: {claimName: $NAME-backups}}]
EOF
}

observed() { # the operator has seen the latest spec
  [[ "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.metadata.generation}')" == \
    "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.status.observedGeneration}')" ]]
}
no_service_pods() { ! k -n "$NS" get pods -l "$DAY2_SERVICE_PODS" -o name | grep -q .; }

# day2_restore DUMP: the documented restore, up to (not including) the unpause: paused, the
# services scaled to 0, the restore Job run.
day2_restore() {
  run "$KUBECTL" -n "$NS" patch chat "$NAME" --type merge -p '{"spec":{"paused":true}}'
  ((DRY_RUN)) || wait_until 120 observed || fail "the operator did not see spec.paused"
  run "$KUBECTL" -n "$NS" scale deploy -l "$DAY2_SERVICES" --replicas=0
  if ((DRY_RUN)); then
    run "$KUBECTL" -n "$NS" apply -f restore.yaml
    return
  fi
  wait_until 300 no_service_pods || fail "the services' pods did not stop"
  day2_restore_job "$1" >"$WORK/restore.yaml"
  k -n "$NS" delete job "$NAME-restore" --ignore-not-found >&2
  k -n "$NS" apply -f "$WORK/restore.yaml" >&2
  k -n "$NS" wait --for=condition=complete "job/$NAME-restore" --timeout=30m >&2 ||
    fail "the restore job failed: $(k -n "$NS" logs "job/$NAME-restore" --tail=20 2>&1)"
  # Not a child of the ChatSystem (step 14 checks that none is left): deleted when done.
  k -n "$NS" delete job "$NAME-restore" --cascade=foreground >&2
  log "restored $1"
}

migrations() { day2_sql "SELECT version FROM _sqlx_migrations ORDER BY version" | tr '\n' ' '; }
next_column() {
  day2_sql "SELECT COUNT(*) FROM information_schema.columns
    WHERE table_schema = 'chatmesh' AND table_name = 'message' AND column_name = 'kind_next_note'"
}
runs_image() { # runs_image IMAGE: every Deployment of the system and status.version
  local dep
  [[ "$(k -n "$NS" get chatsystem "$NAME" -o jsonpath='{.status.version}')" == "${1##*:}" ]] ||
    fail "status.version is not ${1##*:}"
  for dep in $(k -n "$NS" get deploy -l "app.kubernetes.io/instance=$NAME" -o name); do
    [[ "$(k -n "$NS" get "$dep" -o jsonpath='{.spec.template.spec.containers[0].image}')" == "$1" ]] ||
      fail "$dep is not on $1"
  done
}

upgrade_to_next() {
  step "upgrade to $NEXT_TAG: a real schema change (e2e/kind/next-migration/), after a backup"
  if ((PREBUILT)); then
    ((DRY_RUN)) || docker image inspect "$IMAGE:$NEXT_TAG" >/dev/null 2>&1 ||
      fail "no image $IMAGE:$NEXT_TAG (e2e/kind/airgap/build.sh apps builds it)"
  else
    local plain=("${build_args[@]}")
    build_args+=(--build-arg CARGO_FEATURES=chatmesh-common/kind-next-migration)
    build_image services/chatmesh/Dockerfile "$IMAGE:$NEXT_TAG"
    build_args=("${plain[@]}")
  fi
  run "$KIND" load docker-image --name "$CLUSTER" "$IMAGE:$NEXT_TAG"
  upgrade_test record_history CHATMESH_E2E_KIND_HISTORY="$DAY2_HISTORY"
  # The rollback's way back (operator/README.md, "Upgrades", step 1).
  day2_backup "$NAME-pre-upgrade"
  DAY2_PRE_UPGRADE_DUMP="${DAY2_DUMP:-chatmesh-<time>.sql.gz}"
  ((DRY_RUN)) || DAY2_MIGRATIONS="$(migrations)"
  run "$KUBECTL" -n "$NS" patch chatsystem "$NAME" --type merge -p "{\"spec\":{\"image\":{\"tag\":\"$NEXT_TAG\"}}}"
  ((DRY_RUN)) && return
  wait_settled "image $NEXT_TAG"
  runs_image "$IMAGE:$NEXT_TAG"
  [[ "$(next_column)" == 1 ]] || fail "the -next migration did not add message.kind_next_note"
  [[ "$(migrations)" == "${DAY2_MIGRATIONS}9000 " ]] ||
    fail "_sqlx_migrations after the upgrade: $(migrations) (before: $DAY2_MIGRATIONS)"
  log "schema changed: migrations $(migrations)"
  short_scenario
  # Sent on the new version, after the backup: the rollback loses it (as documented).
  upgrade_test record_history_to_lose CHATMESH_E2E_KIND_HISTORY="$DAY2_HISTORY"
}

old_migration_succeeded() {
  k -n "$NS" get jobs -l "app.kubernetes.io/instance=$NAME,app.kubernetes.io/component=migrate" \
    -o jsonpath='{range .items[*]}{.spec.template.spec.containers[0].image} {.status.succeeded}{"\n"}{end}' |
    grep -qx "$IMAGE:$TAG 1"
}

upgrade_rollback() {
  step "roll back to $TAG: paused, the pre-upgrade backup restored, $TAG pinned, unpaused"
  day2_restore "${DAY2_PRE_UPGRADE_DUMP:-chatmesh-<time>.sql.gz}"
  run "$KUBECTL" -n "$NS" patch chat "$NAME" --type merge -p "{\"spec\":{\"image\":{\"tag\":\"$TAG\"}}}"
  run "$KUBECTL" -n "$NS" patch chat "$NAME" --type merge -p '{"spec":{"paused":false}}'
  ((DRY_RUN)) && return
  wait_settled "rolled back to $TAG"
  old_migration_succeeded || fail "no succeeded migration Job of $IMAGE:$TAG"
  runs_image "$IMAGE:$TAG"
  [[ "$(next_column)" == 0 ]] || fail "message.kind_next_note is still there after the restore"
  [[ "$(migrations)" == "$DAY2_MIGRATIONS" ]] ||
    fail "_sqlx_migrations after the rollback: $(migrations) (before the upgrade: $DAY2_MIGRATIONS)"
  log "rolled back: the old migration Job succeeded, migrations $(migrations)"
  upgrade_test history_is_back CHATMESH_E2E_KIND_HISTORY="$DAY2_HISTORY"
  short_scenario
}

# CHATMESH_KIND_STEPS=upgrade: after the install, the tests compiled and an account for the short
# scenarios (step 6's), then the upgrade steps alone.
upgrade_only() {
  if ((!DRY_RUN)); then
    phase "compile the end-to-end tests (started in the background before step 1)"
    wait "$CARGO_BUILD_PID" || { CARGO_BUILD_PID=""; die "compiling the end-to-end tests failed" "$WORK/cargo-build.log"; }
    CARGO_BUILD_PID=""
    curl -sf "http://127.0.0.1:$HTTP_PORT/service/user/username_register" -H 'content-type: application/json' \
      -d "{\"request_id\":\"kind\",\"nickname\":\"$KEEPER\",\"password\":\"keeper_pass1\"}" | grep -q '"success":true' ||
      fail "could not register $KEEPER"
  fi
  upgrade_steps
}

upgrade_steps() {
  upgrade_to_next
  upgrade_rollback
}
