#!/usr/bin/env bash
# npm start [-- --prepare-only]: the two-node demo network on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec node dist/src/demo/run.js "$@"
