# Helpers of the two-guest tier (sourced in both guests, after lib.sh).

A_IP=10.99.0.1
B_IP=10.99.0.2
AGENT_PORT=7000

# cluster2_network a|b: the private link between the guests (the NIC the
# host runner gave MAC 52:54:00:99:00:0<n>).
cluster2_network() {
  local n ip ifc
  case "$1" in a) n=1; ip=$A_IP ;; b) n=2; ip=$B_IP ;; esac
  ip link set lo up
  ifc=$(ip -o link | awk -v m="52:54:00:99:00:0$n" 'tolower($0) ~ m { sub(":$", "", $2); print $2 }')
  [ -n "$ifc" ] || fail "no NIC with MAC 52:54:00:99:00:0$n"
  ip addr add "$ip/24" dev "$ifc"
  ip link set "$ifc" up
  say "ok: $ifc is $ip"
}

# cluster2_corosync: a two-node cluster over the private link (knet, no
# crypto: a test network), quorum with two_node (each survives the other).
cluster2_corosync() {
  mkdir -p /etc/corosync
  cat > /etc/corosync/corosync.conf <<CONF
totem {
  version: 2
  cluster_name: tcmuprd2
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: 3000
}
nodelist {
  node {
    ring0_addr: $A_IP
    name: node1
    nodeid: 1
  }
  node {
    ring0_addr: $B_IP
    name: node2
    nodeid: 2
  }
}
quorum {
  provider: corosync_votequorum
  two_node: 1
}
logging {
  to_stderr: yes
  to_syslog: no
}
CONF
}

# shared_disk SERIAL: the /dev/vdX the host runner attached with that serial.
shared_disk() {
  local d
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}

# onb [--timeout S] 'COMMAND': runs COMMAND in guest B (lib.sh sourced
# there, with B's $ART); prints its output, returns its exit status.
onb() {
  local t=600
  [ "$1" != --timeout ] || { t="$2"; shift 2; }
  python3 "$ROOT/tests/vm/cluster2/agent.py" --call "$B_IP" "$AGENT_PORT" "$t" "$1"
}

# onb_nowait 'COMMAND': for commands that do not come back (power off).
# The bound is generous: under TCG the client's start and connect alone
# took over 5 s once, and the command never reached B. When B goes down
# the connection drops and the call returns at once.
onb_nowait() {
  timeout 30 python3 "$ROOT/tests/vm/cluster2/agent.py" --call "$B_IP" "$AGENT_PORT" 3 "$1" >/dev/null 2>&1 || true
}

# marker CHAR: 4 KiB of CHAR (a block a writer stamps).
marker() { head -c 4096 /dev/zero | tr '\0' "$1"; }
