# Scenario: TCMU backstores made by hand get a uio device with the right name and map size
. "$VM_LIB"
need_target

img=/tmp/vol1.img
truncate -s 64M "$img"

# Default data area: the kernel maps 8 MiB of command ring + 1 GiB of data.
tcmu_create 1 vol1 "dev_config=dlmfile/$img,dev_size=67108864" pgr_support=0
check_eq "pgr_support reads back 0 (PR commands go to the ring)" 0 "$(cat $TARGET/core/user_1/vol1/attrib/pgr_support)"
u=$(uio_for vol1) || fail "no uio device for backstore vol1"
check "/dev/$u is a character device" test -c "/dev/$u"
check_eq "uio name" "tcm-user/1/vol1/dlmfile/$img" "$(cat /sys/class/uio/$u/name)"
check_eq "map0 size (default data area)" $((0x40800000)) "$(( $(cat /sys/class/uio/$u/maps/map0/size) ))"

# max_data_area_mb set through control before enable changes the map size.
tcmu_create 2 vol2 "dev_config=dlmfile/$img;direct=1,dev_size=1048576,max_data_area_mb=64" pgr_support=0
u2=$(uio_for vol2) || fail "no uio device for backstore vol2"
check_eq "map0 size with max_data_area_mb=64" $((0x4800000)) "$(( $(cat /sys/class/uio/$u2/maps/map0/size) ))"

# Our own discovery agrees with sysfs.
"$TCMU_PRD" list-devices | tee "$ART/list-devices.txt"
check "list-devices shows vol1 with its map size" grep -Eq "^$u +user_1/vol1 +dlmfile +0x40800000 +$img\$" "$ART/list-devices.txt"
check "list-devices shows vol2 with its options" grep -Eq "^$u2 +user_2/vol2 +dlmfile +0x4800000 +$img;direct=1\$" "$ART/list-devices.txt"

# Removing the backstore removes the uio device.
rmdir $TARGET/core/user_2/vol2
check "uio device of vol2 is gone after rmdir" test ! -e "/sys/class/uio/$u2"
