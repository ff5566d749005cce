#!/usr/bin/env bash
# Summarises a `go test -v` log: how many tests passed, failed and skipped,
# with the skipped ones named. Under CI=true a skipped test is a failure: the
# tests install what they need, so a skip means something is missing.
set -euo pipefail
log=$1
pass=$(grep -cE '^\s*--- PASS' "$log" || true)
fail=$(grep -cE '^\s*--- FAIL' "$log" || true)
skip=$(grep -cE '^\s*--- SKIP' "$log" || true)
echo "tests: $pass passed, $fail failed, $skip skipped"
if ((skip > 0)); then
	grep -E -A1 '^\s*--- SKIP' "$log" | sed 's/^/  /'
	if [[ ${CI:-} == true ]]; then
		echo "test-summary: tests were skipped under CI=true" >&2
		exit 1
	fi
fi
((fail == 0))
