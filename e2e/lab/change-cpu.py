#!/usr/bin/env python3
"""The whole host's CPU around one change and one deletion on a dense node (BENCHMARKS.md,
"One change among 250, third pass").

On a lab kept up (`TOPO_E2E_KEEP=1`, e.g. after `density-bench --sizes 10 --changes 1`) and
entered (`nsenter -t HOLDER -n -m`), with TOPO_SERVER and TOPO_CONFIG exported as the lab's
banner says: applies network `dense` and N sleepers on node1 (`d-0` ... `d-(N-1)`), then per
round one more container (`extra`) applied until Ready and deleted until gone, reading every
process's utime+stime from /proc before and after each (processes that exited count in their
parent's cutime+cstime, shown as "NAME(children)"). Prints the change's median time and the
CPU per round of the processes that used most.

    e2e/lab/change-cpu.py [--containers 250] [--rounds 5] [--topoctl target/release/topoctl]
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

IMAGE = "topo/busybox:latest"


def container(name):
    return f"""apiVersion: topo.dev/v1alpha1
kind: Container
metadata:
  name: {name}
spec:
  node: node1
  image: {IMAGE}
  command: ["sleep", "1000000"]
  networks:
    - network: dense
"""


NETWORK = """apiVersion: topo.dev/v1alpha1
kind: Network
metadata:
  name: dense
spec:
  cidr: 10.88.0.0/16
  blockSize: 24
  topology: mesh
"""


def snapshot():
    """pid → (name, own ticks, reaped children's ticks)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[pid] = (name, int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return out


def used(before, after):
    """Ticks used between two snapshots, by process name (kworkers by their work queue)."""
    ticks = collections.Counter()
    for pid, (name, own, children) in after.items():
        own0, children0 = before[pid][1:] if pid in before else (0, 0)
        if name.startswith("kworker"):
            name = "kworker"
        ticks[name] += own - own0
        ticks[name + "(children)"] += children - children0
    return ticks


def topoctl(args, *words, stdin=None):
    subprocess.run([args.topoctl, *words], input=stdin, text=True, check=True,
                   stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=250)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--topoctl", default="target/release/topoctl")
    args = p.parse_args()
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")

    manifest = "---\n".join([NETWORK] + [container(f"d-{i}") for i in range(args.containers)])
    topoctl(args, "apply", "-f", "-", "--wait", "--timeout", "600s", stdin=manifest)
    time.sleep(20)  # the burst's tail (events, probes' claims) ends first

    took, change, deletion = [], collections.Counter(), collections.Counter()
    for _ in range(args.rounds):
        s0 = snapshot()
        t = time.monotonic()
        topoctl(args, "apply", "-f", "-", "--wait", stdin=container("extra"))
        took.append((time.monotonic() - t) * 1000)
        time.sleep(0.5)
        s1 = snapshot()
        topoctl(args, "delete", "container", "extra", "--wait")
        time.sleep(1.5)
        s2 = snapshot()
        change += used(s0, s1)
        deletion += used(s1, s2)

    print(f"{args.containers} containers on node1; one change, median of {args.rounds}: "
          f"{statistics.median(took):.0f} ms")
    for what, ticks in (("one change (apply → Ready + 0.5 s)", change),
                        ("one deletion (+ 1.5 s)", deletion)):
        total = sum(ticks.values()) * tick_ms / args.rounds
        top = ", ".join(f"{n} {v * tick_ms / args.rounds:.0f} ms"
                        for n, v in ticks.most_common(12) if v > 0)
        print(f"CPU per round, {what}: every process {total:.0f} ms; {top}")


if __name__ == "__main__":
    sys.exit(main())
