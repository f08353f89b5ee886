#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts the real servers the tests talk
# to (on loopback), then runs every test with the real-backend cases required, not skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash e2e/infra/up.sh mariadb redis rabbitmq elasticsearch kube speech browser lint)"
export CHATMESH_REQUIRE_REAL_BACKENDS=1

# Each test makes its own databases, indices and queues (chatmesh_t_*): drop those of earlier
# runs, and this run's at the end.
bash e2e/infra/clean.sh
trap 'bash e2e/infra/clean.sh' EXIT

# The linters first: they fail in seconds where the tests take minutes.
# Every shell script under e2e/ and .ci/ (by name or by its #! line).
mapfile -t scripts < <({
  find e2e .ci -type f -name '*.sh'
  grep -rlIE '^#!(/usr/bin/env |/bin/)(ba)?sh' e2e .ci
} | sort -u)
"$CHATMESH_SHELLCHECK" -x "${scripts[@]}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The chaos tests (e2e/tests/chaos.rs) run the real binary, and SIGKILL dedicated instances of
# the servers that they start themselves through e2e/infra/chaos.sh (never the shared ones).
cargo build -p chatmesh --locked
cargo test --workspace --locked "$@"
# The web client in a real Chromium against the debug binary (`--target all`, embedded backends).
CHATMESH_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/chatmesh"
(cd web && npm run build && CHATMESH_BIN="$CHATMESH_BIN" npm test)
CHATMESH_OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/debug/chatmesh-operator" bash e2e/chart-check.sh
