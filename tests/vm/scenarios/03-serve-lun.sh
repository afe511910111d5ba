# Scenario: tcmu-prd serves a dlmfile LUN through tcm_loop: SCSI identity, fio verify (io_uring at depth), bytes on disk, reconfiguration, bad config, unsupported opcode, poll_us
. "$VM_LIB"
need_target
need_scratch

img=$SCRATCH/lu1.img
truncate -s 64M "$img"
daemon_start d1

tcmu_create 1 lu1 "dev_config=dlmfile/$img,dev_size=$((64 << 20))" pgr_support=0
check "daemon opened user_1/lu1" grep -q "opened.*device=user_1/lu1" "$ART/d1.log"
loop_tpg naa.5001405000000001 naa.5001405000000002
sd=$(loop_lun naa.5001405000000001 0 $TARGET/core/user_1/lu1) || fail "no SCSI disk appeared for lu1"
say "lu1 is $sd"

# Identity and capacity.
sg_inq "$sd" | tee "$ART/inq.txt"
sg_vpd -p 0x83 "$sd" | tee "$ART/vpd83.txt"
sg_vpd -p 0xb0 "$sd" | tee "$ART/vpdb0.txt"
check "VPD 0x83 has an NAA designator" grep -qi "NAA" "$ART/vpd83.txt"
sg_readcap -l "$sd" | tee "$ART/readcap.txt"
check_eq "capacity in bytes" "$((64 << 20))" "$(blockdev --getsize64 "$sd")"

# Data path: fio writes and verifies through the ring.
fio --name=verify --filename="$sd" --rw=randwrite --bs=4k --size=32M --direct=1 --ioengine=libaio \
    --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-verify.txt"
check "fio verify reported no errors" grep -q "err= 0" "$ART/fio-verify.txt"
# Two jobs, each on its own 24 MiB region (fio verify needs no overlap).
fio --name=mixed --filename="$sd" --rw=randwrite --bsrange=512-128k --size=24M --offset=8M --offset_increment=24M \
    --direct=1 --ioengine=libaio --iodepth=32 --numjobs=2 --verify=md5 --do_verify=1 --verify_fatal=1 \
    --output="$ART/fio-mixed.txt"
check "fio mixed sizes verify reported no errors" bash -c "! grep -q 'err=[^ 0]' $ART/fio-mixed.txt"
# At depth those READs and WRITEs went to the image through the LU
# thread's io_uring (not only the worker pool): status counts them.
"$TCMU_PRD" status --json > "$ART/status-uring.json"
n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lus"][0]["views"][0]["io_uring_commands"])' "$ART/status-uring.json")
say "commands through io_uring: $n"
check "fio's I/O at depth went through io_uring" test "$n" -gt 10000
check "no io_uring warning" bash -c "! grep -q 'io_uring unavailable' $ART/d1.log"

# Bytes written through the LUN are in the image file, byte for byte.
head -c $((3 << 20)) /dev/urandom > /tmp/pattern
dd if=/tmp/pattern of="$sd" bs=1M seek=5 oflag=direct conv=fsync status=none
check "image holds the written bytes at the same offset" cmp /tmp/pattern <(dd if="$img" bs=1M skip=5 count=3 status=none)

# Unsupported opcode: CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
set +e
sg_raw -v "$sd" c0 00 00 00 00 00 > "$ART/sg_raw.txt" 2>&1
set -e
cat "$ART/sg_raw.txt"
check "unsupported opcode is ILLEGAL REQUEST / invalid command operation code" grep -qi "invalid command operation code" "$ART/sg_raw.txt"

# Write cache reconfiguration goes through netlink RECONFIG and shows in MODE SENSE.
echo 0 > $TARGET/core/user_1/lu1/attrib/emulate_write_cache
sg_modes -p 8 "$sd" > "$ART/modes-wce0.txt" 2>&1 || true
check "daemon applied write_cache=false" grep -q "write_cache=false" "$ART/d1.log"
echo 1 > $TARGET/core/user_1/lu1/attrib/emulate_write_cache
check "daemon applied write_cache=true" grep -q "write_cache=true" "$ART/d1.log"

# Growing dev_size beyond the file is refused unless the cfgstring allows it.
if echo $((128 << 20)) > $TARGET/core/user_1/lu1/attrib/dev_size 2>/dev/null; then
  fail "dev_size beyond the image was accepted without grow=1"
fi
check "refusal is logged naming the device" grep -q "refusing reconfiguration.*device=user_1/lu1" "$ART/d1.log"

# A bad config string makes enable fail, with a log line naming the device.
mkdir -p $TARGET/core/user_1/bad
echo -n "dev_config=dlmfile//nonexistent/x.img,dev_size=1048576" > $TARGET/core/user_1/bad/control
echo 0 > $TARGET/core/user_1/bad/attrib/pgr_support
if echo 1 > $TARGET/core/user_1/bad/enable 2>/dev/null; then fail "enable of a nonexistent image succeeded"; fi
check "refusal names the device" grep -q "refusing to enable.*device=user_1/bad" "$ART/d1.log"
rmdir $TARGET/core/user_1/bad

# A second device while running, then removed while running.
truncate -s 16M $SCRATCH/lu2.img
tcmu_create 1 lu2 "dev_config=dlmfile/$SCRATCH/lu2.img;grow=1,dev_size=$((16 << 20))" pgr_support=0
sd2=$(loop_lun naa.5001405000000001 1 $TARGET/core/user_1/lu2) || fail "no SCSI disk for lu2"
echo $((32 << 20)) > $TARGET/core/user_1/lu2/attrib/dev_size
echo 1 > "/sys/block/$(basename "$sd2")/device/rescan"
check_eq "lu2 grew with grow=1" "$((32 << 20))" "$(blockdev --getsize64 "$sd2")"
check_eq "image of lu2 grew" "$((32 << 20))" "$(stat -c %s $SCRATCH/lu2.img)"
echo 1 > "/sys/block/$(basename "$sd2")/device/delete"
rm $TARGET/loopback/naa.5001405000000001/tpgt_1/lun/lun_1/lu2
rmdir $TARGET/loopback/naa.5001405000000001/tpgt_1/lun/lun_1
rmdir $TARGET/core/user_1/lu2
check "daemon logged the removal" grep -q "removed.*device=user_1/lu2" "$ART/d1.log"

# A block device as the backing store (what a shared SAN LUN looks like to
# a node): a loop device over a file, served, verified, bytes on the device.
truncate -s 32M $SCRATCH/blk.img
loopdev=$(losetup --find --show --direct-io=on $SCRATCH/blk.img)
tcmu_create 1 blk "dev_config=dlmfile/$loopdev,dev_size=$((32 << 20))" pgr_support=0
check "daemon opened the block-device LU" grep -q "opened.*device=user_1/blk" "$ART/d1.log"
sd3=$(loop_lun naa.5001405000000001 2 $TARGET/core/user_1/blk) || fail "no SCSI disk for the block-device LU"
check_eq "block-device LU capacity" "$((32 << 20))" "$(blockdev --getsize64 "$sd3")"
fio --name=blkverify --filename="$sd3" --rw=randwrite --bs=4k --size=16M --direct=1 --ioengine=libaio \
    --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-blk.txt"
check "fio verify on the block-device LU" grep -q "err= 0" "$ART/fio-blk.txt"
head -c $((1 << 20)) /dev/urandom > /tmp/blkpattern
dd if=/tmp/blkpattern of="$sd3" bs=1M seek=20 oflag=direct conv=fsync status=none
check "the block device holds the written bytes" cmp /tmp/blkpattern <(dd if="$loopdev" bs=1M skip=20 count=1 iflag=direct status=none)
echo 1 > "/sys/block/$(basename "$sd3")/device/delete"
rm $TARGET/loopback/naa.5001405000000001/tpgt_1/lun/lun_2/blk
rmdir $TARGET/loopback/naa.5001405000000001/tpgt_1/lun/lun_2
rmdir $TARGET/core/user_1/blk
losetup -d "$loopdev"

# SIGTERM during I/O: the daemon drains and exits 0; a restart recovers the
# ring (block_dev/reset_ring) and the LUN works again.
fio --name=bg --filename="$sd" --rw=randwrite --bs=4k --size=16M --direct=1 --ioengine=libaio --iodepth=32 \
    --time_based --runtime=15 --output="$ART/fio-bg.txt" &
fiopid=$!
sleep 4
daemon_stop d1 TERM
check_eq "daemon exit status after SIGTERM" 0 "$DAEMON_RC"
check "daemon drained before exit" grep -q "drained; exiting" "$ART/d1.log"
daemon_start d2
check "restarted daemon recovered the ring" grep -q "opened.*device=user_1/lu1.*recovered=true" "$ART/d2.log"
wait $fiopid || true
fio --name=verify2 --filename="$sd" --rw=randwrite --bs=64k --size=16M --direct=1 --ioengine=libaio \
    --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-verify2.txt"
check "fio verify after restart" grep -q "err= 0" "$ART/fio-verify2.txt"

# kill -9 with writes in flight: the restarted daemon resets the ring (the
# lost commands end BUSY and the initiator retries them) and data written
# and verified before the kill is intact.
fio --name=pre --filename="$sd" --rw=write --bs=64k --size=8M --offset=40M --direct=1 --ioengine=libaio \
    --iodepth=4 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-pre.txt"
fio --name=bg9 --filename="$sd" --rw=randwrite --bs=4k --size=16M --direct=1 --ioengine=libaio --iodepth=32 \
    --time_based --runtime=20 --output="$ART/fio-bg9.txt" &
fiopid=$!
sleep 4
daemon_stop d2 KILL
daemon_start d3
check "daemon restarted after kill -9 recovered the ring" grep -q "opened.*device=user_1/lu1.*recovered=true" "$ART/d3.log"
wait $fiopid || true
fio --name=pre --filename="$sd" --rw=read --bs=64k --size=8M --offset=40M --direct=1 --ioengine=libaio \
    --iodepth=4 --verify=crc32c --verify_only=1 --verify_fatal=1 --output="$ART/fio-pre-check.txt"
check "data acknowledged before the kill verifies after restart" grep -q "err= 0" "$ART/fio-pre-check.txt"
daemon_stop d3 TERM

# poll_us: at iodepth 1 the idle LU thread watches the ring for the next
# command instead of sleeping on the uio fd. Data verifies at iodepth 1 and
# at depth, and status counts the commands found by watching.
printf '[daemon]\ndbus = false\npoll_us = 2000\n' > "$ART/poll.toml"
daemon_start d4 --config "$ART/poll.toml"
check "daemon with poll_us opened lu1" grep -q "opened.*device=user_1/lu1" "$ART/d4.log"
fio --name=qd1 --filename="$sd" --rw=randwrite --bs=4k --size=4M --offset=48M --direct=1 --ioengine=libaio \
    --iodepth=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-poll-qd1.txt"
check "fio verify at iodepth 1 with poll_us" grep -q "err= 0" "$ART/fio-poll-qd1.txt"
fio --name=qd16 --filename="$sd" --rw=randwrite --bs=4k --size=8M --offset=52M --direct=1 --ioengine=libaio \
    --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$ART/fio-poll-qd16.txt"
check "fio verify at depth with poll_us" grep -q "err= 0" "$ART/fio-poll-qd16.txt"
"$TCMU_PRD" status --json > "$ART/status-poll.json"
polled=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lus"][0]["views"][0]["polled"])' "$ART/status-poll.json")
say "commands found by polling: $polled (fio sent 2048 at iodepth 1, then 4096 at depth)"
check "the LU thread found commands by watching the ring" test "$polled" -gt 200
daemon_stop d4 TERM
check_eq "daemon with poll_us exit status" 0 "$DAEMON_RC"
