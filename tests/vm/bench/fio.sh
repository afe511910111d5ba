# Benchmark (not part of the default VM run): fio through tcm_loop in ONE boot against (a) LIO in-kernel fileio, (b) tcmu-prd dlmfile, (c) tcmu-prd with WERO and 100 registrants, (d) tcmu-prd in cluster mode on the real DLM; each job runs on the four backstores in turn (every other repeat in reverse order) and is repeated (so drift in the emulator hits every row alike); prints a table of the medians with each tcmu-prd row's ratio to (a)
#   tests/vm/run tests/vm/bench/fio.sh        (FIO_RUNTIME=seconds per job, default 5; FIO_REPS=repeats, default 2)
# FIO_DAEMON="poll_us = 2000": one more [daemon] line for both tcmu-prd daemons.
# FIO_JOBS="rw bs iodepth numjobs,...": only these jobs (default: issue 7's twelve).
. "$VM_LIB"
. "$ROOT/tests/vm/bench/lib.sh"
need_target
need_dlm
bench_scratch
RT="${FIO_RUNTIME:-5}"
REPS="${FIO_REPS:-2}"
SIZE=$((192 << 20))
LABELS="a b c d"
bench_images $SIZE $LABELS
declare -A dev
dev[a]=$(bench_fileio $SIZE)

# (b) and (c): tcmu-prd, local mode (hba 1), one LU each, so (c)'s
# reservation does not touch (b); (d): cluster mode (hba 2).
printf '[daemon]\ndbus = false\n%s\n[devices]\nhbas = [1]\n[paths]\ncontrol_socket = "/run/tcmu-prd/bench-l.sock"\n' "${FIO_DAEMON:-}" > "$ART/local.toml"
printf '[daemon]\ndbus = false\n%s\n[devices]\nhbas = [2]\n[cluster]\nmode = "dlm"\n[paths]\ncontrol_socket = "/run/tcmu-prd/bench-c.sock"\n' "${FIO_DAEMON:-}" > "$ART/cluster.toml"
TCMU_PRD_LOG=info daemon_start local --config "$ART/local.toml"
TCMU_PRD_LOG=info daemon_start cluster --config "$ART/cluster.toml"
wait_for 30 "cluster daemon joined" grep -q 'joined the DLM lockspace' "$ART/cluster.log"
dev[b]=$(bench_user 1 b b $SIZE)
dev[c]=$(bench_user 1 c c $SIZE)
dev[d]=$(bench_user 2 d d $SIZE)
wait_for 60 "views resolved" bash -c "[ \$(cat $ART/local.log $ART/cluster.log | grep -c 'serves one I_T nexus') -ge 3 ]"
for l in $LABELS; do say "($l) ${dev[$l]}"; done
python3 "$ROOT/tests/vm/bench/pr_fill.py" "${dev[c]}" 100

bench_runs "${FIO_JOBS:-randread 4k 1 1,randread 4k 1 4,randread 4k 32 1,randread 4k 32 4,randwrite 4k 1 1,randwrite 4k 1 4,randwrite 4k 32 1,randwrite 4k 32 4,read 128k 32 1,read 128k 32 4,write 128k 32 1,write 128k 32 4}" "$REPS" "$RT" $LABELS
# Which path served the commands (IO_URING, POLLED per view).
"$TCMU_PRD" status --socket /run/tcmu-prd/bench-l.sock > "$ART/status-local.txt"
"$TCMU_PRD" status --socket /run/tcmu-prd/bench-c.sock > "$ART/status-cluster.txt"
check "the reservation held during (c)" bash -c "sg_persist -n --in --read-reservation ${dev[c]} | grep -qi 'registrants only'"
check "(c) has the 100 registrants" bash -c "sg_persist -n --in --read-keys ${dev[c]} | grep -c '0xbe7c' | grep -qx 100"
python3 "$ROOT/tests/vm/bench/fio_table.py" "$ART" | tee "$ART/table.md"
daemon_stop local TERM
daemon_stop cluster TERM
