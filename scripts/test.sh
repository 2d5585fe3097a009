#!/usr/bin/env bash
# npm test [-- vitest args]: build, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Type-check the tests too (vitest runs them without checking types).
node_modules/.bin/tsc -p tsconfig.test.json
mkdir -p var
results=var/test-results.json
rm -f "$results"
status=0
node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile.json="$results" "$@" || status=$?
# One plain closing line with the counts, for people and CI.
if [ -f "$results" ]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const skipped = r.numPendingTests + r.numTodoTests;
    console.log(`Tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
  ' "$results"
fi
exit "$status"
