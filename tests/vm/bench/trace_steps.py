#!/usr/bin/env python3
"""Timeline of one command from an ftrace text dump (tests/vm/bench/trace.sh).

Cuts the trace into cycles, one per tcm_loop_queuecommand (at iodepth 1, one
command each), names every event of a cycle (function, syscall, switch or
wake-up, numbered when repeated) and prints, per name, the median offset
from the start of its cycle, in order: where the time of a command goes.
"""
import re
import statistics
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<rest>.*)$")
SYSCALLS = {0: "read", 1: "write", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
            202: "futex", 208: "io_getevents", 209: "io_submit", 232: "epoll_wait",
            271: "ppoll", 281: "epoll_pwait", 295: "preadv", 296: "pwritev",
            327: "preadv2", 328: "pwritev2", 441: "epoll_pwait2", 7: "poll", 24: "sched_yield", 228: "clock_gettime"}
START = "tcm_loop_queuecommand"


def thread(comm):
    return re.sub(r"\d+$", "N", comm.strip())


def name(comm, rest):
    if rest.startswith("sys_enter:") or rest.startswith("sys_exit:"):
        m = re.match(r"sys_(enter|exit): NR (\d+)", rest)
        if not m:
            return None
        nr = int(m.group(2))
        return f"{thread(comm)} {m.group(1)} {SYSCALLS.get(nr, nr)}"
    if rest.startswith("sched_switch:"):
        m = re.search(r"prev_comm=(.+?) prev_pid.*next_comm=(.+?) next_pid", rest)
        return f"switch {thread(m.group(1))} -> {thread(m.group(2))}" if m else None
    if rest.startswith("sched_wakeup:"):
        m = re.search(r"comm=(.+?) pid=", rest)
        return f"{thread(comm)} wakes {thread(m.group(1))}" if m else None
    fn = rest.split()[0]
    if re.match(r"^[a-z_0-9]+$", fn):
        return f"{thread(comm)} {fn}"
    return None


def analyse(path):
    cycles, cur, t0 = [], None, None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            ts = float(m.group("ts")) * 1e6
            n = name(m.group("comm"), m.group("rest"))
            if n is None:
                continue
            if n.endswith(" " + START):
                if cur is not None:
                    cycles.append((ts - t0, cur))
                cur, t0 = [], ts
            if cur is not None:
                cur.append((ts - t0, n))
    offsets, lengths = defaultdict(list), []
    for length, events in cycles:
        lengths.append(length)
        seen = defaultdict(int)
        for off, n in events:
            seen[n] += 1
            offsets[f"{n} #{seen[n]}" if seen[n] > 1 else n].append(off)
    return cycles, lengths, offsets


def main():
    for path in sys.argv[1:]:
        cycles, lengths, offsets = analyse(path)
        print(f"\n## {path}\n")
        if not cycles:
            print("no cycles found")
            continue
        print(f"{len(cycles)} commands, median {statistics.median(lengths):.0f} us from one "
              f"{START} to the next\n")
        print("| step (first occurrence in a cycle) | median us | in % of cycles |")
        print("|---|---:|---:|")
        rows = [(statistics.median(v), k, len(v)) for k, v in offsets.items()
                if len(v) >= len(cycles) // 2]
        for med, k, cnt in sorted(rows):
            print(f"| {k} | {med:.0f} | {100 * cnt // len(cycles)} |")


if __name__ == "__main__":
    main()
