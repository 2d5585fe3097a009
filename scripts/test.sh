#!/usr/bin/env bash
# npm test [-- vitest args]: build, then run the whole test suite.
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
exec node_modules/.bin/vitest run "$@"
