#!/bin/bash
# The official MariaDB image's first-start behaviour, reduced to what the chatmesh operator uses.
set -euo pipefail
if [[ $# -eq 0 || "${1:0:1}" == - ]]; then set -- mariadbd "$@"; fi
DATADIR=/var/lib/mysql
if [[ "$1" == mariadbd && ! -d "$DATADIR/mysql" ]]; then
  : "${MARIADB_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD is required}"
  echo "entrypoint: initialising $DATADIR"
  mariadb-install-db --datadir="$DATADIR" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve >/dev/null
  "$@" --skip-networking --socket=/run/mysqld/mysqld.sock &
  pid=$!
  for _ in $(seq 60); do mariadb-admin -uroot ping >/dev/null 2>&1 && break; sleep 1; done
  sql_escape() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }
  root_pw="$(sql_escape "$MARIADB_ROOT_PASSWORD")"
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$root_pw';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$root_pw';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [[ -n "${MARIADB_DATABASE:-}" ]]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
    fi
    if [[ -n "${MARIADB_USER:-}" && -n "${MARIADB_PASSWORD:-}" ]]; then
      echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(sql_escape "$MARIADB_PASSWORD")';"
      [[ -n "${MARIADB_DATABASE:-}" ]] && echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb -uroot
  mariadb-admin -uroot -p"$MARIADB_ROOT_PASSWORD" shutdown
  wait "$pid" || true
  echo "entrypoint: initialised"
fi
exec "$@"
