#!/usr/bin/env python3
"""PR OUT latency through a SCSI disk: N x REGISTER AND IGNORE EXISTING KEY
(alternating between two keys, so every command changes the state and is
written), issued with SG_IO from one process, one at a time; prints
n, p50, p90, p99 and max in microseconds as one line of JSON.

    pr_latency.py /dev/sdX [N] [LABEL]
"""
import ctypes
import fcntl
import json
import os
import sys
import time

SG_IO = 0x2285
SG_DXFER_TO_DEV = -2


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


def prout_register_ignore(fd, key):
    cdb = (ctypes.c_ubyte * 10)(0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0)
    param = (ctypes.c_ubyte * 24)(*((0).to_bytes(8, "big") + key.to_bytes(8, "big") + bytes(8)))
    sense = (ctypes.c_ubyte * 32)()
    h = SgIoHdr()
    h.interface_id = ord("S")
    h.dxfer_direction = SG_DXFER_TO_DEV
    h.cmd_len = 10
    h.mx_sb_len = 32
    h.dxfer_len = 24
    h.dxferp = ctypes.cast(param, ctypes.c_void_p)
    h.cmdp = ctypes.cast(cdb, ctypes.c_void_p)
    h.sbp = ctypes.cast(sense, ctypes.c_void_p)
    h.timeout = 30000
    fcntl.ioctl(fd, SG_IO, h)
    return h.status, bytes(sense[: h.sb_len_wr])


def main():
    dev = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    label = sys.argv[3] if len(sys.argv) > 3 else dev
    fd = os.open(dev, os.O_RDWR | os.O_NONBLOCK)
    lat = []
    retried = 0
    for i in range(n):
        key = 0x7000 + (i & 1)
        while True:
            t0 = time.perf_counter_ns()
            status, sense = prout_register_ignore(fd, key)
            t1 = time.perf_counter_ns()
            # A unit attention (e.g. after a preemption) is retried, not timed.
            if status == 2 and len(sense) > 2 and (sense[2] & 0x0F) == 6:
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
