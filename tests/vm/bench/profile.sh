# Benchmark (not part of the default VM run): A/B of the data path in ONE boot, each job repeated 3 times interleaved, every other repeat in reverse order (so drift in the emulator and a row's place in the sequence hit every row alike): (a) LIO fileio, (i) LIO iblock on a direct-I/O loop device, (o) the binary at target/bench-old/tcmu-prd (the "before" of a change, built by tests/vm/bench/build-old REV; skipped if absent), (b) this build, (n) this build on an image opened without O_DIRECT (direct=0: the page cache, as LIO fileio uses it), (v) this build with one more [daemon] line, PROFILE_VARIANT (default poll_us = 2000); the table shows the median of the repeats and the IOPS range
#   tests/vm/run tests/vm/bench/profile.sh     (FIO_RUNTIME=seconds per job, default 5)
# To look at a few jobs only: PROFILE_JOBS="randread 4k 32 1,randread 4k 1 1" (rw bs iodepth numjobs, comma-separated), PROFILE_REPS=5 (default 3).
# Another variant: PROFILE_VARIANT="worker_threads = 8".
# PROFILE_OLD_VARIANT=1: (o) runs with the variant line too (an A/B of a change to what the variant switches on).
# PROFILE_VIEWS=2: every tcmu-prd LU gets a second view, idle (another backstore on the same image, on its own tcm_loop port): the path of an LU exported to several initiators.
# Guest perf (cpu-clock) is useless under TCG: 99 % of the samples land in the idle loop (BENCHMARKS.md), so it is not run here.
. "$VM_LIB"
. "$ROOT/tests/vm/bench/lib.sh"
need_target
bench_scratch
RT="${FIO_RUNTIME:-5}"
REPS="${PROFILE_REPS:-3}"
JOBS="${PROFILE_JOBS:-randread 4k 1 1,randread 4k 32 1,randread 4k 32 4,randwrite 4k 1 1,read 128k 32 1,write 128k 32 1}"
SIZE=$((160 << 20))
OLD="$ROOT/target/bench-old/tcmu-prd"
LABELS="a i b n v"
[ -x "$OLD" ] && LABELS="a i o b n v"
export PROFILE_VARIANT="${PROFILE_VARIANT:-poll_us = 2000}"
bench_images $SIZE $LABELS
declare -A dev
dev[a]=$(bench_fileio $SIZE)

loopdev=$(losetup --direct-io=on -f --show $SCRATCH/i.img)
mkdir -p $TARGET/core/iblock_0/i
echo "udev_path=$loopdev" > $TARGET/core/iblock_0/i/control
echo 1 > $TARGET/core/iblock_0/i/enable
dev[i]=$(bench_lun naa.5001405000000c01 naa.5001405000000c02 $TARGET/core/iblock_0/i)

# One daemon per hba: 1 = this build (b), 2 = this build with the variant
# line (v), 3 = the old binary (o).
conf() {  # NAME HBA [EXTRA DAEMON LINE]
  printf '[daemon]\ndbus = false\n%s\n[devices]\nhbas = [%s]\n[paths]\ncontrol_socket = "/run/tcmu-prd/prof-%s.sock"\n' "${3:-}" "$2" "$1" > "$ART/$1.toml"
}
conf cur 1; conf var 2 "$PROFILE_VARIANT"; conf old 3 "${PROFILE_OLD_VARIANT:+$PROFILE_VARIANT}"
TCMU_PRD_LOG=info daemon_start cur --config "$ART/cur.toml"
TCMU_PRD_LOG=info daemon_start var --config "$ART/var.toml"
if [ -x "$OLD" ]; then TCMU_PRD="$OLD" TCMU_PRD_LOG=info daemon_start old --config "$ART/old.toml"; fi
declare -A hex=([b]=b [n]=e [v]=f [o]=d)
user() {  # LABEL HBA [CFGSTRING OPTIONS]
  dev[$1]=$(bench_user "$2" "$1" "${hex[$1]}" $SIZE "${3:-}")
}
VIEWS="${PROFILE_VIEWS:-1}"
second_view() {  # LABEL HBA [CFGSTRING OPTIONS]
  tcmu_create "$2" "${1}2" "dev_config=dlmfile/$SCRATCH/$1.img${3:-},dev_size=$SIZE,hw_max_sectors=8192" pgr_support=0
  bench_lun "naa.5001405000001${hex[$1]}01" "naa.5001405000001${hex[$1]}02" "$TARGET/core/user_$2/${1}2" >/dev/null
}
user b 1; user n 1 ";direct=0"; user v 2
[ -x "$OLD" ] && user o 3
if [ "$VIEWS" -ge 2 ]; then
  second_view b 1; second_view n 1 ";direct=0"; second_view v 2
  [ -x "$OLD" ] && second_view o 3
fi
wait_for 60 "views resolved" bash -c "[ \$(cat $ART/*.log | grep -c 'serves one I_T nexus') -ge $(( ($(echo $LABELS | wc -w) - 2) * VIEWS )) ]"
for l in $LABELS; do say "($l) ${dev[$l]}"; done

bench_runs "$JOBS" "$REPS" "$RT" $LABELS
python3 "$ROOT/tests/vm/bench/fio_table.py" "$ART" | tee "$ART/table.md"
daemon_stop cur TERM; daemon_stop var TERM
[ -x "$OLD" ] && daemon_stop old TERM
losetup -d "$loopdev" || true
