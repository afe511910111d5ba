#!/usr/bin/env python3
"""Registers the issuing I_T nexus and N-1 other initiators (SAS
TransportIDs, as tcm_loop's, through SPEC_I_PT) with one key, then takes a Write Exclusive -
Registrants Only reservation with it: an LU with an active reservation and
N registrants, for the fio benchmark.

    pr_fill.py /dev/sdX N
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sgio import sg_io_out  # noqa: E402

KEY = 0xBE7C


def sas_tid(address):
    """SPC-4 SAS TransportID: protocol 6, the SAS address in bytes 4-11."""
    return bytes([0x06, 0, 0, 0]) + address.to_bytes(8, "big") + bytes(12)


def main():
    dev, n = sys.argv[1], int(sys.argv[2])
    tids = b"".join(sas_tid(0x5001405000100000 + i) for i in range(n - 1))
    param = bytes(8) + KEY.to_bytes(8, "big") + bytes(4) + bytes([0x08, 0, 0, 0])
    param += len(tids).to_bytes(4, "big") + tids
    # PERSISTENT RESERVE OUT, REGISTER (0), parameter list length in bytes 5-8.
    cdb = bytes([0x5F, 0x00, 0, 0, 0]) + len(param).to_bytes(4, "big") + bytes([0])
    sg_io_out(dev, cdb, param, "REGISTER with SPEC_I_PT")
    reserve = KEY.to_bytes(8, "big") + bytes(16)
    sg_io_out(dev, bytes([0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0]), reserve, "RESERVE WERO")
    print(f"{dev}: {n} registrants, WERO held by the issuing nexus, key {KEY:#x}")


if __name__ == "__main__":
    main()
