#!/usr/bin/env bash
# One node, one LU, two iSCSI initiators, SCSI-3 PR served by tcmu-prd.
#
# LIO does not say which initiator sent a command to a TCMU backstore, so
# tcmu-prd serves one backstore ("view") per initiator, all on the same image
# and sharing one PR state; each initiator's ACL maps only its own view.
# This script builds that layout with targetcli alone (what
# `tcmu-prd export ... iscsi` does directly in configfs).
#
# Needs: tcmu-prd running with [daemon] dbus = true (targetcli reaches it
# over D-Bus to create user:dlmfile backstores), targetcli-fb.
#
#   IMAGE=/srv/lun0.img SIZE=1G TARGET_IQN=iqn.2003-01.org.example:lun0 \
#   INITIATORS="iqn.1994-05.com.redhat:node1 iqn.1994-05.com.redhat:node2" \
#   PORTAL=0.0.0.0 ./one-node-two-initiators.sh
#
# Undo: ./one-node-two-initiators.sh --delete (same environment).
set -euo pipefail

IMAGE="${IMAGE:?IMAGE=<absolute path of the image file or block device>}"
SIZE="${SIZE:-1G}"
TARGET="${TARGET_IQN:?TARGET_IQN=<iSCSI target IQN>}"
INITIATORS="${INITIATORS:?INITIATORS=\"<initiator IQN> <initiator IQN>\"}"
PORTAL="${PORTAL:-0.0.0.0}"
NAME="${NAME:-$(basename "$IMAGE" | tr -c 'A-Za-z0-9_\n-' '_')}"
# Transfers up to 4 MiB per command (TCMU's default is 64 KiB).
MAX_SECTORS="${MAX_SECTORS:-8192}"

tc() { targetcli "$@" >/dev/null; }
view_name() { echo "$NAME-v$1"; }

if [ "${1:-}" = --delete ]; then
  targetcli /iscsi delete "$TARGET" >/dev/null 2>&1 || true
  i=0
  for _ in $INITIATORS; do
    i=$((i + 1))
    targetcli /backstores/user:dlmfile delete "$(view_name $i)" >/dev/null 2>&1 || true
  done
  exit 0
fi

case "$IMAGE" in /*) ;; *) echo "IMAGE must be an absolute path" >&2; exit 2 ;; esac
[ -e "$IMAGE" ] || truncate -s "$SIZE" "$IMAGE"

# ACLs must map exactly one view each: no automatic mapping of every LUN.
tc set global auto_add_mapped_luns=false

tc /iscsi create "$TARGET"
tc "/iscsi/$TARGET/tpg1/portals" delete 0.0.0.0 3260 2>/dev/null || true
tc "/iscsi/$TARGET/tpg1/portals" create "$PORTAL" 3260

i=0
for ini in $INITIATORS; do
  i=$((i + 1))
  v=$(view_name $i)
  # One view of the LU; CheckConfig (tcmu-prd, over D-Bus) validates the cfgstring.
  tc /backstores/user:dlmfile create "name=$v" "size=$SIZE" "cfgstring=$IMAGE" "hw_max_sectors=$MAX_SECTORS"
  # PR, RESERVE/RELEASE and REPORT TARGET PORT GROUPS go to tcmu-prd, not to
  # the kernel's per-backstore emulation; LUN resets are reported to it.
  # (Set before the view is exported: LIO refuses once a LUN uses it.)
  tc "/backstores/user:dlmfile/$v" set attribute pgr_support=0 alua_support=0 tmr_notification=1
  tc "/iscsi/$TARGET/tpg1/luns" create "/backstores/user:dlmfile/$v"
  lun=$((i - 1))
  tc "/iscsi/$TARGET/tpg1/acls" create "$ini"
  tc "/iscsi/$TARGET/tpg1/acls/$ini" create mapped_lun=0 "tpg_lun_or_backstore=$lun"
done
targetcli ls "/iscsi/$TARGET"
