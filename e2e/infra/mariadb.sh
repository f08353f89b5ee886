#!/usr/bin/env bash
# Start a throw-away MariaDB on 127.0.0.1:3306 with user chatmesh/chatmesh.
# Idempotent: a no-op when the chatmesh user can already log in there.
set -euo pipefail
INFRA_NAME=mariadb
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=3306
DIR="$INFRA_DIR/mariadb"
DATA="$DIR/data"
SOCK="$DIR/mysqld.sock"
LOG="$DIR/mariadbd.log"
URL="mysql://chatmesh:chatmesh@127.0.0.1:$PORT"

chatmesh_ping() {
  mariadb-admin --no-defaults --protocol=tcp -h127.0.0.1 -P"$PORT" \
    -uchatmesh -pchatmesh --connect-timeout=2 ping
}

command -v mariadbd >/dev/null || apt_install mariadb-server mariadb-client
mkdir -p "$DIR"

if chatmesh_ping >/dev/null 2>&1; then
  log "already up on 127.0.0.1:$PORT"
else
  if port_open 127.0.0.1 "$PORT"; then
    # Someone listens but chatmesh cannot log in: only fixable if it is ours.
    [[ -S "$SOCK" ]] || die "port $PORT is taken by another server (not ours: no $SOCK)"
  else
    if [[ ! -d "$DATA/mysql" ]]; then
      log "initialising $DATA"
      rm -rf "$DATA"
      # --user=root: our data dir lives under root's HOME, which the mysql
      # user cannot reach, and mariadbd refuses to run as root without it.
      mariadb-install-db --no-defaults --user=root --datadir="$DATA" \
        --auth-root-authentication-method=socket --skip-test-db \
        >>"$LOG" 2>&1 || die "mariadb-install-db failed" "$LOG"
    fi
    log "starting mariadbd (log: $LOG)"
    # --no-defaults: ignore /etc/mysql (it points at /var/lib/mysql and
    # /run/mysqld); utf8mb4 explicitly since the built-in default is latin1.
    # Durability is irrelevant for tests, so skip the per-commit fsync.
    start_bg "$LOG" mariadbd --no-defaults --user=root --datadir="$DATA" \
      --socket="$SOCK" --pid-file="$DIR/mariadbd.pid" \
      --bind-address=127.0.0.1 --port="$PORT" \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --innodb-flush-log-at-trx-commit=2 --max-connections=500
    wait_up 120 mariadb-admin --no-defaults --socket="$SOCK" -uroot ping ||
      die "mariadbd did not come up within 120 s" "$LOG"
  fi
  log "creating user chatmesh"
  # Root logs in through the unix socket (socket auth as OS user root).
  mariadb --no-defaults --socket="$SOCK" -uroot >>"$LOG" 2>&1 <<'SQL' ||
CREATE USER IF NOT EXISTS 'chatmesh'@'%' IDENTIFIED BY 'chatmesh';
CREATE USER IF NOT EXISTS 'chatmesh'@'localhost' IDENTIFIED BY 'chatmesh';
ALTER USER 'chatmesh'@'%' IDENTIFIED BY 'chatmesh';
ALTER USER 'chatmesh'@'localhost' IDENTIFIED BY 'chatmesh';
GRANT ALL PRIVILEGES ON *.* TO 'chatmesh'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'chatmesh'@'localhost';
SQL
    die "could not create user chatmesh" "$LOG"
  chatmesh_ping >/dev/null 2>&1 || die "chatmesh cannot log in over TCP" "$LOG"
fi

echo "export CHATMESH_TEST_MYSQL_URL=$URL"
