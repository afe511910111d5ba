# Helpers for VM-tier scenarios (sourced; runs inside the guest).
# A scenario is a bash script run with -euo pipefail; any failing command
# fails it. Use `check` for assertions so the log says what was expected.

CONFIGFS=/sys/kernel/config
TARGET=$CONFIGFS/target

say() { printf '[%s] %s\n' "$(date -u +%T)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
# check DESCRIPTION COMMAND...: runs the command, fails the scenario if it fails.
check() { local d="$1"; shift; if "$@"; then say "ok: $d"; else fail "$d (command: $*)"; fi; }
# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() { if [ "$2" = "$3" ]; then say "ok: $1 ($3)"; else fail "$1: expected '$2', got '$3'"; fi; }
# check_fails DESCRIPTION COMMAND...: the command must fail (its output is shown).
check_fails() { local d="$1"; shift; if "$@"; then fail "$d: succeeded (command: $*)"; else say "ok: $d"; fi; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls until the command succeeds.
wait_for() {
  local t="$1" d="$2"; shift 2
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || fail "timed out after ${t}s waiting for: $d"
    sleep 0.5
  done
  say "ok: $d"
}

need_configfs() {
  modprobe configfs
  mountpoint -q $CONFIGFS || mount -t configfs none $CONFIGFS
}

# LIO core, TCMU, fileio, loopback and iSCSI fabrics.
need_target() {
  need_configfs
  local m
  for m in target_core_mod target_core_user target_core_file tcm_loop iscsi_target_mod; do
    modprobe "$m" || fail "cannot load kernel module $m"
  done
  ip link set lo up
  [ -d $TARGET/core ] || fail "LIO configfs tree $TARGET/core missing after loading target_core_mod"
}

# Single-node corosync + dlm_controld (Debian's default corosync.conf is a
# one-node cluster). Idempotent: later scenarios reuse the running daemons.
need_dlm() {
  need_configfs
  modprobe dlm || fail "cannot load kernel module dlm"
  ip link set lo up
  if ! pgrep -x corosync >/dev/null; then
    mkdir -p /var/log/corosync /var/lib/corosync
    corosync -f > "$RESULTS/corosync.log" 2>&1 &
    wait_for 30 "corosync up" corosync-cfgtool -s
  fi
  if ! pgrep -x dlm_controld >/dev/null; then
    mkdir -p /etc/dlm
    # Test machines only: no fencing device exists in the guest.
    printf 'enable_fencing=0\nenable_quorum_fencing=0\n' > /etc/dlm/dlm.conf
    dlm_controld --foreground > "$RESULTS/dlm_controld.log" 2>&1 &
    # configfs/dlm/cluster can outlive a killed dlm_controld: also wait for
    # the new daemon to answer.
    wait_for 30 "dlm_controld joined the cluster" bash -c "test -d $CONFIGFS/dlm/cluster && dlm_tool status"
  fi
}

# corosync_phantom on|off: adds (or removes) a second node that never comes
# up to the running single-node cluster (corosync.conf + reload): with it,
# expected votes are 2 and this node has no quorum, without a membership
# change (dlm_controld keeps the lockspace running).
corosync_phantom() {
  local orig=/tmp/corosync.conf.single
  [ -f $orig ] || cp /etc/corosync/corosync.conf $orig
  if [ "$1" = on ]; then
    python3 - $orig > /etc/corosync/corosync.conf <<'PY'
import sys
s = open(sys.argv[1]).read().rstrip()
assert s.endswith("}"), "corosync.conf does not end with the nodelist"
print(s[:-1] + "\tnode {\n\t\tname: phantom\n\t\tnodeid: 2\n\t\tring0_addr: 127.0.0.2\n\t}\n}")
PY
  else
    cp $orig /etc/corosync/corosync.conf
  fi
  corosync-cfgtool -R >/dev/null
}

# tcmu_create HBA NAME CONTROL [ATTR=VALUE ...]: a TCMU backstore, enabled.
tcmu_create() {
  local hba="$1" name="$2" control="$3"; shift 3
  local d=$TARGET/core/user_$hba/$name a
  mkdir -p "$d"
  echo -n "$control" > "$d/control"
  for a in "$@"; do echo "${a#*=}" > "$d/attrib/${a%%=*}"; done
  echo 1 > "$d/enable"
}

# uio_for NAME: prints uioN of the TCMU device whose backstore is NAME.
uio_for() {
  local u
  for u in /sys/class/uio/uio*; do
    [ -e "$u/name" ] || continue
    case "$(cat "$u/name")" in tcm-user/*/"$1"/*|tcm-user/*/"$1") basename "$u"; return 0 ;; esac
  done
  return 1
}

# Removes every LIO object (fabrics first, then backstores, then HBAs).
lio_teardown() {
  [ -d $TARGET ] || return 0
  local f w t l a m
  for f in $TARGET/*/; do
    case "$(basename "$f")" in core|dbroot|version) continue ;; esac
    for w in "$f"*/; do
      [ -d "$w" ] || continue
      case "$(basename "$w")" in discovery_auth) continue ;; esac
      for t in "$w"tpgt_*/; do
        [ -d "$t" ] || continue
        [ -f "$t/enable" ] && echo 0 > "$t/enable" 2>/dev/null || true
        for a in "$t"acls/*/; do
          [ -d "$a" ] || continue
          for m in "$a"lun_*/; do [ -d "$m" ] && { find "$m" -maxdepth 1 -type l -delete; rmdir "$m"; }; done
          rmdir "$a"
        done
        for l in "$t"lun/lun_*/; do [ -d "$l" ] && { find "$l" -maxdepth 1 -type l -delete; rmdir "$l"; }; done
        for a in "$t"np/*/; do [ -d "$a" ] && rmdir "$a"; done
        rmdir "$t" 2>/dev/null || true
      done
      rmdir "$w" 2>/dev/null || true
    done
    rmdir "$f" 2>/dev/null || true
  done
  for h in $TARGET/core/*_*/; do
    [ -d "$h" ] || continue
    for b in "$h"*/; do [ -d "$b" ] && [ "$(basename "$b")" != hba_info ] && rmdir "$b" 2>/dev/null; done
    rmdir "$h" 2>/dev/null || true
  done
}

# Between scenarios: stop our daemons, tear LIO down. The cluster stack stays up.
vm_cleanup() {
  pkill -TERM -x tcmu-prd 2>/dev/null && sleep 1
  pkill -KILL -x tcmu-prd 2>/dev/null || true
  lio_teardown
}

# daemon_start NAME [tcmu-prd run args...]: starts `tcmu-prd run` in the
# background with its log in $ART/NAME.log; waits until it says it is ready.
# The pid is in $ART/NAME.pid.
daemon_start() {
  local name="$1"; shift
  : > "$ART/$name.log"
  TCMU_PRD_LOG="${TCMU_PRD_LOG:-info,tcmu_prd=debug}" "$TCMU_PRD" run "$@" >> "$ART/$name.log" 2>&1 &
  echo $! > "$ART/$name.pid"
  wait_for 60 "daemon $name ready" grep -q " ready devices=" "$ART/$name.log"
}

# daemon_stop NAME [SIGNAL]: stops it and waits; its exit status is left in
# $DAEMON_RC (not printed: `wait` only works in the shell that started it).
daemon_stop() {
  local pid; pid=$(cat "$ART/$1.pid")
  kill -"${2:-TERM}" "$pid" 2>/dev/null || true
  DAEMON_RC=0
  wait "$pid" || DAEMON_RC=$?
}

# loop_tpg WWN INITIATOR_WWN: a tcm_loop target port with its I_T nexus
# (tcm_loop has one initiator per TPG). Both names are naa.<16 hex digits>.
loop_tpg() {
  mkdir -p "$TARGET/loopback/$1/tpgt_1"
  echo "$2" > "$TARGET/loopback/$1/tpgt_1/nexus"
}

# loop_lun WWN LUN BACKSTORE_DIR: exports a backstore as LUN through the
# tcm_loop TPG (see loop_tpg) and prints the /dev/sdX that appears.
loop_lun() {
  local l=$TARGET/loopback/$1/tpgt_1 lun="$2" bs="$3"
  local before d end
  before=" $(ls /sys/block | tr '\n' ' ') "
  mkdir -p "$l/lun/lun_$lun"
  ln -s "$bs" "$l/lun/lun_$lun/$(basename "$bs")"
  end=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    for d in $(ls /sys/block); do
      case "$before" in *" $d "*) continue ;; esac
      case "$d" in sd*) [ -b "/dev/$d" ] && { echo "/dev/$d"; return 0; } ;; esac
    done
    sleep 0.5
  done
  return 1
}

# loop_views: sets A and B to the /dev/sdX of the tcm_loop TPGs 1 and 2.
# tcm_loop adds a TPG's LUN at SCSI address host:0:TPGT:LUN, so the target
# id says which TPG (and so which initiator) a disk is; the order disks
# appear in /sys/block is the scan order, which varies from boot to boot.
loop_views() {
  local b t n=0 seen=
  A=; B=
  for b in /sys/block/sd*; do
    [ -e "$b/device" ] || continue
    n=$((n + 1))
    t=$(basename "$(readlink -f "$b/device")" | cut -d: -f3)
    seen="$seen $(basename "$b"):$t"
    case "$t" in
      1) [ -z "$A" ] || fail "two disks for tpgt_1:$seen"; A=/dev/$(basename "$b") ;;
      2) [ -z "$B" ] || fail "two disks for tpgt_2:$seen"; B=/dev/$(basename "$b") ;;
    esac
  done
  [ "$n" -eq 2 ] || fail "expected 2 disks, found $n (disk:target id):${seen:- none}"
  [ -n "$A" ] && [ -n "$B" ] || fail "no disks for tpgt_1 and tpgt_2 (disk:target id):$seen"
}

# targetcli in the guest needs the system bus and a writable home. Our D-Bus
# policy goes into the guest's /etc (a writable overlay) so tcmu-prd may own
# org.kernel.TCMUService1 (targetcli's user:dlmfile).
need_targetcli() {
  mkdir -p /run/dbus /etc/target /etc/dbus-1/system.d
  cp "$ROOT/dist/dbus/org.kernel.TCMUService1.conf" /etc/dbus-1/system.d/
  if pgrep -x dbus-daemon >/dev/null; then
    dbus-send --system --type=method_call --dest=org.freedesktop.DBus \
      /org/freedesktop/DBus org.freedesktop.DBus.ReloadConfig
  else
    dbus-daemon --system --fork
  fi
  export TARGETCLI_HOME; TARGETCLI_HOME=$(mktemp -d)
}

# libiscsi's default and second initiator names (iscsi-test-cu -I).
INI1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
INI2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2

# iscsi_target IQN: an iSCSI target on 127.0.0.1:3260 (tpg1).
iscsi_target() {
  targetcli /iscsi create "$1" >/dev/null
  targetcli "/iscsi/$1/tpg1/portals" delete 0.0.0.0 3260 >/dev/null 2>&1 || true
  targetcli "/iscsi/$1/tpg1/portals" create 127.0.0.1 3260 >/dev/null
}

# libiscsi_suite OUT TESTS URL [URL2] [iscsi-test-cu args...]: runs iscsi-test-cu,
# keeps its output in OUT, and writes OUT.counts with "passed failed skipped"
# counted from the per-test lines (CUnit counts [SKIPPED] as passed).
libiscsi_suite() {
  local out="$1" tests="$2" url="$3"; shift 3
  iscsi-test-cu -d -t "$tests" "$url" "$@" > "$out" 2>&1 || true
  python3 "$ROOT/tests/vm/libiscsi_count.py" --tests "$out.tests" "$out" > "$out.counts"
  local passed failed skipped
  read -r passed failed skipped < "$out.counts"
  say "libiscsi $tests: $passed passed, $failed failed, $skipped skipped"
}

# check_libiscsi DESCRIPTION TESTS_FILE [KNOWN_FAILURES_REGEX]: no failed
# test in TESTS_FILE (from libiscsi_suite) except the known ones, which are
# reported; at least 20 passed.
check_libiscsi() {
  local d="$1" f="$2" known="${3:-^$}" other n p
  other=$(grep -v ' passed$\| SKIPPED$' "$f" | grep -Ev "$known" || true)
  check_eq "$d: failures other than known ones" "" "$other"
  n=$(grep -Ec "$known" "$f" || true)
  [ "$n" -eq 0 ] || say "known gap, still failing: $n ($(grep -E "$known" "$f" | cut -d' ' -f1 | tr '\n' ' '))"
  p=$(grep -c ' passed$' "$f" || true)
  [ "$p" -ge 20 ] || fail "$d: only $p tests passed"
}

# need_scratch: an ext4 file system at /srv/scratch for images. The guest's
# writable places are tmpfs overlays, which refuse O_DIRECT (our default for
# shared images); ext4 on a loop device is what a real node would have. With
# SCRATCH_DISK (tests/vm/run's VM_SCRATCH_DISK) it is on the guest's one
# virtio-blk disk instead: QEMU does that disk's I/O on the host, as a real
# disk's DMA, where the loop device copies every O_DIRECT block through the
# tmpfs page cache with the (emulated) guest CPU.
SCRATCH=/srv/scratch
need_scratch() {
  mountpoint -q $SCRATCH && return 0
  mkdir -p $SCRATCH
  if [ -n "${SCRATCH_DISK:-}" ]; then
    local dev
    modprobe virtio_blk 2>/dev/null || true
    dev=$(ls -d /sys/block/vd* 2>/dev/null || true)
    [ "$(echo "$dev" | wc -w)" -eq 1 ] || fail "SCRATCH_DISK: want one virtio-blk disk, found '$dev'"
    dev=/dev/$(basename "$dev")
    mkfs.ext4 -q -F "$dev"
    mount "$dev" $SCRATCH
    return 0
  fi
  modprobe loop
  truncate -s "${SCRATCH_SIZE:-768M}" /tmp/scratch.ext4
  mkfs.ext4 -q -F /tmp/scratch.ext4
  mount -o loop /tmp/scratch.ext4 $SCRATCH
}
