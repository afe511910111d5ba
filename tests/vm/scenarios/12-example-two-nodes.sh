# Scenario: targetcli-examples/two-nodes-shared-lu.sh on two "nodes" (two cluster-mode daemons on the real DLM, one per node's views): its printed config works, libiscsi's PR suites pass with initiator 1 on node 1 and initiator 2 on node 2; --delete removes each node's layout
. "$VM_LIB"
need_target
need_dlm
need_scratch
need_targetcli

EX="$ROOT/targetcli-examples/two-nodes-shared-lu.sh"
img=$SCRATCH/example2.img
rm -f "$img" "$img.tcmu-prd-state"
# Each "node" is a daemon configured as the script prints, plus what two
# daemons on one kernel need: which views each serves, its own socket; only
# node 1 owns the D-Bus name (targetcli's CheckConfig), as a second owner
# cannot exist on one bus.
for n in 1 2; do
  "$EX" --print-config > "$ART/n$n.toml"
  [ "$n" -eq 1 ] || sed -i 's/^dbus = true.*/dbus = false/' "$ART/n$n.toml"
  printf '[devices]\nnames = ["ex2-n%s-*"]\n[paths]\ncontrol_socket = "/run/tcmu-prd/ex2-n%s.sock"\n' "$n" "$n" >> "$ART/n$n.toml"
done
cat "$ART/n1.toml"
daemon_start n1 --config "$ART/n1.toml"
daemon_start n2 --config "$ART/n2.toml"
wait_for 30 "both nodes joined the lockspace" bash -c "grep -q 'joined the DLM lockspace' $ART/n1.log && grep -q 'joined the DLM lockspace' $ART/n2.log"

T1=iqn.2003-01.org.linux-iscsi.vm:ex2-node1
T2=iqn.2003-01.org.linux-iscsi.vm:ex2-node2
for n in 1 2; do
  T=$T1; [ "$n" -eq 1 ] || T=$T2
  NODE=n$n NAME=ex2 IMAGE=$img SIZE=128M TARGET_IQN=$T INITIATORS="$INI1 $INI2" PORTAL=127.0.0.1 \
    "$EX" > "$ART/example-n$n.txt" 2>&1 || { cat "$ART/example-n$n.txt"; fail "the example script failed on node $n"; }
done
cat "$ART/example-n1.txt"
check "node 1's views" bash -c "ls -d $TARGET/core/user_*/ex2-n1-v1 $TARGET/core/user_*/ex2-n1-v2"
check "node 2's views" bash -c "ls -d $TARGET/core/user_*/ex2-n2-v1 $TARGET/core/user_*/ex2-n2-v2"
wait_for 60 "node 1 resolved its two views" bash -c "[ \$(grep -c 'serves one I_T nexus' $ART/n1.log) -ge 2 ]"
wait_for 60 "node 2 resolved its two views" bash -c "[ \$(grep -c 'serves one I_T nexus' $ART/n2.log) -ge 2 ]"
# Idle views re-read their nexus every few seconds; that must not write the
# state (a write takes EX and quiesces the other node's I/O).
u1=$(grep -c "state updated" "$ART/n1.log" || true); u2=$(grep -c "state updated" "$ART/n2.log" || true)
sleep 12
check_eq "idle: no state writes by node 1" "$u1" "$(grep -c "state updated" "$ART/n1.log" || true)"
check_eq "idle: no state writes by node 2" "$u2" "$(grep -c "state updated" "$ART/n2.log" || true)"
check "node 1 did not open node 2's views" bash -c "! grep -q 'opened device=user_[0-9]*/ex2-n2' $ART/n1.log"

# Initiator 1 through node 1, initiator 2 through node 2.
libiscsi_suite "$ART/pr.txt" 'SCSI.Prin*,SCSI.Prout*,SCSI.Reserve6*' iscsi://127.0.0.1/$T1/0 iscsi://127.0.0.1/$T2/0
grep -v ' passed$' "$ART/pr.txt.tests" || true
check_libiscsi "libiscsi PR suites, initiators on different nodes" "$ART/pr.txt.tests"

for n in 1 2; do
  T=$T1; [ "$n" -eq 1 ] || T=$T2
  NODE=n$n NAME=ex2 IMAGE=$img TARGET_IQN=$T INITIATORS="$INI1 $INI2" "$EX" --delete
  check "--delete removed node $n's target and views" bash -c "! test -e $TARGET/iscsi/$T && ! ls -d $TARGET/core/user_*/ex2-n$n-v1 2>/dev/null"
done
daemon_stop n2 TERM
daemon_stop n1 TERM
check_eq "node 1 exit status" 0 "$DAEMON_RC"
