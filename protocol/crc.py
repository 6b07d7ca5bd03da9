# CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF), table-driven.
# YKC frames carry it over sequence..body, low byte first.
try:
    from micropython import const
    from array import array
    _SMALL = True
except ImportError:
    def const(x):
        return x
    _SMALL = False

_POLY = const(0xA001)


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t.append(c)
    # MicroPython: array('H') is 512 bytes where a tuple costs 2 KB of heap;
    # CPython indexes a tuple faster.
    return array("H", t) if _SMALL else tuple(t)


_TABLE = _table()


def crc16(data, crc=0xFFFF):
    """CRC-16/MODBUS of a bytes-like object (check value of b"123456789": 0x4B37)."""
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc
