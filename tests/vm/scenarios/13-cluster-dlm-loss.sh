# Scenario: the kernel stops the DLM lockspace (as dlm_controld does while membership changes, and as the kernel does when dlm_controld dies): the daemon refuses I/O (BUSY, then NOT READY 04h/03h), status says so, and it serves again when the lockspace runs; last in the boot (a killed dlm_controld cannot come back while our lockspace exists)
. "$VM_LIB"
need_target
need_dlm
need_scratch

img=$SCRATCH/loss.img
rm -f "$img" "$img.tcmu-prd-state"
truncate -s 64M "$img"
sock=/run/tcmu-prd/loss.sock
printf '[daemon]\ndbus = false\n[cluster]\nmode = "dlm"\nupdate_timeout_ms = 3000\n[paths]\ncontrol_socket = "%s"\n' "$sock" > "$ART/d1.toml"
daemon_start d1 --config "$ART/d1.toml"
wait_for 30 "d1 joined the lockspace" grep -q 'joined the DLM lockspace' "$ART/d1.log"
tcmu_create 1 v1 "dev_config=dlmfile/$img,dev_size=$((64 << 20))" pgr_support=0
loop_tpg naa.5001405000000011 naa.5001405000000012
sda=$(loop_lun naa.5001405000000011 0 $TARGET/core/user_1/v1) || fail "no SCSI disk"
wait_for 30 "d1 resolved its view's nexus" grep -q "serves one I_T nexus" "$ART/d1.log"
sg_persist -n --out --register --param-sark=0x1 "$sda"
ctl=/sys/kernel/dlm/tcmu-prd/control
check_eq "lockspace running (recover_status)" ff "$(cat /sys/kernel/dlm/tcmu-prd/recover_status)"
cstate() { "$TCMU_PRD" status --json --socket "$sock" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cluster"]; print(c["state"])'; }
tur() { sg_turs -v "$sda" 2>&1 || true; }

# 1. Stopped as dlm_controld stops it during a membership change, then
# started again: refused while stopped, served again after, no restart.
echo 0 > "$ctl"
wait_for 10 "d1 saw the lockspace stop" grep -q "DLM lockspace stopped by the kernel" "$ART/d1.log"
check_eq "status: lockspace stopped" stopped "$(cstate)"
sleep 4   # past the grace (update_timeout_ms)
out=$(tur); echo "$out"
check "TEST UNIT READY: NOT READY, manual intervention required" grep -qi "manual intervention required" <<<"$out"
check_fails "reads fail while the lockspace is stopped" dd if="$sda" of=/dev/null bs=4k count=1 iflag=direct status=none
echo 1 > "$ctl"
wait_for 20 "d1 saw the lockspace run again" grep -q "DLM lockspace running again" "$ART/d1.log"
check_eq "status: joined again" joined "$(cstate)"
wait_for 20 "TEST UNIT READY succeeds again" sg_turs "$sda"
check "reads served again" dd if="$sda" of=/dev/null bs=4k count=16 iflag=direct status=none
sg_persist -n --out --register --param-rk=0x1 --param-sark=0x2 "$sda"
check "a PR OUT works after the restart of the lockspace" bash -c "sg_persist -n --in --read-keys $sda | grep -q 0x2"

# 2. Quorum lost without a membership change (a node that never comes up
# added to the configuration: expected votes 2): dlm_controld keeps the
# lockspace running, but a node without quorum must not serve; corosync
# says so, the daemon refuses, and serves again once quorate.
corosync_phantom on
wait_for 10 "d1 saw the quorum go" grep -q "no cluster quorum" "$ART/d1.log"
check_eq "lockspace still running (recover_status)" ff "$(cat /sys/kernel/dlm/tcmu-prd/recover_status)"
sleep 4   # past the grace
out=$(tur); echo "$out"
check "TEST UNIT READY without quorum: NOT READY, manual intervention required" grep -qi "manual intervention required" <<<"$out"
check_fails "writes fail without quorum" dd if=/dev/zero of="$sda" bs=4k count=1 oflag=direct status=none
"$TCMU_PRD" status --socket "$sock" | tee "$ART/status-inquorate.txt"
check "status says why" grep -q "no quorum" "$ART/status-inquorate.txt"
corosync_phantom off
wait_for 20 "d1 serves again once quorate" bash -c "[ \$(grep -c 'DLM lockspace running again' $ART/d1.log) -ge 2 ]"
wait_for 20 "TEST UNIT READY succeeds with quorum back" sg_turs "$sda"
check "reads served with quorum back" dd if="$sda" of=/dev/null bs=4k count=16 iflag=direct status=none

# 3. dlm_controld dies: the kernel stops the lockspace ("no userland
# control daemon"); this node is out of the cluster until it is restarted
# (dlm_controld refuses to come back while an uncontrolled lockspace exists):
# I/O is refused, never served from the cached state.
pkill -9 -x dlm_controld
wait_for 10 "d1 saw the lockspace stop (dlm_controld gone)" bash -c "[ \$(grep -c 'DLM lockspace stopped by the kernel' $ART/d1.log) -ge 2 ]"
sleep 4
out=$(tur); echo "$out"
check "TEST UNIT READY after dlm_controld died: NOT READY, manual intervention required" grep -qi "manual intervention required" <<<"$out"
check_fails "writes fail after dlm_controld died" dd if=/dev/zero of="$sda" bs=4k count=1 oflag=direct status=none
"$TCMU_PRD" status --socket "$sock" | tee "$ART/status-stopped.txt"
check "status explains the stop" grep -q "lockspace tcmu-prd: stopped (lockspace tcmu-prd stopped by the kernel" "$ART/status-stopped.txt"
# A process holding locks in a stopped lockspace cannot finish exiting (the
# kernel releases its locks only once the lockspace runs): a node in this
# state is rebooted. Here, start the lockspace by hand (as dlm_controld
# would) so that the daemon can exit and the VM tier can clean up.
pid=$(cat "$ART/d1.pid")
kill -KILL "$pid" 2>/dev/null || true
echo 1 > "$ctl"
exited() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
wait_for 30 "d1 exited once the lockspace ran again" exited "$pid"
wait "$pid" 2>/dev/null || true
