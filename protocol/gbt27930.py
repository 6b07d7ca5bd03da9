# GB/T 27930-2015, the charger-BMS dialogue over CAN: the message table
# (declared once, as data), 29-bit ids and the SAE J1939-21 transport
# protocol (TP.CM / TP.DT) that carries the messages longer than 8 bytes
# (BRM 49, BCP 13, BCS 9 with some BMSs, BMV/BMT/BSP). Runs on MicroPython
# and CPython; the charger's state machine and the simulated BMS build on it
# (docs/bms.md). Facts and sources: shared/context/gbt27930.md.
#
# Ids (PDU1): priority << 26 | PF << 16 | DA << 8 | SA, PF = PGN >> 8;
# the charger is 0x56, the BMS 0xF4 (CHM 0x1826F456, BHM 0x182756F4).
# Byte order little-endian; unspecified bits are sent as 1.
# Current: 0.1 A/bit with a -400 A offset, charging current negative:
# raw = (400 - I) x 10, i.e. raw = 4000 - dA for a charging current of dA
# tenths of an ampere (the standard's trap: the sign).
from protocol import const

CHARGER = const(0x56)
BMS = const(0xF4)

# name pgn(hex) priority length period_ms sender(C charger / B BMS)
_TABLE = (
    "CHM 2600 6 3 250 C\n"
    "BHM 2700 6 2 250 B\n"
    "CRM 0100 6 8 250 C\n"
    "BRM 0200 7 49 250 B\n"
    "BCP 0600 7 13 500 B\n"
    "CTS 0700 6 7 500 C\n"
    "CML 0800 6 8 250 C\n"
    "BRO 0900 4 1 250 B\n"
    "CRO 0A00 4 1 250 C\n"
    "BCL 1000 6 5 50 B\n"
    "BCS 1100 7 9 250 B\n"
    "CCS 1200 6 8 50 C\n"
    "BSM 1300 6 7 250 B\n"
    "BST 1900 4 4 10 B\n"
    "CST 1A00 4 4 10 C\n"
    "BSD 1C00 6 7 250 B\n"
    "CSD 1D00 6 8 250 C\n"
    "BEM 1E00 2 4 250 B\n"
    "CEM 1F00 2 4 250 C\n"
)

TP_CM = const(0xEC00)
TP_DT = const(0xEB00)
_TP_PRIO = const(7)
RTS = const(16)
CTS = const(17)
EOM_ACK = const(19)
BAM = const(32)
ABORT = const(255)
# abort reasons (J1939-21): 1 busy, 2 no resources, 3 timeout
ABORT_BUSY = const(1)
ABORT_RESOURCES = const(2)
ABORT_TIMEOUT = const(3)
# J1939-21 timeouts, ms
T1 = const(750)     # receiver: between two TP.DT
T2 = const(1250)    # receiver: after its CTS, for the first TP.DT
T3 = const(1250)    # sender: for a CTS or EndOfMsgAck after the last TP.DT
T4 = const(1050)    # sender: after a CTS(0) hold

_MAX_TP = const(1785)   # 255 packets x 7 bytes


class Msg:
    __slots__ = ("name", "pgn", "prio", "length", "period_ms", "sender")

    def __init__(self, name, pgn, prio, length, period_ms, sender):
        self.name = name
        self.pgn = pgn
        self.prio = prio
        self.length = length
        self.period_ms = period_ms
        self.sender = sender


BY_NAME = {}
BY_PGN = {}
for _line in _TABLE.split("\n"):
    if _line:
        _p = _line.split()
        _m = Msg(_p[0], int(_p[1], 16), int(_p[2]), int(_p[3]), int(_p[4]), _p[5])
        BY_NAME[_m.name] = _m
        BY_PGN[_m.pgn] = _m


def make_id(prio, pgn, da, sa):
    """A 29-bit PDU1 id."""
    return (prio & 7) << 26 | ((pgn >> 8) & 0xFF) << 16 | (da & 0xFF) << 8 | (sa & 0xFF)


def split_id(can_id):
    """(priority, pgn, destination, source) of a 29-bit PDU1 id."""
    return (can_id >> 26) & 7, ((can_id >> 16) & 0xFF) << 8, (can_id >> 8) & 0xFF, can_id & 0xFF


def id_of(name, sa=None):
    """The id message `name` travels with, from its sender to the other side
    (charger 0x56 <-> BMS 0xF4), unless the source `sa` is given."""
    m = BY_NAME[name]
    if sa is None:
        sa = CHARGER if m.sender == "C" else BMS
    da = BMS if sa == CHARGER else CHARGER
    return make_id(m.prio, m.pgn, da, sa)


def current_raw(da):
    """A charging current of `da` tenths of an ampere on the wire."""
    return 4000 - da


def current_da(raw):
    """Tenths of an ampere (charging positive) from the wire."""
    return 4000 - raw


def _pgn3(pgn):
    return bytes((pgn & 0xFF, (pgn >> 8) & 0xFF, (pgn >> 16) & 0xFF))


def tp_rts(pgn, size):
    """TP.CM RTS: `size` bytes of `pgn` to follow in ceil(size/7) TP.DT."""
    n = (size + 6) // 7
    return bytes((RTS, size & 0xFF, size >> 8, n, 0xFF)) + _pgn3(pgn)


def tp_cts(pgn, count, next_seq):
    """TP.CM CTS: send `count` packets from sequence `next_seq` (count 0: hold)."""
    return bytes((CTS, count, next_seq, 0xFF, 0xFF)) + _pgn3(pgn)


def tp_eom(pgn, size):
    return bytes((EOM_ACK, size & 0xFF, size >> 8, (size + 6) // 7, 0xFF)) + _pgn3(pgn)


def tp_abort(pgn, reason):
    return bytes((ABORT, reason, 0xFF, 0xFF, 0xFF)) + _pgn3(pgn)


def tp_packets(payload):
    """The TP.DT data fields for `payload`: sequence 1.. then 7 bytes each,
    the last one filled with 0xFF."""
    out = []
    n = (len(payload) + 6) // 7
    for i in range(n):
        chunk = payload[7 * i:7 * i + 7]
        out.append(bytes((i + 1,)) + chunk + b"\xff" * (7 - len(chunk)))
    return out


def tp_pgn(data):
    return data[5] | data[6] << 8 | data[7] << 16


class TpReceiver:
    """The receiving end of one J1939-21 RTS/CTS transfer. feed(kind, data,
    now_ms) with kind "cm" (TP.CM) or "dt" (TP.DT) returns a list of
    (what, value): ("send", TP.CM bytes to answer with), ("done", (pgn,
    payload)), ("abort", reason). poll(now_ms) reports a T1/T2 timeout as an
    abort (and the TP.CM Abort to send). Packets are asked for all at once
    (CTS for every packet), as the BMSs in the captures expect."""

    def __init__(self, max_size=_MAX_TP):
        self.max_size = max_size
        self.pgn = None
        self._buf = None
        self._size = 0
        self._n = 0
        self._next = 1
        self._at = 0
        self._wait = 0

    def busy(self):
        return self.pgn is not None

    def feed(self, kind, data, now_ms):
        if kind == "cm":
            c = data[0]
            pgn = tp_pgn(data)
            if c == RTS:
                size = data[1] | data[2] << 8
                n = data[3]
                if size > self.max_size or n != (size + 6) // 7 or size < 9:
                    return [("send", tp_abort(pgn, ABORT_RESOURCES))]
                # a new RTS replaces an unfinished transfer (a BMS resends BRM)
                self.pgn = pgn
                self._buf = bytearray(n * 7)
                self._size = size
                self._n = n
                self._next = 1
                self._at = now_ms
                self._wait = T2
                return [("send", tp_cts(pgn, n, 1))]
            if c == ABORT and pgn == self.pgn:
                self.pgn = None
                return [("abort", data[1])]
            return []
        if self.pgn is None or len(data) < 2:
            return []
        seq = data[0]
        if seq != self._next:
            # a repeated or skipped packet: J1939-21 aborts the transfer
            pgn = self.pgn
            self.pgn = None
            return [("send", tp_abort(pgn, ABORT_TIMEOUT)), ("abort", ABORT_TIMEOUT)]
        i = (seq - 1) * 7
        chunk = data[1:8]
        self._buf[i:i + len(chunk)] = chunk
        self._next += 1
        self._at = now_ms
        self._wait = T1
        if seq < self._n:
            return []
        pgn = self.pgn
        self.pgn = None
        return [("send", tp_eom(pgn, self._size)), ("done", (pgn, bytes(self._buf[:self._size])))]

    def poll(self, now_ms, diff=None):
        if self.pgn is None:
            return []
        d = diff(now_ms, self._at) if diff else now_ms - self._at
        if d <= self._wait:
            return []
        pgn = self.pgn
        self.pgn = None
        return [("send", tp_abort(pgn, ABORT_TIMEOUT)), ("abort", ABORT_TIMEOUT)]


# --- BRM (49 bytes): the BMS identifies itself and the vehicle -------------------

def encode_brm(version=0x000101, battery_type=3, capacity_dah=2000, voltage_dv=3800,
               maker="", pack_serial=0xFFFFFFFF, year=0xFF, month=0xFF, day=0xFF,
               charge_count=0xFFFFFF, ownership=0, vin="", bms_sw=b"\xff" * 8):
    """The BRM payload. capacity 0.1 Ah, voltage 0.1 V, year as the calendar
    year (sent - 1985; 0xFF unknown), vin 17 characters or "" (17 x 0xFF)."""
    b = bytearray(b"\xff" * 49)
    b[0] = version & 0xFF
    b[1] = (version >> 8) & 0xFF
    b[2] = (version >> 16) & 0xFF
    b[3] = battery_type
    b[4] = capacity_dah & 0xFF
    b[5] = capacity_dah >> 8
    b[6] = voltage_dv & 0xFF
    b[7] = voltage_dv >> 8
    m = maker.encode()[:4]
    b[8:8 + len(m)] = m
    for i in range(4):
        b[12 + i] = (pack_serial >> (8 * i)) & 0xFF
    b[16] = year - 1985 if year != 0xFF else 0xFF
    b[17] = month
    b[18] = day
    for i in range(3):
        b[19 + i] = (charge_count >> (8 * i)) & 0xFF
    b[22] = ownership
    if vin:
        v = vin.encode()
        if len(v) != 17:
            raise ValueError("BRM: a VIN has 17 characters, got %r" % vin)
        b[24:41] = v
    b[41:49] = bms_sw[:8]
    return bytes(b)


def decode_brm(b):
    """The BRM fields; vin "" when absent (17 x 0xFF, or a BRM cut to 24
    bytes before it)."""
    if len(b) < 24:
        raise ValueError("BRM: %d bytes, at least 24 needed" % len(b))
    vin = ""
    if len(b) >= 41:
        raw = bytes(b[24:41])
        if raw != b"\xff" * 17:
            ok = True
            for ch in raw:
                if ch < 0x30 or ch > 0x5A:
                    ok = False
            vin = raw.decode() if ok else ""
    return {"version": b[0] | b[1] << 8 | b[2] << 16, "battery_type": b[3],
            "capacity_dah": b[4] | b[5] << 8, "voltage_dv": b[6] | b[7] << 8,
            "year": b[16] + 1985 if b[16] != 0xFF else 0, "month": b[17], "day": b[18],
            "charge_count": b[19] | b[20] << 8 | b[21] << 16, "ownership": b[22], "vin": vin}


# --- BCL (5 bytes): the BMS's demand, every 50 ms while charging ------------------

def encode_bcl(voltage_dv, current_da_, mode):
    """Demand voltage 0.1 V, current in 0.1 A (charging positive), mode
    1 constant voltage / 2 constant current."""
    r = current_raw(current_da_)
    return bytes((voltage_dv & 0xFF, voltage_dv >> 8, r & 0xFF, r >> 8, mode))


def decode_bcl(b):
    if len(b) < 5:
        raise ValueError("BCL: %d bytes, 5 needed" % len(b))
    return {"voltage_dv": b[0] | b[1] << 8, "current_da": current_da(b[2] | b[3] << 8),
            "mode": b[4]}


def bcl_watts(d):
    """The power a BCL asks for, W (V x I from 0.1 V and 0.1 A)."""
    return d["voltage_dv"] * d["current_da"] // 100
