# Scenario: libiscsi's PR suites over iSCSI to per-initiator views, side by side with LIO's in-kernel PR (fileio) in the same boot
. "$VM_LIB"
need_target
need_scratch
need_targetcli
PR_TESTS='SCSI.Prin*,SCSI.Prout*,SCSI.Reserve6*'

# tcmu-prd: one LU, one view per initiator, each ACL maps its own view as LUN 0.
img=$SCRATCH/pr-iscsi.img
truncate -s 128M "$img"
daemon_start d1
T=iqn.2003-01.org.linux-iscsi.vm:prd
iscsi_target $T
"$TCMU_PRD" export --lu pri --image "$img" iscsi --target $T --initiator $INI1 --initiator $INI2 | tee "$ART/export.txt"
targetcli ls /iscsi > "$ART/targetcli-prd.txt" 2>&1 || true
libiscsi_suite "$ART/prd.txt" "$PR_TESTS" iscsi://127.0.0.1/$T/0 -I $INI2

# LIO's in-kernel PR on fileio, same boot, same initiators.
targetcli /backstores/fileio create base $SCRATCH/base.img 128M >/dev/null
mkdir -p "$(cat $TARGET/dbroot)"/{pr,alua}
B=iqn.2003-01.org.linux-iscsi.vm:lio
iscsi_target $B
targetcli /iscsi/$B/tpg1/luns create /backstores/fileio/base >/dev/null
targetcli /iscsi/$B/tpg1/acls create $INI1 >/dev/null
targetcli /iscsi/$B/tpg1/acls create $INI2 >/dev/null
libiscsi_suite "$ART/lio.txt" "$PR_TESTS" iscsi://127.0.0.1/$B/0 -I $INI2

read -r p f s < "$ART/prd.txt.counts"
read -r lp lf ls < "$ART/lio.txt.counts"
printf '%-28s %7s %7s %7s\n' backstore passed failed skipped "tcmu-prd dlmfile views" "$p" "$f" "$s" "LIO fileio in-kernel PR" "$lp" "$lf" "$ls" | tee "$ART/comparison.txt"
grep -v ' passed$' "$ART/prd.txt.tests" || true
# The only acceptable skips: target cold/warm reset, which LIO's iSCSI target refuses.
bad_skips=$(grep ' SKIPPED$' "$ART/prd.txt.tests" | grep -Ev 'Reserve6\.Target(Cold|Warm)Reset' || true)
[ -z "$bad_skips" ] || fail "unexpected skips: $bad_skips"
check_eq "libiscsi PR suites failures through tcmu-prd" 0 "$f"
[ "$p" -gt 0 ] || fail "no libiscsi test passed (did iscsi-test-cu run?)"
