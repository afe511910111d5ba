#!/usr/bin/env python3
"""Table of the fio runs of tests/vm/bench/fio.sh and profile.sh: IOPS,
bandwidth, p50/p99 completion latency, and each row's IOPS ratio to LIO
fileio (a). Runs repeated as `...-rN.json` are shown as the median of the
repeats (IOPS, MiB/s, p50, p99 each) with the IOPS range."""
import glob
import json
import os
import re
import statistics
import sys

NAMES = {"a": "LIO fileio (in-kernel)", "b": "tcmu-prd dlmfile", "c": "tcmu-prd, WERO + 100 registrants",
         "d": "tcmu-prd, cluster mode (DLM)", "i": "LIO iblock (direct-I/O loop device)",
         "w": "tcmu-prd dlmfile, worker_threads = 8",
         "n": "tcmu-prd dlmfile, direct=0 (page cache)",
         "o": "tcmu-prd dlmfile, the binary before the change"
         + (", " + os.environ.get("PROFILE_VARIANT", "variant") if os.environ.get("PROFILE_OLD_VARIANT") else ""),
         "v": "tcmu-prd dlmfile, " + os.environ.get("PROFILE_VARIANT", "variant"),
         "q": "LIO fileio, fio pinned to vCPU 1", "p": "tcmu-prd dlmfile, fio pinned to vCPU 1"}
ORDER = "aiobnvcdwqp"


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
    runs = {}
    for p in sorted(glob.glob(os.path.join(art, "fio-*.json"))):
        label, rest = os.path.basename(p)[4:-5].split("-", 1)
        rest = re.sub(r"-r\d+$", "", rest)
        runs.setdefault((rest, label), []).append(load(p))
    rows = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} | {
        "lo": min(r["iops"] for r in v), "hi": max(r["iops"] for r in v), "n": len(v)} for k, v in runs.items()}
    reps = max((r["n"] for r in rows.values()), default=1)
    workloads = sorted({w for w, _ in rows}, key=lambda w: (w.split("-")[0], w))
    rng = " | IOPS range" if reps > 1 else ""
    print(f"| workload | backstore | IOPS | MiB/s | p50 us | p99 us | IOPS ratio to (a){rng} |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if reps > 1 else ""))
    for w in workloads:
        base = rows.get((w, "a"))
        for label in ORDER:
            r = rows.get((w, label))
            if not r:
                continue
            ratio = f"{r['iops'] / base['iops']:.2f}" if base and base["iops"] else "-"
            extra = f" | {r['lo']:.0f}-{r['hi']:.0f}" if reps > 1 else ""
            print(f"| {w} | ({label}) {NAMES[label]} | {r['iops']:.0f} | {r['bw_kib'] / 1024:.1f} | "
                  f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {ratio if label != 'a' else '1.00'}{extra} |")


if __name__ == "__main__":
    main()
