#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 10s) each: a
# short smoke run on each `make test`, not a fuzzing campaign. Targets are
# found with `go test -list`, so new Fuzz functions are picked up without
# editing anything. Inputs that fail are written to the package's
# testdata/fuzz/ by go test; commit them, they become regression tests.
set -euo pipefail

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `go test -list` prints each package's matching names, then a line
# "ok <tab> <package> <tab> <time>" that closes that package's block.
listing=$("$GO" test -list '^Fuzz' ./...)
targets=()
names=()
while IFS= read -r line; do
	case $line in
	Fuzz*) names+=("$line") ;;
	ok*)
		pkg=$(printf '%s\n' "$line" | awk '{print $2}')
		for n in "${names[@]}"; do targets+=("$pkg $n"); done
		names=()
		;;
	esac
done <<<"$listing"

if ((${#targets[@]} == 0)); then
	echo "fuzz-short: no fuzz targets"
	exit 0
fi
echo "fuzz-short: ${#targets[@]} target(s), ${FUZZTIME} each"
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz-short: $pkg $name"
	"$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
done
