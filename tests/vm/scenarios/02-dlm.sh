# Scenario: single-node corosync + dlm_controld; a user-space lockspace with an LVB round trip through dlm-sys
. "$VM_LIB"
need_configfs
modprobe dlm || fail "cannot load kernel module dlm"

# Without dlm_controld the check must fail fast and say what is missing.
if ! pgrep -x dlm_controld >/dev/null; then
  set +e
  out=$(timeout 60 "$TCMU_PRD" check-dlm --lockspace tcmuprdneg 2>&1); rc=$?
  set -e
  echo "$out"
  [ "$rc" -ne 0 ] || fail "check-dlm succeeded without dlm_controld"
  [ "$rc" -ne 124 ] || fail "check-dlm hung without dlm_controld"
  check "check-dlm names dlm_controld when it is not running" grep -q "dlm_controld" <<<"$out"
fi

need_dlm
dlm_tool status | tee "$ART/dlm_tool-status.txt" || true

"$TCMU_PRD" check-dlm --lockspace tcmuprdcheck 2>&1 | tee "$ART/check-dlm.txt"
check "LVB round trip and blocking AST" grep -q "DLM check passed" "$ART/check-dlm.txt"
check "the check left the lockspace" bash -c '! dlm_tool ls | grep -q tcmuprdcheck'

# Run it twice at once: two processes are two lock holders to the DLM, and
# both create and release the lockspace at the same moment, which the kernel
# does not serialize by itself (dlm-sys does, host-wide). Several rounds, as
# the race it guards against is a narrow one.
for round in 1 2 3 4 5; do
  "$TCMU_PRD" check-dlm --lockspace tcmuprdcheck > "$ART/a.txt" 2>&1 & a=$!
  "$TCMU_PRD" check-dlm --lockspace tcmuprdcheck > "$ART/b.txt" 2>&1 & b=$!
  wait $a || { cat "$ART/a.txt"; fail "concurrent check A (round $round)"; }
  wait $b || { cat "$ART/b.txt"; fail "concurrent check B (round $round)"; }
done
say "ok: two concurrent checks in one lockspace, 5 rounds"

# dlm_controld dies: creating a lockspace fails at once with a clear error
# (the kernel answers EUNATCH), and works again once it is back.
pkill -KILL -x dlm_controld
sleep 1
set +e
out=$(timeout 60 "$TCMU_PRD" check-dlm --lockspace tcmuprdgone --timeout 10 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "check-dlm with dlm_controld killed: exit $rc"
check "the error names dlm_controld" grep -q "dlm_controld" <<<"$out"
need_dlm
# A restarted dlm_controld needs a moment before it accepts lockspaces
# (ENOTCONN until then): a clear error first, then success, no restart of ours.
ok=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  if "$TCMU_PRD" check-dlm --lockspace tcmuprdcheck > "$ART/after-restart.txt" 2>&1; then ok=1; break; fi
  sleep 3
done
[ "$ok" -eq 1 ] || { cat "$ART/after-restart.txt"; fail "check-dlm after dlm_controld restart"; }
say "ok: the DLM works again after dlm_controld restarts (attempt $i)"
