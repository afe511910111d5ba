#!/usr/bin/env bash
# Two (or more) LIO nodes export one shared LU; tcmu-prd keeps one SCSI-3 PR
# state for it across the nodes through the Linux DLM, so fence_scsi (or any
# PR-based fencing) sees the same registrations and reservation through
# every node.
#
# Run on EACH node, with that node's own NODE and TARGET_IQN, the same IMAGE
# (a shared block device, or a file on a cluster/network file system):
#
#   NODE=node1 IMAGE=/dev/disk/by-id/dm-uuid-mpath-3600... SIZE=100G \
#   TARGET_IQN=iqn.2003-01.org.example:node1-lun0 \
#   INITIATORS="iqn.1994-05.com.redhat:app1 iqn.1994-05.com.redhat:app2" \
#   PORTAL=0.0.0.0 ./two-nodes-shared-lu.sh
#
# Before it, on each node: corosync and dlm_controld running (`dlm_tool ls`
# works), and tcmu-prd running in cluster mode with D-Bus for targetcli:
#
#   ./two-nodes-shared-lu.sh --print-config > /etc/tcmu-prd/tcmu-prd.toml
#   systemctl restart tcmu-prd     # scripts/install --cluster: after corosync + dlm
#
# Each node creates its own views (one per initiator, named
# <NAME>-<NODE>-v<i>) and its own target; an initiator logs in to both nodes'
# targets and sees two paths to one LU (same VPD 0x83 identity, cluster-wide
# relative target port ids), for dm-multipath. Undo on a node: --delete.
#
# With Pacemaker (not run by the VM tier; pacemaker is not in the test
# image), keep tcmu-prd a clone ordered after the DLM clone, and fence with
# fence_scsi on the LU, e.g.:
#
#   pcs resource create dlm ocf:pacemaker:controld op monitor interval=30s on-fail=fence clone interleave=true ordered=true
#   pcs resource create tcmu-prd systemd:tcmu-prd clone interleave=true
#   pcs constraint order start dlm-clone then tcmu-prd-clone
#   pcs constraint colocation add tcmu-prd-clone with dlm-clone
#   pcs stonith create scsi-fence fence_scsi pcmk_host_list="app1 app2" \
#       devices=/dev/disk/by-id/wwn-0x6001405... meta provides=unfencing
#
# (the stonith device runs on the initiator cluster, app1/app2, against the
# LU as they see it; the target nodes need no fencing configuration for it.)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "${1:-}" = --print-config ]; then
  cat <<'TOML'
# /etc/tcmu-prd/tcmu-prd.toml on every target node
[daemon]
dbus = true              # targetcli creates user:dlmfile backstores through us
[cluster]
mode = "dlm"             # one PR state per LU across the nodes
lockspace = "tcmu-prd"   # the same on every node
update_timeout_ms = 10000
TOML
  exit 0
fi

NODE="${NODE:?NODE=<this node name, e.g. node1>}"
case "$NODE" in *[!A-Za-z0-9_-]*|'') echo "NODE: letters, digits, _ and - only" >&2; exit 2 ;; esac
IMAGE="${IMAGE:?IMAGE=<absolute path of the shared image or block device>}"
export NAME="${NAME:-$(basename "$IMAGE" | tr -c 'A-Za-z0-9_\n-' '_')}-$NODE"
# The per-node layout is the one-node layout with node-specific view names.
exec "$HERE/one-node-two-initiators.sh" "$@"
