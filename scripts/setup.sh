#!/usr/bin/env bash
# Shared by `npm start` and `npm test`: system packages, npm dependencies (when
# node_modules is missing or older than the lockfile), then a build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-system-deps.sh
# npm records the installed tree in node_modules/.package-lock.json.
installed=node_modules/.package-lock.json
[ -e "$installed" ] || installed=node_modules
if [ ! -d node_modules ] || [ package-lock.json -nt "$installed" ]; then
  npm ci
fi
npm run build
