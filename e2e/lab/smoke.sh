#!/usr/bin/env bash
# Proves the lab works without topo's binaries: builds by hand what topo-agent will build
# (per host: a netdev OVS bridge, a busybox container plumbed with a veth, a GRE mesh with
# split horizon), checks ICMP, TCP and full-MTU traffic between every pair of containers,
# then tears the lab down and checks that nothing is left.
#
#   e2e/lab/smoke.sh            # exit 0 = everything passed; logs kept in /tmp/topo-smoke-logs on failure
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=$HERE/lab.sh
N=${SMOKE_NODES:-3}
BR=tb-test
MTU=1458 # 1500 - 20 (outer IP) - 4 (GRE) - 4 (GRE key) - 14 (inner Ethernet)
GRE_KEY=7

failures=0
say() { printf 'smoke: %s\n' "$*" >&2; }
ok() { say "ok   $*"; }
bad() {
  say "FAIL $*"
  failures=$((failures + 1))
}
# retry TRIES CMD...: run CMD until it succeeds (1 s apart)
retry() {
  local n=$1 k
  shift
  for ((k = 1; k <= n; k++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

DIR=${TOPO_LAB_DIR:-/run/topo-lab}
trap finish EXIT
t0=$(date +%s%N)
exports=$("$LAB" up --nodes "$N" --no-controller --no-agents) || {
  say "FAIL lab.sh up"
  exit 1
}
eval "$exports"
t_up=$((($(date +%s%N) - t0) / 1000000))
say "lab up in ${t_up} ms: DIR=$TOPO_LAB_DIR nodes=$TOPO_LAB_NODES"
[[ $TOPO_LAB_DIR == "$DIR" ]] || bad "TOPO_LAB_DIR=$TOPO_LAB_DIR"
[[ $DOCKER_HOST == "unix://$DIR/docker.sock" ]] || bad "DOCKER_HOST=$DOCKER_HOST"
[[ $TOPO_LAB_NODES == "$N" ]] || bad "TOPO_LAB_NODES=$TOPO_LAB_NODES"
DOCKER=docker
[[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
dk() { "$DOCKER" -H "$DOCKER_HOST" "$@"; }
vsctl() {
  local i=$1
  shift
  ovs-vsctl --db="unix:$DIR/node$i/db.sock" --timeout=20 "$@"
}
nx() { # run in node I's namespace, like the agent does
  local i=$1
  shift
  ip netns exec "node$i" "$@"
}

finish() {
  local rc=$?
  if ((rc != 0 || failures != 0)); then
    rm -rf /tmp/topo-smoke-logs
    cp -r "$DIR" /tmp/topo-smoke-logs 2>/dev/null || true
    find /tmp/topo-smoke-logs -type s -delete 2>/dev/null || true
    rm -rf /tmp/topo-smoke-logs/docker /tmp/topo-smoke-logs/containerd /tmp/topo-smoke-logs/etcd 2>/dev/null || true
    say "logs copied to /tmp/topo-smoke-logs"
  fi
  if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
    say "SMOKE_KEEP=1: lab left up"
    return
  fi
  "$LAB" down || true
}

# ---------------------------------------------------------------- underlay
for ((i = 1; i <= N; i++)); do
  for ((j = 1; j <= N; j++)); do
    ((i == j)) && continue
    if nx "$i" busybox ping -c 1 -W 2 "192.168.100.$j" >/dev/null 2>&1; then
      ok "underlay node$i -> node$j"
    else
      bad "underlay node$i -> node$j"
    fi
  done
  if nx "$i" etcdctl --endpoints="$TOPO_ETCD_ENDPOINTS" --dial-timeout=2s endpoint health >/dev/null 2>&1; then
    ok "node$i reaches etcd (TCP, root namespace)"
  else
    bad "node$i reaches etcd"
  fi
done

# ---------------------------------------------------------------- plumbing by hand
for ((i = 1; i <= N; i++)); do
  name=topo-smoke-$i
  dk run -d --network none --label topo.dev/managed=true --label "topo.dev/node=node$i" \
    --name "$name" topo/busybox:latest sleep 3600 >/dev/null
  pid=$(dk inspect -f '{{.State.Pid}}' "$name")
  netns=/proc/$pid/ns/net
  # overlay bridge with a GRE port per peer, split horizon (protected ports)
  vsctl "$i" -- --may-exist add-br "$BR" -- set bridge "$BR" datapath_type=netdev
  for ((j = 1; j <= N; j++)); do
    ((i == j)) && continue
    vsctl "$i" -- --may-exist add-port "$BR" "gre-node$j" \
      -- set interface "gre-node$j" type=gre "options:remote_ip=192.168.100.$j" "options:key=$GRE_KEY" \
      -- set port "gre-node$j" protected=true
  done
  # veth: host end in the node namespace on the bridge, peer into the container as eth0.
  # Everything below runs inside the node namespace, as topo-agent will (/proc is shared).
  nx "$i" ip link add "tvh$i" mtu "$MTU" type veth peer name "tvc$i" mtu "$MTU"
  nx "$i" ip link set "tvc$i" netns "$netns"
  nx "$i" nsenter --net="$netns" ip link set "tvc$i" name eth0
  nx "$i" nsenter --net="$netns" ip addr add "10.99.0.$i/16" dev eth0
  nx "$i" nsenter --net="$netns" ip link set eth0 up
  nx "$i" nsenter --net="$netns" ethtool -K eth0 tx off >/dev/null # trap 1
  nx "$i" ethtool -K "tvh$i" tx off >/dev/null
  nx "$i" ip link set "tvh$i" up
  vsctl "$i" -- --may-exist add-port "$BR" "tvh$i"
  # content for the TCP checks
  dk exec "$name" sh -c "mkdir -p /www && echo hello-from-node$i > /www/index.html &&
    dd if=/dev/urandom of=/www/big bs=1024 count=2048 2>/dev/null &&
    md5sum /www/big | cut -d' ' -f1 > /www/big.md5 && httpd -p 8000 -h /www"
  ok "node$i: container $name (pid $pid) plumbed as 10.99.0.$i/16 mtu $MTU"
done

# ---------------------------------------------------------------- checks
for ((i = 1; i <= N; i++)); do
  for ((j = 1; j <= N; j++)); do
    ((i == j)) && continue
    src=topo-smoke-$i dst=10.99.0.$j
    if retry 10 dk exec "$src" ping -c 1 -W 1 "$dst"; then ok "ping node$i -> node$j"; else bad "ping node$i -> node$j"; fi
    # full-size packet: 1430 + 8 ICMP + 20 IP = 1458 = MTU; the kernel sets DF on it
    if retry 3 dk exec "$src" ping -c 2 -W 2 -s 1430 "$dst"; then
      ok "ping -s 1430 node$i -> node$j"
    else
      bad "ping -s 1430 node$i -> node$j"
    fi
    out=$(dk exec "$src" timeout 10 wget -q -O - "http://$dst:8000/index.html" 2>&1 || true)
    if [[ $out == "hello-from-node$j" ]]; then ok "http node$i -> node$j"; else bad "http node$i -> node$j: '$out'"; fi
    want=$(dk exec "topo-smoke-$j" cat /www/big.md5)
    got=$(dk exec "$src" sh -c "timeout 20 wget -q -O - http://$dst:8000/big | md5sum | cut -d' ' -f1" 2>&1 || true)
    if [[ -n $want && $got == "$want" ]]; then ok "2 MiB over TCP node$i -> node$j"; else bad "2 MiB over TCP node$i -> node$j"; fi
  done
done
# a plain TCP stream with nc
dk exec -d topo-smoke-$N sh -c 'nc -l -p 7000 > /tmp/nc.out'
sleep 0.5
dk exec topo-smoke-1 sh -c "echo nc-works | nc -w 3 10.99.0.$N 7000" >/dev/null 2>&1 || true
sleep 0.5
got=$(dk exec "topo-smoke-$N" cat /tmp/nc.out 2>/dev/null || true)
if [[ $got == nc-works ]]; then ok "nc node1 -> node$N"; else bad "nc node1 -> node$N: '$got'"; fi

# ---------------------------------------------------------------- down, nothing left
trap - EXIT
if ((failures)); then
  finish
  say "$failures check(s) failed"
  exit 1
fi
if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
  say "PASS (up ${t_up} ms); SMOKE_KEEP=1: lab left up, run lab.sh down"
  exit 0
fi
t1=$(date +%s%N)
"$LAB" down
say "lab down in $((($(date +%s%N) - t1) / 1000000)) ms"
left=0
if ip netns list | grep -E '^node[0-9]+' >&2; then
  bad "namespaces left"
  left=1
fi
if ip -o link show | grep -E 'topo-ul' >&2; then
  bad "links left"
  left=1
fi
while read -r pid exe rest; do
  case ${exe##*/} in
    ovs-vswitchd | ovsdb-server | dockerd | containerd | containerd-shim* | etcd | topo-agent | topo-controller)
      if [[ $rest == *"$DIR"* || $rest == *192.168.100.254* ]]; then
        bad "process left: $pid $exe $rest"
        left=1
      fi
      ;;
  esac
done < <(ps -ww -eo pid=,args=)
if grep -q " $DIR" /proc/self/mounts; then
  bad "mounts left under $DIR"
  left=1
fi
if [[ -e $DIR ]]; then
  bad "$DIR left"
  left=1
fi
((left)) || ok "nothing left after down"
if ((failures)); then
  say "$failures check(s) failed"
  exit 1
fi
say "PASS (up ${t_up} ms)"
