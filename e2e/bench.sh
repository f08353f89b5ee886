#!/usr/bin/env bash
# Benchmarks, not tests: send->push latency percentiles, stored messages/s and gateway memory per
# idle WebSocket, against a release build of `chatmesh --target all`.
#
#   bash e2e/bench.sh standalone     # SQLite, in-process queue, embedded search
#   bash e2e/bench.sh full           # MariaDB, Redis, RabbitMQ, Elasticsearch (e2e/infra)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-standalone}"
rate="${RATE:-1000}"
duration="${DURATION:-20s}"
burst="${BURST:-10000}"
idle="${IDLE:-10000}"

ulimit -n 20000 # the machine's ceiling; 10k idle sockets need it on both sides
cargo build --release --locked -p chatmesh -p chatmesh-e2e --bin chatmesh --bin chatmesh-load >&2
bin=target/release
dir="$(mktemp -d)"
args=(--target all --data-dir "$dir" --log warn --http-listen 127.0.0.1:19000 --ws-listen 127.0.0.1:19001
  --admin-listen 127.0.0.1:19100 --user-listen 127.0.0.1:19003 --user-addr http://127.0.0.1:19003
  --file-listen 127.0.0.1:19002 --file-addr http://127.0.0.1:19002 --friend-listen 127.0.0.1:19006
  --friend-addr http://127.0.0.1:19006 --transmit-listen 127.0.0.1:19004 --transmit-addr http://127.0.0.1:19004
  --message-listen 127.0.0.1:19005 --message-addr http://127.0.0.1:19005 --sms-provider log)
if [[ "$mode" == full ]]; then
  eval "$(bash e2e/infra/up.sh mariadb redis rabbitmq elasticsearch)"
  db="chatmesh_bench_$RANDOM"
  mariadb -h127.0.0.1 -uchatmesh -pchatmesh -e "CREATE DATABASE $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  args+=(--database-url "$CHATMESH_TEST_MYSQL_URL/$db" --redis-url "$CHATMESH_TEST_REDIS_URL" --redis-namespace "$db"
    --amqp-url "$CHATMESH_TEST_AMQP_URL" --amqp-queue "$db" --search-url "$CHATMESH_TEST_ES_URL"
    --search-index-prefix "$db")
fi
"$bin/chatmesh" "${args[@]}" >"$dir/chatmesh.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || { echo "chatmesh died; its log:" >&2; tail -20 "$dir/chatmesh.log" >&2; }; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs 127.0.0.1:19100/readyz >/dev/null && break; sleep 0.2; done

load=("$bin/chatmesh-load" --http http://127.0.0.1:19000 --ws ws://127.0.0.1:19001)
echo "== $mode: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== latency at $rate msg/s for $duration"
"${load[@]}" messages --rate "$rate" --duration "$duration"
echo "== storage throughput: a burst offered at $burst msg/s for 5s"
"${load[@]}" messages --rate "$burst" --duration 5s --concurrency 512
echo "== memory per idle WebSocket ($idle connections)"
"${load[@]}" idle --connections "$idle" --gateway-pid "$pid"
