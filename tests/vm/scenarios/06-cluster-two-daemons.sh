# Scenario: two daemons (user_1 vs user_2) serve views of one LU through the real DLM: one PR state, cluster-wide PREEMPT AND ABORT, I/O at depth through io_uring, kill -9 of one daemon
. "$VM_LIB"
need_target
need_dlm
need_scratch

img=$SCRATCH/shared.img
rm -f "$img" "$img.tcmu-prd-state"
truncate -s 64M "$img"
for n in 1 2; do
  # Two daemons on one node is a test set-up: only one may own the D-Bus
  # name (a system bus may be running from an earlier scenario), so neither does.
  printf '[daemon]\ndbus = false\n[devices]\nhbas = [%s]\n[cluster]\nmode = "dlm"\nupdate_timeout_ms = 8000\n[paths]\ncontrol_socket = "%s"\n' "$n" "/run/tcmu-prd/d$n.sock" > "$ART/d$n.toml"
done
daemon_start d1 --config "$ART/d1.toml"
daemon_start d2 --config "$ART/d2.toml"
wait_for 30 "d1 and d2 joined the lockspace" bash -c "grep -q 'joined the DLM lockspace' $ART/d1.log && grep -q 'joined the DLM lockspace' $ART/d2.log"

# One image, one view per daemon; each view exported through its own tcm_loop TPG.
cfg="dev_config=dlmfile/$img,dev_size=$((64 << 20))"
tcmu_create 1 v1 "$cfg" pgr_support=0
tcmu_create 2 v2 "$cfg" pgr_support=0
check "d1 shares the LU state through the DLM" grep -q "LU state shared through the cluster.*" "$ART/d1.log"
check "d2 shares the LU state through the DLM" grep -q "LU state shared through the cluster.*" "$ART/d2.log"
loop_tpg naa.5001405000000011 naa.5001405000000012
loop_tpg naa.5001405000000021 naa.5001405000000022
sda=$(loop_lun naa.5001405000000011 0 $TARGET/core/user_1/v1) || fail "no SCSI disk for user_1/v1"
sdb=$(loop_lun naa.5001405000000021 0 $TARGET/core/user_2/v2) || fail "no SCSI disk for user_2/v2"
say "view A (d1) is $sda, view B (d2) is $sdb"
wait_for 30 "d1 resolved its view's nexus" grep -q "serves one I_T nexus" "$ART/d1.log"
wait_for 30 "d2 resolved its view's nexus" grep -q "serves one I_T nexus" "$ART/d2.log"

check_eq "both views report one unit serial" "$(sg_vpd -p 0x80 -r "$sda" | od -An -tx1)" "$(sg_vpd -p 0x80 -r "$sdb" | od -An -tx1)"

keys() { sg_persist --in --read-keys "$1" 2>&1 | grep -o '0x[0-9a-f]*$' | sort | tr '\n' ' '; }
resv() { sg_persist --in --read-reservation "$1" 2>&1 | grep -iE 'key=|type' | tr -s ' \n' ' '; }

sg_persist --out --register --param-sark=0x1 "$sda"
sg_persist --out --register --param-sark=0x2 "$sdb"
sg_persist --out --reserve --param-rk=0x1 --prout-type=5 "$sda"
check_eq "keys seen through d1" "0x1 0x2 " "$(keys "$sda")"
check_eq "keys seen through d2" "0x1 0x2 " "$(keys "$sdb")"
check_eq "one reservation seen through both daemons" "$(resv "$sda")" "$(resv "$sdb")"
check "the reservation is key 0x1, Write Exclusive Registrants Only" bash -c "sg_persist --in --read-reservation $sdb | grep -q 'Key=0x1' && sg_persist --in --read-reservation $sdb | grep -qi 'registrants only'"

# WRITE(10) of LBA 0 through view A, retried past unit attentions only.
head -c 512 /dev/zero > /tmp/zero512
write_a() {
  local i out
  for i in 1 2 3 4 5 6; do
    out=$(sg_raw -s 512 -i /tmp/zero512 -v "$sda" 2a 00 00 00 00 00 00 00 01 00 2>&1 || true)
    echo "$out" >> "$ART/write_a.txt"
    grep -qi "unit attention" <<<"$out" || break
  done
  echo "$out"
}
check "a registered initiator writes through d1" bash -c "$(declare -f write_a); sda=$sda ART=$ART; write_a | grep -qi 'good'"

# B (through d2) preempts and aborts A. From that completion on, A's
# writes through d1 must conflict: d1 cannot still be serving the old state.
: > "$ART/write_a.txt"
sg_persist --out --preempt-abort --param-rk=0x2 --param-sark=0x1 --prout-type=5 "$sdb"
out=$(write_a)
echo "$out"
check "A's write through d1 right after PREEMPT AND ABORT through d2 is RESERVATION CONFLICT" grep -qi "reservation conflict" <<<"$out"
# (the kernel retries a UA on SG_IO itself, so sg_raw shows the conflict; d1's log shows the UA)
check "d1 queued the unit attention d2 recorded for A" grep -q "unit attentions recorded by the cluster queued.*5764959710352506898.*RegistrationsPreempted" "$ART/d1.log"
check_eq "keys through d1 after the preemption" "0x2 " "$(keys "$sda")"
check_eq "keys through d2 after the preemption" "0x2 " "$(keys "$sdb")"
check "reservation now held by key 0x2 (seen through d1)" bash -c "sg_persist --in --read-reservation $sda | grep -q 'Key=0x2'"

# tcmu-prd status, from each running daemon over its control socket.
st() { "$TCMU_PRD" status --json --socket "/run/tcmu-prd/$1.sock" > "$ART/status-$1.json" && python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$ART/status-$1.json" "$2"; }
"$TCMU_PRD" status --socket /run/tcmu-prd/d1.sock | tee "$ART/status-d1.txt"
check "status (table) names the lockspace and this node's membership" grep -q "cluster: dlm, lockspace tcmu-prd: joined, members \[1\]" "$ART/status-d1.txt"
check_eq "d1 status: cluster" "dlm tcmu-prd joined [1]" "$(st d1 '" ".join([s["cluster"]["mode"], s["cluster"]["lockspace"], s["cluster"]["state"], str(s["cluster"]["members"])])')"
check_eq "d1 status: one LU with one view, its nexus" "$img 1 naa.5001405000000012" "$(st d1 '" ".join([s["lus"][0]["image"], str(len(s["lus"][0]["views"])), s["lus"][0]["views"][0]["nexus"]["initiator"]["name"]])')"
check_eq "d2 status: same LU serial as d1" "$(st d1 's["lus"][0]["serial"]')" "$(st d2 's["lus"][0]["serial"]')"
check_eq "d1 status: registrations and reservation" "['0x2'] 0x2 5" "$(st d1 'str([r["key"] for r in s["lus"][0]["pr"]["registrations"]]) + " " + s["lus"][0]["pr"]["reservation"]["key"] + " " + str(s["lus"][0]["pr"]["reservation"]["type_code"])')"
check_eq "d2 status: same PR generation as d1" "$(st d1 's["lus"][0]["pr"]["generation"]')" "$(st d2 's["lus"][0]["pr"]["generation"]')"
check_eq "d1 holds the LU state lock in PR mode" "PR serving" "$(st d1 's["lus"][0]["cluster"]["lock"] + " " + s["lus"][0]["cluster"]["phase"]')"

# Steady state: no DLM request per command. The daemon counts them per LU
# (status: dlm_requests); 1024 reads through d1 leave the count unchanged.
before=$(st d1 's["lus"][0]["cluster"]["dlm_requests"]')
dd if="$sda" of=/dev/null bs=64k count=256 iflag=direct status=none
dd if="$sda" of=/dev/null bs=4k count=768 iflag=direct status=none
check_eq "reads make no DLM requests (status dlm_requests)" "$before" "$(st d1 's["lus"][0]["cluster"]["dlm_requests"]')"
# At depth, in cluster mode, READs/WRITEs go through each LU thread's
# io_uring (holding their admission until done), still no DLM request per
# command; B (the holder, through d2) writes and verifies, A reads.
fio --name=a --filename="$sda" --rw=randread --bs=4k --size=16M --number_ios=2000 --direct=1 --ioengine=libaio \
    --iodepth=16 --output="$ART/fio-a.txt"
check "fio reads at depth through d1" grep -q "err= 0" "$ART/fio-a.txt"
fio --name=b --filename="$sdb" --rw=randwrite --bs=4k --size=8M --offset=32M --direct=1 --ioengine=libaio \
    --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-b.txt"
check "fio write+verify at depth through d2" grep -q "err= 0" "$ART/fio-b.txt"
check_eq "I/O at depth makes no DLM requests" "$before" "$(st d1 's["lus"][0]["cluster"]["dlm_requests"]')"
check "d1 served reads through io_uring" test "$(st d1 's["lus"][0]["views"][0]["io_uring_commands"]')" -gt 1000
check "d2 served writes and reads through io_uring" test "$(st d2 's["lus"][0]["views"][0]["io_uring_commands"]')" -gt 3000
# A PR change through d2 while reads at depth run through d1: the update
# drains d1's admissions, which its io_uring I/Os hold; they finish, the
# change goes through, the reads go on.
fio --name=bg --filename="$sda" --rw=randread --bs=4k --size=16M --direct=1 --ioengine=libaio --iodepth=16 \
    --time_based --runtime=10 --output="$ART/fio-bg.txt" &
fiopid=$!
sleep 3
for k in 3 4 5 2; do
  check "PR OUT through d2 during I/O at depth (B's key to 0x$k)" timeout 20 sg_persist -n --out --register-ignore --param-sark=0x$k "$sdb"
done
wait $fiopid
check_eq "keys through d1 after the changes" "0x2 " "$(keys "$sda")"
check "the reads at depth through d1 went on without errors" grep -q "err= 0" "$ART/fio-bg.txt"

# Log level at run time: trace on d1 shows per-command lines, back to info stops them.
"$TCMU_PRD" log-level --socket /run/tcmu-prd/d1.sock "info,tcmu_prd=trace"
check_eq "status shows the new filter" "tcmu_prd=trace,info" "$(st d1 's["daemon"]["log_filter"]')"
dd if="$sda" of=/dev/null bs=4k count=4 iflag=direct status=none
check "trace lines appear after log-level trace" grep -q "completing.*device=user_1/v1" "$ART/d1.log"
"$TCMU_PRD" log-level --socket /run/tcmu-prd/d1.sock info
n=$(grep -c "completing" "$ART/d1.log")
dd if="$sda" of=/dev/null bs=4k count=4 iflag=direct status=none
check_eq "no trace lines after log-level info" "$n" "$(grep -c "completing" "$ART/d1.log")"
check_fails "log-level refuses a bad filter" "$TCMU_PRD" log-level --socket /run/tcmu-prd/d1.sock "=bad=="

# kill -9 d2 (the reservation holder's node): d1 carries on once the DLM has
# dropped d2's locks, and can change the state.
daemon_stop d2 KILL
check "d1 still serves reads after d2 died" dd if="$sda" of=/dev/null bs=4k count=16 iflag=direct status=none
sg_persist --out --register --param-sark=0x1 "$sda"
check_eq "PR OUT through d1 after d2 died" "0x1 0x2 " "$(keys "$sda")"
check "A (registered again) writes through d1" bash -c "$(declare -f write_a); sda=$sda ART=$ART; write_a | grep -qi 'good'"

# d2 comes back, adopts its view and sees the state d1 wrote meanwhile.
daemon_start d2b --config "$ART/d2.toml"
wait_for 30 "d2 restarted and adopted user_2/v2" grep -q "opened.*device=user_2/v2" "$ART/d2b.log"
check_eq "keys through the restarted d2" "0x1 0x2 " "$(keys "$sdb")"
# A stuck peer (alive, not answering blocking ASTs): d2 stopped while it
# holds the LU's state lock. An update through d1 gives up within
# update_timeout_ms (8 s) and ends BUSY, which the initiator's SCSI layer
# retries; once d2 runs again the retried PR OUT completes. (While d1 waits
# for EX it holds NL itself, so its own I/O waits too: DESIGN.md §4.)
kill -STOP "$(cat "$ART/d2b.pid")"
( timeout 120 sg_persist --out --register --param-rk=0x1 --param-sark=0x11 "$sda" > "$ART/prout-stuck.txt" 2>&1; echo "rc=$?" >> "$ART/prout-stuck.txt" ) &
prout=$!
wait_for 30 "d1 gave up waiting for the stuck peer (BUSY)" grep -q "reservation command failed, state unchanged: timed out waiting for the cluster lock" "$ART/d1.log"
kill -CONT "$(cat "$ART/d2b.pid")"
wait "$prout" || true
cat "$ART/prout-stuck.txt"
check "the PR OUT completed once the peer answered" grep -q "rc=0" "$ART/prout-stuck.txt"
check_eq "the new key, seen through d2" "0x11 0x2 " "$(keys "$sdb")"
check "d1 serves reads after the peer recovered" dd if="$sda" of=/dev/null bs=4k count=16 iflag=direct status=none
# PR OUT latency in cluster mode (EX, store write, LVB, with an idle peer);
# scenario 04 measures local mode in the same boot (BENCHMARKS.md).
python3 "$ROOT/tests/vm/pr_latency.py" "$sda" 200 "PR OUT, dlm mode, two daemons" | tee "$ART/pr-latency.json"

daemon_stop d2b TERM
daemon_stop d1 TERM
check_eq "d1 exit status" 0 "$DAEMON_RC"
