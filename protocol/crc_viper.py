# CRC-16/MODBUS compiled by MicroPython's viper emitter: about 13 times the
# speed of protocol.crc's byte loop on the unix port. Imported by protocol.crc
# only under MicroPython, and only if this port has the emitter (else the
# import fails and the byte loop is used). Same results: tests/mp/test_codec.py.
import micropython

from protocol.crc import _TABLE


@micropython.viper
def _crc(data, n: int, crc: int) -> int:
    t = ptr16(_TABLE)  # noqa: F821 (viper built-in)
    d = ptr8(data)  # noqa: F821
    for i in range(n):
        crc = (crc >> 8) ^ t[(crc ^ d[i]) & 0xFF]
    return crc


def crc16(data, crc=0xFFFF):
    return _crc(data, len(data), crc)
