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

# day2 ARGS: the day-2 operations of e2e/kind/day2.sh (backup, sql, restore) on this system.
day2() {
  KUBECTL="$KUBECTL" CHATMESH_KIND_NS="$NS" CHATMESH_KIND_NAME="$NAME" bash "$ROOT/e2e/kind/day2.sh" "$@"
}
day2_sql() { day2 sql "$1"; }

# day2_backup JOB: runs the backup CronJob now as JOB; sets DAY2_DUMP to the dump it wrote.
day2_backup() {
  if ((DRY_RUN)); then
    run bash e2e/kind/day2.sh backup "$1"
    return
  fi
  DAY2_DUMP="$(day2 backup "$1")" || fail "the backup job $1 failed"
}

# day2_restore DUMP: the documented restore, up to (not including) the unpause.
day2_restore() {
  if ((DRY_RUN)); then
    run bash e2e/kind/day2.sh restore "$1" --paused
    return
  fi
  day2 restore "$1" --paused || fail "restoring $1 failed"
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
