#!/usr/bin/env bash
# Builds the Debian packages of topo from the workspace's release binaries with dpkg-deb:
#   topo-controller  the API server + leader, runs as the system user `topo`
#   topo-agent       the node agent (root; needs Open vSwitch, Docker, nftables)
#   topoctl          the command line and topo-pki (the cluster's certificates)
# into target/debian/. `make deb` runs it after `cargo build --release`.
#
# dpkg-deb rather than cargo-deb: three packages share the unit files, maintainer scripts
# and docs of deploy/, and dpkg-deb is already on every Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${TOPO_RELEASE_DIR:-target/release}
out=target/debian
version=$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version/{print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
maintainer="topo developers <topo@example.invalid>"
rm -rf "$out/stage"
mkdir -p "$out/stage"

# stage PACKAGE: an empty tree with DEBIAN/ and the package's docs.
stage() {
  local p=$out/stage/$1
  mkdir -p "$p/DEBIAN" "$p/usr/bin" "$p/usr/share/doc/$1"
  install -m 0644 docs/deploy.md "$p/usr/share/doc/$1/deploy.md"
  printf '%s\n' "Copyright: the topo developers" "License: see the source repository" \
    >"$p/usr/share/doc/$1/copyright"
}

# control PACKAGE DEPENDS DESCRIPTION
control() {
  local p=$out/stage/$1 size
  size=$(du -sk --exclude=DEBIAN "$p" | cut -f1)
  {
    echo "Package: $1"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    [[ -n $2 ]] && echo "Depends: $2"
    echo "Section: net"
    echo "Priority: optional"
    echo "Homepage: https://example.invalid/topo"
    echo "Description: $3"
  } >"$p/DEBIAN/control"
}

# unit PACKAGE: the systemd unit and the maintainer scripts that enable it without starting
# it before its configuration exists (the unit's ConditionPathExists says which).
unit() {
  local p=$out/stage/$1
  install -D -m 0644 "deploy/systemd/$1.service" "$p/lib/systemd/system/$1.service"
  local pre=deploy/debian/$1.postinst-pre
  for s in postinst prerm postrm; do
    sed "s/@UNIT@/$1/g" "deploy/debian/$s" >"$p/DEBIAN/$s"
    chmod 0755 "$p/DEBIAN/$s"
  done
  # What the package needs before its service may start (a user, a directory) goes first.
  if [[ -f $pre ]]; then
    sed -i -e "/^#PRE#$/r $pre" -e "/^#PRE#$/d" "$p/DEBIAN/postinst"
  else
    sed -i "/^#PRE#$/d" "$p/DEBIAN/postinst"
  fi
}

for b in topo-controller topo-agent topoctl topo-pki; do
  [[ -x $release/$b ]] || { echo "build-debs: $release/$b is missing (cargo build --release first)" >&2; exit 1; }
done

stage topo-controller
install -s -m 0755 "$release/topo-controller" "$out/stage/topo-controller/usr/bin/"
install -D -m 0644 deploy/etc/controller.env "$out/stage/topo-controller/etc/topo/controller.env"
echo /etc/topo/controller.env >"$out/stage/topo-controller/DEBIAN/conffiles"
unit topo-controller
control topo-controller "adduser, init-system-helpers" \
  "topo controller: HTTPS API and slice leader of a topo cluster
 Validates manifests, stores them in etcd, allocates addresses and, on the elected
 replica, derives every node's slice. Configure with topo-pki (package topoctl)."

stage topo-agent
install -s -m 0755 "$release/topo-agent" "$out/stage/topo-agent/usr/bin/"
# An example only: the unit starts once /etc/topo/agent.env exists with this node's values.
install -D -m 0644 deploy/etc/agent.env "$out/stage/topo-agent/usr/share/doc/topo-agent/examples/agent.env"
unit topo-agent
control topo-agent "init-system-helpers, openvswitch-switch, docker.io | docker-ce, nftables" \
  "topo node agent: containers, veths, OVS bridges, GRE tunnels and NAT
 Keeps this host equal to its slice of the topo cluster's desired state."

stage topoctl
install -s -m 0755 "$release/topoctl" "$release/topo-pki" "$out/stage/topoctl/usr/bin/"
control topoctl "" \
  "topoctl and topo-pki: command line and certificates of a topo cluster
 topoctl applies manifests and inspects a cluster, as kubectl does; topo-pki makes the
 cluster's CA, the controller's, etcd's, the admin's and every node's identity."

for p in topo-controller topo-agent topoctl; do
  dpkg-deb --root-owner-group -Zxz --build "$out/stage/$p" "$out/${p}_${version}_${arch}.deb" >/dev/null
  echo "$out/${p}_${version}_${arch}.deb"
done
rm -rf "$out/stage"
