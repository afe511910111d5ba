"""SG_IO for the VM benchmarks: one data-out command, retried past unit
attentions, failing loudly on anything but GOOD."""
import ctypes
import fcntl
import os
import sys

SG_IO = 0x2285
SG_DXFER_TO_DEV = -2


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort), ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p), ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint), ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p), ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte), ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort), ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint), ("info", ctypes.c_uint),
    ]


def out_raw(fd, cdb, data):
    """One data-out command on an open fd: (SCSI status, sense bytes)."""
    c = (ctypes.c_ubyte * len(cdb)).from_buffer_copy(cdb)
    d = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
    sense = (ctypes.c_ubyte * 32)()
    h = SgIoHdr(interface_id=ord("S"), dxfer_direction=SG_DXFER_TO_DEV,
                cmd_len=len(cdb), mx_sb_len=32, dxfer_len=len(data),
                dxferp=ctypes.cast(d, ctypes.c_void_p),
                cmdp=ctypes.cast(c, ctypes.c_void_p),
                sbp=ctypes.cast(sense, ctypes.c_void_p), timeout=30000)
    fcntl.ioctl(fd, SG_IO, h)
    return h.status, bytes(sense[: h.sb_len_wr])


def is_unit_attention(status, sense):
    return status == 2 and len(sense) > 2 and (sense[2] & 0x0F) == 6


def open_dev(dev):
    return os.open(dev, os.O_RDWR | os.O_NONBLOCK)


def sg_io_out(dev, cdb, data, what):
    """One data-out command, retried past unit attentions; exits on failure."""
    fd = open_dev(dev)
    try:
        for _ in range(4):
            status, s = out_raw(fd, cdb, data)
            if is_unit_attention(status, s):
                continue
            if status != 0:
                sys.exit(f"{dev}: {what} failed: status {status:#x} sense {s.hex()}")
            return
        sys.exit(f"{dev}: {what}: unit attentions do not stop")
    finally:
        os.close(fd)
