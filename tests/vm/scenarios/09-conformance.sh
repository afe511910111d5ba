# Scenario: libiscsi's whole SCSI.* family over iSCSI against a tcmu-prd dlmfile LU, side by side with LIO's in-kernel fileio on the same kind of image, same boot
. "$VM_LIB"
need_target
need_scratch
need_targetcli
TESTS="${CONFORMANCE_TESTS:-SCSI.*}"

# tcmu-prd: one LU, one view per initiator (the PR and Reserve6 suites need two).
img=$SCRATCH/conf.img
truncate -s 128M "$img"
daemon_start d1
T=iqn.2003-01.org.linux-iscsi.vm:conf
iscsi_target $T
"$TCMU_PRD" export --lu conf --image "$img" iscsi --target $T --initiator $INI1 --initiator $INI2 | tee "$ART/export.txt"
libiscsi_suite "$ART/prd.txt" "$TESTS" iscsi://127.0.0.1/$T/0 -I $INI2

# LIO's in-kernel fileio, same boot, same initiators.
targetcli /backstores/fileio create confbase $SCRATCH/conf-base.img 128M >/dev/null
mkdir -p "$(cat $TARGET/dbroot)"/{pr,alua}
B=iqn.2003-01.org.linux-iscsi.vm:conflio
iscsi_target $B
targetcli /iscsi/$B/tpg1/luns create /backstores/fileio/confbase >/dev/null
targetcli /iscsi/$B/tpg1/acls create $INI1 >/dev/null
targetcli /iscsi/$B/tpg1/acls create $INI2 >/dev/null
libiscsi_suite "$ART/lio.txt" "$TESTS" iscsi://127.0.0.1/$B/0 -I $INI2

python3 "$ROOT/tests/vm/libiscsi_compare.py" tcmu-prd "$ART/prd.txt.tests" "LIO fileio" "$ART/lio.txt.tests" | tee "$ART/conformance.md"
say "tcmu-prd tests not passed:"
grep -v ' passed$' "$ART/prd.txt.tests" || true
read -r p f s < "$ART/prd.txt.counts"
check_eq "libiscsi $TESTS failures through tcmu-prd" 0 "$f"
[ "$p" -gt 0 ] || fail "no libiscsi test passed (did iscsi-test-cu run?)"
