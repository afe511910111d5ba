# Scenario: libiscsi's PR suites with the two initiators going through two different daemons (two cluster "nodes" on the real DLM): initiator 1 -> target 1 -> views served by d1, initiator 2 -> target 2 -> views served by d2
. "$VM_LIB"
need_target
need_dlm
need_scratch
need_targetcli
PR_TESTS='SCSI.Prin*,SCSI.Prout*,SCSI.Reserve6*'

img=$SCRATCH/cluster-pr.img
rm -f "$img" "$img.tcmu-prd-state"
truncate -s 128M "$img"
for n in 1 2; do
  printf '[daemon]\ndbus = false\n[devices]\nhbas = [%s]\n[cluster]\nmode = "dlm"\nupdate_timeout_ms = 8000\n[paths]\ncontrol_socket = "%s"\n' "$((n + 4))" "/run/tcmu-prd/cpr-d$n.sock" > "$ART/d$n.toml"
done
daemon_start d1 --config "$ART/d1.toml"
daemon_start d2 --config "$ART/d2.toml"
wait_for 30 "d1 and d2 joined the lockspace" bash -c "grep -q 'joined the DLM lockspace' $ART/d1.log && grep -q 'joined the DLM lockspace' $ART/d2.log"

# Node 1 (d1, user_5) exports the LU through T1, node 2 (d2, user_6) through
# T2, each to both initiators (as two real nodes would; iscsi-test-cu also
# first logs in to every URL as initiator 1). The tests run initiator 1 on
# T1 and initiator 2 on T2: every PR command of one initiator is served by
# the other daemon than the other initiator's.
T1=iqn.2003-01.org.linux-iscsi.vm:cpr1
T2=iqn.2003-01.org.linux-iscsi.vm:cpr2
iscsi_target $T1
iscsi_target $T2
"$TCMU_PRD" export --lu cpr --image "$img" --hba 5 iscsi --target $T1 --initiator $INI1 --initiator $INI2 | tee "$ART/export.txt"
"$TCMU_PRD" export --lu cpr --image "$img" --hba 6 iscsi --target $T2 --initiator $INI1 --initiator $INI2 | tee -a "$ART/export.txt"
wait_for 30 "d1 serves its view" grep -q "LU state shared through the cluster" "$ART/d1.log"
wait_for 30 "d2 serves its view" grep -q "LU state shared through the cluster" "$ART/d2.log"

# Two URLs: iscsi-test-cu logs in as initiator 1 to the first and as
# initiator 2 to the second, and uses the second session wherever a test
# needs another I_T nexus (after checking both report one LU identity).
libiscsi_suite "$ART/prd.txt" "$PR_TESTS" iscsi://127.0.0.1/$T1/0 iscsi://127.0.0.1/$T2/0
grep -v ' passed$' "$ART/prd.txt.tests" || true
check_libiscsi "libiscsi PR suites through two daemons" "$ART/prd.txt.tests"
bad_skips=$(grep ' SKIPPED$' "$ART/prd.txt.tests" | grep -Ev 'Reserve6\.Target(Cold|Warm)Reset' || true)
[ -z "$bad_skips" ] || fail "unexpected skips: $bad_skips"
# Reserve6.Logout/ITNexusLoss: the holder (initiator 1) is served by d1, the
# conflict seen by d2, which probes d1 through the DLM (SPC-2 liveness lock).
check "d1 released the SPC-2 reservation of a lost nexus when d2 probed" grep -q "SPC-2 reservation released: its I_T nexus is gone" "$ART/d1.log"
check "d2 saw it released by the other node" grep -q "SPC-2 reservation released by the node that served its I_T nexus" "$ART/d2.log"
check "both daemons served PR commands" bash -c "grep -q 'state updated' $ART/d1.log && grep -q 'state updated' $ART/d2.log"

"$TCMU_PRD" unexport --lu cpr --image "$img" --hba 5 iscsi --target $T1 --initiator $INI1 --initiator $INI2
"$TCMU_PRD" unexport --lu cpr --image "$img" --hba 6 iscsi --target $T2 --initiator $INI1 --initiator $INI2
daemon_stop d2 TERM
check_eq "d2 exit status" 0 "$DAEMON_RC"
daemon_stop d1 TERM
check_eq "d1 exit status" 0 "$DAEMON_RC"
