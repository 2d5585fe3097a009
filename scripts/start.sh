#!/usr/bin/env bash
# npm start [-- --prepare-only]: the two-node demo network on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-system-deps.sh
# Install dependencies when node_modules is missing or older than the lockfile
# (npm records the installed tree in node_modules/.package-lock.json).
installed=node_modules/.package-lock.json
[ -e "$installed" ] || installed=node_modules
if [ ! -d node_modules ] || [ package-lock.json -nt "$installed" ]; then
  npm ci
fi
npm run build
exec node dist/src/demo/run.js "$@"
