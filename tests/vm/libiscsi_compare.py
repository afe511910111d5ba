#!/usr/bin/env python3
"""Per-suite side-by-side table of two iscsi-test-cu runs.

Usage: libiscsi_compare.py NAME_A A.tests NAME_B B.tests
Each .tests file holds 'Suite.Test RESULT' lines (libiscsi_count.py --tests).
Prints a Markdown table: suite, then passed/failed/skipped for A and for B,
and a totals row.
"""
import sys
from collections import OrderedDict


def load(path):
    suites = OrderedDict()
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 2:
                continue
            name, status = parts
            suite = name.rsplit(".", 1)[0]
            c = suites.setdefault(suite, [0, 0, 0])
            if status == "passed":
                c[0] += 1
            elif status == "SKIPPED":
                c[2] += 1
            else:
                c[1] += 1
    return suites


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    na, a, nb, b = sys.argv[1:]
    sa, sb = load(a), load(b)
    names = list(sa) + [s for s in sb if s not in sa]
    print(f"| suite | {na} passed | failed | skipped | {nb} passed | failed | skipped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ta, tb = [0, 0, 0], [0, 0, 0]
    for s in names:
        ca, cb = sa.get(s, [0, 0, 0]), sb.get(s, [0, 0, 0])
        for i in range(3):
            ta[i] += ca[i]
            tb[i] += cb[i]
        print(f"| {s} | {ca[0]} | {ca[1]} | {ca[2]} | {cb[0]} | {cb[1]} | {cb[2]} |")
    print(f"| **total** | **{ta[0]}** | **{ta[1]}** | **{ta[2]}** | **{tb[0]}** | **{tb[1]}** | **{tb[2]}** |")


if __name__ == "__main__":
    main()
