#!/usr/bin/env bash
# Installs the test peers the identity tests need: node + npm (Debian, only if absent), and the
# npm `oidc-provider` issuer into tests/peers/oidc/node_modules (from package-lock.json).
# Idempotent; run as root by `cargo xtask setup`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[peers] %s\n' "$*" >&2; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "apt-get install nodejs npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
for tool in curl openssl; do
  if ! command -v "$tool" >/dev/null; then
    log "apt-get install $tool"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" ca-certificates >/dev/null
  fi
done

if [ -f "$here/oidc/node_modules/oidc-provider/package.json" ]; then
  log "oidc-provider already installed in $here/oidc"
else
  log "npm ci (oidc-provider) in $here/oidc"
  (cd "$here/oidc" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Headless Chromium driver for the approvals page test (Chromium itself is a Debian package).
if [ -f "$here/browser/node_modules/playwright-core/package.json" ]; then
  log "playwright-core already installed in $here/browser"
else
  log "npm ci (playwright-core) in $here/browser"
  (cd "$here/browser" && npm ci --no-audit --no-fund --loglevel=error)
fi
