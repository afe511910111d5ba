# Benchmark (not part of the default VM run): why 4k randread at iodepth 32 scales with numjobs on LIO fileio but not on tcmu-prd. In ONE boot, numjobs 1, 2 and 4 on (a) LIO fileio, (b) tcmu-prd dlmfile with the default workers (one per vCPU), (w) the same with worker_threads = 8, and (q)/(p) = (a)/(b) with every fio job pinned to vCPU 1 (taskset), interleaved and repeated; next to each run, the CPU the daemon used and the guest's idle share, from /proc
#   tests/vm/run tests/vm/bench/scaling.sh    (FIO_RUNTIME=seconds per job, default 5; FIO_REPS=repeats, default 2)
. "$VM_LIB"
. "$ROOT/tests/vm/bench/lib.sh"
need_target
bench_scratch
RT="${FIO_RUNTIME:-5}"
REPS="${FIO_REPS:-2}"
SIZE=$((160 << 20))
bench_images $SIZE a b w
declare -A dev pid
dev[a]=$(bench_fileio $SIZE)
conf() {  # NAME HBA [EXTRA DAEMON LINE]
  printf '[daemon]\ndbus = false\n%s\n[devices]\nhbas = [%s]\n[paths]\ncontrol_socket = "/run/tcmu-prd/scal-%s.sock"\n' "${3:-}" "$2" "$1" > "$ART/$1.toml"
}
conf cur 1; conf w8 2 "worker_threads = 8"
TCMU_PRD_LOG=info daemon_start cur --config "$ART/cur.toml"
TCMU_PRD_LOG=info daemon_start w8 --config "$ART/w8.toml"
dev[b]=$(bench_user 1 b b $SIZE)
dev[w]=$(bench_user 2 w f $SIZE)
wait_for 60 "views resolved" bash -c "[ \$(cat $ART/*.log | grep -c 'serves one I_T nexus') -ge 2 ]"
dev[q]=${dev[a]}; dev[p]=${dev[b]}
pid[a]=; pid[q]=; pid[b]=$(cat "$ART/cur.pid"); pid[p]=${pid[b]}; pid[w]=$(cat "$ART/w8.pid")
for l in a b w q p; do say "($l) ${dev[$l]}"; done

ticks() {  # PID: utime+stime of the process and all its threads, in clock ticks
  [ -n "$1" ] || { echo 0; return; }
  awk '{print $14 + $15}' "/proc/$1/stat"
}
idle() { awk '/^cpu /{print $5 + $6; exit}' /proc/stat; }  # idle + iowait, all vCPUs
hz=$(getconf CLK_TCK)
ncpu=$(nproc)
: > "$ART/cpu.txt"
for nj in 1 2 4; do
  for r in $(seq 1 "$REPS"); do
    for l in a b w q p; do
      pin=(); case $l in q|p) pin=(taskset -c 1) ;; esac
      t0=$(ticks "${pid[$l]}"); i0=$(idle); s0=$(date +%s.%N)
      "${pin[@]}" fio --name="$l" --filename="${dev[$l]}" --rw=randread --bs=4k --iodepth=32 --numjobs="$nj" \
        --direct=1 --ioengine=libaio --time_based --runtime="$RT" --ramp_time=1 --group_reporting \
        --output-format=json --output="$ART/fio-$l-randread-4k-qd32-nj$nj-r$r.json" >/dev/null
      t1=$(ticks "${pid[$l]}"); i1=$(idle); s1=$(date +%s.%N)
      awk -v l="$l" -v nj="$nj" -v r="$r" -v dt="$((t1 - t0))" -v di="$((i1 - i0))" -v s0="$s0" -v s1="$s1" \
        -v hz="$hz" -v n="$ncpu" 'BEGIN { s = s1 - s0; printf "(%s) nj%s r%s: daemon %.0f%% of one vCPU, guest idle %.0f%%\n", l, nj, r, 100 * dt / hz / s, 100 * di / hz / s / n }' \
        | tee -a "$ART/cpu.txt"
    done
  done
done
python3 "$ROOT/tests/vm/bench/fio_table.py" "$ART" | tee "$ART/table.md"
daemon_stop cur TERM; daemon_stop w8 TERM
