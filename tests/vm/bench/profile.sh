# Benchmark (not part of the default VM run): where the time goes, in ONE boot: fio against (a) LIO fileio, (i) LIO iblock on a direct-I/O loop device, (b) tcmu-prd (O_DIRECT, the default), (w) tcmu-prd with worker_threads = 32, (e) tcmu-prd with direct=0, and (o) the binary at target/bench-old/tcmu-prd if present (the "before" of a change); system-wide perf samples (cpu-clock) during (a) and (b) when perf is installed
#   tests/vm/run tests/vm/bench/profile.sh     (FIO_RUNTIME=seconds per job, default 5)
. "$VM_LIB"
need_target
SCRATCH_SIZE=1200M need_scratch
RT="${FIO_RUNTIME:-5}"
SIZE=$((160 << 20))
OLD="$ROOT/target/bench-old/tcmu-prd"
LABELS="a i b w e"
[ -x "$OLD" ] && LABELS="$LABELS o"
PERF=$(command -v perf || true)
for i in $LABELS; do
  dd if=/dev/zero of=$SCRATCH/$i.img bs=1M count=$((SIZE >> 20)) oflag=direct status=none
done
lun_of() { loop_tpg "$1" "$2"; loop_lun "$1" 0 "$3"; }

mkdir -p $TARGET/core/fileio_0/a
echo "fd_dev_name=$SCRATCH/a.img,fd_dev_size=$SIZE" > $TARGET/core/fileio_0/a/control
echo 1 > $TARGET/core/fileio_0/a/enable
declare -A dev
dev[a]=$(lun_of naa.5001405000000a01 naa.5001405000000a02 $TARGET/core/fileio_0/a)

loopdev=$(losetup --direct-io=on -f --show $SCRATCH/i.img)
mkdir -p $TARGET/core/iblock_0/i
echo "udev_path=$loopdev" > $TARGET/core/iblock_0/i/control
echo 1 > $TARGET/core/iblock_0/i/enable
dev[i]=$(lun_of naa.5001405000000c01 naa.5001405000000c02 $TARGET/core/iblock_0/i)

# One daemon per hba: 1 = this build (b, e), 2 = this build with 32 workers
# (w), 3 = the old binary (o).
conf() {  # NAME HBA [EXTRA DAEMON LINES]
  printf '[daemon]\ndbus = false\n%s\n[devices]\nhbas = [%s]\n[paths]\ncontrol_socket = "/run/tcmu-prd/prof-%s.sock"\n' "${3:-}" "$2" "$1" > "$ART/$1.toml"
}
conf cur 1; conf w32 2 "worker_threads = 32"; conf old 3
TCMU_PRD_LOG=info daemon_start cur --config "$ART/cur.toml"
TCMU_PRD_LOG=info daemon_start w32 --config "$ART/w32.toml"
if [ -x "$OLD" ]; then TCMU_PRD="$OLD" TCMU_PRD_LOG=info daemon_start old --config "$ART/old.toml"; fi
declare -A hex=([b]=b [e]=e [w]=f [o]=d)
user() {  # LABEL HBA [OPTS]
  local h=${hex[$1]}
  tcmu_create "$2" "$1" "dev_config=dlmfile/$SCRATCH/$1.img${3:-},dev_size=$SIZE,hw_max_sectors=8192" pgr_support=0
  dev[$1]=$(lun_of "naa.5001405000000${h}01" "naa.5001405000000${h}02" "$TARGET/core/user_$2/$1")
}
user b 1; user e 1 ";direct=0"; user w 2
[ -x "$OLD" ] && user o 3
wait_for 60 "views resolved" bash -c "[ \$(cat $ART/*.log | grep -c 'serves one I_T nexus') -ge $(( $(echo $LABELS | wc -w) - 2 )) ]"
for l in $LABELS; do say "($l) ${dev[$l]}"; done

run() {  # LABEL RW BS QD [perf]
  local label="$1" rw="$2" bs="$3" qd="$4" p=""
  local out="$ART/fio-$label-$rw-$bs-qd$qd-nj1"
  if [ "${5:-}" = perf ] && [ -n "$PERF" ]; then
    "$PERF" record -a -g -e cpu-clock -F 499 -o "$out.perf" -- sleep "$RT" >/dev/null 2>&1 &
    p=$!
  fi
  fio --name="$label" --filename="${dev[$label]}" --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
    --direct=1 --ioengine=libaio --time_based --runtime="$RT" --ramp_time=1 \
    --output-format=json --output="$out.json" >/dev/null
  if [ -n "$p" ]; then
    wait "$p" || true
    "$PERF" report -i "$out.perf" --stdio --no-children --sort comm,dso,sym --percent-limit 1.5 2>/dev/null | grep -v '^$' | head -150 > "$out.perf.txt" || true
    "$PERF" report -i "$out.perf" --stdio --no-children --sort comm --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20 > "$out.perf-comm.txt" || true
    rm -f "$out.perf"
  fi
}
for w in "randread 4k 1" "randread 4k 32" "randwrite 4k 1" "read 128k 32" "write 128k 32"; do
  set -- $w
  for l in $LABELS; do
    case "$l$1$3" in a*1|b*1|aread32|bread32) run "$l" "$1" "$2" "$3" perf ;; *) run "$l" "$1" "$2" "$3" ;; esac
  done
done
python3 "$ROOT/tests/vm/bench/fio_table.py" "$ART" | tee "$ART/table.md"
for f in "$ART"/*.perf-comm.txt; do [ -e "$f" ] && { echo "== $(basename "$f")"; cat "$f"; }; done
daemon_stop cur TERM; daemon_stop w32 TERM
[ -x "$OLD" ] && daemon_stop old TERM
losetup -d "$loopdev" || true
