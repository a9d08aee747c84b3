#!/usr/bin/env bash
# `make demo` (after `make deps build`): a three-host lab, manifests/demo.yaml applied and
# waited for, `topoctl get all -o wide`, then reachability across hosts proven check by
# check. The lab is left running for you to explore (printed at the end); `make lab-down`
# removes it. Exit status: 0 when every check passed.
#
#   sudo bash e2e/demo.sh          # TOPO_BIN=DIR to use other binaries (default target/debug)
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
LAB=$REPO/e2e/lab/lab.sh
MANIFEST=$REPO/manifests/demo.yaml
export TOPO_BIN=${TOPO_BIN:-$REPO/target/debug}
TOPOCTL=$TOPO_BIN/topoctl
DOCKER_CLI=docker
[[ -x /usr/bin/docker ]] && DOCKER_CLI=/usr/bin/docker

if [[ -t 1 ]]; then
  B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'
else
  B='' G='' R='' N=''
fi
title() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
die() {
  printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2
  exit 1
}

# ---------------------------------------------------------------- 1. what the demo needs
title "checking what the demo needs"
[[ $(id -u) -eq 0 ]] || die "run as root (the lab creates network namespaces and daemons): sudo make demo"
missing=()
for c in ovs-vsctl ovsdb-server ovs-vswitchd ovsdb-tool etcd etcdctl dockerd containerd curl \
  busybox ip ethtool jq ss "$DOCKER_CLI"; do
  command -v "$c" >/dev/null || missing+=("$c")
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]} — run \`make deps\` (e2e/lab/install-deps.sh)"
for b in topo-controller topo-agent topoctl; do
  [[ -x $TOPO_BIN/$b ]] || die "$TOPO_BIN/$b not found — run \`make build\`"
done
echo "tools and binaries present ($TOPO_BIN)"

# ---------------------------------------------------------------- 2. a fresh lab
title "bringing up a three-host lab (etcd, topo-controller, node1..node3 with OVS and topo-agent, dockerd)"
bash "$LAB" down
exports=$(bash "$LAB" up --nodes 3) || die "the lab did not come up (see the messages above)"
eval "$exports"
# An array, not a function: `timeout` (in check) runs programs, not shell functions.
DK=("$DOCKER_CLI" -H "$DOCKER_HOST")

show_state() {
  "$TOPOCTL" get all -o wide || true
  echo
  "$TOPOCTL" events 2>/dev/null | tail -n 25 || true
}

# ---------------------------------------------------------------- 3. apply and wait
title "topoctl apply -f manifests/demo.yaml --wait"
if ! "$TOPOCTL" apply -f "$MANIFEST" --wait --timeout 120s; then
  show_state
  die "the demo did not become Ready; the lab is left up for inspection (make lab-down removes it)"
fi

title "topoctl get all -o wide"
"$TOPOCTL" get all -o wide

# ---------------------------------------------------------------- 4. reachability
title "reachability across hosts"
addr() { # addr CONTAINER: its overlay address from its status
  "$TOPOCTL" get container "$1" -o json | jq -r '.status.addresses.overlay // empty' | cut -d/ -f1
}
WEB2=$(addr web2)
DB=$(addr db)
[[ -n $WEB2 && -n $DB ]] || die "no addresses in the status of web2/db"
[[ $DB == 10.2.200.10 ]] || echo "${R}note${N}: db has $DB, not its static 10.2.200.10"

passed=0 failed=0
# check DESCRIPTION EXPECT CMD...: run CMD until its output contains EXPECT (for up to 30 s)
check() {
  local desc=$1 expect=$2 out= deadline=$((SECONDS + 30))
  shift 2
  while :; do
    out=$(timeout 15 "$@" 2>&1) && [[ $out == *"$expect"* ]] && break
    out=${out:-(no output)}
    ((SECONDS < deadline)) || break
    sleep 1
  done
  if [[ $out == *"$expect"* ]]; then
    printf '%sPASS%s  %s\n' "$G" "$N" "$desc"
    passed=$((passed + 1))
  else
    printf '%sFAIL%s  %s\n      last output: %s\n' "$R" "$N" "$desc" "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
    failed=$((failed + 1))
  fi
}
check "web1 (node1) pings web2 (node2, $WEB2) over GRE" " 0% packet loss" \
  "${DK[@]}" exec topo-web1 ping -c 3 -W 2 "$WEB2"
check "web1 (node1) fetches http://$WEB2/ from web2 (node2)" "hello from web2" \
  "${DK[@]}" exec topo-web1 timeout 10 wget -q -O - "http://$WEB2/"
check "web1 (node1) pings db (node3, static $DB) over GRE" " 0% packet loss" \
  "${DK[@]}" exec topo-web1 ping -c 3 -W 2 "$DB"
check "web1 (node1) fetches http://$DB/ from db (node3)" "hello from db" \
  "${DK[@]}" exec topo-web1 timeout 10 wget -q -O - "http://$DB/"
check "node1 fetches db's published port at node3's underlay address (http://192.168.100.3:50080/)" \
  "hello from db" ip netns exec node1 curl -sS --max-time 5 http://192.168.100.3:50080/

# Links (geard-style): each consumer reaches its target at a local address; the demo's
# targets answer HTTP with "hello from NAME".
while IFS=$'\t' read -r lname from listen endpoint proto target; do
  [[ -n $lname ]] || continue
  echo "link/$lname: $from reaches $listen -> ${endpoint:-?} ($proto)"
  if [[ $proto == tcp && -n $target ]]; then
    check "$from fetches http://$listen/ through link $lname (-> $target at ${endpoint:-?})" \
      "hello from $target" "${DK[@]}" exec "topo-$from" timeout 10 wget -q -O - "http://$listen/"
  fi
done < <("$TOPOCTL" get links -o json | jq -r '.items[] | [.metadata.name, .spec.from,
  (.spec.listen // ("127.0.0.1:" + (.spec.to.port | tostring))), (.status.endpoint // ""),
  (.spec.protocol // "tcp"), (.spec.to.container // "")] | @tsv')

# ---------------------------------------------------------------- 4b. verify
title "topoctl verify: the agents probe the dataplane from inside the containers"
"$TOPOCTL" verify || true
check "topoctl verify: gateways, peers across hosts, MTU over every tunnel, the link, the published port" \
  "checks passed" "$TOPOCTL" verify

# ---------------------------------------------------------------- 5. trust
title "trust: HTTPS only, credentials and roles, etcd least privilege, reserved ports"
PKI=$TOPO_LAB_DIR/pki
API=$TOPO_SERVER/apis/topo.dev/v1alpha1
check "the API refuses plain HTTP" "HTTPS only" curl -sS --max-time 5 "${TOPO_SERVER/https:/http:}/healthz"
check "the API answers 401 without credentials" "no credentials" \
  curl -sS --max-time 5 --cacert "$PKI/ca.crt" "$API/nodes"
check "the viewer reads" "web1" env TOPO_CONFIG="$PKI/viewer.yaml" "$TOPOCTL" get containers
check "the viewer may not delete (403 naming user, verb, object)" \
  'user "viewer" cannot delete container/web1' env TOPO_CONFIG="$PKI/viewer.yaml" "$TOPOCTL" delete container web1
check "node1's etcd identity cannot read node2's slice" "permission denied" \
  env -u ETCDCTL_CACERT -u ETCDCTL_CERT -u ETCDCTL_KEY etcdctl --endpoints "$TOPO_ETCD_ENDPOINTS" \
  --cacert "$PKI/ca.crt" --cert "$PKI/nodes/node1.crt" --key "$PKI/nodes/node1.key" \
  get --prefix /topo/v1/slices/node2/
check "node1's etcd identity reads its own slice" "/topo/v1/slices/node1/node" \
  env -u ETCDCTL_CACERT -u ETCDCTL_CERT -u ETCDCTL_KEY etcdctl --endpoints "$TOPO_ETCD_ENDPOINTS" \
  --cacert "$PKI/ca.crt" --cert "$PKI/nodes/node1.crt" --key "$PKI/nodes/node1.key" \
  get --prefix --keys-only /topo/v1/slices/node1/
cat >"$TOPO_LAB_DIR/ssh-port.yaml" <<'YAML'
apiVersion: topo.dev/v1alpha1
kind: Container
metadata: {name: sneaky}
spec:
  node: node1
  image: topo/busybox:latest
  ports: [{containerPort: 2222, hostPort: 22}]
YAML
check "a container asking for node1's port 22 is refused at apply" "the node reserves it" \
  "$TOPOCTL" apply -f "$TOPO_LAB_DIR/ssh-port.yaml"

# ---------------------------------------------------------------- 6. explore
title "the lab stays up — explore it"
cat <<EOF
  eval "\$(e2e/lab/lab.sh env)"            # TOPO_SERVER, TOPO_CONFIG (admin), DOCKER_HOST, ... in this shell
  export PATH=$TOPO_BIN:\$PATH
  topoctl get containers -o wide
  topoctl describe container db
  topoctl events
  topoctl verify                           # the dataplane, tested from inside the containers
  docker exec -it topo-web1 sh             # then: ping $DB, wget -q -O - http://$WEB2/
  e2e/lab/lab.sh status                     # the hosts, their OVS bridges, the containers
  e2e/lab/lab.sh vsctl 1 show               # node1's Open vSwitch (tb-overlay, its GRE ports)
  # the live picture: https://192.168.100.254:8443/ui (README "The web page": pin, token)
  make lab-down                             # remove everything
EOF

echo
if ((failed)); then
  printf '%s%d of %d checks FAILED%s\n' "$R" "$failed" "$((passed + failed))" "$N"
  exit 1
fi
printf '%sall %d checks passed%s\n' "$G" "$passed" "$N"
