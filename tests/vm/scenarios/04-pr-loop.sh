# Scenario: persistent reservations through per-initiator views over tcm_loop, checked with sg_persist
. "$VM_LIB"
need_target
need_scratch

img=$SCRATCH/pr-loop.img
truncate -s 64M "$img"
daemon_start d1
W=naa.5001405000000101
IA=naa.500140500000a001
IB=naa.500140500000b002
"$TCMU_PRD" export --lu prl --image "$img" loopback --wwn $W --initiator $IA --initiator $IB | tee "$ART/export.txt"
# tcm_loop scans each TPG's LUN when its nexus appears.
wait_for 60 "two SCSI disks for the two views" bash -c '[ "$(ls /sys/class/scsi_disk | wc -l)" -ge 2 ]'
# A is initiator IA's view (tpgt_1), B is IB's (tpgt_2).
loop_views
say "views: A=$A B=$B"
check "both views report the same unit serial (one LU)" \
  test "$(sg_vpd -p sn -r "$A" | od -An -c)" = "$(sg_vpd -p sn -r "$B" | od -An -c)"

sg_persist -n --in --report-capabilities "$A" | tee "$ART/caps.txt"
check "REPORT CAPABILITIES: persist through power loss capable" grep -q "(PTPL_C): 1" "$ART/caps.txt"

sg_persist -n --out --register --param-sark=0xa "$A"
sg_persist -n --out --register --param-sark=0xb "$B"
sg_persist -n --in --read-keys "$B" | tee "$ART/keys.txt"
check "READ KEYS through B shows A's and B's keys" bash -c "grep -q 0xa $ART/keys.txt && grep -q 0xb $ART/keys.txt"
check "registration generation counted" grep -q "PR generation=0x2" "$ART/keys.txt"

sg_persist -n --out --reserve --param-rk=0xa --prout-type=5 "$A"
sg_persist -n --in --read-reservation "$B" | tee "$ART/res.txt"
check "B sees A's WERO reservation" bash -c "grep -q 'Key=0xa' $ART/res.txt && grep -qi 'Write Exclusive, registrants only' $ART/res.txt"

# tcmu-prd status (the daemon's default control socket): the LU, its two
# views with their I_T nexuses, and the PR state the initiators just made.
"$TCMU_PRD" status | tee "$ART/status.txt"
"$TCMU_PRD" status --json > "$ART/status.json"
stj() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$ART/status.json" "$1"; }
check_eq "status: local mode, one LU on the image" "local 1 $img" "$(stj 's["cluster"]["mode"] + " " + str(len(s["lus"])) + " " + s["lus"][0]["image"]')"
check_eq "status: each view's initiator" "$IA $IB" "$(stj '" ".join(sorted(v["nexus"]["initiator"]["name"] for v in s["lus"][0]["views"]))')"
check_eq "status: each view's target port" "loopback/$W/tpgt_1 loopback/$W/tpgt_2" "$(stj '" ".join(sorted(v["nexus"]["target_port"] for v in s["lus"][0]["views"]))')"
check_eq "status: registrations (key initiator holder)" "0xa $IA True 0xb $IB False" "$(stj '" ".join(r["key"] + " " + r["nexus"]["initiator"]["name"] + " " + str(r["holder"]) for r in s["lus"][0]["pr"]["registrations"])')"
check_eq "status: reservation" "5 0xa $IA 2" "$(stj '" ".join([str(s["lus"][0]["pr"]["reservation"]["type_code"]), s["lus"][0]["pr"]["reservation"]["key"], s["lus"][0]["pr"]["reservation"]["holder"]["initiator"]["name"], str(s["lus"][0]["pr"]["generation"])])')"
check "status table: the reservation line" grep -q "reservation: Write Exclusive, registrants only (type 5), key 0xa" "$ART/status.txt"

# Registrants may write under WERO.
dd if=/dev/urandom of="$B" bs=4k count=1 oflag=direct status=none
say "ok: registered B writes under WERO"

# A preempts B's registration and aborts its tasks: B's writes now conflict.
sg_persist -n --out --preempt-abort --param-rk=0xa --param-sark=0xb --prout-type=5 "$A"
sg_turs "$B" >/dev/null 2>&1 || true   # consumes B's unit attention (REGISTRATIONS PREEMPTED)
if dd if=/dev/zero of="$B" bs=4k count=1 oflag=direct status=none 2> "$ART/dd-b.txt"; then
  fail "B wrote after being preempted"
fi
say "ok: preempted B's write failed: $(cat "$ART/dd-b.txt")"
sg_raw -v -r 0 "$B" 2a 00 00 00 00 00 00 00 01 00 -s 512 -i /dev/zero > "$ART/sgraw-b.txt" 2>&1 || true
check "B's WRITE gets RESERVATION CONFLICT" grep -qi "reservation conflict" "$ART/sgraw-b.txt"
# Reads stay open to everyone under Write Exclusive.
check "B can still read" dd if="$B" of=/dev/null bs=4k count=1 iflag=direct status=none
# A (holder) writes.
check "holder A writes" dd if=/dev/zero of="$A" bs=4k count=1 oflag=direct status=none
sg_persist -n --in --read-keys "$A" | tee "$ART/keys2.txt"
check "B's key is gone" bash -c "! grep -q 0xb $ART/keys2.txt"

# The state is durable: a daemon restart keeps it.
daemon_stop d1 TERM
daemon_start d2
sg_turs "$A" >/dev/null 2>&1 || true
sg_persist -n --in --read-reservation "$A" | tee "$ART/res2.txt"
check "reservation survives a daemon restart" grep -q "Key=0xa" "$ART/res2.txt"

# Release and clear.
sg_persist -n --out --release --param-rk=0xa --prout-type=5 "$A"
sg_persist -n --out --clear --param-rk=0xa "$A"
sg_persist -n --in --read-keys "$A" | tee "$ART/keys3.txt"
check "CLEAR removed every registration" grep -qi "there are NO registered reservation keys" "$ART/keys3.txt"

# Every reservation type, A holding it: what READ(10) and WRITE(10) from B
# get, unregistered and registered (SPC-4 table "commands allowed in the
# presence of various reservations", read and write rows).
io() { # io DISK read|write -> ok | conflict | other (past unit attentions)
  local out i
  for i in 1 2 3 4 5 6; do
    if [ "$2" = read ]; then
      out=$(sg_raw -v -r 512 "$1" 28 00 00 00 00 10 00 00 01 00 2>&1)
    else
      out=$(head -c 512 /dev/zero | sg_raw -v -s 512 -i /dev/stdin "$1" 2a 00 00 00 00 10 00 00 01 00 2>&1)
    fi
    grep -qi "unit attention" <<<"$out" || break
  done
  if grep -qi "reservation conflict" <<<"$out"; then echo conflict
  elif grep -qi "good" <<<"$out"; then echo ok
  else echo "other: $out" | tr '\n' ' '; fi
}
# type -> "unregistered-read unregistered-write registered-read registered-write"
declare -A want=(
  [1]="ok conflict ok conflict"                 # Write Exclusive
  [3]="conflict conflict conflict conflict"     # Exclusive Access
  [5]="ok conflict ok ok"                       # Write Exclusive, registrants only
  [6]="conflict conflict ok ok"                 # Exclusive Access, registrants only
  [7]="ok conflict ok ok"                       # Write Exclusive, all registrants
  [8]="conflict conflict ok ok"                 # Exclusive Access, all registrants
)
for t in 1 3 5 6 7 8; do
  sg_persist -n --out --register --param-sark=0xa "$A" >/dev/null
  sg_persist -n --out --reserve --param-rk=0xa --prout-type=$t "$A" >/dev/null
  got="$(io "$B" read) $(io "$B" write)"
  sg_persist -n --out --register --param-sark=0xb "$B" >/dev/null
  got="$got $(io "$B" read) $(io "$B" write)"
  check_eq "type $t: B's read/write unregistered, then registered" "${want[$t]}" "$got"
  check_eq "type $t: the holder A writes" ok "$(io "$A" write)"
  sg_persist -n --out --clear --param-rk=0xa "$A" >/dev/null
done

# kill -9 in the middle of a PR OUT, at each step of the state write
# (before, half a slot written, after it but before the command completed):
# the store then holds the old or the new state, never a mix, and after a
# restart READ KEYS reports the state the store holds.
store="$img.tcmu-prd-state"
state_keys() { "$TCMU_PRD" show-state "$store" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted("0x%x" % r["key"] for r in d["state"]["pr"]["registrations"])))'; }
state_seq() { "$TCMU_PRD" show-state "$store" | python3 -c 'import json, sys; print(json.load(sys.stdin)["seq"])'; }
read_keys() { sg_persist -n --in --read-keys "$A" 2>&1 | grep -o '0x[0-9a-f]*$' | sort | tr '\n' ' ' | sed 's/ $//'; }
cur=d2
for point in before mid after; do
  sg_persist -n --out --register-ignore --param-sark=0xa "$A" >/dev/null
  sg_persist -n --out --clear --param-rk=0xa "$A" >/dev/null
  sg_persist -n --out --register --param-sark=0xa "$A" >/dev/null
  daemon_stop $cur TERM
  next=$(( $(state_seq) + 1 ))
  export TCMU_PRD_CRASH_AT="$point@$next"
  daemon_start crash-$point
  unset TCMU_PRD_CRASH_AT
  ( timeout 120 sg_persist -n --out --register --param-sark=0xb "$B" > "$ART/prout-$point.txt" 2>&1 ) &
  prout=$!
  wait_for 60 "the daemon died $point the state write" grep -q "TCMU_PRD_CRASH_AT: aborting" "$ART/crash-$point.log"
  daemon_stop crash-$point KILL
  if [ "$point" = after ]; then want="0xa 0xb"; else want="0xa"; fi
  check_eq "store after a crash $point the write: one whole state" "$want" "$(state_keys)"
  daemon_start back-$point
  wait "$prout" || true
  say "the interrupted PR OUT ended: $(tr '\n' ' ' < "$ART/prout-$point.txt")"
  # The initiator may retry the interrupted PR OUT after the restart (the
  # ring reset ends it BUSY): then the new state, else the stored one.
  got=$(read_keys)
  case "$got" in "0xa"|"0xa 0xb") ;; *) fail "READ KEYS after the crash $point: '$got' is neither state" ;; esac
  check_eq "READ KEYS agrees with the store after the crash $point" "$(state_keys)" "$got"
  cur=back-$point
done
daemon_stop $cur TERM

# Power on (SPC-4, APTPL): the LU's views all go and come back while the
# daemon runs (what a target restart or node reboot looks like to it):
# without APTPL the registrations and the reservation are gone, with APTPL
# they persist. (A daemon restart alone is not a power on: see above.)
daemon_start ap
ex() { "$TCMU_PRD" "$1" --lu prl --image "$img" loopback --wwn $W --initiator $IA --initiator $IB > "$ART/$1.txt"; }
find_views() {
  wait_for 60 "two SCSI disks for the two views" bash -c '[ "$(ls /sys/class/scsi_disk | wc -l)" -ge 2 ]'
  loop_views
}
power_cycle() {
  ex unexport
  wait_for 30 "the views' disks are gone" bash -c '[ "$(ls /sys/class/scsi_disk | wc -l)" -eq 0 ]'
  ex export
  find_views
  sg_turs "$A" >/dev/null 2>&1 || true
}
sg_persist -n --out --register-ignore --param-sark=0xa "$A" >/dev/null
sg_persist -n --out --clear --param-rk=0xa "$A" >/dev/null
sg_persist -n --out --register --param-sark=0xa "$A" >/dev/null
sg_persist -n --out --reserve --param-rk=0xa --prout-type=5 "$A" >/dev/null
power_cycle
check_eq "without APTPL, a power on drops the registrations" "" "$(read_keys)"
check "... and the reservation" bash -c "sg_persist -n --in --read-reservation $A | grep -qi 'no reservation'"
check "the daemon logged the power on" grep -q "LU powered on: registrations and reservation without APTPL dropped" "$ART/ap.log"
sg_persist -n --out --register --param-sark=0xa --param-aptpl "$A" >/dev/null
sg_persist -n --out --reserve --param-rk=0xa --prout-type=5 "$A" >/dev/null
sg_persist -n --in --report-capabilities "$A" > "$ART/caps-aptpl.txt"
check "REPORT CAPABILITIES: APTPL activated" grep -q "(PTPL_A): 1" "$ART/caps-aptpl.txt"
power_cycle
check_eq "with APTPL, the registration survives a power on" "0xa" "$(read_keys)"
check "... and the reservation" bash -c "sg_persist -n --in --read-reservation $A | grep -q 'Key=0xa'"
# PR OUT latency in local mode; scenario 06 measures cluster mode in the
# same boot (BENCHMARKS.md). A measurement, never a pass/fail criterion.
python3 "$ROOT/tests/vm/pr_latency.py" "$A" 200 "PR OUT, local mode" | tee "$ART/pr-latency.json"
daemon_stop ap TERM
