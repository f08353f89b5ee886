#!/usr/bin/env bash
# Drop what runs leave in the shared servers: the databases, indices, queues and Redis keys
# whose names start with one of the given prefixes (default: the tests', chatmesh_t_ and
# chatmesh-t-, each test making its own). Idle, they still cost Elasticsearch and RabbitMQ work
# that a benchmark would count. Servers that are not up are skipped.
#   bash e2e/infra/clean.sh [PREFIX...]
set -uo pipefail
(($#)) || set -- chatmesh_t_ chatmesh-t-
es="${CHATMESH_TEST_ES_URL:-http://127.0.0.1:9200}"
ctl=(/usr/lib/rabbitmq/bin/rabbitmqctl -n rabbit@localhost -q)
# rabbitmqctl reads stdin: without </dev/null the first delete would swallow the list.
queues="$(ERL_EPMD_ADDRESS=127.0.0.1 "${ctl[@]}" list_queues name 2>/dev/null </dev/null)"
for prefix in "$@"; do
  curl -fsS -m 30 -X DELETE "$es/$prefix*" >/dev/null 2>&1 || true
  mariadb -h127.0.0.1 -uchatmesh -pchatmesh -N -e "SHOW DATABASES LIKE '${prefix//_/\\_}%'" 2>/dev/null |
    while read -r db; do mariadb -h127.0.0.1 -uchatmesh -pchatmesh -e "DROP DATABASE \`$db\`"; done || true
  redis-cli --scan --pattern "$prefix*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  grep -F -- "$prefix" <<<"$queues" | grep "^$prefix" |
    while read -r q; do ERL_EPMD_ADDRESS=127.0.0.1 "${ctl[@]}" delete_queue "$q" </dev/null >/dev/null; done || true
done
