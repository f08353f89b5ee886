#!/usr/bin/env bash
# Drop what test runs leave in the shared servers: databases, indices and queues named
# chatmesh_t_* / chatmesh-t-* (each test makes its own). Idle, they still cost Elasticsearch
# and RabbitMQ work that a benchmark would count. Servers that are not up are skipped.
set -uo pipefail
es="${CHATMESH_TEST_ES_URL:-http://127.0.0.1:9200}"
curl -fsS -m 30 -X DELETE "$es/chatmesh_t_*" >/dev/null 2>&1 || true
mariadb -h127.0.0.1 -uchatmesh -pchatmesh -N -e "SHOW DATABASES LIKE 'chatmesh\_t\_%'" 2>/dev/null |
  while read -r db; do mariadb -h127.0.0.1 -uchatmesh -pchatmesh -e "DROP DATABASE \`$db\`"; done || true
ctl=(/usr/lib/rabbitmq/bin/rabbitmqctl -n rabbit@localhost -q)
# rabbitmqctl reads stdin: without </dev/null the first delete would swallow the list.
ERL_EPMD_ADDRESS=127.0.0.1 "${ctl[@]}" list_queues name 2>/dev/null </dev/null | grep -E '^chatmesh[-_]t' |
  while read -r q; do ERL_EPMD_ADDRESS=127.0.0.1 "${ctl[@]}" delete_queue "$q" </dev/null >/dev/null; done || true
