#!/usr/bin/env bash
# Install every Debian 12 package the topo lab (e2e/lab/lab.sh), the build and the tests need.
#
#   sudo e2e/lab/install-deps.sh        # idempotent; silent when everything is present
#
# - Runs `apt-get update` only when a package is missing and the package lists are absent
#   or the first install attempt fails (stale lists).
# - Never lets a package's postinst start its system service: a temporary
#   /usr/sbin/policy-rc.d (exit 101) is in place during the install (kept if one already
#   existed). A system etcd would take 127.0.0.1:2379; a system dockerd with default
#   settings sets the iptables FORWARD policy to DROP, which breaks the lab's underlay
#   bridge (PLATFORM.md trap 2). On a systemd host, the units of packages installed here
#   are also disabled so that a reboot does not start them either.
# - Output only on failure (the apt log is then printed to stderr).
set -euo pipefail

PKGS=(
  openvswitch-switch etcd-server etcd-client docker.io containerd runc
  protobuf-compiler libprotobuf-dev nftables iptables iproute2 ethtool busybox-static iperf3 jq
  build-essential curl procps util-linux kmod ca-certificates debootstrap git make
  prometheus chromium
  ovn-central ovn-host
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $st == installed && -z ${TOPO_DEPS_FORCE:-} ]] || missing+=("$p")
done
((${#missing[@]})) || exit 0

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1
LOG=$(mktemp /tmp/topo-install-deps.XXXXXX.log)

POLICY=/usr/sbin/policy-rc.d
made_policy=0
cleanup() {
  if ((made_policy)); then rm -f "$POLICY"; fi
}
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# temporary, from topo e2e/lab/install-deps.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  made_policy=1
fi

fail() {
  echo "install-deps.sh: $*" >&2
  cat "$LOG" >&2
  exit 1
}

have_lists() {
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_install() {
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >>"$LOG" 2>&1
}

updated=0
if ! have_lists; then
  apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update failed"
  updated=1
fi
if ! apt_install; then
  ((updated)) && fail "apt-get install failed"
  apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update failed"
  apt_install || fail "apt-get install failed"
fi

# On a systemd host, keep the freshly installed services from starting at the next boot.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  units=()
  for p in "${missing[@]}"; do
    case $p in
      etcd-server) units+=(etcd.service) ;;
      docker.io) units+=(docker.service docker.socket) ;;
      containerd) units+=(containerd.service) ;;
      openvswitch-switch) units+=(openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service) ;;
      prometheus) units+=(prometheus.service) ;;
      # make bench-peers runs its own northd, NB/SB databases and one ovn-controller per lab
      # host; the system-wide ones would take ports 6641/6642 and the root's Open vSwitch.
      ovn-central) units+=(ovn-central.service ovn-northd.service ovn-ovsdb-server-nb.service ovn-ovsdb-server-sb.service) ;;
      ovn-host) units+=(ovn-host.service ovn-controller.service) ;;
    esac
  done
  for u in "${units[@]}"; do
    systemctl disable --quiet "$u" >>"$LOG" 2>&1 || true
  done
fi

# The lab needs these commands; make sure they are really there.
for c in ovs-vsctl ovsdb-server ovs-vswitchd ovsdb-tool etcd etcdctl dockerd containerd \
  docker protoc nft iptables ip ethtool busybox iperf3 jq curl sysctl nsenter setsid \
  promtool ovn-northd ovn-controller ovn-nbctl ovn-sbctl ovn-appctl; do
  command -v "$c" >/dev/null || fail "command $c missing after install"
done
rm -f "$LOG"
