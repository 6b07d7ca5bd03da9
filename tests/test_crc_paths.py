# CPython's CRC paths (protocol/crc.py): the word-wise table is the one in use
# on a little-endian host, it does not fall back to the byte loop for plain
# bytes, and a buffer it cannot cast (not contiguous) still gets the right
# CRC from the byte loop. Killers of cosmic-ray survivors (docs/testing.md).
import sys

import pytest

from protocol import crc


def test_word_wise_crc_is_the_one_in_use_on_a_little_endian_host():
    if sys.byteorder != "little":
        pytest.skip("big-endian host: the byte loop is the one in use")
    assert crc.crc16 is crc._crc16_wordwise


def test_word_wise_crc_takes_bytes_without_the_byte_loop(monkeypatch):
    def no(*a):
        raise AssertionError("fell back to the byte loop")
    monkeypatch.setattr(crc, "_crc16_bytewise", no)
    for data in (b"123456789", bytearray(b"123456789"), memoryview(b"123456789")):
        assert crc._crc16_wordwise(data) == 0x4B37
    assert crc._crc16_wordwise(b"12345678") == crc._crc16_wordwise(bytearray(b"12345678"))


def test_a_buffer_that_cannot_be_cast_gets_the_same_crc_from_the_byte_loop():
    data = bytes(range(256)) * 3
    for step in (2, 3):
        mv = memoryview(data)[::step]
        assert not mv.contiguous
        assert crc._crc16_wordwise(mv) == crc._crc16_bytewise(bytes(mv))
