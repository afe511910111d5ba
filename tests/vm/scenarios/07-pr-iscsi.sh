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

# Ambiguous views: demo mode, and one view mapped by two ACLs. I/O is
# served; reservation commands are refused (ILLEGAL REQUEST) with a log line
# that says how to fix the layout.
amb=$SCRATCH/amb.img
truncate -s 32M "$amb"
tcmu_create 1 amb "dev_config=dlmfile/$amb,dev_size=$((32 << 20)),hw_max_sectors=8192" pgr_support=0 alua_support=0
D=iqn.2003-01.org.linux-iscsi.vm:demo
iscsi_target $D
targetcli /iscsi/$D/tpg1 set attribute generate_node_acls=1 demo_mode_write_protect=0 cache_dynamic_acls=1 >/dev/null
targetcli /iscsi/$D/tpg1/luns create /backstores/user:dlmfile/amb >/dev/null
libiscsi_suite "$ART/demo-io.txt" 'SCSI.Read10.Simple,SCSI.Write10.Simple' iscsi://127.0.0.1/$D/0
read -r p f s < "$ART/demo-io.txt.counts"
check_eq "an ambiguous (demo mode) view serves I/O: failures" 0 "$f"
[ "$p" -eq 2 ] || fail "I/O tests through the demo-mode view: $p passed"
libiscsi_suite "$ART/demo-pr.txt" 'SCSI.ProutRegister.Simple' iscsi://127.0.0.1/$D/0
# libiscsi reports ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE as "not supported".
check "PR OUT through the demo-mode view is refused (ILLEGAL REQUEST, invalid opcode)" grep -q "PROUT Not Supported" "$ART/demo-pr.txt"
check "the log says the view is ambiguous and how to fix it" grep -q "ambiguous.*demo mode (generate_node_acls=1).*set generate_node_acls=0" "$ART/d1.log"
