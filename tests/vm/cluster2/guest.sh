#!/usr/bin/env bash
# Inside one guest of the two-guest tier (tests/vm/two-guests): the private
# network, a two-node corosync and dlm_controld; then guest A runs the
# scenario and guest B serves the command agent that A drives it with.
#   guest.sh a|b RESULTS BIN
set -u
ROLE="$1"
TOP="$2"
export BIN="$3"
# lib.sh keeps corosync's and dlm_controld's logs in $RESULTS: one
# directory per guest; the scenario's artifacts in $ART below it.
export RESULTS="$TOP/$ROLE"
export ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export VM_LIB="$ROOT/tests/vm/lib.sh"
export TCMU_PRD="$BIN/tcmu-prd"
export PATH="$BIN:$PATH"
export ART="$RESULTS/art"
mkdir -p "$ART"
# shellcheck source=../lib.sh
. "$VM_LIB"
. "$ROOT/tests/vm/cluster2/lib2.sh"

exec > "$TOP/$ROLE.log" 2>&1
echo "=== guest $ROLE: start $(date -u +%T)"
uname -a
rc=0
(
  set -euo pipefail
  cluster2_network "$ROLE"
  cluster2_corosync
  need_dlm
  wait_for 300 "both nodes are corosync members" bash -c '[ "$(corosync-quorumtool -l | grep -c node)" -eq 2 ]'
  corosync-quorumtool -s || true
) || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "=== guest $ROLE: cluster set-up failed ($rc)"
  echo "$rc" > "$TOP/$ROLE.status"
  exit 0
fi
case "$ROLE" in
  b)
    # Serves until guest A powers this guest off (or the host times out).
    python3 "$ROOT/tests/vm/cluster2/agent.py" "$B_IP" "$AGENT_PORT"
    ;;
  a)
    t0=$(date +%s)
    timeout --kill-after=10 "${VM_SCENARIO_TIMEOUT:-1500}" bash -euo pipefail "$ROOT/tests/vm/cluster2/fence-failover.sh"
    rc=$?
    echo "=== guest a: scenario exit $rc after $(( $(date +%s) - t0 ))s"
    # Guest B may still be up if the scenario failed before powering it off.
    onb_nowait 'echo o > /proc/sysrq-trigger' || true
    dmesg > "$ART/dmesg"
    echo "$rc" > "$TOP/a.status"
    ;;
esac
