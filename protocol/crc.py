# CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF), table-driven.
# YKC frames carry it over sequence..body, low byte first.
import sys

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


def _crc16_bytewise(data, crc=0xFFFF):
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc


_T2 = None


def _crc16_wordwise(data, crc=0xFFFF):
    # CPython on a little-endian host: two bytes per step through a 65536-entry
    # table (built on first use, ~15 ms): after the register is XORed with a
    # 16-bit word, all 16 bits shift out, so one lookup does both bytes. About
    # three times the speed of the byte loop; the result is the same.
    global _T2
    t2 = _T2
    if t2 is None:
        t = _TABLE
        t2 = []
        for x in range(65536):
            c = t[x & 0xFF] ^ (x >> 8)
            t2.append(t[c & 0xFF] ^ (c >> 8))
        t2 = _T2 = tuple(t2)
    mv = memoryview(data)
    if mv.format != "B" or not mv.contiguous:
        return _crc16_bytewise(data, crc)
    if len(mv) & 1:
        crc = (crc >> 8) ^ _TABLE[(crc ^ mv[0]) & 0xFF]
        mv = mv[1:]
    for w in mv.cast("H"):
        crc = t2[crc ^ w]
    return crc


# crc16(data, crc=0xFFFF): CRC-16/MODBUS of a bytes-like object (check value
# of b"123456789": 0x4B37).
if _SMALL:
    try:
        from protocol.crc_viper import crc16
    except Exception:  # no viper emitter on this port
        crc16 = _crc16_bytewise
elif sys.byteorder != "little":
    crc16 = _crc16_bytewise
else:
    crc16 = _crc16_wordwise
