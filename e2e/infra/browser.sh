#!/usr/bin/env bash
# The web client's test tools: Debian's Chromium (browser downloads from tool CDNs do not work
# here, so Playwright drives this one), Node.js + npm (Debian's, unless a Node is already
# installed), and web/'s locked npm packages (`npm ci`). Idempotent.
# Prints `export CHROMIUM_PATH=...` on stdout; diagnostics on stderr.
set -euo pipefail
INFRA_NAME=browser
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WEB="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../web" && pwd)"

command -v chromium >/dev/null || apt_install chromium
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
# Vite needs Node 20.19+ (Debian 13's nodejs; Debian 12's is too old: install a newer Node).
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
  die "Node $(node --version) is too old for the web client's build (needs 20.19 or newer)"

# npm ci only when the lockfile changed since the last install (it deletes node_modules first).
stamp="$WEB/node_modules/.chatmesh-lock.sha256"
want="$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "npm ci in web/"
  (cd "$WEB" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2) || die "npm ci failed in web/"
  echo "$want" >"$stamp"
fi
log "chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version)"
echo "export CHROMIUM_PATH=$(command -v chromium)"
