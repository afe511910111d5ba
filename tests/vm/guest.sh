#!/usr/bin/env bash
# Inside the guest: runs each scenario listed in $RESULTS/scenarios with a
# bound, its output in $RESULTS/<name>.log and its exit code in
# $RESULTS/<name>.status. Cleans LIO and daemons up between scenarios.
set -u
RESULTS="$1"
export BIN="$2"
export ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export VM_LIB="$ROOT/tests/vm/lib.sh"
export RESULTS
export TCMU_PRD="$BIN/tcmu-prd"
export PATH="$BIN:$PATH"

# shellcheck source=lib.sh
. "$VM_LIB"

# Benchmark knobs from the host (tests/vm/run writes them).
# shellcheck source=/dev/null
[ ! -f "$RESULTS/bench.env" ] || . "$RESULTS/bench.env"
SCEN_TIMEOUT="${VM_SCENARIO_TIMEOUT:-900}"
uname -a > "$RESULTS/guest-uname"
while read -r script; do
  name=$(basename "$script" .sh)
  export ART="$RESULTS/$name"       # scenario artifacts (daemon logs, outputs)
  mkdir -p "$ART"
  t0=$(date +%s)
  echo "=== $name: start $(date -u +%T)" > "$RESULTS/$name.log"
  timeout --kill-after=10 "$SCEN_TIMEOUT" bash -euo pipefail "$script" >> "$RESULTS/$name.log" 2>&1
  rc=$?
  [ "$rc" -ne 124 ] || echo "=== $name: timed out after ${SCEN_TIMEOUT}s" >> "$RESULTS/$name.log"
  echo "=== $name: exit $rc after $(( $(date +%s) - t0 ))s" >> "$RESULTS/$name.log"
  echo $(( $(date +%s) - t0 )) > "$RESULTS/$name.seconds"
  vm_cleanup >> "$RESULTS/$name.log" 2>&1
  dmesg > "$ART/dmesg"
  echo "$rc" > "$RESULTS/$name.status"
done < "$RESULTS/scenarios"
touch "$RESULTS/done"
