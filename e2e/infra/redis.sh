#!/usr/bin/env bash
# Start a throw-away, non-persistent Redis on 127.0.0.1:6379.
# Idempotent: a no-op when something there already answers PING.
set -euo pipefail
INFRA_NAME=redis
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=6379
DIR="$INFRA_DIR/redis"
LOG="$DIR/redis.log"

redis_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" == PONG ]]; }

command -v redis-server >/dev/null || apt_install redis-server
mkdir -p "$DIR"

if redis_ping; then
  log "already up on 127.0.0.1:$PORT"
else
  port_open 127.0.0.1 "$PORT" && die "port $PORT is taken by something that does not answer PING"
  log "starting redis-server (log: $LOG)"
  # Command-line flags only (no /etc/redis config); --daemonize forks and
  # closes stdio itself (early errors reach our stderr). No persistence:
  # tests must not depend on old data.
  redis-server --daemonize yes --save '' --appendonly no \
    --port "$PORT" --bind 127.0.0.1 --dir "$DIR" \
    --logfile "$LOG" --pidfile "$DIR/redis.pid" </dev/null >&2 ||
    die "redis-server failed to start" "$LOG"
  wait_until 120 redis_ping || die "redis did not answer PING within 120 s" "$LOG"
fi

echo "export CHATMESH_TEST_REDIS_URL=redis://127.0.0.1:$PORT"
