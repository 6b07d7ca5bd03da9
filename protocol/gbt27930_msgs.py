# GB/T 27930-2015: every message's fields but BRM and BCL (protocol/gbt27930.py
# has the message table, ids, the J1939 transport, BRM and BCL): the fixed
# layouts, the two-bit flag messages (BST, CST, BEM, CEM, BSM's alarms) and
# CTS's clock. Runs on MicroPython and CPython (docs/bms.md).
import struct

from protocol.gbt27930 import current_da, current_raw

from protocol import const


# --- the other messages: fixed layouts, declared once -----------------------------
# name struct fields. A field named *_da is a current in 0.1 A (charging
# positive; raw 4000 - dA on the wire), *_c a temperature in degC (raw
# +50), *_dv 0.1 V, *_cv 0.01 V, *_dkwh 0.1 kWh, soc_dpct 0.1 %, soc 1 %.
_LAYOUTS = (
    "CHM <BBB ver0 ver1 ver2\n"
    "BHM <H max_dv\n"
    "CRM <BI3s result charger_no region\n"
    "BCP <HHHHBHH cell_max_cv max_da energy_dkwh max_dv max_temp_c soc_dpct voltage_dv\n"
    "CML <HHHH max_dv min_dv max_da min_da\n"
    "BRO <B ready\n"
    "CRO <B ready\n"
    "BCS <HHHBH voltage_dv current_da cell soc minutes_left\n"
    "CCS <HHHBB voltage_dv current_da minutes permit fill\n"
    "BSM <BBBBBBB cell_no max_temp_c max_probe min_temp_c min_probe alarms status\n"
    "BSD <BHHBB soc cell_min_cv cell_max_cv min_temp_c max_temp_c\n"
    "CSD <HHI minutes energy_dkwh charger_no\n"
)
LAYOUT = {}
for _line in _LAYOUTS.split("\n"):
    if _line:
        _p = _line.split()
        LAYOUT[_p[0]] = (_p[1], tuple(_p[2:]))

READY = const(0xAA)       # CRM recognised / BRO, CRO ready
NOT_READY = const(0x00)


def encode(name, **v):
    """The payload of fixed-layout message `name` (LAYOUT) from its fields;
    a missing field is sent as all ones (not available, clause 7.9)."""
    fmt, names = LAYOUT[name]
    vals = []
    for f in names:
        x = v.get(f)
        if f.endswith("_da"):
            x = 0xFFFF if x is None else current_raw(x)
        elif f.endswith("_c"):
            x = 0xFF if x is None else x + 50
        elif x is None:
            x = b"\xff\xff\xff" if f == "region" else -1
        vals.append(x)
    size = struct.calcsize(fmt)
    buf = bytearray(size)
    # all-ones for a missing integer: its width from the format letter
    i = 0
    for ch in fmt[1:]:
        if ch < "0" or ch > "9":
            if vals[i] == -1:
                vals[i] = 0xFF if ch == "B" else 0xFFFF if ch == "H" else 0xFFFFFFFF
            i += 1
    struct.pack_into(fmt, buf, 0, *vals)
    return bytes(buf)


def decode(name, b):
    """The fields of fixed-layout message `name`. CCS is also taken with 7
    bytes (seen on the wire: the last byte, fill, missing)."""
    fmt, names = LAYOUT[name]
    size = struct.calcsize(fmt)
    if len(b) < size:
        if name == "CCS" and len(b) == size - 1:
            b = bytes(b) + b"\xff"
        else:
            raise ValueError("%s: %d bytes, %d needed" % (name, len(b), size))
    vals = struct.unpack_from(fmt, b, 0)
    d = {}
    for i in range(len(names)):
        f = names[i]
        x = vals[i]
        if f.endswith("_da"):
            x = current_da(x)
        elif f.endswith("_c"):
            x = x - 50
        d[f] = x
    return d


def raw(name, b):
    """The raw integers of fixed-layout message `name`, in LAYOUT order, no
    scale or offset applied (what YKC's BMS frames 0x15..0x25 carry)."""
    fmt = LAYOUT[name][0]
    size = struct.calcsize(fmt)
    if len(b) < size:
        b = bytes(b) + b"\xff" * (size - len(b))
    return struct.unpack_from(fmt, b, 0)


# CTS: the charger's clock, BCD: second, minute, hour, day, month, year (2 bytes)
def encode_cts(y, mo, d, h, mi, s):
    def bcd(n):
        return (n // 10) << 4 | n % 10
    return bytes((bcd(s), bcd(mi), bcd(h), bcd(d), bcd(mo), bcd(y % 100), bcd(y // 100)))


# Two-bit status fields (00 normal, 01 set, 10 not credible, 11 not
# available): (name, byte, pair), pair 0 = bits 1-2 (the LSBs).
FLAGS = {
    # BST, the BMS's stop: reasons (byte 1), faults (2-3), errors (4)
    "BST": (("soc", 0, 0), ("voltage", 0, 1), ("cell_voltage", 0, 2), ("charger", 0, 3),
            ("insulation", 1, 0), ("connector_temp", 1, 1), ("bms_temp", 1, 2),
            ("connector", 1, 3), ("battery_temp", 2, 0), ("relay", 2, 1), ("cc2", 2, 2),
            ("other", 2, 3), ("overcurrent", 3, 0), ("voltage_error", 3, 1)),
    # CST, the charger's stop
    "CST": (("condition", 0, 0), ("manual", 0, 1), ("fault", 0, 2), ("bms", 0, 3),
            ("charger_temp", 1, 0), ("connector", 1, 1), ("internal_temp", 1, 2),
            ("energy", 1, 3), ("emergency", 2, 0), ("other", 2, 1),
            ("current_mismatch", 3, 0), ("voltage_error", 3, 1)),
    # BEM, the BMS timed out waiting for: CRM 0x00, CRM 0xAA, CML/CTS, CRO, CCS, CST, CSD
    "BEM": (("CRM00", 0, 0), ("CRMAA", 0, 1), ("CML", 1, 0), ("CRO", 1, 1), ("CCS", 2, 0),
            ("CST", 2, 1), ("CSD", 3, 0)),
    # CEM, the charger timed out waiting for: BRM, BCP, BRO, BCS, BCL, BST, BSD
    "CEM": (("BRM", 0, 0), ("BCP", 1, 0), ("BRO", 1, 1), ("BCS", 2, 0), ("BCL", 2, 1),
            ("BST", 2, 2), ("BSD", 3, 0)),
    # BSM byte 6 (alarms) and 7 (status), as a 2-byte field
    "BSM": (("cell_high", 0, 0), ("soc_high", 0, 1), ("overcurrent", 0, 2), ("overtemp", 0, 3),
            ("insulation", 1, 0), ("connector", 1, 1)),
}


def encode_flags(name, flags):
    """BST/CST/BEM/CEM (4 bytes): each named flag 01, the other defined
    fields 00, every undefined bit 1."""
    b = bytearray(b"\xff\xff\xff\xff")
    for f, i, p in FLAGS[name]:
        b[i] &= ~(3 << 2 * p) & 0xFF
        if f in flags:
            b[i] |= 1 << 2 * p
    return bytes(b)


def decode_flags(name, b):
    """The flags set (01) in a BST/CST/BEM/CEM payload, in table order."""
    if len(b) < 4 and name != "BSM":
        raise ValueError("%s: %d bytes, 4 needed" % (name, len(b)))
    out = []
    for f, i, p in FLAGS[name]:
        if i < len(b) and (b[i] >> 2 * p) & 3 == 1:
            out.append(f)
    return out


def encode_bsm(alarms=(), permit=True, **v):
    """BSM: the alarm flags (FLAGS["BSM"]) and charging permitted (bits 5-6
    of byte 7: 01 permitted, 00 paused)."""
    st = encode_flags("BSM", alarms)
    status = (st[1] & 0xCF) | (0x10 if permit else 0)
    return encode("BSM", alarms=st[0], status=status, **v)


def bsm_alarms(d):
    return decode_flags("BSM", bytes((d["alarms"], d["status"])))


def bsm_permit(d):
    return (d["status"] >> 4) & 3 == 1
