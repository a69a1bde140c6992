#!/usr/bin/env python3
"""Where a node's threads wait in the kernel: off-CPU time by kernel stack.

    perf record -e sched:sched_switch -g -p PID[,PID...] -o off.data -- sleep 20
    perf script -i off.data -F comm,tid,time,event,trace,ip,sym > off.txt
    bench/probes/offcpu.py off.txt [MIN_MS]

For every thread that left the CPU in state D (waiting for I/O), or sleeping in SQLite's busy
handler, it measures how long until the thread ran again, and sums these waits by thread name
and stack. Waits shorter than MIN_MS (default 1) are left out. This is how the chain's latency
tail was traced to WAL writes waiting on the kernel (BENCHMARKS.md, "The journal's page size").
"""

import collections
import re
import sys

SWITCH = re.compile(
    r"(\S+)\s+(\d+)\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) "
    r"prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
FRAMES = 9  # stack frames kept per entry, innermost first (the scheduler's own left out)


def main() -> None:
    path = sys.argv[1]
    min_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    left = {}  # tid -> (time, state, stack, thread name)
    waits = collections.defaultdict(lambda: [0, 0.0, 0.0])  # count, total ms, longest ms
    with open(path) as f:
        blocks = f.read().split("\n\n")
    for block in blocks:
        lines = block.strip().split("\n")
        m = SWITCH.match(lines[0]) if lines and lines[0] else None
        if not m:
            continue
        at = float(m.group(3))
        prev, state, nxt = int(m.group(5)), m.group(6), int(m.group(8))
        stack = [l.split()[1] if len(l.split()) > 1 else l for l in lines[1:]]
        left[prev] = (at, state, stack, m.group(4))
        if nxt not in left:
            continue
        since, was, stk, name = left.pop(nxt)
        ms = (at - since) * 1000
        if ms < min_ms or not (was.startswith("D") or "sqliteDefaultBusyCallback" in stk):
            continue
        frames = [s for s in stk if s not in ("__schedule", "schedule")][:FRAMES]
        w = waits[(name, was, " < ".join(frames))]
        w[0] += 1
        w[1] += ms
        w[2] = max(w[2], ms)
    for (name, was, frames), (n, total, longest) in sorted(waits.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{n:5d} waits  {total:8.1f} ms  longest {longest:6.1f} ms  {name} ({was})\n    {frames}")


if __name__ == "__main__":
    main()
