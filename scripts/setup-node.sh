#!/usr/bin/env bash
# Installs the Kinesis-compatible servers the integration tests run against, into .tools/
# (gitignored): kinesalite 3.3.3 and kinesis-local 0.6.2 (the kinesis-mock server).
# Idempotent: does nothing when both are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .tools/node_modules/kinesalite/cli.js ] && [ -f .tools/node_modules/kinesis-local/package.json ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup-node.sh: npm is missing: install Node.js (20+) first" >&2; exit 1; }
mkdir -p .tools
npm install --prefix .tools --no-audit --no-fund --no-save --loglevel=error \
  kinesalite@3.3.3 kinesis-local@0.6.2
