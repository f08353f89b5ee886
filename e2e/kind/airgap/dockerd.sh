#!/usr/bin/env bash
# Docker on a machine without systemd whose VM withholds CAP_SYS_RESOURCE: installs docker.io
# (Debian) when dockerd is missing, installs runc-wrapper (next to this script) as dockerd's
# default runtime in /etc/docker/daemon.json, and starts dockerd in the background (log:
# ~/.cache/chatmesh/airgap/dockerd.log). Idempotent: a no-op when `docker info` answers and the
# wrapper is the default runtime. `--check [IMAGE]` starts a privileged container afterwards,
# from IMAGE (e.g. chatmesh-airgap/debian:trixie) or, without one, from the host's /usr.
set -euo pipefail
INFRA_NAME=airgap-dockerd
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=../../infra/lib.sh
source "$HERE/../../infra/lib.sh"
CACHE="${CHATMESH_CACHE:-$HOME/.cache/chatmesh}/airgap"
WRAPPER=/usr/local/libexec/chatmesh/runc-wrapper
RUNTIME=chatmesh-runc
mkdir -p "$CACHE"

# Debian's client and daemon, by path: another docker client on PATH (e.g. Docker 28's, which
# needs buildx for BuildKit builds) does not count.
DOCKER=/usr/bin/docker
[[ -x /usr/sbin/dockerd && -x "$DOCKER" ]] || apt_install docker.io containerd runc iptables jq
command -v jq >/dev/null || apt_install jq
install -D -m 0755 "$HERE/runc-wrapper" "$WRAPPER"

want="$(jq -n --arg rt "$RUNTIME" --arg path "$WRAPPER" \
  '{"runtimes": {($rt): {"path": $path}}, "default-runtime": $rt, "storage-driver": "overlay2"}')"
mkdir -p /etc/docker
changed=0
if [[ ! -f /etc/docker/daemon.json ]] || [[ "$(jq -S . /etc/docker/daemon.json)" != "$(jq -S . <<<"$want")" ]]; then
  [[ -f /etc/docker/daemon.json ]] && cp /etc/docker/daemon.json "/etc/docker/daemon.json.bak.$(date +%s)"
  printf '%s\n' "$want" >/etc/docker/daemon.json
  changed=1
fi

running() { "$DOCKER" info >/dev/null 2>&1; }
if running && ((changed)); then
  log "daemon.json changed: restarting dockerd"
  pid="$(cat /var/run/docker.pid)"
  kill "$pid"
  wait_until 60 bash -c "! kill -0 $pid" || die "dockerd ($pid) did not stop"
fi
# A dockerd that died without cleaning up (the machine was stopped, say) leaves its pid file,
# and a new one then refuses to start.
if ! running && [[ -f /var/run/docker.pid ]] &&
  [[ "$(cat "/proc/$(cat /var/run/docker.pid)/comm" 2>/dev/null)" != dockerd ]]; then
  log "removing /var/run/docker.pid: no dockerd runs under its pid"
  rm -f /var/run/docker.pid
fi
if ! running; then
  log "starting dockerd (log: $CACHE/dockerd.log)"
  start_bg "$CACHE/dockerd.log" dockerd
  wait_up 60 "$DOCKER" info || die "dockerd did not start" "$CACHE/dockerd.log"
fi
[[ "$("$DOCKER" info -f '{{.DefaultRuntime}}')" == "$RUNTIME" ]] || die "dockerd's default runtime is not $RUNTIME"
log "dockerd is up (default runtime $RUNTIME -> $WRAPPER)"

if [[ "${1:-}" == --check ]]; then
  image="${2:-}"
  extra=()
  if [[ -z "$image" ]]; then
    # No image yet (a fresh machine): an empty one that gets the host's /usr, read-only.
    image=chatmesh-airgap/probe:1
    extra=(-v /usr:/usr:ro)
    if ! "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
      probe="$(mktemp -d)"
      mkdir -p "$probe/usr" "$probe/proc" "$probe/sys" "$probe/dev" "$probe/etc"
      for link in bin sbin lib lib64; do ln -s "usr/$link" "$probe/$link"; done
      tar --numeric-owner -C "$probe" -c . | "$DOCKER" import - "$image" >/dev/null
      rm -rf "$probe"
    fi
  fi
  out="$("$DOCKER" run --rm --privileged "${extra[@]}" "$image" sh -c 'grep CapEff /proc/self/status')" ||
    die "a privileged container from $image does not start"
  log "privileged container from $image ran: $out"
fi
