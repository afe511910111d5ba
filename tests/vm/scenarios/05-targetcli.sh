# Scenario: operator integration: targetcli drives tcmu-prd over the system D-Bus (lists user:dlmfile, creates/deletes a backstore we serve, refuses bad cfgstrings with our message; a second daemon refuses to start); scripts/install stages a unit that systemd-analyze verify accepts, with man pages
. "$VM_LIB"
need_target
need_scratch
need_targetcli   # installs dist/dbus/org.kernel.TCMUService1.conf, starts dbus-daemon

img=$SCRATCH/tc1.img
truncate -s 64M "$img"

# [daemon] dbus = true: the daemon refuses to start without the service.
printf '[daemon]\ndbus = true\n' > "$ART/tcmu-prd.toml"
daemon_start d1 --config "$ART/tcmu-prd.toml"
check "daemon owns org.kernel.TCMUService1" grep -q "D-Bus service up.*org.kernel.TCMUService1" "$ART/d1.log"

# The handler object as targetcli reads it (GetManagedObjects, then CheckConfig).
dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1 \
  org.freedesktop.DBus.ObjectManager.GetManagedObjects > "$ART/managed.txt"
check "GetManagedObjects lists /org/kernel/TCMUService1/dlmfile" grep -q 'object path "/org/kernel/TCMUService1/dlmfile"' "$ART/managed.txt"
check "GetManagedObjects carries ConfigDesc" grep -q '"ConfigDesc"' "$ART/managed.txt"
dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/dlmfile \
  org.kernel.TCMUService1.CheckConfig "string:dlmfile/$img" > "$ART/checkconfig.txt"
check "CheckConfig accepts the image" grep -q "boolean true" "$ART/checkconfig.txt"

# targetcli lists our handler.
targetcli ls /backstores > "$ART/ls.txt" 2>&1
cat "$ART/ls.txt"
check "targetcli ls shows user:dlmfile" grep -q "user:dlmfile" "$ART/ls.txt"
targetcli /backstores/user:dlmfile help create > "$ART/help-create.txt" 2>&1 || true
check "targetcli help create prints our ConfigDesc" grep -q "dlmfile cfgstring: <image>\[;key=value\]" "$ART/help-create.txt"

# Create through targetcli: CheckConfig passes, rtslib writes configfs, the
# kernel sends ADDED_DEVICE and we serve the ring.
targetcli /backstores/user:dlmfile create name=tc1 size=64M "cfgstring=$img;serial=tc1" > "$ART/create.txt" 2>&1
cat "$ART/create.txt"
check "targetcli created the backstore" grep -q "Created user-backed storage object tc1" "$ART/create.txt"
wait_for 10 "daemon opened the targetcli backstore" grep -q "opened.*device=user_[0-9]*/tc1" "$ART/d1.log"
uio=$(uio_for tc1) || fail "no uio device for tc1"
say "tc1 is $uio: $(cat /sys/class/uio/$uio/name)"
targetcli ls /backstores/user:dlmfile > "$ART/ls-tc1.txt" 2>&1
check "targetcli lists tc1 under user:dlmfile" grep -q "tc1" "$ART/ls-tc1.txt"

# The LU answers SCSI through tcm_loop with the serial from the cfgstring.
bs=$(ls -d $TARGET/core/user_*/tc1)
loop_tpg naa.5001405000000051 naa.5001405000000052
sd=$(loop_lun naa.5001405000000051 0 "$bs") || fail "no SCSI disk appeared for tc1"
sg_vpd -p 0x80 "$sd" > "$ART/vpd80.txt" 2>&1
check "unit serial is the cfgstring's serial=tc1" grep -q "tc1" "$ART/vpd80.txt"
head -c $((1 << 20)) /dev/urandom > /tmp/tc-pattern
dd if=/tmp/tc-pattern of="$sd" bs=1M seek=2 oflag=direct conv=fsync status=none
check "bytes written through the LUN are in the image" cmp /tmp/tc-pattern <(dd if="$img" bs=1M skip=2 count=1 status=none)
echo 1 > "/sys/block/$(basename "$sd")/device/delete"
find $TARGET/loopback/naa.5001405000000051/tpgt_1/lun/lun_0 -maxdepth 1 -type l -delete
rmdir $TARGET/loopback/naa.5001405000000051/tpgt_1/lun/lun_0

# Invalid cfgstrings: targetcli refuses before touching configfs, with our reason.
refused() {  # NAME CFGSTRING EXPECTED-SUBSTRING
  local out="$ART/refuse-$1.txt"
  targetcli /backstores/user:dlmfile create "name=$1" size=1M "cfgstring=$2" > "$out" 2>&1 || true
  cat "$out"
  check "targetcli refuses $1 with: $3" grep -qF "cfgstring invalid: $3" "$out"
  check "no backstore $1 in configfs" bash -c "! ls -d $TARGET/core/user_*/$1 2>/dev/null | grep -q ."
}
refused bad1 /nonexistent/x.img "path /nonexistent/x.img: No such file or directory"
refused bad2 "$img;fast=1" 'unknown key "fast"'
refused bad3 "$img;state=/nonexistent-dir/s" "state /nonexistent-dir/s: directory /nonexistent-dir"
refused bad4 "$SCRATCH" "path $SCRATCH: not a regular file or block device"
check "daemon logged the refusal" grep -q "CheckConfig: refused" "$ART/d1.log"

# A second daemon (standing in for tcmu-runner) must not start: the name is taken.
set +e
timeout 30 "$TCMU_PRD" run > "$ART/second.log" 2>&1
rc=$?
set -e
cat "$ART/second.log"
check "second daemon exited non-zero (rc $rc)" test "$rc" -ne 0 -a "$rc" -ne 124
check "second daemon says who owns the name" grep -q "tcmu-runner (or another tcmu-prd) owns org.kernel.TCMUService1: they cannot run together" "$ART/second.log"
check "first daemon still serves tc1" test -e "/sys/class/uio/$uio"

# Delete through targetcli: the kernel sends REMOVED_DEVICE and we let go.
targetcli /backstores/user:dlmfile delete tc1 > "$ART/delete.txt" 2>&1
cat "$ART/delete.txt"
check "targetcli deleted tc1" grep -q "Deleted storage object tc1" "$ART/delete.txt"
wait_for 10 "daemon logged the removal" grep -q "removed.*device=user_[0-9]*/tc1" "$ART/d1.log"
no_uio() { ! uio_for "$1" >/dev/null; }
check "uio device is gone" no_uio tc1
check "image is still there" test -f "$img"

daemon_stop d1 TERM
check_eq "daemon exit status after SIGTERM" 0 "$DAEMON_RC"

# Installation: scripts/install into a staging root, with the unit's
# ExecStart pointing at the binary under test; systemd-analyze verify checks
# the unit and its cluster drop-in (their dependencies, ExecStart, and the
# man pages named in Documentation=, generated from the CLI definitions).
stage=$ART/stage
DESTDIR=$stage SBINDIR="$(dirname "$TCMU_PRD")" CARGO_TARGET_DIR="$(dirname "$(dirname "$TCMU_PRD")")" \
  "$ROOT/scripts/install" --no-build --cluster | tee "$ART/install.txt"
units=$stage/etc/systemd/system
check "unit installed" test -f "$units/tcmu-prd.service"
check "cluster drop-in installed" test -f "$units/tcmu-prd.service.d/cluster.conf"
verify() { SYSTEMD_UNIT_PATH="$1:" MANPATH=$stage/usr/local/share/man systemd-analyze verify tcmu-prd.service; }
check "systemd-analyze verify accepts the unit and its drop-in" verify "$units"
check_eq "the unit waits for the DLM in cluster mode" "Requires=corosync.service dlm.service" "$(grep '^Requires=' "$units/tcmu-prd.service.d/cluster.conf")"
check "man page: status documents --json" bash -c "MANWIDTH=100 man -l $stage/usr/local/share/man/man8/tcmu-prd-status.8 | grep -q -- '--json'"
# ...and verify can fail: an ExecStart that does not exist.
mkdir -p "$ART/bad-units"
sed 's|^ExecStart=.*|ExecStart=/nonexistent/tcmu-prd run|' "$units/tcmu-prd.service" > "$ART/bad-units/tcmu-prd.service"
check_fails "systemd-analyze verify refuses a unit whose ExecStart is missing" verify "$ART/bad-units"
