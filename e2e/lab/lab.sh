#!/usr/bin/env bash
# topo lab: N simulated hosts on one machine (see /work/shared/PLATFORM.md).
#
#   eval "$(e2e/lab/lab.sh up --nodes 3)"      # prints only `export ...` lines on stdout
#   e2e/lab/lab.sh status
#   e2e/lab/lab.sh exec 2 ip -br addr
#   e2e/lab/lab.sh down                         # always exit 0, also after a crash
#
# Layout (DIR = $TOPO_LAB_DIR, default /run/topo-lab):
#   $DIR/pki: the lab's PKI from `topo-pki init` (CA, controller, etcd, admin, viewer, one
#     identity per node; admin.yaml is the TOPO_CONFIG the lab exports).
#   root netns: Linux bridge topo-ul 192.168.100.254/24 (tx offload off), etcd on
#     https://192.168.100.254:2379 + https://127.0.0.1:2379 (TLS, --client-cert-auth, auth
#     enabled with the users and roles of `topo-pki etcd-setup`; peer 127.0.0.1:2380),
#     topo-controller on https://192.168.100.254:8443 (config $DIR/pki/controller.yaml), a lab
#     containerd ($DIR/containerd.sock) + dockerd ($DIR/docker.sock, --bridge=none
#     --iptables=false --ip-masq=false).
#   netns nodeI: ul0 (veth, peer topo-ul-nI on topo-ul), ovsdb-server + ovs-vswitchd
#     (--disable-system, OVS_RUNDIR=$DIR/nodeI, db socket $DIR/nodeI/db.sock), netdev
#     bridge br-phy with port ul0 and 192.168.100.I/24 on its internal port, topo-agent with
#     the node's own identity ($DIR/pki/nodes/nodeI.crt: its etcd user reads only its slice).
#
# Timings, measured on the 2-core Debian 12 VM while cargo was compiling in parallel
# (load average 2-3):
#   up --nodes 3 --no-controller --no-agents   2.4-4.5 s (typically ~3.5-4 s). One run split:
#                                             3 hosts 1.0 s (~0.33 s each), containerd +
#                                             dockerd 0.9 s, busybox image import 1.6 s,
#                                             etcd + TCP checks 0.8 s
#   up --nodes 3 with controller and agents     +~0.7 s (stub binaries; includes a 1 s check
#                                             that the agents are still alive)
#   add-node I                                 ~1.3 s
#   down (3 nodes, 3 containers)               0.8-2.2 s
#   smoke.sh (up, plumbing, 6 pairs x 4 checks, down, leftover check)  20-24 s
#
# Subcommands: up [--nodes N] [--no-agents] [--no-controller] | down | add-node I [--no-agent]
#   | remove-node I (the host leaves: its agent, Open vSwitch, namespace and underlay port go)
#   | start-agent I | kill-agent I [SIG] | restart-agent I | start-controller
#   | kill-controller [SIG] | restart-controller | status | exec I CMD... | vsctl I ARGS...
#   | appctl I ARGS... | env
# Environment: TOPO_LAB_DIR, TOPO_BIN (default <repo>/target/debug), RUST_LOG (default info),
#   TOPO_LAB_CONTROLLER_ARGS / TOPO_LAB_AGENT_ARGS (extra args, word-split).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/../.." && pwd)
DIR=${TOPO_LAB_DIR:-/run/topo-lab}
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
TOPO_BIN=${TOPO_BIN:-$REPO/target/debug}

UL_BR=topo-ul
UL_PREFIX=192.168.100
UL_ROOT_IP=$UL_PREFIX.254
ETCD_URL=https://$UL_ROOT_IP:2379
CTRL_LISTEN=$UL_ROOT_IP:8443
CTRL_URL=https://$CTRL_LISTEN
PKI=$DIR/pki
DOCKER_SOCK=$DIR/docker.sock
CONTAINERD_SOCK=$DIR/containerd.sock
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
IMAGE=topo/busybox:latest
export ETCDCTL_API=3
# Debian's docker CLI matches the engine (API 1.41); a newer CLI earlier in PATH also works.
DOCKER_CLI=docker
[[ -x /usr/bin/docker ]] && DOCKER_CLI=/usr/bin/docker

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
  printf 'lab: error: %s\n' "$*" >&2
  exit 1
}
dk() { "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" "$@"; }
nsx() { # nsx I CMD...: run CMD in node I's namespace
  local i=$1
  shift
  ip netns exec "node$i" "$@"
}
vsctl() { # vsctl I ARGS...
  local i=$1
  shift
  ovs-vsctl --db="unix:$DIR/node$i/db.sock" --timeout=30 "$@"
}
check_index() {
  [[ ${1:-} =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 250)) || die "bad node index '${1:-}' (1..250)"
}

# ---------------------------------------------------------------- process helpers
is_alive() { # is_alive PID: exists and is not a zombie
  local st
  [[ -r /proc/$1/stat ]] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z ]]
}
pidfile_pid() { # prints the pid in FILE if that process is alive
  local p
  [[ -r $1 ]] || return 1
  p=$(tr -dc '0-9' 2>/dev/null <"$1") || return 1
  [[ -n $p ]] && is_alive "$p" && echo "$p"
}
# find_pids NAME_REGEX SUBSTRING [same-netns]: processes whose argv[0] basename matches
# NAME_REGEX and whose command line contains SUBSTRING; with `same-netns`, only those in this
# shell's network namespace (the controller's command line names no state directory, and
# another lab isolated in its own namespace runs one with the same --listen).
find_pids() {
  if [[ ${3:-} == same-netns ]]; then
    local p mine
    mine=$(readlink /proc/self/ns/net)
    while read -r p; do
      [[ -n $p && $(readlink "/proc/$p/ns/net" 2>/dev/null) == "$mine" ]] && echo "$p"
    done < <(find_pids "$1" "$2")
    return 0
  fi
  ps -ww -eo pid=,args= 2>/dev/null | awk -v re="$1" -v needle="$2" -v self="$$" -v me="$BASHPID" '
    { exe = $2; sub(/.*\//, "", exe)
      if ($1 == self || $1 == me) next
      if (exe ~ re && index($0, needle) > 0) print $1 }' || true
}
# stop_pids TIMEOUT_TENTHS PID...: TERM, wait, then KILL.
stop_pids() {
  local tenths=$1 p n alive
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((n = 0; n < tenths; n++)); do
    alive=()
    for p; do is_alive "$p" && alive+=("$p"); done
    ((${#alive[@]})) || return 0
    sleep 0.1
  done
  alive=()
  for p; do is_alive "$p" && alive+=("$p"); done
  ((${#alive[@]})) || return 0
  log "killing ${alive[*]} with SIGKILL"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  for ((n = 0; n < 30; n++)); do
    alive=()
    for p; do is_alive "$p" && alive+=("$p"); done
    ((${#alive[@]})) || return 0
    sleep 0.1
  done
}
# stop_component TENTHS PIDFILE NAME_REGEX SUBSTRING [same-netns]
stop_component() {
  local tenths=$1 pidfile=$2 re=$3 sub=$4 scope=${5:-} pids=() p
  if p=$(pidfile_pid "$pidfile"); then pids+=("$p"); fi
  while read -r p; do
    [[ -n $p ]] && pids+=("$p")
  done < <(find_pids "$re" "$sub" "$scope")
  ((${#pids[@]})) || return 0
  mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -u)
  stop_pids "$tenths" "${pids[@]}"
}
# close_fds: in a subshell about to exec a daemon, close every fd above 2 (a daemon that
# inherits the caller's pipe would make `$(lab.sh up)` or a test harness wait forever).
close_fds() {
  local f n
  for f in /proc/$BASHPID/fd/*; do
    n=${f##*/}
    [[ $n =~ ^[0-9]+$ ]] && ((n > 2)) && eval "exec $n>&-" 2>/dev/null
  done
  return 0
}
# start_bg PIDFILE LOG CMD...: a daemon in its own session, detached from our stdio.
start_bg() {
  local pidfile=$1 logf=$2
  shift 2
  printf '=== %s: %s\n' "$(date '+%F %T')" "$*" >>"$logf"
  (
    close_fds
    exec setsid "$@" </dev/null >>"$logf" 2>&1
  ) &
  echo $! >"$pidfile"
}
# start_ovs I LOG CMD...: an OVS daemon (--detach) in node I's namespace
start_ovs() {
  local i=$1 logf=$2 nd=$DIR/node$1
  shift 2
  (
    close_fds
    export OVS_RUNDIR=$nd OVS_LOGDIR=$nd OVS_DBDIR=$nd
    exec ip netns exec "node$i" "$@" </dev/null >>"$logf" 2>&1
  )
}
# wait_until TENTHS DESCRIPTION CMD...: poll CMD every 0.1 s.
wait_until() {
  local tenths=$1 desc=$2 n
  shift 2
  for ((n = 0; n < tenths; n++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out after $((tenths / 10)) s waiting for $desc"
  return 1
}
tail_log() {
  [[ -r $1 ]] || return 0
  echo "----- last lines of $1" >&2
  tail -n "${2:-25}" "$1" >&2 || true
  echo "-----" >&2
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$PKI/ca.crt" "$1" 2>/dev/null || true; }
http_ok() { [[ $(http_code "$1") == 200 ]]; }

# ---------------------------------------------------------------- underlay
underlay_up() {
  log "underlay bridge $UL_BR $UL_ROOT_IP/24"
  ip link add "$UL_BR" type bridge
  ip link set "$UL_BR" type bridge stp_state 0 forward_delay 0 2>/dev/null || true
  ip addr add "$UL_ROOT_IP/24" dev "$UL_BR"
  ip link set "$UL_BR" up
  # trap 4: the userspace datapath does not complete partial checksums.
  ethtool -K "$UL_BR" tx off >/dev/null 2>&1 || log "warning: ethtool -K $UL_BR tx off failed"
  # trap 2: frames crossing a Linux bridge must not hit an iptables FORWARD DROP.
  local key=/proc/sys/net/bridge/bridge-nf-call-iptables
  if [[ -e $key ]]; then
    [[ -e $DIR/sysctl.bridge-nf-call-iptables ]] || cat "$key" >"$DIR/sysctl.bridge-nf-call-iptables"
    sysctl -q -w net.bridge.bridge-nf-call-iptables=0 >/dev/null 2>&1 || true
  fi
  local fwd=
  command -v iptables >/dev/null && fwd=$(iptables -S FORWARD 2>/dev/null || true)
  if [[ -e $key && $(cat "$key") != 0 ]] && grep -q -- '-P FORWARD DROP' <<<"$fwd"; then
    log "bridge-nf-call-iptables stays 1 and FORWARD is DROP: adding an ACCEPT rule for $UL_BR"
    iptables -I FORWARD -i "$UL_BR" -o "$UL_BR" -m comment --comment topo-lab -j ACCEPT
    touch "$DIR/iptables-rule"
  fi
}

# ---------------------------------------------------------------- one simulated host
node_up() {
  local i=$1 nd=$DIR/node$1
  [[ ! -e /run/netns/node$i ]] || die "netns node$i already exists"
  log "node$i: netns, underlay veth, ovsdb-server, ovs-vswitchd, br-phy $UL_PREFIX.$i/24"
  mkdir -p "$nd"
  ip netns add "node$i"
  echo "node$i" >>"$DIR/netns.list"
  ip link del "topo-ul-n$i" >/dev/null 2>&1 || true # trap 6: leftover from a crash
  ip link add "topo-ul-n$i" type veth peer name ul0 netns "node$i"
  ip link set "topo-ul-n$i" master "$UL_BR"
  ethtool -K "topo-ul-n$i" tx off >/dev/null 2>&1 || true
  ip link set "topo-ul-n$i" up
  nsx "$i" ip link set lo up
  nsx "$i" sysctl -q -w net.bridge.bridge-nf-call-iptables=0 >/dev/null 2>&1 || true
  nsx "$i" ethtool -K ul0 tx off >/dev/null 2>&1 || true
  # ul0 becomes a port of the userspace datapath, which reads it with an AF_PACKET socket:
  # the kernel still sees every frame on it and would answer ARP for this host's address
  # from ul0's own MAC too (ARP flux). A peer that caches that MAC sends its GRE packets to
  # ul0, where ovs-vswitchd does not decapsulate them (it does for br-phy's MAC only), and the
  # tunnel stays dark while the peer keeps that entry (issue 13, RELIABILITY.md). With ARP
  # off on ul0, only br-phy answers.
  nsx "$i" ip link set ul0 arp off
  nsx "$i" ip link set ul0 up

  # Open vSwitch of this host: everything under $nd.
  ovsdb-tool create "$nd/conf.db" "$OVS_SCHEMA"
  start_ovs "$i" "$nd/ovsdb-server.log" ovsdb-server "$nd/conf.db" \
    --remote="punix:$nd/db.sock" --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
    --pidfile="$nd/ovsdb-server.pid" --unixctl="$nd/ovsdb-server.ctl" \
    --log-file="$nd/ovsdb-server.log" --detach --no-chdir ||
    {
      tail_log "$nd/ovsdb-server.log"
      die "node$i: ovsdb-server failed"
    }
  vsctl "$i" --no-wait init
  vsctl "$i" --no-wait set Open_vSwitch . external_ids:system-id="node$i" external_ids:hostname="node$i"
  # --disable-system: no kernel datapath here (no openvswitch module); only netdev bridges.
  start_ovs "$i" "$nd/ovs-vswitchd.log" ovs-vswitchd "unix:$nd/db.sock" \
    --disable-system --pidfile="$nd/ovs-vswitchd.pid" --unixctl="$nd/ovs-vswitchd.ctl" \
    --log-file="$nd/ovs-vswitchd.log" --detach --no-chdir ||
    {
      tail_log "$nd/ovs-vswitchd.log"
      die "node$i: ovs-vswitchd failed"
    }
  vsctl "$i" -- --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev \
    -- --may-exist add-port br-phy ul0
  wait_until 100 "node$i br-phy device" nsx "$i" ip link show br-phy || die "node$i: no br-phy"
  nsx "$i" ethtool -K br-phy tx off >/dev/null 2>&1 || true
  nsx "$i" ip addr add "$UL_PREFIX.$i/24" dev br-phy
  nsx "$i" ip link set br-phy up
  if ! wait_until 100 "node$i to ping $UL_ROOT_IP" nsx "$i" busybox ping -c 1 -W 1 "$UL_ROOT_IP"; then
    tail_log "$nd/ovs-vswitchd.log"
    die "node$i cannot reach $UL_ROOT_IP"
  fi
}
# TCP from a host namespace to the root namespace (trap 4), through etcd (TLS with the
# node's own identity; /version needs no etcd permission).
node_tcp_check() {
  local i=$1
  wait_until 100 "node$i to reach etcd over TCP" nsx "$i" curl -sf --max-time 2 \
    --cacert "$PKI/ca.crt" --cert "$PKI/nodes/node$i.crt" --key "$PKI/nodes/node$i.key" \
    "$ETCD_URL/version" ||
    die "node$i: ping works but TCP to $ETCD_URL does not (checksum offload? see PLATFORM.md trap 4)"
}

# ---------------------------------------------------------------- PKI
pki_init() { # I...: the lab's identities (kept when they exist)
  local i nodes=() args=()
  for i; do nodes+=("node$i=$UL_PREFIX.$i"); done
  ((${#nodes[@]} == 0)) || args=(--nodes "$(IFS=,; echo "${nodes[*]}")")
  log "PKI in $PKI (CA, controller, etcd, admin, viewer, ${#nodes[@]} node(s))"
  "$TOPO_BIN/topo-pki" init --dir "$PKI" --cluster topo-lab \
    --controller-san "$UL_ROOT_IP,127.0.0.1,localhost" --etcd-san "$UL_ROOT_IP,127.0.0.1,localhost" \
    --server "$CTRL_URL" --etcd-endpoints "$ETCD_URL" "${args[@]}" >/dev/null
}
pki_node() { # I: node I's identity, and its etcd user
  local i=$1
  "$TOPO_BIN/topo-pki" node --dir "$PKI" "node$i" --address "$UL_PREFIX.$i" >/dev/null
  etcd_users
}
etcd_users() { # root, the controller, one user per node; auth on (idempotent)
  "$TOPO_BIN/topo-pki" etcd-setup --dir "$PKI" --etcd-endpoints "$ETCD_URL" >/dev/null
}
etcdctl_root() {
  etcdctl --endpoints="$ETCD_URL" --cacert "$PKI/ca.crt" --cert "$PKI/etcd-root.crt" \
    --key "$PKI/etcd-root.key" "$@"
}

# ---------------------------------------------------------------- docker
docker_up() {
  local cd=$DIR/containerd dd=$DIR/docker
  mkdir -p "$cd/root" "$cd/state" "$dd/data" "$dd/exec"
  # Our own containerd, so a system containerd (if any) is never shared.
  cat >"$cd/config.toml" <<EOF
version = 2
root = "$cd/root"
state = "$cd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = "$cd/debug.sock"
[metrics]
  address = ""
EOF
  log "containerd + dockerd (unix://$DOCKER_SOCK)"
  start_bg "$DIR/containerd.pid" "$DIR/containerd.log" containerd --config "$cd/config.toml"
  wait_until 150 "containerd socket" test -S "$CONTAINERD_SOCK" || {
    tail_log "$DIR/containerd.log"
    die "containerd did not start"
  }
  echo '{}' >"$dd/daemon.json"
  start_bg "$DIR/dockerd.pid" "$DIR/dockerd.log" dockerd \
    --config-file "$dd/daemon.json" \
    --containerd "$CONTAINERD_SOCK" \
    --data-root "$dd/data" --exec-root "$dd/exec" --pidfile "$dd/dockerd.pid" \
    -H "unix://$DOCKER_SOCK" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false
  local n
  for ((n = 0; n < 300; n++)); do
    dk info >/dev/null 2>&1 && break
    is_alive "$(cat "$DIR/dockerd.pid")" || {
      tail_log "$DIR/dockerd.log"
      die "dockerd exited"
    }
    sleep 0.1
  done
  dk info >/dev/null 2>&1 || {
    tail_log "$DIR/dockerd.log"
    die "dockerd did not answer on $DOCKER_SOCK"
  }
  if ! dk image inspect "$IMAGE" >/dev/null 2>&1; then
    image_import
  fi
}
image_import() {
  local bb root=$DIR/image-rootfs a
  bb=$(command -v busybox) || die "busybox not installed (busybox-static)"
  if command -v readelf >/dev/null && readelf -l "$bb" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$bb is not statically linked: install busybox-static"
  fi
  log "importing $IMAGE from $bb"
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/www,run}
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list) sh ping nc httpd wget ip sleep cat env echo ls \
    ifconfig route hostname true false grep sed awk head tail wc nslookup telnet; do
    [[ $a == busybox ]] && continue
    ln -sf busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  echo topo >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  tar -C "$root" -c . | dk import \
    --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' --change 'CMD ["sh"]' - "$IMAGE" >/dev/null
  rm -rf "$root"
}

# ---------------------------------------------------------------- etcd
etcd_up() {
  log "etcd ($ETCD_URL, http://127.0.0.1:2379)"
  local listening
  listening=$(ss -Hltn 2>/dev/null | awk '{print $4}' || true)
  if grep -qE '(^|[^0-9])(127\.0\.0\.1|192\.168\.100\.254|0\.0\.0\.0|\*|\[::\]):(2379|2380)$' <<<"$listening"; then
    die "something already listens on port 2379/2380 (a system etcd? stop it: systemctl stop etcd / service etcd stop)"
  fi
  start_bg "$DIR/etcd.pid" "$DIR/etcd.log" etcd \
    --name topo-lab --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD_URL,https://127.0.0.1:2379" \
    --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster topo-lab=http://127.0.0.1:2380 \
    --initial-cluster-state new \
    --client-cert-auth --trusted-ca-file "$PKI/ca.crt" \
    --cert-file "$PKI/etcd.crt" --key-file "$PKI/etcd.key"
  local n
  for ((n = 0; n < 300; n++)); do
    if etcdctl_root --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; then
      etcd_users || die "failed to set etcd's users and roles up"
      return 0
    fi
    is_alive "$(cat "$DIR/etcd.pid")" || break
    sleep 0.1
  done
  tail_log "$DIR/etcd.log"
  die "etcd is not healthy"
}

# ---------------------------------------------------------------- controller / agents
need_bin() {
  [[ -x $TOPO_BIN/$1 ]] || die "$TOPO_BIN/$1 not found: build it (cargo build) or set TOPO_BIN"
}
controller_start() {
  local p
  need_bin topo-controller
  if p=$(pidfile_pid "$DIR/controller.pid"); then
    log "controller already runs (pid $p)"
    return 0
  fi
  local listening
  listening=$(ss -Hltn 2>/dev/null | awk '{print $4}' || true)
  if grep -qE '^(192\.168\.100\.254|0\.0\.0\.0|\*|\[::\]):8443$' <<<"$listening"; then
    die "something else already listens on port 8443 for $UL_ROOT_IP (healthz would lie)"
  fi
  log "topo-controller on $CTRL_LISTEN"
  # shellcheck disable=SC2086
  start_bg "$DIR/controller.pid" "$DIR/controller.log" env RUST_LOG="${RUST_LOG:-info}" \
    "$TOPO_BIN/topo-controller" --config "$PKI/controller.yaml" --etcd-endpoints "$ETCD_URL" \
    --listen "$CTRL_LISTEN" ${TOPO_LAB_CONTROLLER_ARGS:-}
  local n pid
  pid=$(cat "$DIR/controller.pid")
  for ((n = 0; n < 600; n++)); do
    http_ok "$CTRL_URL/healthz" && return 0
    is_alive "$pid" || {
      tail_log "$DIR/controller.log"
      die "topo-controller exited"
    }
    sleep 0.1
  done
  tail_log "$DIR/controller.log"
  die "topo-controller: $CTRL_URL/healthz did not answer 200 within 60 s"
}
controller_stop() { # [SIG]
  local sig=${1:-TERM} p
  if [[ $sig == TERM ]]; then
    stop_component 100 "$DIR/controller.pid" '^topo-controller$' "$CTRL_LISTEN" same-netns
  elif p=$(pidfile_pid "$DIR/controller.pid"); then
    kill -s "$sig" "$p"
    if [[ $sig == KILL || $sig == SIGKILL || $sig == 9 ]]; then
      local n
      for ((n = 0; n < 50; n++)); do is_alive "$p" || break; sleep 0.1; done
    fi
  fi
  return 0
}
agent_start() {
  local i=$1 nd=$DIR/node$1 p
  need_bin topo-agent
  [[ -S $nd/db.sock ]] || die "node$i is not part of the lab"
  if p=$(pidfile_pid "$nd/agent.pid"); then
    log "agent node$i already runs (pid $p)"
    return 0
  fi
  log "topo-agent node$i"
  # shellcheck disable=SC2086
  start_bg "$nd/agent.pid" "$nd/agent.log" ip netns exec "node$i" env RUST_LOG="${RUST_LOG:-info}" \
    "$TOPO_BIN/topo-agent" --node "node$i" --address "$UL_PREFIX.$i" --datapath netdev \
    --etcd-endpoints "$ETCD_URL" --etcd-ca "$PKI/ca.crt" --etcd-cert "$PKI/nodes/node$i.crt" \
    --etcd-key "$PKI/nodes/node$i.key" --ovsdb "unix:$nd/db.sock" --docker "unix://$DOCKER_SOCK" \
    ${TOPO_LAB_AGENT_ARGS:-}
}
agent_check_alive() { # after a short while, the agents must still run
  local i p bad=0
  sleep 1
  for i; do
    p=$(cat "$DIR/node$i/agent.pid" 2>/dev/null || true)
    if [[ -z $p ]] || ! is_alive "$p"; then
      tail_log "$DIR/node$i/agent.log"
      log "topo-agent node$i exited"
      bad=1
    fi
  done
  ((bad == 0)) || die "agent(s) failed to start"
}
agent_stop() { # I [SIG]
  local i=$1 sig=${2:-TERM} nd=$DIR/node$1 p
  if [[ $sig == TERM ]]; then
    stop_component 100 "$nd/agent.pid" '^topo-agent$' "$nd/db.sock"
    rm -f "$nd/agent.pid"
    return 0
  fi
  p=$(pidfile_pid "$nd/agent.pid") || {
    log "agent node$i is not running"
    return 0
  }
  kill -s "$sig" "$p"
  if [[ $sig == KILL || $sig == SIGKILL || $sig == 9 || $sig == INT || $sig == SIGINT || $sig == 2 ]]; then
    local n
    for ((n = 0; n < 100; n++)); do is_alive "$p" || break; sleep 0.1; done
    is_alive "$p" || rm -f "$nd/agent.pid"
  fi
}

# ---------------------------------------------------------------- lab state
lab_nodes() { # the node indexes of the running lab
  [[ -r $DIR/netns.list ]] || return 0
  sed -n 's/^node\([0-9]\+\)$/\1/p' "$DIR/netns.list" | sort -n -u
}
print_exports() {
  local n
  n=$(lab_nodes | wc -l)
  echo "export TOPO_SERVER=$CTRL_URL"
  echo "export TOPO_CONFIG=$PKI/admin.yaml"
  echo "export TOPO_ETCD_ENDPOINTS=$ETCD_URL"
  # etcdctl as the controller's etcd user (reads and writes topo's keys, no user admin).
  echo "export ETCDCTL_CACERT=$PKI/ca.crt"
  echo "export ETCDCTL_CERT=$PKI/controller-etcd.crt"
  echo "export ETCDCTL_KEY=$PKI/controller-etcd.key"
  echo "export DOCKER_HOST=unix://$DOCKER_SOCK"
  echo "export TOPO_LAB_DIR=$DIR"
  echo "export TOPO_LAB_NODES=$n"
}

cmd_up() {
  local nodes=3 agents=1 controller=1 i t0
  while (($#)); do
    case $1 in
      --nodes)
        nodes=${2:-}
        shift 2 || die "--nodes needs a value"
        ;;
      --nodes=*)
        nodes=${1#--nodes=}
        shift
        ;;
      --no-agents)
        agents=0
        shift
        ;;
      --no-controller)
        controller=0
        shift
        ;;
      *) die "up: unknown argument $1" ;;
    esac
  done
  [[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 250)) || die "--nodes must be 1..250"
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  ((${#DIR} < 80)) || die "TOPO_LAB_DIR too long for unix socket paths: $DIR"
  need_bin topo-pki
  ((controller == 0)) || need_bin topo-controller
  ((agents == 0)) || need_bin topo-agent
  for c in ovs-vsctl ovsdb-server ovs-vswitchd ovsdb-tool etcd etcdctl dockerd containerd \
    ethtool curl busybox ip ss; do
    command -v "$c" >/dev/null || die "$c not installed: run e2e/lab/install-deps.sh"
  done
  t0=$(date +%s%N)

  # An existing (or crashed) lab is torn down first.
  if [[ -e $DIR ]] || ip link show "$UL_BR" >/dev/null 2>&1 || compgen -G '/run/netns/node[0-9]*' >/dev/null; then
    log "tearing down the existing lab first"
    cmd_down
  fi

  mkdir -p "$DIR"
  printf 'NODES=%s\nAGENTS=%s\nCONTROLLER=%s\n' "$nodes" "$agents" "$controller" >"$DIR/lab.conf"
  : >"$DIR/netns.list"
  pki_init $(seq 1 "$nodes")
  underlay_up
  for ((i = 1; i <= nodes; i++)); do node_up "$i"; done
  docker_up
  etcd_up
  for ((i = 1; i <= nodes; i++)); do node_tcp_check "$i"; done
  ((controller == 0)) || controller_start
  if ((agents)); then
    for ((i = 1; i <= nodes; i++)); do agent_start "$i"; done
    agent_check_alive $(seq 1 "$nodes")
  fi
  local ms=$((($(date +%s%N) - t0) / 1000000))
  log "lab up with $nodes node(s) in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

cmd_add_node() {
  local i=${1:-} agent=1
  shift || true
  check_index "$i"
  [[ ${1:-} == --no-agent ]] && agent=0
  [[ -d $DIR && -S $DOCKER_SOCK ]] || die "no lab is up in $DIR"
  grep -q '^AGENTS=0' "$DIR/lab.conf" 2>/dev/null && agent=0
  ((agent == 0)) || need_bin topo-agent
  pki_node "$i"
  node_up "$i"
  node_tcp_check "$i"
  if ((agent)); then
    agent_start "$i"
    agent_check_alive "$i"
  fi
  log "node$i added"
}

# The host leaves the lab: agent, ovs-vswitchd, ovsdb-server, namespace, underlay veth and
# state. Its Node object stays in the API (delete it with topoctl, as an operator would).
cmd_remove_node() {
  local i=${1:-} nd pids=()
  check_index "$i"
  nd=$DIR/node$i
  [[ -d $nd ]] || die "node$i is not part of the lab"
  agent_stop "$i" TERM
  stop_component 50 "$nd/ovs-vswitchd.pid" '^ovs-vswitchd$' "$nd/"
  stop_component 50 "$nd/ovsdb-server.pid" '^ovsdb-server$' "$nd/"
  if [[ -e /run/netns/node$i ]]; then
    mapfile -t pids < <(ip netns pids "node$i" 2>/dev/null </dev/null || true)
    ((${#pids[@]} == 0)) || stop_pids 30 "${pids[@]}" </dev/null
    ip netns del "node$i" || die "could not delete netns node$i"
  fi
  ip link del "topo-ul-n$i" >/dev/null 2>&1 || true # trap 6
  sed -i "/^node$i\$/d" "$DIR/netns.list"
  rm -rf "$nd"
  log "node$i removed"
}

cmd_down() {
  local i p ns nd
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  # 1. agents and controller
  for nd in "$DIR"/node*; do
    [[ -d $nd ]] || continue
    stop_component 50 "$nd/agent.pid" '^topo-agent$' "$nd/db.sock"
  done
  stop_component 50 /dev/null '^topo-agent$' "$DIR/"
  stop_component 50 "$DIR/controller.pid" '^topo-controller$' "$CTRL_LISTEN" same-netns
  # 2. containers, dockerd, containerd
  if [[ -S $DOCKER_SOCK ]] && timeout 5 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1; then
    mapfile -t ids < <(timeout 10 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" ps -aq 2>/dev/null || true)
    if ((${#ids[@]})); then
      log "removing ${#ids[@]} container(s)"
      timeout 60 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
    fi
  fi
  stop_component 150 "$DIR/dockerd.pid" '^dockerd$' "$DIR/"
  # containers whose engine died: kill their processes (cgroup .../docker/<id>) and shims
  if [[ -d $DIR/docker/data/containers ]]; then
    local cids=() pids=() d
    for d in "$DIR"/docker/data/containers/*/; do
      [[ -d $d ]] && cids+=("$(basename "$d")")
    done
    if ((${#cids[@]})); then
      local re
      re="/docker/($(IFS='|'; echo "${cids[*]}"))"
      mapfile -t pids < <(grep -lsE "$re" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 || true)
      ((${#pids[@]} == 0)) || stop_pids 5 "${pids[@]}"
    fi
  fi
  stop_component 50 /dev/null '^containerd-shim' "$CONTAINERD_SOCK"
  stop_component 50 "$DIR/containerd.pid" '^containerd$' "$DIR/"
  # 3. etcd
  stop_component 50 "$DIR/etcd.pid" '^etcd$' "$DIR/etcd"
  # 4. Open vSwitch of every host
  for nd in "$DIR"/node*; do
    [[ -d $nd ]] || continue
    stop_component 50 "$nd/ovs-vswitchd.pid" '^ovs-vswitchd$' "$nd/"
    stop_component 50 "$nd/ovsdb-server.pid" '^ovsdb-server$' "$nd/"
  done
  stop_component 50 /dev/null '^(ovs-vswitchd|ovsdb-server)$' "$DIR/"
  # 5. namespaces: the ones we made, and any node<N>
  {
    cat "$DIR/netns.list" 2>/dev/null || true
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^node[0-9]+$' || true
  } | sort -u | while read -r ns; do
    [[ -n $ns ]] || continue
    [[ -e /run/netns/$ns || -e /var/run/netns/$ns ]] || continue
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null </dev/null || true)
    ((${#pids[@]} == 0)) || stop_pids 30 "${pids[@]}" </dev/null
    ip netns del "$ns" </dev/null 2>/dev/null || log "warning: could not delete netns $ns"
  done
  # 6. root-side veths (trap 6) and the bridge
  for p in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^topo-ul-n[0-9]+$' || true); do
    ip link del "$p" 2>/dev/null || true
  done
  ip link del "$UL_BR" 2>/dev/null || true
  if [[ -e $DIR/iptables-rule ]] || iptables -C FORWARD -i "$UL_BR" -o "$UL_BR" -m comment --comment topo-lab -j ACCEPT 2>/dev/null; then
    while iptables -D FORWARD -i "$UL_BR" -o "$UL_BR" -m comment --comment topo-lab -j ACCEPT 2>/dev/null; do :; done
  fi
  if [[ -r $DIR/sysctl.bridge-nf-call-iptables ]]; then
    sysctl -q -w "net.bridge.bridge-nf-call-iptables=$(cat "$DIR/sysctl.bridge-nf-call-iptables")" >/dev/null 2>&1 || true
  fi
  # 7. state dir (docker may have left mounts in it)
  if [[ -d $DIR ]]; then
    awk -v d="$DIR" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r |
      while read -r p; do umount -l "$p" 2>/dev/null || true; done
    rm -rf --one-file-system "$DIR" 2>/dev/null || {
      sleep 0.5
      rm -rf --one-file-system "$DIR" || log "warning: could not remove $DIR"
    }
  fi
  return 0
}

cmd_status() {
  local i p nd
  if [[ ! -d $DIR ]]; then
    echo "no lab in $DIR"
    return 0
  fi
  echo "lab dir: $DIR"
  show() { # NAME PIDFILE
    if p=$(pidfile_pid "$2"); then echo "  $1: running (pid $p)"; else echo "  $1: not running"; fi
  }
  show etcd "$DIR/etcd.pid"
  show containerd "$DIR/containerd.pid"
  show dockerd "$DIR/dockerd.pid"
  show topo-controller "$DIR/controller.pid"
  if ip link show "$UL_BR" >/dev/null 2>&1; then
    echo "  underlay: $UL_BR $(ip -br addr show "$UL_BR" | awk '{print $3}')"
  else
    echo "  underlay: $UL_BR missing"
  fi
  for i in $(lab_nodes); do
    nd=$DIR/node$i
    echo "node$i ($UL_PREFIX.$i):"
    show ovsdb-server "$nd/ovsdb-server.pid"
    show ovs-vswitchd "$nd/ovs-vswitchd.pid"
    show topo-agent "$nd/agent.pid"
    if [[ -S $nd/db.sock ]]; then
      echo "  bridges: $(ovs-vsctl --db="unix:$nd/db.sock" --timeout=5 list-br 2>/dev/null | tr '\n' ' ')"
    fi
  done
  if [[ -S $DOCKER_SOCK ]]; then
    echo "containers:"
    timeout 10 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" ps -a \
      --format '  {{.Names}}\t{{.Status}}\t{{.Label "topo.dev/node"}}' 2>/dev/null || true
  fi
}

usage() {
  sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    up)
      cmd_up "$@" >&2
      print_exports
      ;;
    down) cmd_down >&2 ;;
    add-node) cmd_add_node "$@" >&2 ;;
    remove-node) cmd_remove_node "$@" >&2 ;;
    start-agent)
      check_index "${1:-}"
      agent_start "$1" >&2
      ;;
    kill-agent)
      check_index "${1:-}"
      agent_stop "$1" "${2:-KILL}" >&2
      ;;
    stop-agent)
      check_index "${1:-}"
      agent_stop "$1" TERM >&2
      ;;
    restart-agent)
      check_index "${1:-}"
      agent_stop "$1" TERM >&2
      agent_start "$1" >&2
      ;;
    start-controller) controller_start >&2 ;;
    kill-controller) controller_stop "${1:-KILL}" >&2 ;;
    restart-controller)
      controller_stop TERM >&2
      controller_start >&2
      ;;
    status) cmd_status ;;
    env) print_exports ;;
    exec)
      check_index "${1:-}"
      local i=$1
      shift
      (($#)) || die "exec: no command"
      exec ip netns exec "node$i" "$@"
      ;;
    vsctl)
      check_index "${1:-}"
      local i=$1
      shift
      exec ovs-vsctl --db="unix:$DIR/node$i/db.sock" "$@"
      ;;
    appctl)
      check_index "${1:-}"
      local i=$1
      shift
      exec ovs-appctl -t "$DIR/node$i/ovs-vswitchd.ctl" "$@"
      ;;
    -h | --help | help | "") usage ;;
    *)
      echo "lab: unknown command $cmd" >&2
      usage
      ;;
  esac
}

main "$@"
