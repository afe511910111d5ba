#!/usr/bin/env python3
"""Table of the fio runs of tests/vm/bench/fio.sh: IOPS, bandwidth, p50/p99
completion latency, and each tcmu-prd row's IOPS ratio to LIO fileio (a)."""
import glob
import json
import os
import sys

NAMES = {"a": "LIO fileio (in-kernel)", "b": "tcmu-prd dlmfile", "c": "tcmu-prd, WERO + 100 registrants",
         "d": "tcmu-prd, cluster mode (DLM)", "i": "LIO iblock (direct-I/O loop device)",
         "e": "tcmu-prd dlmfile, direct=0 (page cache)", "w": "tcmu-prd dlmfile, worker_threads = 32",
         "o": "tcmu-prd dlmfile, the binary before the change"}


def load(path):
    with open(path) as f:
        j = json.load(f)
    job = j["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "bw_kib": side["bw"],
            "p50_us": pct.get("50.000000", 0) / 1000.0, "p99_us": pct.get("99.000000", 0) / 1000.0}


def main():
    art = sys.argv[1]
    rows = {}
    for p in sorted(glob.glob(os.path.join(art, "fio-*.json"))):
        label, rest = os.path.basename(p)[4:-5].split("-", 1)
        rows[(rest, label)] = load(p)
    workloads = sorted({w for w, _ in rows}, key=lambda w: (w.split("-")[0], w))
    print("| workload | backstore | IOPS | MiB/s | p50 us | p99 us | IOPS ratio to (a) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for w in workloads:
        base = rows.get((w, "a"))
        for label in "aibwedo":
            r = rows.get((w, label))
            if not r:
                continue
            ratio = f"{r['iops'] / base['iops']:.2f}" if base and base["iops"] else "-"
            print(f"| {w} | ({label}) {NAMES[label]} | {r['iops']:.0f} | {r['bw_kib'] / 1024:.1f} | "
                  f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {ratio if label != 'a' else '1.00'} |")


if __name__ == "__main__":
    main()
