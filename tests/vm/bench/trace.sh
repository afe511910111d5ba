# Benchmark (not part of the default VM run): where a 4k read at iodepth 1 spends its time. Runs fio against (a) LIO fileio and (b) this build with the kernel's event tracer on (sched switches and wake-ups, every syscall of tcmu-prd, and the target/TCMU/uio entry points), then prints the median time between the steps of one command. TRACE_RW and TRACE_BS choose the job (default randread, 4k). Event tracing, unlike guest perf sampling, is exact under TCG.
#   tests/vm/run tests/vm/bench/trace.sh     (FIO_RUNTIME=seconds per job, default 3)
#   TRACE_RW=read TRACE_BS=128k tests/vm/run tests/vm/bench/trace.sh
. "$VM_LIB"
. "$ROOT/tests/vm/bench/lib.sh"
need_target
bench_scratch
RT="${FIO_RUNTIME:-3}"
SIZE=$((160 << 20))
bench_images $SIZE a b
declare -A dev
dev[a]=$(bench_fileio $SIZE)
printf '[daemon]\ndbus = false\n[devices]\nhbas = [1]\n' > "$ART/cur.toml"
TCMU_PRD_LOG=info daemon_start cur --config "$ART/cur.toml"
dev[b]=$(bench_user 1 b b $SIZE)
wait_for 60 "view resolved" grep -q 'serves one I_T nexus' "$ART/cur.log"

T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
# Whatever happens, leave the tracer off for the scenarios after this one.
trace_off() { echo 0 > $T/tracing_on; echo nop > $T/current_tracer; echo > $T/set_event; }
trap trace_off EXIT
echo 0 > $T/tracing_on
echo global > $T/trace_clock
echo 16384 > $T/buffer_size_kb
echo nop > $T/current_tracer
: > $T/set_ftrace_filter
for f in tcm_loop_queuecommand tcmu_queue_cmd uio_event_notify uio_read uio_write tcmu_irqcontrol \
         target_complete_cmd fd_execute_rw scsi_done blk_mq_complete_request; do
  echo "$f" >> $T/set_ftrace_filter 2>/dev/null || say "no ftrace function $f"
done
echo > $T/set_event
for e in sched:sched_switch sched:sched_wakeup raw_syscalls:sys_enter raw_syscalls:sys_exit; do
  echo "$e" >> $T/set_event
done
echo 'comm ~ "tcmu-prd*" || comm ~ "fio*"' > $T/events/raw_syscalls/sys_enter/filter
echo 'comm ~ "tcmu-prd*" || comm ~ "fio*"' > $T/events/raw_syscalls/sys_exit/filter
echo function > $T/current_tracer
for l in a b; do
  # The job is started first and traced after its ramp, so setup is not traced.
  fio --name="$l" --filename="${dev[$l]}" --rw="${TRACE_RW:-randread}" --bs="${TRACE_BS:-4k}" --iodepth=1 --numjobs=1 \
    --direct=1 --ioengine=libaio --time_based --runtime="$((RT + 1))" \
    --output-format=json --output="$ART/fio-$l.json" >/dev/null &
  fpid=$!
  sleep 1
  : > $T/trace
  echo 1 > $T/tracing_on
  sleep "$RT"
  echo 0 > $T/tracing_on
  wait $fpid
  cp $T/trace "$ART/trace-$l.txt"
  say "($l) ${dev[$l]}: $(wc -l < "$ART/trace-$l.txt") trace lines"
done
trace_off
python3 "$ROOT/tests/vm/bench/trace_steps.py" "$ART/trace-a.txt" "$ART/trace-b.txt" | tee "$ART/steps.md"
daemon_stop cur TERM
