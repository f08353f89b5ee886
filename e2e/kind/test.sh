#!/usr/bin/env bash
# The kind end-to-end suite in one command, air-gapped (e2e/kind/airgap/README.md): builds
# everything the cluster needs from package registries (e2e/kind/airgap/build.sh), then runs
# e2e/kind/run.sh on it. Stops at the first failure, with that step's own message; prints the
# time of every step of both at the end. Arguments go to run.sh (--keep).
#
#   bash e2e/kind/test.sh            # the same as the two-step form:
#   eval "$(bash e2e/kind/airgap/build.sh)" && bash e2e/kind/run.sh
set -euo pipefail
INFRA_NAME=kind-test
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../infra/lib.sh
source "$ROOT/e2e/infra/lib.sh"
CACHE="${CHATMESH_CACHE:-$HOME/.cache/chatmesh}"
started=$SECONDS

env_file="$(mktemp)"
trap 'rm -f "$env_file"' EXIT
log "building (e2e/kind/airgap/build.sh; logs in $CACHE/airgap/logs)"
if ! bash "$ROOT/e2e/kind/airgap/build.sh" >"$env_file"; then
  die "the air-gapped build failed (its message is above); the suite did not run"
fi
build_seconds=$((SECONDS - started))
# shellcheck disable=SC1090 # build.sh's exports
source "$env_file"

run_started=$SECONDS
rc=0
bash "$ROOT/e2e/kind/run.sh" "$@" || rc=$?

log "times of this run (each step's own time; 0-1 s: up to date):"
{
  echo "build.sh ($build_seconds s):"
  sed 's/^/  /' "$CACHE/airgap/logs/times.txt" 2>/dev/null || true
  echo "run.sh ($((SECONDS - run_started)) s):"
  sed 's/^/  /' "$CACHE/kind/${CHATMESH_KIND_CLUSTER:-chatmesh-e2e}/times.txt" 2>/dev/null || true
  echo "total: $((SECONDS - started)) s"
} >&2
((rc == 0)) || die "e2e/kind/run.sh failed (its message is above)"
log "the kind suite passed"
