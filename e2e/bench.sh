#!/usr/bin/env bash
# Benchmarks, not tests: send->push latency percentiles, stored messages/s and gateway memory per
# idle WebSocket, against a release build of `chatmesh --target all`.
#
#   bash e2e/bench.sh standalone     # SQLite, in-process queue, embedded search
#   bash e2e/bench.sh full           # MariaDB, Redis, RabbitMQ, Elasticsearch (e2e/infra)
#   bash e2e/bench.sh tls            # standalone latency, internal mTLS off and on in alternating rounds (ROUNDS=2)
#   bash e2e/bench.sh abuse          # hostile and heavy clients (standalone): memory and push size
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-standalone}"
rate="${RATE:-1000}"
duration="${DURATION:-20s}"
burst="${BURST:-10000}"
idle="${IDLE:-10000}"

ulimit -n 20000 # the machine's ceiling; 10k idle sockets need it on both sides
cargo build --release --locked -p chatmesh -p chatmesh-e2e --bin chatmesh --bin chatmesh-load >&2
bin="${CARGO_TARGET_DIR:-target}/release"
dir="$(mktemp -d)"
args=(--target all --data-dir "$dir" --log warn --http-listen 127.0.0.1:19000 --ws-listen 127.0.0.1:19001
  --admin-listen 127.0.0.1:19100 --user-listen 127.0.0.1:19003 --user-addr http://127.0.0.1:19003
  --file-listen 127.0.0.1:19002 --file-addr http://127.0.0.1:19002 --friend-listen 127.0.0.1:19006
  --friend-addr http://127.0.0.1:19006 --transmit-listen 127.0.0.1:19004 --transmit-addr http://127.0.0.1:19004
  --message-listen 127.0.0.1:19005 --message-addr http://127.0.0.1:19005 --sms-provider log
  --speech-listen 127.0.0.1:19007 --speech-addr http://127.0.0.1:19007
  # One user holds the idle sockets; one address makes every login.
  --ws-max-devices 20000 --login-per-ip 0)
if [[ "$mode" == full ]]; then
  eval "$(bash e2e/infra/up.sh mariadb redis rabbitmq elasticsearch)"
  db="chatmesh_bench_$RANDOM"
  mariadb -h127.0.0.1 -uchatmesh -pchatmesh -e "CREATE DATABASE $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  args+=(--database-url "$CHATMESH_TEST_MYSQL_URL/$db" --redis-url "$CHATMESH_TEST_REDIS_URL" --redis-namespace "$db"
    --amqp-url "$CHATMESH_TEST_AMQP_URL" --amqp-queue "$db" --search-url "$CHATMESH_TEST_ES_URL"
    --search-index-prefix "$db")
fi
pid=
start() {
  "$bin/chatmesh" "${args[@]}" "$@" >"$dir/chatmesh.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs 127.0.0.1:19100/readyz >/dev/null && return; sleep 0.2; done
  echo "chatmesh did not start; its log:" >&2
  tail -20 "$dir/chatmesh.log" >&2
  exit 1
}
trap '[[ -z $pid ]] || kill $pid 2>/dev/null || { echo "chatmesh died; its log:" >&2; tail -20 "$dir/chatmesh.log" >&2; }; rm -rf "$dir"' EXIT

load=("$bin/chatmesh-load" --http http://127.0.0.1:19000 --ws ws://127.0.0.1:19001)
echo "== $mode: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [[ "$mode" == tls ]]; then
  # A CA and one certificate naming every service, as the operator issues them.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  sans="DNS:localhost,IP:127.0.0.1"
  for s in gateway user friend file message transmit speech; do sans+=",URI:spiffe://chatmesh.io/service/$s"; done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench -keyout "$dir/tls.key" \
    -out "$dir/tls.csr" 2>/dev/null
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile <(echo "subjectAltName=$sans") -out "$dir/tls.crt" 2>/dev/null
  # Alternating rounds, so load from elsewhere on the machine falls on both alike.
  for tls in $(for _ in $(seq "${ROUNDS:-2}"); do echo off on; done); do
    flags=()
    [[ $tls == on ]] && flags=(--tls-cert "$dir/tls.crt" --tls-key "$dir/tls.key" --tls-ca "$dir/ca.crt")
    start "${flags[@]}"
    echo "== internal mTLS $tls: latency at $rate msg/s for $duration"
    "${load[@]}" messages --rate "$rate" --duration "$duration"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    rm -rf "${dir:?}/files" "$dir/chatmesh.db"*
  done
  exit 0
fi
if [[ "$mode" == abuse ]]; then
  start
  "${load[@]}" abuse --gateway-pid "$pid"
  exit 0
fi
start
echo "== latency at $rate msg/s for $duration"
"${load[@]}" messages --rate "$rate" --duration "$duration"
echo "== storage throughput: a burst offered at $burst msg/s for 5s"
"${load[@]}" messages --rate "$burst" --duration 5s --concurrency 512
echo "== memory per idle WebSocket ($idle connections)"
"${load[@]}" idle --connections "$idle" --gateway-pid "$pid"
