#!/usr/bin/env bash
# Usage: eval "$(bash e2e/infra/up.sh mariadb redis [rabbitmq] [elasticsearch] [kube])"
# Starts the named test servers in parallel (each script is idempotent) and
# prints their `export ...` lines on stdout; logs go to stderr.
set -euo pipefail
INFRA_NAME=up
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

(($# > 0)) || die "usage: up.sh {mariadb|redis|rabbitmq|elasticsearch|kube|speech|browser|lint}..."
# Drop duplicates, keeping order: two runs of one script would race.
mapfile -t names < <(printf '%s\n' "$@" | awk '!seen[$0]++')
for name in "${names[@]}"; do
  [[ -f "$HERE/$name.sh" && "$name" != lib && "$name" != up ]] ||
    die "unknown server '$name' (known: mariadb redis rabbitmq elasticsearch kube speech browser lint)"
done

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# Parallel is safe: each uses its own port and dir, and apt runs are
# serialised by a lock in lib.sh.
declare -A pids
for name in "${names[@]}"; do
  bash "$HERE/$name.sh" >"$OUT/$name" &
  pids[$name]=$!
done

failed=()
for name in "${names[@]}"; do
  wait "${pids[$name]}" || failed+=("$name")
done
((${#failed[@]} == 0)) || die "failed to start: ${failed[*]} (see the messages above)"

for name in "${names[@]}"; do cat "$OUT/$name"; done
