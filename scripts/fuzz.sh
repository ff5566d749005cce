#!/usr/bin/env bash
# Runs every Go fuzz target of the module for FUZZTIME each (default 5m) and
# prints the executions per target. A crash stops the run; Go writes the
# input under the package's testdata/fuzz/, where it stays as a seed.
#   FUZZTIME=30s scripts/fuzz.sh            all targets
#   scripts/fuzz.sh ./tpmdev/authblob       the targets of one package
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-5m}
pkgs=("${@:-./...}")
export CGO_ENABLED=1
total=0
while read -r pkg; do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		log=$(mktemp)
		echo "== $pkg $target ($fuzztime)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
			cat "$log"
			echo "fuzz: $pkg $target FAILED; the crashing input is under $pkg/testdata/fuzz/$target/" >&2
			exit 1
		fi
		execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
		echo "   $execs executions, no crash"
		total=$((total + execs))
		rm -f "$log"
	done
done < <(go list "${pkgs[@]}")
echo "fuzz: $total executions in all, no crash"
