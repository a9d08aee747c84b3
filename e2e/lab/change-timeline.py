#!/usr/bin/env python3
"""Where each one-container change of a run went, from the run's logs (BENCHMARKS.md, "One
change among 250, third pass").

Reads the controller's log (its audit line of the apply that created the container, the
leader's `reconciled … slice_ops … status_ops` lines, the client's next DELETE) and node1's
agent log (`container started and plumbed … docker_ms`) in DIR, e.g. the density bench's
`target/e2e-logs/density`, and prints per change and as medians: apply → slice entry written,
slice entry → started and plumbed (and Docker's part of it), plumbed → status written,
status → the client's next request. Containers are those named PREFIX-<n> (density-bench's
changes are `extra-0` ...); with --split, the changes are cut in that many equal groups
(one per size of the run).

    e2e/lab/change-timeline.py [--dir target/e2e-logs/density] [--prefix extra] [--split 2]
"""

import argparse
import re
import statistics
import sys
from datetime import datetime

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def stamp(line):
    return datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def lines(path):
    with open(path, errors="replace") as f:
        plain = (ANSI.sub("", l) for l in f)
        return [l for l in plain if l[:4].isdigit()]


def events(d, prefix):
    name = re.escape(prefix) + r"-\d+"
    out = []
    for l in lines(f"{d}/controller.log"):
        if re.search(rf'verb="apply" object="container/{name}" result="created"', l):
            out.append((stamp(l), "apply"))
        elif "leader::derive: reconciled" in l:
            slice_ops = int(re.search(r"slice_ops=(\d+)", l).group(1))
            out.append((stamp(l), "slice" if slice_ops else "status"))
        elif "method=DELETE" in l and re.search(rf"containers/{name}\b", l) and "done status" in l:
            out.append((stamp(l), "delete"))
    for l in lines(f"{d}/node1-agent.log"):
        m = re.search(rf"container started and plumbed container={name} docker_ms=([\d.]+)", l)
        if m:
            out.append((stamp(l), "plumbed", float(m.group(1))))
    return sorted(out)


def changes(evs):
    """One row per apply: the first slice write after it, the agent's plumbed line, the first
    status-only pass after that, the client's delete."""
    rows = []
    for i, e in enumerate(evs):
        if e[1] != "apply":
            continue
        row = {"apply": e[0]}
        for f in evs[i + 1 :]:
            if f[1] == "slice" and "slice" not in row:
                row["slice"] = f[0]
            elif f[1] == "plumbed" and "plumbed" not in row:
                row["plumbed"], row["docker_ms"] = f[0], f[2]
            elif f[1] == "status" and "plumbed" in row and "status" not in row:
                row["status"] = f[0]
            elif f[1] == "delete":
                row["delete"] = f[0]
                break
        if all(k in row for k in ("slice", "plumbed", "status", "delete")):
            rows.append(row)
    return rows


STEPS = [
    ("apply → slice entry", lambda r: (r["slice"] - r["apply"]) * 1000),
    ("slice entry → plumbed", lambda r: (r["plumbed"] - r["slice"]) * 1000),
    ("  of which Docker", lambda r: r["docker_ms"]),
    ("plumbed → status", lambda r: (r["status"] - r["plumbed"]) * 1000),
    ("status → client", lambda r: (r["delete"] - r["status"]) * 1000),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="target/e2e-logs/density")
    p.add_argument("--prefix", default="extra")
    p.add_argument("--split", type=int, default=1)
    args = p.parse_args()
    rows = changes(events(args.dir, args.prefix))
    if not rows:
        print(f"no complete change named {args.prefix}-N in {args.dir}", file=sys.stderr)
        return 1
    size = -(-len(rows) // args.split)
    groups = [rows[i : i + size] for i in range(0, len(rows), size)]
    print("| step | " + " | ".join(f"group {g + 1} ({len(rs)} changes)" for g, rs in enumerate(groups)) + " |")
    print("|---|" + "---:|" * len(groups))
    for label, f in STEPS:
        cells = " | ".join(f"{statistics.median(f(r) for r in rs):.0f} ms" for rs in groups)
        print(f"| {label} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
