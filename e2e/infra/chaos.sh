#!/usr/bin/env bash
# Usage: bash e2e/infra/chaos.sh start|kill|restart|stop|freeze|thaw|pid <server>
#   server: mariadb | redis | rabbitmq | elasticsearch
# Dedicated instances of the test servers for the chaos tests (e2e/tests/chaos.rs), which kill
# them with SIGKILL. They never touch the shared servers of the other scripts: their own names,
# ports (32300-32700: below the ephemeral range and above the ports the tests pick; 9250 for
# Elasticsearch, whose runner takes no HTTP port above 9299) and
# directories under $INFRA_DIR/chaos/<server>.
#   start    idempotent; prints the `export CHATMESH_CHAOS_<SERVER>_URL=...` line on stdout
#   kill     SIGKILL to the whole process group (a crash, not a shutdown); waits until it is gone
#   restart  start again after a kill (same data dir: what the server made durable survives)
#   stop     kill, for cleaning up after a test
#   freeze   SIGSTOP to the process group: connections stay open but nothing answers
#   thaw     SIGCONT
#   pid      the process group id, if running
# Needs the packages the shared scripts install (run those first, as e2e/test.sh does).
set -euo pipefail
INFRA_NAME=chaos
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

(($# == 2)) || die "usage: chaos.sh start|kill|restart|stop|freeze|thaw|pid mariadb|redis|rabbitmq|elasticsearch"
ACTION=$1
SERVER=$2
DIR="$INFRA_DIR/chaos/$SERVER"
LOG="$DIR/server.log"
PGID_FILE="$DIR/pgid"
mkdir -p "$DIR"
INFRA_NAME="chaos:$SERVER"

case "$SERVER" in
mariadb)
  PORT=32306
  URL="mysql://chatmesh:chatmesh@127.0.0.1:$PORT"
  SOCK="$DIR/mysqld.sock"
  healthy() {
    mariadb-admin --no-defaults --protocol=tcp -h127.0.0.1 -P"$PORT" -uchatmesh -pchatmesh --connect-timeout=2 ping
  }
  launch() {
    if [[ ! -d "$DIR/data/mysql" ]]; then
      rm -rf "$DIR/data"
      mariadb-install-db --no-defaults --user=root --datadir="$DIR/data" \
        --auth-root-authentication-method=socket --skip-test-db >>"$LOG" 2>&1 ||
        die "mariadb-install-db failed" "$LOG"
    fi
    # A commit is on disk when acknowledged (flush at every commit): the crash is real.
    start_group mariadbd --no-defaults --user=root --datadir="$DIR/data" \
      --socket="$SOCK" --pid-file="$DIR/mariadbd.pid" --bind-address=127.0.0.1 --port="$PORT" \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --innodb-flush-log-at-trx-commit=1 --max-connections=300
    wait_up 120 mariadb-admin --no-defaults --socket="$SOCK" -uroot ping || die "mariadbd did not start" "$LOG"
    mariadb --no-defaults --socket="$SOCK" -uroot >>"$LOG" 2>&1 <<'SQL' || die "could not create user chatmesh" "$LOG"
CREATE USER IF NOT EXISTS 'chatmesh'@'%' IDENTIFIED BY 'chatmesh';
CREATE USER IF NOT EXISTS 'chatmesh'@'localhost' IDENTIFIED BY 'chatmesh';
GRANT ALL PRIVILEGES ON *.* TO 'chatmesh'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'chatmesh'@'localhost';
SQL
  }
  # What earlier runs left: their test databases.
  fresh() {
    mariadb --no-defaults --socket="$SOCK" -uroot -N -e "SHOW DATABASES LIKE 'chatmesh\_t\_%'" 2>/dev/null |
      while read -r db; do mariadb --no-defaults --socket="$SOCK" -uroot -e "DROP DATABASE \`$db\`"; done || true
  }
  ;;
redis)
  PORT=32380
  URL="redis://127.0.0.1:$PORT"
  healthy() { [[ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" == PONG ]]; }
  launch() {
    # Persistent (append-only file, synced at every write) as a production Redis holding
    # login sessions would be, so logins survive the crash. Foreground, in our process group.
    start_group redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" \
      --appendonly yes --appendfsync always --save '' --daemonize no
    wait_up 60 healthy || die "redis did not start" "$LOG"
  }
  fresh() { redis-cli -h 127.0.0.1 -p "$PORT" flushall >/dev/null; }
  ;;
rabbitmq)
  PORT=32672
  URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
  BIN=/usr/lib/rabbitmq/bin
  # Its own node name, ports (AMQP, Erlang distribution) and dirs; epmd is shared, harmlessly.
  export RABBITMQ_NODENAME=chaos@localhost \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$PORT" \
    RABBITMQ_DIST_PORT=32673 \
    RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
    RABBITMQ_LOG_BASE="$DIR/log" \
    RABBITMQ_PID_FILE="$DIR/rabbit.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    ERL_EPMD_ADDRESS=127.0.0.1
  healthy() { port_open 127.0.0.1 "$PORT" && "$BIN/rabbitmqctl" -q -n chaos@localhost await_startup --timeout 5; }
  launch() {
    [[ -f "$DIR/enabled_plugins" ]] || echo '[].' >"$DIR/enabled_plugins"
    start_group "$BIN/rabbitmq-server"
    wait_up 180 port_open 127.0.0.1 "$PORT" || die "rabbitmq did not open port $PORT" "$LOG"
    "$BIN/rabbitmqctl" -q -n chaos@localhost await_startup --timeout 60 >>"$LOG" 2>&1 ||
      die "rabbitmqctl await_startup failed" "$LOG"
  }
  fresh() {
    "$BIN/rabbitmqctl" -n chaos@localhost -q list_queues name 2>/dev/null | grep -E '^chatmesh[-_]t' |
      while read -r q; do "$BIN/rabbitmqctl" -n chaos@localhost -q delete_queue "$q" </dev/null >/dev/null; done || true
  }
  ;;
elasticsearch)
  PORT=9250 # the runner refuses HTTP ports above 9299
  URL="http://127.0.0.1:$PORT"
  healthy() { curl -sf "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null; }
  launch() {
    # The jars the shared script resolved (e2e/infra/elasticsearch.sh runs first).
    local cp_file
    cp_file="$INFRA_DIR/elasticsearch/classpath-$(sha1sum "$HERE/es-runner/pom.xml" | cut -c1-12).txt"
    [[ -s "$cp_file" ]] || die "no $cp_file: run e2e/infra/elasticsearch.sh first"
    mkdir -p "$DIR/conf"
    sed 's/^cluster.name:.*/cluster.name: chatmesh-chaos/' "$HERE/es-runner/elasticsearch.yml" >"$DIR/conf/elasticsearch.yml"
    echo "transport.port: 32300" >>"$DIR/conf/elasticsearch.yml"
    start_group java -Xms384m -Xmx384m \
      -Dfile.encoding=UTF-8 -Djava.locale.providers=SPI,COMPAT \
      -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
      -Dio.netty.recycler.maxCapacityPerThread=0 \
      -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
      -cp "$(cat "$cp_file")" org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner \
      -basePath "$DIR/home" -confPath "$DIR/conf" -numOfNode 1 \
      -baseHttpPort $((PORT - 1)) -clusterName chatmesh-chaos
    wait_up 180 healthy || die "Elasticsearch did not become healthy" "$LOG"
    curl -sf -XPUT -H 'Content-Type: application/json' "$URL/_template/chatmesh-no-replicas" \
      -d '{"index_patterns":["*"],"order":-1,"settings":{"number_of_replicas":0}}' >/dev/null ||
      die "could not install the no-replicas index template" "$LOG"
  }
  fresh() { curl -fsS -X DELETE "$URL/chatmesh_t_*" >/dev/null || true; }
  ;;
*) die "unknown server '$SERVER' (known: mariadb redis rabbitmq elasticsearch)" ;;
esac

# start_group CMD...: start_bg, remembering the new process group (setsid made it) for kill.
start_group() {
  start_bg "$LOG" "$@"
  echo "$BG_PID" >"$PGID_FILE"
}

running() { [[ -s "$PGID_FILE" ]] && kill -0 -- "-$(cat "$PGID_FILE")" 2>/dev/null; }

kill_group() {
  running || return 0
  local pgid
  pgid=$(cat "$PGID_FILE")
  log "SIGKILL to process group $pgid"
  kill -9 -- "-$pgid" 2>/dev/null || true
  wait_until 20 bash -c "! kill -0 -- -$pgid" || die "process group $pgid survived SIGKILL"
  rm -f "$PGID_FILE"
}

case "$ACTION" in
start | restart)
  if running && healthy >/dev/null 2>&1; then
    log "already up on 127.0.0.1:$PORT"
  else
    kill_group
    port_open 127.0.0.1 "$PORT" && die "port $PORT is taken by a process that is not ours"
    log "starting (log: $LOG)"
    launch
  fi
  # A new test begins (not a restart in the middle of one): drop what earlier tests left.
  [[ "$ACTION" == start ]] && fresh
  echo "export CHATMESH_CHAOS_${SERVER^^}_URL=$URL"
  ;;
kill | stop) kill_group ;;
freeze) running && kill -STOP -- "-$(cat "$PGID_FILE")" ;;
thaw) running && kill -CONT -- "-$(cat "$PGID_FILE")" ;;
pid) running && cat "$PGID_FILE" ;;
*) die "unknown action '$ACTION' (start|kill|restart|stop|pid)" ;;
esac
