# Scenario (two guests, the real thing): guest A (node 1) and guest B
# (node 2) each run corosync, dlm_controld, LIO and tcmu-prd over one shared
# disk; each node's initiator reaches the LU through its own node, and node
# 2's initiator also through node 1 (a second path, as multipath has). Both
# register with fence_scsi (WERO), both write; node 1 fences node 2: from
# the moment fence_scsi returns, not one write of node 2's reaches the disk
# through either node. Then node 2 is unfenced, and powered off in
# the middle of its writes: node 1 survives, with every acknowledged PR
# change, and serves reads, writes and PR OUT after DLM recovery.
# Runs in guest A; guest B is driven through `onb` (cluster2/agent.py).
. "$VM_LIB"
. "$ROOT/tests/vm/cluster2/lib2.sh"
wait_for 120 "guest B's agent answers" onb true

DATA=$(shared_disk tpdata) || fail "shared data disk missing"
STATE=$(shared_disk tpstate) || fail "shared state disk missing"
check_eq "guest B sees the same disks" "$DATA $STATE" "$(onb 'echo $(shared_disk tpdata) $(shared_disk tpstate)')"
blocks=$(( $(blockdev --getsize64 "$DATA") ))

# Node-side set-up, the same on both guests.
node_up() {  # node_up N: daemon, view behind a tcm_loop TPG; prints /dev/sdX
  cat <<SH
need_target
printf '[daemon]\ndbus = false\n[cluster]\nmode = "dlm"\nupdate_timeout_ms = 8000\n' > "\$ART/d.toml"
daemon_start d --config "\$ART/d.toml" >&2
wait_for 60 "node $1 joined the lockspace" grep -q 'joined the DLM lockspace' "\$ART/d.log" >&2
tcmu_create 1 n$1 "dev_config=dlmfile/$DATA;state=$STATE;serial=tp2shared,dev_size=$blocks,hw_max_sectors=8192" pgr_support=0 tmr_notification=1 >&2
loop_tpg naa.50014050000000${1}1 naa.50014050000000${1}2
sd=\$(loop_lun naa.50014050000000${1}1 0 \$TARGET/core/user_1/n$1)
wait_for 60 "node $1 resolved its view's nexus" grep -q "serves one I_T nexus" "\$ART/d.log" >&2
echo "\$sd"
SH
}
sda=$(bash -euo pipefail -c ". \"\$VM_LIB\"; $(node_up 1)") || fail "node 1 set-up"
sdb=$(onb --timeout 300 "$(node_up 2)" | tail -1) || fail "node 2 set-up"
say "recover_status: node 1 $(cat /sys/kernel/dlm/tcmu-prd/recover_status), node 2 $(onb 'cat /sys/kernel/dlm/tcmu-prd/recover_status')"
# Node 2's initiator port (naa.5001405000000022) through node 1 as well.
tcmu_create 2 n2a "dev_config=dlmfile/$DATA;state=$STATE;serial=tp2shared,dev_size=$blocks,hw_max_sectors=8192" pgr_support=0 tmr_notification=1
loop_tpg naa.5001405000000023 naa.5001405000000022
sdb1=$(loop_lun naa.5001405000000023 0 $TARGET/core/user_2/n2a)
wait_for 60 "node 1 resolved node 2's second path" bash -c "[ \$(grep -c 'serves one I_T nexus' $ART/d.log) -ge 2 ]"
[ -b "$sda" ] && [ -b "$sdb1" ] && onb "test -b $sdb" || fail "no SCSI disk on a node ('$sda', '$sdb', '$sdb1')"
say "node 1 writes through $sda (guest A), node 2 through $sdb (guest B) and $sdb1 (guest A)"

keys() { sg_persist --in --read-keys "$1" 2>&1 | grep -o '0x[0-9a-f]*$' | sort | tr '\n' ' '; }
block() { dd if="$DATA" bs=4k skip="$1" count=1 iflag=direct status=none; }

# Unfencing: both nodes register; the first creates the WERO reservation.
onb "fence_scsi --devices=$sdb --key=2 --action=on" || fail "fence_scsi on for node 2 (on guest B)"
fence_scsi --devices="$sda" --key=1 --action=on || fail "fence_scsi on for node 1"
# Node 2's second path registers its key too (fence_scsi would do that
# through multipath on node 2).
sg_persist -n --out --register --param-sark=0x2 "$sdb1"
check_eq "node 1's key and node 2's on both paths, seen through node 1" "0x1 0x2 0x2 " "$(keys "$sda")"
check_eq "the same, seen through node 2" "0x1 0x2 0x2 " "$(onb "sg_persist --in --read-keys $sdb | grep -o '0x[0-9a-f]*\$' | sort | tr '\n' ' '")"
check "one WERO reservation, seen through node 2" onb "sg_persist --in --read-reservation $sdb | grep -qi 'registrants only'"

# A writer on each side: node 2 rewrites block 2048 with 'A' through node 2
# and block 2050 through node 1, node 1 block 4096 with 'C' and counts its
# acknowledged writes.
marker A > /tmp/markA; marker B > /tmp/markB; marker C > /tmp/markC
onb "marker A > /tmp/markA
(while dd if=/tmp/markA of=$sdb bs=4k seek=2048 count=1 oflag=direct status=none; do :; done) >/dev/null 2>&1 &
echo \$! > \$ART/writer.pid"
( n=0; while true; do
    if dd if=/tmp/markC of="$sda" bs=4k seek=4096 count=1 oflag=direct status=none 2>/dev/null; then
      n=$((n + 1)); echo "$n" > /tmp/a-writes
    fi
  done ) >/dev/null 2>&1 &
awriter=$!
(while dd if=/tmp/markA of="$sdb1" bs=4k seek=2050 count=1 oflag=direct status=none; do :; done) >/dev/null 2>&1 &
b1writer=$!
wait_for 60 "node 2's writes land on the shared disk" bash -c "cmp -s /tmp/markA <(dd if=$DATA bs=4k skip=2048 count=1 iflag=direct status=none)"
wait_for 60 "node 2's writes through node 1 land on the shared disk" bash -c "cmp -s /tmp/markA <(dd if=$DATA bs=4k skip=2050 count=1 iflag=direct status=none)"
wait_for 60 "node 1's writes land on the shared disk" bash -c "cmp -s /tmp/markC <(dd if=$DATA bs=4k skip=4096 count=1 iflag=direct status=none)"

# Node 1 fences node 2 (PREEMPT AND ABORT through node 1's daemon).
fence_scsi --devices="$sda" --key=2 --action=off || fail "fence_scsi off: node 1 fences node 2"
say "fence_scsi off returned"
dd if=/tmp/markB of="$sda" bs=4k seek=2048 count=1 oflag=direct conv=fsync status=none
dd if=/tmp/markB of="$sda" bs=4k seek=2050 count=1 oflag=direct conv=fsync status=none
before=$(cat /tmp/a-writes)
sleep 5
check "no write of node 2 through node 2 reached the disk after the fence" cmp /tmp/markB <(block 2048)
check "no write of node 2 through node 1 reached the disk after the fence" cmp /tmp/markB <(block 2050)
check "node 2's writer on node 2 was stopped by RESERVATION CONFLICT, not by us" onb "! kill -0 \$(cat \$ART/writer.pid) 2>/dev/null"
check "node 2's writer through node 1 was stopped too" bash -c "! kill -0 $b1writer 2>/dev/null || grep -q '^State:.*Z' /proc/$b1writer/status"
check "node 1 kept writing through the fence" test "$(cat /tmp/a-writes)" -gt "$before"
check_eq "only node 1's key is left (seen through node 2)" "0x1 " "$(onb "sg_persist --in --read-keys $sdb | grep -o '0x[0-9a-f]*\$' | sort | tr '\n' ' '")"
# Past the unit attentions the fence left for node 2 (2A/05, 2F/00).
out=$(onb "for i in 1 2 3 4 5 6; do o=\$(head -c 512 /tmp/markA | sg_raw -s 512 -i /dev/stdin -v $sdb 2a 00 00 00 08 00 00 00 01 00 2>&1 || true); grep -qi 'unit attention' <<<\"\$o\" || break; done; echo \"\$o\"") || true
echo "$out"
check "a write of the fenced node on its own node is RESERVATION CONFLICT" grep -qi "reservation conflict" <<<"$out"
for i in 1 2 3 4 5 6; do
  out=$(head -c 512 /tmp/markA | sg_raw -s 512 -i /dev/stdin -v "$sdb1" 2a 00 00 00 08 00 00 00 01 00 2>&1 || true)
  grep -qi "unit attention" <<<"$out" || break
done
echo "$out"
check "a write of the fenced node through node 1 is RESERVATION CONFLICT" grep -qi "reservation conflict" <<<"$out"

# Unfence node 2: it writes again.
onb "fence_scsi --devices=$sdb --key=2 --action=on" || fail "fence_scsi on: unfence node 2"
check_eq "node 2 registered again" "0x1 0x2 " "$(keys "$sda")"
check "node 2 writes after unfencing" onb "dd if=/tmp/markA of=$sdb bs=4k seek=2049 count=1 oflag=direct conv=fsync status=none"
check "node 2's write is on the shared disk" cmp /tmp/markA <(block 2049)

# Power node 2 off in the middle of its writes.
onb "echo 1 > /proc/sys/kernel/sysrq
(while true; do dd if=/tmp/markA of=$sdb bs=4k seek=3000 count=1 oflag=direct status=none; done) >/dev/null 2>&1 &"
sleep 2
say "powering guest B off"
onb_nowait 'echo o > /proc/sysrq-trigger'
wait_for 120 "corosync on node 1 sees node 2 gone" bash -c '[ "$(corosync-quorumtool -l | grep -c node)" -eq 1 ]'
corosync-quorumtool -s || true
wait_for 120 "node 1 serves again after DLM recovery" sg_turs "$sda"
dlm_tool ls | tee "$ART/dlm_tool-ls.txt"
before=$(cat /tmp/a-writes)
wait_for 60 "node 1's writer goes on" bash -c "[ \$(cat /tmp/a-writes) -gt $before ]"
kill "$awriter" 2>/dev/null || true
check_eq "every acknowledged PR change survived (keys through node 1)" "0x1 0x2 " "$(keys "$sda")"
check "node 1 still holds the reservation" bash -c "sg_persist --in --read-reservation $sda | grep -q 'Key=0x1'"
sg_persist -n --out --register --param-rk=0x1 --param-sark=0x11 "$sda"
check_eq "a PR OUT on the survivor" "0x11 0x2 " "$(keys "$sda")"
check "the reservation followed the new key" bash -c "sg_persist --in --read-reservation $sda | grep -q 'Key=0x11'"
dd if=/tmp/markB of="$sda" bs=4k seek=5000 count=1 oflag=direct conv=fsync status=none
check "the survivor's write is on the shared disk" cmp /tmp/markB <(block 5000)
"$TCMU_PRD" status | tee "$ART/status.txt"
# (started in a child shell above: not ours to `wait` for)
pid=$(cat "$ART/d.pid")
kill -TERM "$pid"
wait_for 30 "node 1's daemon exits" bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:.*Z' /proc/$pid/status"
check "node 1's daemon drained and exited cleanly" grep -q "drained; exiting" "$ART/d.log"
