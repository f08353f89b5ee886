#!/usr/bin/env bash
# Day-2 operations on the kind run's ChatSystem, called by the end-to-end tests in
# e2e/tests/cluster.rs in the middle of their scenarios (e2e/kind/run.sh passes this script to
# them as CHATMESH_E2E_DAY2). Each prints diagnostics on stderr; `backup` prints the dump's name.
#
#   day2.sh delete-pods         delete the transmit and message pods (graceful) and wait until
#                               their replacements are ready
#   day2.sh backup [JOB]        run a backup now: a Job (JOB) from the operator's CronJob <name>-backup
#   day2.sh drop-table TABLE    DROP TABLE in the managed MariaDB (the disaster to restore from)
#   day2.sh sql SQL             one statement in the managed MariaDB's chatmesh database; prints the rows
#   day2.sh restore DUMP [--paused]
#                               the restore path of operator/README.md ("Backups"): pause the
#                               ChatSystem, scale its services to 0, run the restore Job, resume
#                               (--paused: stay paused, e.g. to pin the old tag first: the rollback)
#
# Environment (run.sh sets it): KUBECTL, KUBECONFIG, CHATMESH_KIND_NS [chat], CHATMESH_KIND_NAME [chat].
set -euo pipefail
INFRA_NAME=kind-day2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../infra/lib.sh
source "$ROOT/e2e/infra/lib.sh"
KUBECTL="${KUBECTL:-kubectl}"
NS="${CHATMESH_KIND_NS:-chat}"
NAME="${CHATMESH_KIND_NAME:-chat}"
k() { "$KUBECTL" -n "$NS" "$@"; }
sel="app.kubernetes.io/instance=$NAME"

# mysql_exec SQL: as root in the managed MariaDB's pod; prints the rows (tab-separated).
mysql_exec() {
  # shellcheck disable=SC2016 # expanded in the pod
  k exec "$NAME-mysql-0" -- bash -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb --user=root -N -B chatmesh -e "$1"' mysql "$1"
}
# The operator has seen the latest spec (so no pass of an older one scales anything back).
observed() {
  [[ "$(k get chatsystem "$NAME" -o jsonpath='{.metadata.generation}')" == \
    "$(k get chatsystem "$NAME" -o jsonpath='{.status.observedGeneration}')" ]]
}

case "${1:-}" in
  delete-pods)
    pods="$sel,app.kubernetes.io/component in (transmit,message)"
    log "deleting $(k get pods -l "$pods" -o name | tr '\n' ' ')"
    k delete pod -l "$pods" --wait=true >&2
    for d in transmit message; do k rollout status "deploy/$NAME-$d" --timeout=300s >&2; done
    ;;
  backup)
    job="${2:-$NAME-backup-$(date +%s)}"
    k get cronjob "$NAME-backup" >/dev/null || die "no CronJob $NAME-backup (spec.backup unset?)"
    k create job "$job" --from="cronjob/$NAME-backup" >&2
    k wait --for=condition=complete "job/$job" --timeout=300s >&2 || die "the backup Job $job did not complete: $(k logs "job/$job" --tail=20 2>&1)"
    dump="$(k logs "job/$job" | grep -o "chatmesh-[0-9]*T[0-9]*Z\.sql\.gz" | sort | tail -1)"
    [[ -n "$dump" ]] || die "the backup Job's log names no dump: $(k logs "job/$job" 2>&1)"
    log "backup $dump written by job/$job"
    echo "$dump"
    ;;
  drop-table)
    [[ "${2:-}" =~ ^[a-z_]+$ ]] || die "drop-table TABLE (a table name)"
    mysql_exec "DROP TABLE $2"
    log "dropped table $2"
    ;;
  sql)
    [[ -n "${2:-}" ]] || die "sql SQL"
    mysql_exec "$2"
    ;;
  restore)
    [[ "${2:-}" =~ ^chatmesh-[0-9TZ]+\.sql\.gz$ ]] || die "restore DUMP (a dump's file name, from backup)"
    image="$(k get statefulset "$NAME-mysql" -o jsonpath='{.spec.template.spec.containers[0].image}')"
    k patch chatsystem "$NAME" --type merge -p '{"spec":{"paused":true}}' >&2
    wait_until 120 observed || die "the operator did not see spec.paused"
    k scale deploy -l "$sel,app.kubernetes.io/part-of=chatmesh" --replicas=0 >&2
    wait_until 120 bash -c "! $KUBECTL -n $NS get pods -l '$sel,app.kubernetes.io/component in (gateway,user,friend,file,message,transmit,speech)' -o name | grep -q ." ||
      die "the services' pods did not stop"
    job="$NAME-restore-$(date +%s)"
    # The Job of operator/README.md, with this run's names and image.
    k apply -f - >&2 <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $job}
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
            - {name: DUMP, value: $2}
            - name: MYSQL_PWD
              valueFrom: {secretKeyRef: {name: $NAME-credentials, key: mysql-root-password}}
          volumeMounts: [{name: backups, mountPath: /backups, readOnly: true}]
      volumes: [{name: backups, persistentVolumeClaim: {claimName: $NAME-backups}}]
EOF
    k wait --for=condition=complete "job/$job" --timeout=600s >&2 ||
      die "the restore Job $job did not complete: $(k logs "job/$job" --tail=20 2>&1)"
    # (No owner: the Job would outlive the ChatSystem.)
    k delete job "$job" --wait=true >&2
    if [[ "${3:-}" == --paused ]]; then
      log "restored $2 (job/$job, deleted); the ChatSystem stays paused"
    else
      k patch chatsystem "$NAME" --type merge -p '{"spec":{"paused":false}}' >&2
      log "restored $2 (job/$job, deleted); the ChatSystem resumed"
    fi
    ;;
  *) die "usage: day2.sh delete-pods | backup [JOB] | drop-table TABLE | sql SQL | restore DUMP [--paused]" ;;
esac
