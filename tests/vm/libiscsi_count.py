#!/usr/bin/env python3
"""Counts iscsi-test-cu results per test from its CUnit output.

CUnit counts [SKIPPED] tests as passed, and libiscsi's own log lines
interleave with CUnit's, so the summary cannot be trusted: this walks the
per-test lines. Prints one line per test (Suite.Test RESULT) to the file
named by --tests, and 'passed failed skipped' on stdout.
"""
import re
import sys


def parse(text):
    results = []  # (name, status)
    suite = "?"
    cur = None  # [name, status, skipped]

    def finish():
        if cur is not None:
            status = cur[1] or "UNFINISHED"
            if status == "passed" and cur[2]:
                status = "SKIPPED"
            results.append((cur[0], status))

    for line in text.splitlines():
        m = re.match(r"^Suite: (\S+)", line)
        if m:
            finish()
            cur = None
            suite = m.group(1)
            continue
        m = re.match(r"^  Test: (\S+) \.\.\.(.*)$", line)
        if m:
            finish()
            cur = [f"{suite}.{m.group(1)}", None, False]
            line = m.group(2)
            if line.startswith("passed"):
                cur[1] = "passed"
            elif line.startswith("FAILED"):
                cur[1] = "FAILED"
            if "[SKIPPED]" in line and cur[1] is None:
                cur[2] = True
            continue
        if cur is None or cur[1] is not None:
            continue
        if "[SKIPPED]" in line:
            cur[2] = True
        if line.startswith("passed"):
            cur[1] = "passed"
        elif line.startswith("FAILED"):
            cur[1] = "FAILED"
    finish()
    return results


def main():
    args = sys.argv[1:]
    out = None
    if len(args) >= 2 and args[0] == "--tests":
        out, args = args[1], args[2:]
    text = open(args[0], errors="replace").read() if args else sys.stdin.read()
    results = parse(text)
    if out:
        with open(out, "w") as f:
            for name, status in results:
                f.write(f"{name} {status}\n")
    p = sum(1 for _, s in results if s == "passed")
    f_ = sum(1 for _, s in results if s not in ("passed", "SKIPPED"))
    s = sum(1 for _, s in results if s == "SKIPPED")
    print(p, f_, s)


if __name__ == "__main__":
    main()
