#!/usr/bin/env bash
# Start a throw-away RabbitMQ on 127.0.0.1:5672 (user guest/guest, which
# RabbitMQ allows from loopback only). Idempotent: a no-op when 5672 is open.
set -euo pipefail
INFRA_NAME=rabbitmq
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=5672
DIR="$INFRA_DIR/rabbitmq"
LOG="$DIR/rabbitmq-server.log"
# The /usr/sbin wrappers `su` to the rabbitmq user, which cannot reach our
# dirs under root's HOME: call the real scripts as ourselves.
BIN=/usr/lib/rabbitmq/bin

# rabbit@localhost rather than rabbit@$(hostname): the machine's hostname may
# not resolve. Everything (epmd, Erlang distribution, AMQP) binds loopback
# only. The Erlang cookie is $HOME/.erlang.cookie, made on first start and
# shared by rabbitmqctl since it runs as the same user.
export RABBITMQ_NODENAME=rabbit@localhost \
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT="$PORT" \
  RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
  RABBITMQ_LOG_BASE="$DIR/log" \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
  ERL_EPMD_ADDRESS=127.0.0.1
# Classic queues with the version-2 index, as in the RabbitMQ 4.x the operator deploys (where
# it is the only one); 3.10 from Debian defaults to version 1, whose confirms stall for far
# longer under load (`bench.sh ceiling`).
export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"

if [[ ! -x "$BIN/rabbitmq-server" ]]; then
  apt_install rabbitmq-server
fi
mkdir -p "$DIR"
echo "classic_queue.default_version = 2" >"$DIR/rabbitmq.conf"

if port_open 127.0.0.1 "$PORT"; then
  log "already up on 127.0.0.1:$PORT"
else
  log "starting rabbitmq-server (log: $LOG, node logs: $DIR/log)"
  # Foreground mode in the background rather than -detached: -detached
  # closes stdio, so early boot errors would be lost instead of logged.
  start_bg "$LOG" "$BIN/rabbitmq-server"
  # AMQP listeners open only once boot has completed.
  wait_up 120 port_open 127.0.0.1 "$PORT" ||
    die "rabbitmq did not come up on port $PORT within 120 s" "$LOG"
  "$BIN/rabbitmqctl" -q await_startup --timeout 60 >>"$LOG" 2>&1 ||
    die "rabbitmqctl await_startup failed" "$LOG"
fi

echo "export CHATMESH_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$PORT/%2f"
