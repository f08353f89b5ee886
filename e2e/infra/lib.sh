# shellcheck shell=bash
# Shared helpers for e2e/infra/*.sh (sourced, not run).
# Contract of every script: diagnostics on stderr, exactly one `export ...`
# line on stdout, non-zero exit with the server log's tail on failure.

INFRA_DIR="${CHATMESH_INFRA_DIR:-$HOME/.cache/chatmesh/infra}"
mkdir -p "$INFRA_DIR"

log() { printf '[infra:%s] %s\n' "${INFRA_NAME:-?}" "$*" >&2; }

# die MESSAGE [LOGFILE]: fail, showing where the server log is and its tail.
die() {
  log "ERROR: $1"
  if [[ -n "${2:-}" ]]; then
    log "log file: $2 (last 30 lines follow)"
    tail -n 30 "$2" >&2 2>/dev/null || true
  fi
  exit 1
}

# port_open HOST PORT: true if something accepts TCP connections there.
# shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

# wait_until TIMEOUT_S CMD...: poll CMD every 0.5 s; false on timeout.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# apt_install PKG...: apt-get install, serialised with a lock because up.sh
# runs several scripts in parallel and dpkg allows one installer at a time.
# On a fresh machine the package lists may be stale or absent, so on failure
# refresh them once and retry.
apt_install() {
  local apt_log="$INFRA_DIR/apt.log"
  log "installing $* (apt log: $apt_log)"
  if ! (
    flock -w 900 9 || exit 1
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" ||
      { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; }
  ) 9>"$INFRA_DIR/apt.lock" </dev/null >>"$apt_log" 2>&1; then
    die "apt-get install $* failed" "$apt_log"
  fi
}

# start_bg LOGFILE CMD...: start a daemon detached from our stdio and session;
# its pid goes to BG_PID. Its stdout must not be our stdout: callers run us
# inside $(...), which would otherwise wait for the daemon to exit. It runs in
# its log's directory, not ours: a daemon outlives the checkout that started it
# (RabbitMQ's stop_app fails with enoent once its working directory is gone).
# CMD's paths must be absolute.
BG_PID=
start_bg() {
  local logfile=$1
  shift
  (cd "$(dirname "$logfile")" && exec setsid "$@" </dev/null >>"$logfile" 2>&1) &
  BG_PID=$!
}

# wait_up TIMEOUT_S CMD...: like wait_until, but gives up at once if the
# process started by start_bg has died.
wait_up() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    kill -0 "$BG_PID" 2>/dev/null || { log "server process $BG_PID exited"; return 1; }
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}
