# Benchmark (not part of the default VM run): fio through tcm_loop in ONE boot against (a) LIO in-kernel fileio, (b) tcmu-prd dlmfile, (c) (b) with WERO and 100 registrants, (d) tcmu-prd in cluster mode on the real DLM; prints a table with each tcmu-prd row's ratio to (a)
#   tests/vm/run tests/vm/bench/fio.sh        (FIO_RUNTIME=seconds per job, default 5)
. "$VM_LIB"
need_target
need_dlm
SCRATCH_SIZE=800M need_scratch
RT="${FIO_RUNTIME:-5}"
SIZE=$((192 << 20))

# Every image fully written first: reads of holes and first writes into
# unallocated extents would measure the file system, not the backstores.
for i in a b d; do
  dd if=/dev/zero of=$SCRATCH/$i.img bs=1M count=$((SIZE >> 20)) oflag=direct status=none
done

lun_of() {  # WWN INITIATOR BACKSTORE_DIR -> /dev/sdX
  loop_tpg "$1" "$2"
  loop_lun "$1" 0 "$3"
}

# (a) LIO fileio, as configfs creates it by default (O_DSYNC writes).
mkdir -p $TARGET/core/fileio_0/a
echo "fd_dev_name=$SCRATCH/a.img,fd_dev_size=$SIZE" > $TARGET/core/fileio_0/a/control
echo 1 > $TARGET/core/fileio_0/a/enable
dev_a=$(lun_of naa.5001405000000a01 naa.5001405000000a02 $TARGET/core/fileio_0/a)

# (b) and (c): tcmu-prd, local mode (hba 1); (d): cluster mode (hba 2).
printf '[daemon]\ndbus = false\n[devices]\nhbas = [1]\n[paths]\ncontrol_socket = "/run/tcmu-prd/bench-l.sock"\n' > "$ART/local.toml"
printf '[daemon]\ndbus = false\n[devices]\nhbas = [2]\n[cluster]\nmode = "dlm"\n[paths]\ncontrol_socket = "/run/tcmu-prd/bench-c.sock"\n' > "$ART/cluster.toml"
TCMU_PRD_LOG=info daemon_start local --config "$ART/local.toml"
TCMU_PRD_LOG=info daemon_start cluster --config "$ART/cluster.toml"
wait_for 30 "cluster daemon joined" grep -q 'joined the DLM lockspace' "$ART/cluster.log"
tcmu_create 1 b "dev_config=dlmfile/$SCRATCH/b.img,dev_size=$SIZE,hw_max_sectors=8192" pgr_support=0
tcmu_create 2 d "dev_config=dlmfile/$SCRATCH/d.img,dev_size=$SIZE,hw_max_sectors=8192" pgr_support=0
dev_b=$(lun_of naa.5001405000000b01 naa.5001405000000b02 $TARGET/core/user_1/b)
dev_d=$(lun_of naa.5001405000000d01 naa.5001405000000d02 $TARGET/core/user_2/d)
wait_for 30 "views resolved" bash -c "grep -q 'serves one I_T nexus' $ART/local.log && grep -q 'serves one I_T nexus' $ART/cluster.log"
say "devices: a=$dev_a b=$dev_b d=$dev_d"

run_set() {  # LABEL DEV
  local label="$1" dev="$2" w
  for w in "randread 4k 1" "randread 4k 32" "randwrite 4k 1" "randwrite 4k 32" "read 128k 32" "write 128k 32"; do
    set -- $w
    for nj in 1 4; do
      fio --name="$label" --filename="$dev" --rw="$1" --bs="$2" --iodepth="$3" --numjobs="$nj" \
        --direct=1 --ioengine=libaio --time_based --runtime="$RT" --ramp_time=1 --group_reporting \
        --output-format=json --output="$ART/fio-$label-$1-$2-qd$3-nj$nj.json" >/dev/null
    done
  done
}
run_set a "$dev_a"
run_set b "$dev_b"
run_set d "$dev_d"
python3 "$ROOT/tests/vm/bench/pr_fill.py" "$dev_b" 100
run_set c "$dev_b"
check "the reservation held during (c)" bash -c "sg_persist -n --in --read-reservation $dev_b | grep -qi 'registrants only'"
python3 "$ROOT/tests/vm/bench/fio_table.py" "$ART" | tee "$ART/table.md"
daemon_stop local TERM
daemon_stop cluster TERM
