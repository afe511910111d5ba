# Set-up shared by the benchmark scripts (sourced after $VM_LIB, in the guest).

# bench_scratch: the scratch file system, with no image left by an earlier
# benchmark of the same boot (the largest, profile.sh, writes about 800 MiB).
bench_scratch() {
  SCRATCH_SIZE=1200M need_scratch
  rm -f "$SCRATCH"/*.img
  # The file system's file lives in the guest's tmpfs (half its RAM). Known
  # gap: even after this trim, fio.sh after profile.sh in one boot fails
  # writing its images with EIO, so run one bench per boot.
  [ -n "${SCRATCH_DISK:-}" ] || fstrim "$SCRATCH"
  say "scratch file system on $(findmnt -no SOURCE "$SCRATCH")"
}

# bench_images SIZE LABEL...: $SCRATCH/LABEL.img of SIZE bytes, every block
# written first: reads of holes and first writes into unallocated extents
# would measure the file system, not the backstores.
bench_images() {
  local size="$1" l; shift
  for l in "$@"; do
    dd if=/dev/zero of="$SCRATCH/$l.img" bs=1M count=$((size >> 20)) oflag=direct status=none
  done
}

# bench_lun WWN INITIATOR_WWN BACKSTORE_DIR: LUN 0 on its own tcm_loop
# port; prints the /dev/sdX.
bench_lun() {
  loop_tpg "$1" "$2"
  loop_lun "$1" 0 "$3"
}

# bench_fileio SIZE: (a), LIO fileio on $SCRATCH/a.img as configfs creates
# it by default (O_DSYNC writes); prints the /dev/sdX.
bench_fileio() {
  mkdir -p $TARGET/core/fileio_0/a
  echo "fd_dev_name=$SCRATCH/a.img,fd_dev_size=$1" > $TARGET/core/fileio_0/a/control
  echo 1 > $TARGET/core/fileio_0/a/enable
  bench_lun naa.5001405000000a01 naa.5001405000000a02 $TARGET/core/fileio_0/a
}

# bench_user HBA LABEL HEX SIZE [OPTIONS]: a dlmfile backstore LABEL on
# user_HBA over $SCRATCH/LABEL.img (OPTIONS appended to the cfgstring, e.g.
# ";direct=0"), exported on port naa.5001405000000<HEX>01; prints the /dev/sdX.
bench_user() {
  tcmu_create "$1" "$2" "dev_config=dlmfile/$SCRATCH/$2.img${5:-},dev_size=$4,hw_max_sectors=8192" pgr_support=0
  bench_lun "naa.5001405000000${3}01" "naa.5001405000000${3}02" "$TARGET/core/user_$1/$2"
}

# bench_runs JOBS REPS RUNTIME LABEL...: every job of JOBS ("rw bs iodepth
# numjobs,...") on the devices ${dev[LABEL]} in turn, REPS times, every
# other repeat in reverse order: a row's place in the sequence (what ran
# just before it) must not favour it. fio JSON to
# $ART/fio-LABEL-rw-bs-qdN-njN-rR.json (fio_table.py reads them).
bench_runs() {
  local jobs w r l rw bs qd nj order reps="$2" rt="$3"
  IFS=, read -ra jobs <<< "$1"
  shift 3
  local labels="$*"
  for w in "${jobs[@]}"; do
    read -r rw bs qd nj <<< "$w"
    for r in $(seq 1 "$reps"); do
      order=$labels
      [ $((r % 2)) -eq 1 ] || order=$(echo "$labels" | tr ' ' '\n' | tac | tr '\n' ' ')
      for l in $order; do
        fio --name="$l" --filename="${dev[$l]}" --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs="$nj" \
          --direct=1 --ioengine=libaio --time_based --runtime="$rt" --ramp_time=1 --group_reporting \
          --output-format=json --output="$ART/fio-$l-$rw-$bs-qd$qd-nj$nj-r$r.json" >/dev/null
      done
    done
  done
}
