#!/usr/bin/env python3
"""Where one command's time goes inside a node in the middle of the tree, from the system calls
of its dispatcher thread: the wall-clock path of a hop, not a CPU profile.

    # a chain kept running (KEEP=1 ONLY=medlink bench/chain.sh 1000 1), load at 1,000 msg/s,
    # then, for the middle node b.c (its dispatcher thread's id in /proc/PID/task/*/comm):
    perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -t TID -o sys.data -- sleep 2
    perf script -i sys.data -F time,event,trace > sys.txt
    bench/probes/hop_path.py sys.txt CHILD_FD PARENT_FD

CHILD_FD is the descriptor of the child's connection and PARENT_FD that of the link to the
parent (decimal; `ls -l /proc/PID/fd`, or the two busiest in the trace). For each frame read
from the child (a `recvfrom` of hundreds of bytes) the probe follows the thread from the
`epoll_wait` that woke it to the write (`writev`, `sendto` or `write`) that passes the command
to the parent:

- wake -> read: from `epoll_wait` returning to the child's frame read;
- read -> first journal access: MQTT decoding, the hand-off to the dispatcher, the round's start
  and the frame's parse, up to the first SQLite lock (`fcntl` on the `-shm`);
- first journal access -> WAL write: the round's statements and the commit's preparation;
- WAL writes: the commit's `pwrite`s;
- commit -> pass on: after the commit, up to the write to the parent (the sending pass);
- write: the system call itself (loopback delivery to the parent included).

Figures are medians, p90 and p99 in microseconds; `perf` adds a little to each system call.
"""

import re
import sys

EPOLL_WAIT, RECVFROM, FCNTL, PWRITE = 232, 45, 72, 18
WRITES = {1, 20, 44}  # write, writev, sendto
LINE = re.compile(r"\s*([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+) (.*)")
STAGES = [
    "wake -> read",
    "read -> first journal access",
    "first journal access -> WAL write",
    "WAL writes",
    "commit -> pass on",
    "write to the parent",
    "wake -> pass on, whole",
]


def events(path):
    for line in open(path):
        m = LINE.match(line)
        if m:
            yield float(m.group(1)) * 1e6, m.group(2), int(m.group(3)), m.group(4)


def main() -> None:
    path, child_fd, parent_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fd_of = lambda rest: int(rest.split("(")[1].split(",")[0], 16)
    ev = list(events(path))
    out = {s: [] for s in STAGES}
    woke = None
    i = 0
    while i < len(ev):
        t, kind, nr, rest = ev[i]
        if nr == EPOLL_WAIT and kind == "exit" and not rest.startswith("= 0"):
            woke = t
        if nr == RECVFROM and kind == "enter" and fd_of(rest) == child_fd:
            j = next((j for j in range(i + 1, len(ev)) if ev[j][2] == RECVFROM and ev[j][1] == "exit"), None)
            if j is not None and int(ev[j][3].split("=")[1]) > 500 and woke is not None and t - woke < 200:
                read = ev[j][0]
                lock = first_write = last_write = writev = writev_done = write_nr = None
                for tt, kk, nn, rr in ev[j + 1:]:
                    if tt - read > 2000:
                        break
                    if nn == FCNTL and kk == "enter" and lock is None:
                        lock = tt
                    elif nn == PWRITE and kk == "enter" and first_write is None:
                        first_write = tt
                    elif nn == PWRITE and kk == "exit":
                        last_write = tt
                    elif nn in WRITES and kk == "enter" and writev is None and fd_of(rr) == parent_fd:
                        writev, write_nr = tt, nn
                    elif writev is not None and nn == write_nr and kk == "exit":
                        writev_done = tt
                        break
                if None not in (lock, first_write, last_write, writev_done):
                    for stage, d in zip(STAGES, [t - woke, lock - read, first_write - lock,
                                                 last_write - first_write, writev - last_write,
                                                 writev_done - writev, writev - woke]):
                        out[stage].append(d)
        i += 1
    n = len(out[STAGES[0]])
    print(f"{n} frames from fd {child_fd}")
    print("| stage | p50 us | p90 us | p99 us |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        v = sorted(out[stage])
        if v:
            q = lambda f: v[min(len(v) - 1, int(len(v) * f))]
            print(f"| {stage} | {q(0.5):.0f} | {q(0.9):.0f} | {q(0.99):.0f} |")


if __name__ == "__main__":
    main()
