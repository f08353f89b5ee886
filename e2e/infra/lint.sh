#!/usr/bin/env bash
# The linters e2e/test.sh runs besides the tests: shellcheck (apt) and rustup's clippy and
# rustfmt components. Idempotent. Prints one `export ...` line on stdout.
set -euo pipefail
INFRA_NAME=lint
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v shellcheck >/dev/null || apt_install shellcheck
for component in clippy rustfmt; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    log "installing the rustup component $component"
    rustup component add "$component" >&2 || die "rustup component add $component failed"
  fi
done
echo "export CHATMESH_SHELLCHECK=$(command -v shellcheck)"
