# Scenario: Pacemaker's fence_scsi fences and unfences a "node" whose path goes through another tcmu-prd daemon (two daemons, one LU, the real DLM); a fenced writer's commands never reach the image after the fence completes
. "$VM_LIB"
need_target
need_dlm
need_scratch
command -v fence_scsi >/dev/null || fail "fence_scsi missing (fence-agents; scripts/setup installs it)"

img=$SCRATCH/fence.img
rm -f "$img" "$img.tcmu-prd-state"
truncate -s 64M "$img"
for n in 1 2; do
  printf '[daemon]\ndbus = false\n[devices]\nhbas = [%s]\n[cluster]\nmode = "dlm"\nupdate_timeout_ms = 8000\n[paths]\ncontrol_socket = "%s"\n' "$((n + 2))" "/run/tcmu-prd/fence-d$n.sock" > "$ART/d$n.toml"
done
daemon_start d1 --config "$ART/d1.toml"
daemon_start d2 --config "$ART/d2.toml"
wait_for 30 "both daemons joined the lockspace" bash -c "grep -q 'joined the DLM lockspace' $ART/d1.log && grep -q 'joined the DLM lockspace' $ART/d2.log"

# Node 1 reaches the LU through d1, node 2 through d2: one view each, each
# behind its own tcm_loop TPG (its own I_T nexus).
cfg="dev_config=dlmfile/$img,dev_size=$((64 << 20)),hw_max_sectors=8192"
tcmu_create 3 n1 "$cfg" pgr_support=0 tmr_notification=1
tcmu_create 4 n2 "$cfg" pgr_support=0 tmr_notification=1
loop_tpg naa.5001405000000031 naa.5001405000000032
loop_tpg naa.5001405000000041 naa.5001405000000042
sd1=$(loop_lun naa.5001405000000031 0 $TARGET/core/user_3/n1) || fail "no SCSI disk for node 1"
sd2=$(loop_lun naa.5001405000000041 0 $TARGET/core/user_4/n2) || fail "no SCSI disk for node 2"
wait_for 30 "d1 resolved node 1's nexus" grep -q "serves one I_T nexus" "$ART/d1.log"
wait_for 30 "d2 resolved node 2's nexus" grep -q "serves one I_T nexus" "$ART/d2.log"
say "node 1 uses $sd1 (d1), node 2 uses $sd2 (d2)"

keys() { sg_persist --in --read-keys "$1" 2>&1 | grep -o '0x[0-9a-f]*$' | sort | tr '\n' ' '; }
fs() { fence_scsi --devices="$1" --key="$2" --action="$3" > "$ART/fence-$2-$3.txt" 2>&1; }

# Unfencing: each node registers its key; the first creates the WERO
# reservation (fence_scsi remembers the local key in /var/run/cluster).
fs "$sd2" 2 on || { cat "$ART/fence-2-on.txt"; fail "fence_scsi on for node 2"; }
fs "$sd1" 1 on || { cat "$ART/fence-1-on.txt"; fail "fence_scsi on for node 1"; }
check_eq "both keys registered, seen through d1" "0x1 0x2 " "$(keys "$sd1")"
check_eq "both keys registered, seen through d2" "0x1 0x2 " "$(keys "$sd2")"
check "one WERO reservation (seen through d2)" bash -c "sg_persist --in --read-reservation $sd2 | grep -qi 'registrants only'"
check "fence_scsi status: node 2 is on" fs "$sd2" 2 status
check "node 2 writes while unfenced" dd if=/dev/urandom of="$sd2" bs=4k count=16 seek=100 oflag=direct conv=fsync status=none

# Node 2 keeps writing a marker pattern while node 1 fences it: after
# fence_scsi returns (PREEMPT AND ABORT through d1 completed), not one more
# write of node 2's reaches the image through d2.
marker() { head -c 4096 /dev/zero | tr '\0' "$1"; }
marker A > /tmp/markA
( while dd if=/tmp/markA of="$sd2" bs=4k seek=2048 count=1 oflag=direct status=none 2>/dev/null; do :; done ) &
writer=$!
sleep 2
check "node 2's writer is landing before the fence" \
  cmp /tmp/markA <(dd if="$img" bs=4k skip=2048 count=1 iflag=direct status=none)
fs "$sd1" 2 off || { cat "$ART/fence-2-off.txt"; fail "fence_scsi off (node 1 fences node 2)"; }
say "fence_scsi off returned"
# The image region node 2 was writing: overwrite it through node 1 (still
# registered) and check that no later write of node 2 lands on top.
marker B > /tmp/markB
dd if=/tmp/markB of="$sd1" bs=4k seek=2048 count=1 oflag=direct conv=fsync status=none
sleep 3
kill "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
check "no write of the fenced node reached the image after the fence" \
  cmp /tmp/markB <(dd if="$img" bs=4k skip=2048 count=1 iflag=direct status=none)
check_eq "only node 1's key is left" "0x1 " "$(keys "$sd1")"
set +e
fs "$sd2" 2 status; st=$?
# (past the unit attentions the fence left for node 2: 2A/05, 2F/00)
for i in 1 2 3 4 5 6; do
  out=$(head -c 512 /tmp/markA | sg_raw -s 512 -i /dev/stdin -v "$sd2" 2a 00 00 00 08 00 00 00 01 00 2>&1)
  echo "$out" >> "$ART/fenced-write.txt"
  grep -qi "unit attention" <<<"$out" || break
done
set -e
[ "$st" -ne 0 ] || fail "fence_scsi status says node 2 is still on"
say "ok: fence_scsi status reports node 2 off (exit $st)"
check "a write of the fenced node is RESERVATION CONFLICT" grep -qi "reservation conflict" <<<"$out"
check "d2 logged the unit attention for node 2" grep -q "unit attentions recorded by the cluster queued" "$ART/d2.log"

# Unfence node 2 (what Pacemaker does when it rejoins): writes work again.
fs "$sd2" 2 on || { cat "$ART/fence-2-on.txt"; fail "fence_scsi on (unfence node 2)"; }
check_eq "node 2 registered again" "0x1 0x2 " "$(keys "$sd1")"
check "node 2 writes after unfencing" dd if=/tmp/markA of="$sd2" bs=4k seek=2049 count=1 oflag=direct conv=fsync status=none
check "the reservation survived fencing and unfencing" bash -c "sg_persist --in --read-reservation $sd1 | grep -q 'Key=0x1'"

daemon_stop d2 TERM
daemon_stop d1 TERM
check_eq "d1 exit status" 0 "$DAEMON_RC"
