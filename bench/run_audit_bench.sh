#!/usr/bin/env bash
# Audit benchmark: for each fleet size, audit-bench bulk-loads a registry with that many
# certificates (all states and ages, synthetic rows through the registry's schema), then,
# in a fresh process, times one plain full scan of the certificates table (the
# reference) and a full audit with every check (findings inserted, JSON report written).
# Peak RSS of the audit process is printed per size: it should not grow with the fleet.
#
# Usage: bench/run_audit_bench.sh [BUILD_DIR]      (default: build-release)
# Environment: AUDIT_BENCH_SIZES (default "100000 1000000"), TMPDIR.
set -euo pipefail

build_dir=${1:-build-release}
sizes=${AUDIT_BENCH_SIZES:-"100000 1000000"}
bin=$build_dir/bench/audit-bench
[ -x "$bin" ] || { echo "run_audit_bench: $bin not built" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for n in $sizes; do
  echo "== audit of $n certificates"
  "$bin" load --db "$work/registry-$n.sqlite3" --count "$n"
  # Warm the page cache the same way for both measurements, then measure.
  "$bin" run --db "$work/registry-$n.sqlite3" --reports "$work/reports-$n" >/dev/null
  "$bin" run --db "$work/registry-$n.sqlite3" --reports "$work/reports-$n"
  rm -f "$work/registry-$n.sqlite3"*
done
