#!/usr/bin/env bash
# What one host link event costs ovs-vswitchd (userspace datapath) on a bridge of N ports:
# its bridge reconfigurations, netlink requests and CPU, from `ovs-appctl coverage/show` and
# /proc. A throwaway ovsdb-server and ovs-vswitchd in a network namespace of their own, N veth
# ports on one netdev bridge, then one step at a time (BENCHMARKS.md, "One change among 250,
# third pass"). Nothing of topo runs; nothing outside the namespace and a temporary
# directory is touched.
#
#   sudo e2e/lab/ovs-link-events.sh [N]     # N ports (default 250)
set -euo pipefail

N=${1:-250}
if [[ ${OVS_LINK_EVENTS_INNER:-} != 1 ]]; then
  exec env OVS_LINK_EVENTS_INNER=1 unshare --net --mount -- "$0" "$N"
fi

dir=$(mktemp -d /tmp/ovs-link-events.XXXXXX)
cleanup() {
  for p in "$dir"/*.pid; do
    [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
# ip netns add needs a private /run/netns in this mount namespace.
mount --make-rprivate /
mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }

vsctl() { ovs-vsctl --db="unix:$dir/db.sock" "$@"; }
ovsdb-tool create "$dir/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" --unixctl="$dir/ovsdb.ctl" \
  --pidfile="$dir/ovsdb.pid" --log-file="$dir/ovsdb.log" --detach
vsctl --no-wait init
ovs-vswitchd "unix:$dir/db.sock" --disable-system --unixctl="$dir/vsw.ctl" \
  --pidfile="$dir/vsw.pid" --log-file="$dir/vsw.log" --detach
vsctl add-br br0 -- set bridge br0 datapath_type=netdev
ip link set lo up
ports=()
for ((i = 1; i <= N; i++)); do
  ip link add "vx$i" up type veth peer name "vy$i"
  ip link set "vy$i" up
  ports+=(-- add-port br0 "vx$i")
done
vsctl "${ports[@]}"
ip netns add peer
# The ports' own events and first statistics pass settle first.
sleep 15

counters() {
  ovs-appctl -t "$dir/vsw.ctl" coverage/show | awk '/total:/ {print $1, $NF}' | sort
}
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$(cat "$dir/vsw.pid")/stat"; }
# step NAME CMD...: runs CMD, waits for ovs-vswitchd to settle, prints what it cost.
step() {
  local name=$1 c0 t0
  shift
  counters >"$dir/c0"
  t0=$(cpu_ms)
  "$@"
  sleep 2
  counters >"$dir/c1"
  printf '| %s | %s | %s |\n' "$name" \
    "$(join "$dir/c0" "$dir/c1" | awk '$1 == "bridge_reconfigure" {print $3 - $2}')" \
    "$(join "$dir/c0" "$dir/c1" | awk '$1 == "netlink_sent" {print $3 - $2}')" |
    sed "s/|\$/| $(($(cpu_ms) - t0)) ms |/"
}

echo "ovs-vswitchd $(ovs-vswitchd --version | awk 'NR == 1 {print $NF}'), netdev bridge of $N ports"
echo
echo "| step | bridge reconfigurations | netlink requests | ovs-vswitchd CPU |"
echo "| --- | ---: | ---: | ---: |"
step "nothing (2 s, twice)" true
step "nothing (2 s, twice)" true
step "a veth pair, both ends in the host namespace" ip link add ua type veth peer name ub
step "its ends set up" sh -c 'ip link set ua up && ip link set ub up'
step "a veth pair born with its peer in another namespace" \
  ip link add uc up type veth peer name ud netns peer
step "that host end added to the bridge" vsctl add-port br0 uc
