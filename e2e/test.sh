#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts the real servers the tests talk
# to (on loopback), then runs every test with the real-backend cases required, not skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash e2e/infra/up.sh mariadb redis)"
export CHATMESH_REQUIRE_REAL_BACKENDS=1

cargo fmt --all --check
cargo test --workspace --locked "$@"
