# Benchmark (not part of the default VM run): what one I/O costs in events, counted exactly (perf stat counts tracepoints and software events; unlike sampling, counting is exact under TCG): system calls and context switches of the daemon's threads, and context switches, wake-ups and rescheduling/function-call IPIs of the whole guest, per I/O, for (a) LIO fileio, (o) the binary at target/bench-old/tcmu-prd (built by tests/vm/bench/build-old REV; skipped if absent), (b) this build and (d) this build in cluster mode on the real DLM; plus the daemon's CPU time (task-clock) per I/O, which TCG scales but alike for every row of a boot
#   tests/vm/run tests/vm/bench/counts.sh     (FIO_RUNTIME=seconds per job, default 5)
. "$VM_LIB"
. "$ROOT/tests/vm/bench/lib.sh"
need_target
need_dlm
bench_scratch
command -v perf >/dev/null || die "perf is not installed (scripts/setup installs linux-perf)"
RT="${FIO_RUNTIME:-5}"
SIZE=$((160 << 20))
OLD="$ROOT/target/bench-old/tcmu-prd"
LABELS="a b d"
[ -x "$OLD" ] && LABELS="a o b d"
bench_images $SIZE $LABELS
declare -A dev pid
dev[a]=$(bench_fileio $SIZE)
conf() {  # NAME HBA [EXTRA]
  printf '[daemon]\ndbus = false\n[devices]\nhbas = [%s]\n%b\n[paths]\ncontrol_socket = "/run/tcmu-prd/cnt-%s.sock"\n' "$2" "${3:-}" "$1" > "$ART/$1.toml"
}
conf cur 1; conf old 3; conf clu 2 '[cluster]\nmode = "dlm"'
TCMU_PRD_LOG=info daemon_start cur --config "$ART/cur.toml"
pid[b]=$(cat "$ART/cur.pid")
dev[b]=$(bench_user 1 b b $SIZE)
TCMU_PRD_LOG=info daemon_start clu --config "$ART/clu.toml"
wait_for 30 "cluster daemon joined" grep -q 'joined the DLM lockspace' "$ART/clu.log"
pid[d]=$(cat "$ART/clu.pid")
dev[d]=$(bench_user 2 d c $SIZE)
if [ -x "$OLD" ]; then
  TCMU_PRD="$OLD" TCMU_PRD_LOG=info daemon_start old --config "$ART/old.toml"
  pid[o]=$(cat "$ART/old.pid")
  dev[o]=$(bench_user 3 o e $SIZE)
fi
wait_for 60 "views resolved" bash -c "[ \$(cat $ART/*.log | grep -c 'serves one I_T nexus') -ge $(( $(echo $LABELS | wc -w) - 1 )) ]"
for l in $LABELS; do say "($l) ${dev[$l]}"; done

SYS_EV=context-switches,sched:sched_wakeup,irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,irq_vectors:call_function_entry
for w in "randread 4k 1 1" "randread 4k 32 1" "randread 4k 32 4" "randwrite 4k 32 1" "read 128k 32 1"; do
  set -- $w
  for l in $LABELS; do
    tag="$l-$1-$2-qd$3-nj$4"
    perf stat -x, -a -e "$SYS_EV" -o "$ART/sys-$tag.csv" -- sleep $((RT + 1)) &
    sp=$!
    dp=
    if [ -n "${pid[$l]:-}" ]; then
      perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "${pid[$l]}" -o "$ART/daemon-$tag.csv" -- sleep $((RT + 1)) &
      dp=$!
    fi
    fio --name="$l" --filename="${dev[$l]}" --rw="$1" --bs="$2" --iodepth="$3" --numjobs="$4" \
      --direct=1 --ioengine=libaio --time_based --runtime="$RT" --group_reporting \
      --output-format=json --output="$ART/fio-$tag.json" >/dev/null
    wait $sp ${dp:+$dp}
  done
done
python3 - "$ART" <<'PY' | tee "$ART/table.md"
import csv, glob, json, os, sys
art = sys.argv[1]
def counts(p):
    out = {}
    if not os.path.exists(p):
        return out
    for row in csv.reader(l for l in open(p) if l.strip() and not l.startswith("#")):
        try:
            out[row[2]] = float(row[0])
        except (ValueError, IndexError):
            pass
    return out
print("| job | backstore | I/Os | daemon syscalls / I/O | daemon ctx switches / I/O | daemon CPU us / I/O | guest ctx switches / I/O | guest wake-ups / I/O | guest IPIs / I/O |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for p in sorted(glob.glob(os.path.join(art, "fio-*.json")), key=lambda p: (os.path.basename(p).split("-", 2)[2], "aobd".index(os.path.basename(p)[4]))):
    tag = os.path.basename(p)[4:-5]
    label, job = tag.split("-", 1)
    j = json.load(open(p))["jobs"][0]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    s, d = counts(os.path.join(art, f"sys-{tag}.csv")), counts(os.path.join(art, f"daemon-{tag}.csv"))
    per = lambda v: f"{v / ios:.2f}" if ios and v is not None else "-"
    ipis = sum(s.get(e, 0) for e in ("irq_vectors:reschedule_entry", "irq_vectors:call_function_single_entry", "irq_vectors:call_function_entry"))
    clock = d.get("task-clock")  # msec
    cpu = f"{clock * 1000 / ios:.1f}" if ios and clock is not None else "-"
    print(f"| {job} | ({label}) | {ios} | {per(d.get('raw_syscalls:sys_enter'))} | {per(d.get('context-switches'))} | {cpu} | "
          f"{per(s.get('context-switches'))} | {per(s.get('sched:sched_wakeup'))} | {per(ipis)} |")
PY
daemon_stop cur TERM
daemon_stop clu TERM
if [ -x "$OLD" ]; then daemon_stop old TERM; fi
