#!/usr/bin/env python3
"""PR OUT latency through a SCSI disk: N x REGISTER AND IGNORE EXISTING KEY
(alternating between two keys, so every command changes the state and is
written), issued with SG_IO from one process, one at a time; prints
n, p50, p90, p99 and max in microseconds as one line of JSON.

    pr_latency.py /dev/sdX [N] [LABEL]
"""
import json
import os
import sys
import time

from sgio import is_unit_attention, open_dev, out_raw


def main():
    dev = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    label = sys.argv[3] if len(sys.argv) > 3 else dev
    fd = open_dev(dev)
    lat = []
    retried = 0
    for i in range(n):
        key = 0x7000 + (i & 1)
        param = bytes(8) + key.to_bytes(8, "big") + bytes(8)
        cdb = bytes([0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0])
        while True:
            t0 = time.perf_counter_ns()
            status, sense = out_raw(fd, cdb, param)
            t1 = time.perf_counter_ns()
            # A unit attention (e.g. after a preemption) is retried, not timed.
            if is_unit_attention(status, sense):
                retried += 1
                continue
            break
        if status != 0:
            sys.exit(f"{label}: PR OUT failed with status {status:#x} sense {sense.hex()}")
        lat.append((t1 - t0) / 1000.0)
    os.close(fd)
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))], 1)

    print(json.dumps({"label": label, "n": n, "p50_us": pct(50), "p90_us": pct(90),
                      "p99_us": pct(99), "max_us": round(lat[-1], 1), "ua_retries": retried}))


if __name__ == "__main__":
    main()
