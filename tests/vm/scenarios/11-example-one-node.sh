# Scenario: targetcli-examples/one-node-two-initiators.sh builds a one-node, two-initiator iSCSI layout with targetcli alone; libiscsi's PR suites pass through it; --delete removes it
. "$VM_LIB"
need_target
need_scratch
need_targetcli

printf '[daemon]\ndbus = true\n' > "$ART/tcmu-prd.toml"
daemon_start d1 --config "$ART/tcmu-prd.toml"
T=iqn.2003-01.org.linux-iscsi.vm:example1
export IMAGE=$SCRATCH/example1.img SIZE=128M TARGET_IQN=$T INITIATORS="$INI1 $INI2" PORTAL=127.0.0.1 NAME=ex1
"$ROOT/targetcli-examples/one-node-two-initiators.sh" > "$ART/example.txt" 2>&1 || { cat "$ART/example.txt"; fail "the example script failed"; }
cat "$ART/example.txt"
check "two views, one per initiator" bash -c "ls -d $TARGET/core/user_*/ex1-v1 $TARGET/core/user_*/ex1-v2"
check_eq "pgr_support off on the views" "0 0" "$(cat $TARGET/core/user_*/ex1-v1/attrib/pgr_support $TARGET/core/user_*/ex1-v2/attrib/pgr_support | tr '\n' ' ' | sed 's/ $//')"
check_eq "hw_max_sectors from the script" 8192 "$(cat $TARGET/core/user_*/ex1-v1/attrib/hw_max_sectors)"
libiscsi_suite "$ART/pr.txt" 'SCSI.Prin*,SCSI.Prout*,SCSI.Reserve6*' iscsi://127.0.0.1/$T/0 -I $INI2
read -r p f s < "$ART/pr.txt.counts"
check_eq "libiscsi PR suites failures through the example layout" 0 "$f"
[ "$p" -ge 20 ] || fail "only $p libiscsi PR tests passed"
wait_for 30 "both views resolved their initiator" bash -c "[ \$(grep -c 'serves one I_T nexus' $ART/d1.log) -ge 2 ]"

"$ROOT/targetcli-examples/one-node-two-initiators.sh" --delete
check "--delete removed the target" bash -c "! test -e $TARGET/iscsi/$T"
check "--delete removed the views" bash -c "! ls -d $TARGET/core/user_*/ex1-v1 2>/dev/null"
daemon_stop d1 TERM
check_eq "daemon exit status" 0 "$DAEMON_RC"
