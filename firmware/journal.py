"""Crash-safe, append-only bill journal on flash (MicroPython + CPython).

The journal is the pile's only store of sessions and bills, and the retry
queue (firmware/outbox.py is a view over it). Every change is one appended
record that carries its own length and CRC-32, so a power cut after any byte
leaves at worst one torn record at the tail, which recovery ignores and
reports. Files are replaced only by writing a new file and renaming it,
but for the last checkpoint's two slots, rewritten in place by turns.
Format, write ordering, limits and figures: docs/journal.md. RAM holds
nothing per bill: each bill is a 24-byte entry of the index file
<path>.idx, a cache rebuilt from the journal at every boot.

Record (little-endian; 24 bytes of overhead):

    0   u8     magic 0xA5
    1   u8     kind (below)
    2   u16    payload length n (<= MAX_PAYLOAD, the largest per-kind cap)
    4   16 B   trade serial, packed BCD (zeros when the kind has none)
    20  n B    payload
    20+n u32   CRC-32 (binascii.crc32) of bytes 0 .. 20+n

Kinds (the table of payloads: docs/journal.md): SESSION_OPEN 1, CHECKPOINT
2 (only the last per serial matters), BILL_SEALED 3 (the bill, byte for
byte), CONFIRMED 4, ILLEGAL 5 (empty, or the platform's u8 0xE4 result),
SETTLED 6, SERIAL_COUNTER 7 (u32), FORGOTTEN 8 (k x 16 B serials compaction
dropped, still remembered; its serial field: the floor or zeros).

A serial's life: open -> pending (sealed) -> confirmed -> settled, with
pending/confirmed -> illegal (0x40 result 1, or refused by the platform)
and illegal -> settled (resolved: the platform, or a technician's release). Records that do not fit the current state are not written (the call
returns a status) and, if found on flash, are ignored by recovery.

API (serials are 32-digit str; payloads bytes-like):

    j = Journal(path, fs=None, limit_bytes=JOURNAL_BYTES, on_event=None)
        fs: RealFS() (plain open/os.rename/os.remove) unless given, e.g. a
        sim.flash.FlashSim. on_event(name, detail) is called for
        "torn_tail", "corrupt", "temp", "full", "illegal", "lost",
        "heal_failed".
    j.recover() -> Report   (also run lazily by the first other call)
        .pending    [serial]  sealed, unconfirmed bills in journal order
        .confirmed  [serial]  host-confirmed, not settled
        .illegal    [serial]
        .settled    int       settled bills still on flash
        .open_sessions [(serial, header bytes, last checkpoint or None)]
        .torn_tail  int bytes ignored at the tail (0: none); .torn_offset
        .corrupt    [(start, end)] byte ranges skipped in the middle
        .records, .ignored, .unknown   counts of valid / no-op / unknown-kind
        .counter    int, .temp  None | "removed" | "adopted"
        .healed     True when the tail was cut off by a rewrite
        .bytes_used int, .damaged  bool
        .remembered int (forgotten serials still known), .floor serial|None
    j.open_session(serial, header) -> "opened" | "exists" (also for a
        serial settled and compacted away that the ring remembers);
        raises JournalFull when can_start() is False, SerialTooOld when the
        serial is unknown and its YYMMDDhhmmss is not after the floor
    j.checkpoint(serial, payload)  -> "ok" | "no_session"
    j.seal(serial, bill_body)      -> "sealed" | "already_sealed" | "no_session"
    j.confirm(serial) / j.illegal(serial) / j.settle(serial)
                                   -> "ok" | "duplicate" | "unknown" | "refused"
    j.refuse(serial, result)       -> the same, or "full": the platform refused
        the bill (0xE4 result 1..255): ILLEGAL with the result; "full" (nothing
        written) when a confirmed bill kept for good would not fit the limit
    j.platform_result(serial) -> the 0xE4 result of a refused bill, or None
    j.pending(), j.confirmed(), j.illegal_bills(), j.open_sessions()
    j.count(state), j.first(state)   how many / the oldest, without a list
    j.each(state) -> generator of serials in that state, journal order
    j.bill(serial) -> body bytes or None;  j.status(serial) -> state or None
    j.close_interrupted(make_bill) -> [serial]: seals every open session
        with make_bill(serial, header, last_checkpoint) (the caller builds a
        bill with stop reason STOP_POWER_LOSS at the last checkpoint)
    j.next_serial_counter() -> int   persisted before it is returned
    j.issue_serial(pile14, gun2, stamp12) -> 32-digit serial, never reused
    j.compact(need=0) -> dict;  j.bytes_used();  j.can_start() -> bool
        (False: j.refusal holds the reason and a "full" event is raised)
    j.written, j.compactions   bytes this object wrote, compactions it ran

Raises RecordTooLong (a payload over its cap; nothing written), JournalFull,
SerialTooOld, ValueError (malformed serial).
"""
import binascii
import struct

from firmware.billindex import SUSPECTS, BillIndex, INDEX_ENTRY_BYTES, SideCheckpoints, _put
from firmware.fsio import RealFS, close_all

from protocol import const

SESSION_OPEN = const(1)
CHECKPOINT = const(2)
BILL_SEALED = const(3)
CONFIRMED = const(4)
ILLEGAL = const(5)
SETTLED = const(6)
SERIAL_COUNTER = const(7)
FORGOTTEN = const(8)

STOP_POWER_LOSS = const(0x83)  # YKC stop reason "pile lost power"

# States (what status() returns)
S_OPEN = "open"
S_PENDING = "pending"
S_CONFIRMED = "confirmed"
S_ILLEGAL = "illegal"
S_SETTLED = "settled"

# A serial's state; in RAM an open session is one small int,
# offset << 12 | length << 3 | state; a bill is an entry of the index file.
_OPEN = const(1)
_PENDING = const(2)
_CONFIRMED = const(3)
_ILLEGAL = const(4)
_SETTLED = const(5)
_NAMES = (None, S_OPEN, S_PENDING, S_CONFIRMED, S_ILLEGAL, S_SETTLED)

_MAGIC = const(0xA5)
_HEAD = const(20)       # magic, kind, length, serial
_OVERHEAD = const(24)   # head + CRC-32
# Largest payload per kind; longer -> RecordTooLong, nothing written.
_MAX_HEADER = const(192)       # session header (card, VIN, tariff, limits)
_MAX_CHECKPOINT = const(128)   # meter reading + per-period energies so far
_MAX_BILL = const(320)         # 0x3B body (158 / 174) + room for a supplement
_MAX_PAYLOAD = const(320)      # the largest of the above: the parser's bound
_REC_MAX = const(344)          # _OVERHEAD + _MAX_PAYLOAD
# Default capacity of the journal file in bytes. Compaction needs room for
# a second copy while it runs (the filesystem must hold 2x this).
_JOURNAL_BYTES = const(65536)
# What one session may still append, held back from the start until its bill
# is sealed: header, two checkpoints (the last kept one and the next), the
# bill, and two status records for the bill.
_SESSION_RESERVE = const(912)  # 216 + 2 * 152 + 344 + 2 * 24
# Working room kept free at a start, so compaction is not run per record.
_SLACK_BYTES = const(1024)
# Counter jump after corruption was found (a lost counter record must not
# let a counter value be handed out twice).
_COUNTER_SKIP = const(64)
# Cap on the quarantine file that keeps damaged bytes for forensics.
_BAD_BYTES = const(4096)
# Serials compaction dropped (settled, or confirmed under pressure) that the
# journal still remembers, so that a repeated start for one of them is not a
# second bill: the last _RING_KEYS keys, _RING_PER_REC per FORGOTTEN record
# (at most 2 * 24 + 40 * 16 = 688 bytes on flash, 640 in RAM). Older ones
# are summed up by the floor: the newest-stamped serial forgotten, below
# which (by its YYMMDDhhmmss) no unknown serial is opened.
_RING_KEYS = const(40)
_RING_PER_REC = const(20)

JOURNAL_BYTES = _JOURNAL_BYTES
MAX_HEADER = _MAX_HEADER
MAX_CHECKPOINT = _MAX_CHECKPOINT
MAX_BILL = _MAX_BILL
MAX_PAYLOAD = _MAX_PAYLOAD
OVERHEAD = _OVERHEAD
SESSION_RESERVE = _SESSION_RESERVE
SLACK_BYTES = _SLACK_BYTES
COUNTER_SKIP = _COUNTER_SKIP
RING_KEYS = _RING_KEYS
INDEX_ENTRY = INDEX_ENTRY_BYTES
# reserve + slack + two counter records + the floor (a FORGOTTEN record)
MIN_LIMIT = _SESSION_RESERVE + _SLACK_BYTES + 2 * (_OVERHEAD + 4) + _OVERHEAD

_NOKEY = bytes(16)
_COUNTER_REC = _OVERHEAD + 4
# The largest status record: ILLEGAL carrying the platform's 0xE4 result.
_MARK = const(25)


class JournalError(Exception):
    pass


class JournalFull(JournalError):
    """No room for the record even after compaction (or a start refused)."""


class SerialTooOld(JournalError):
    """A start whose trade serial the journal does not know and whose
    YYMMDDhhmmss is not after the floor (the newest stamp among the serials
    it has forgotten): it might repeat a bill already settled and compacted
    away. Nothing was written."""


class RecordTooLong(JournalError):
    """Payload longer than its kind's cap (MAX_HEADER, MAX_CHECKPOINT,
    MAX_BILL); nothing was written."""


def pack_serial(serial):
    """32-digit str -> 16 packed BCD bytes (ValueError otherwise)."""
    if not isinstance(serial, str) or len(serial) != 32:
        raise ValueError("trade serial must be 32 digits")
    for c in serial:
        if c < "0" or c > "9":
            raise ValueError("trade serial must be 32 digits")
    return binascii.unhexlify(serial)


def unpack_serial(key):
    return binascii.hexlify(key).decode()


def make_serial(pile, gun, stamp, counter):
    """Trade serial: pile BCD7 + gun BCD1 + YYMMDDhhmmss BCD6 + counter BCD2."""
    c = "%04d" % (counter % 10000)
    s = "%014d" % int(pile) + "%02d" % int(gun) + "%012d" % int(stamp) + c
    pack_serial(s)
    return s


def _rec(n):
    return _OVERHEAD + n


_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _second_after(stamp):
    """YYMMDDhhmmss + 1 s, with the calendar's carries (20YY)."""
    t = "%012d" % stamp
    y, mo, d = int(t[0:2]), int(t[2:4]), int(t[4:6])
    h, mi, se = int(t[6:8]), int(t[8:10]), int(t[10:12]) + 1
    if se > 59:
        se, mi = 0, mi + 1
    if mi > 59:
        mi, h = 0, h + 1
    if h > 23:
        h, d = 0, d + 1
    dim = _DAYS[mo - 1] if 1 <= mo <= 12 else 31
    if mo == 2 and y % 4:
        dim = 28
    if d > dim:
        d, mo = 1, mo + 1
    if mo > 12:
        mo, y = 1, (y + 1) % 100
    return ((((y * 100 + mo) * 100 + d) * 100 + h) * 100 + mi) * 100 + se


def _ring_bytes(keys, floor):
    """Bytes of the FORGOTTEN records holding `keys` keys (and the floor)."""
    if keys == 0:
        return _OVERHEAD if floor else 0
    return (keys + _RING_PER_REC - 1) // _RING_PER_REC * _OVERHEAD + 16 * keys


def _pack(off, n, st):
    return (off << 12) | (n << 3) | st


def _off(v):
    return v >> 12


def _len(v):
    return (v >> 3) & 0x1FF


def _fits(payload, cap, what):
    if len(payload) > cap:
        raise RecordTooLong("%s of %d bytes > %d" % (what, len(payload), cap))



class Report:
    """What recovery found. pending / confirmed / illegal are read from the
    journal's index on flash when asked (its state then), so a boot with
    10,000 pending bills builds no list of them."""
    __slots__ = ("_j", "_n", "settled", "open_sessions",
                 "torn_tail", "torn_offset", "corrupt", "records", "ignored",
                 "unknown", "counter", "temp", "healed", "bytes_used", "remembered",
                 "floor")

    def __init__(self):
        self._j = None
        self._n = (0, 0, 0)
        self.settled = 0
        self.open_sessions = []
        self.torn_tail = 0
        self.torn_offset = -1
        self.corrupt = []
        self.records = 0
        self.ignored = 0
        self.unknown = 0
        self.counter = 0
        self.temp = None
        self.healed = False
        self.bytes_used = 0
        self.remembered = 0
        self.floor = None

    def _get(self, st):
        return self._j._list(st) if self._j is not None else []

    @property
    def pending(self):
        return self._get(S_PENDING)

    @property
    def confirmed(self):
        return self._get(S_CONFIRMED)

    @property
    def illegal(self):
        return self._get(S_ILLEGAL)

    @property
    def damaged(self):
        return bool(self.torn_tail or self.corrupt)

    def __repr__(self):
        return ("Report(pending=%d confirmed=%d illegal=%d settled=%d open=%d "
                "torn_tail=%d corrupt=%r records=%d counter=%d temp=%r)" % (
                    self._n[0], self._n[1], self._n[2],
                    self.settled, len(self.open_sessions), self.torn_tail,
                    self.corrupt, self.records, self.counter, self.temp))


class Journal(BillIndex, SideCheckpoints):
    def __init__(self, path, fs=None, limit_bytes=_JOURNAL_BYTES, on_event=None):
        if limit_bytes < MIN_LIMIT:
            raise ValueError("limit_bytes below %d" % MIN_LIMIT)
        self.path = path
        self.tmp = path + ".tmp"
        self.bad = path + ".bad"
        self.ipath = path + ".idx"
        self.inew = path + ".idn"
        self.fs = fs if fs is not None else RealFS()
        self.limit = limit_bytes
        self.on_event = on_event
        self._buf = bytearray(_REC_MAX)
        self._mv = memoryview(self._buf)
        self._scan = bytearray(128)
        self._index_init(limit_bytes)
        self._gen = 0
        self.report = None
        self.refusal = None
        self.written = 0       # bytes this object wrote (appends + compaction)
        self.compactions = 0
        self._ready = False
        self._clear()

    def _clear(self):
        # In RAM, only what does not grow with the bills kept: the open
        # sessions (packed serial -> _pack(off, n, _OPEN) of the header; _ck:
        # -> _pack(off, n, 0) of the last checkpoint; _opens: start order),
        # counts and bytes per state, the key filter. Every bill is one
        # 24-byte entry of the index file <path>.idx, in seal order (=
        # journal order): key, offset, length, state, 0xE4 result.
        self._oe = {}
        self._ck = {}
        self._sck, self._side, self._sst = {}, {}, {}     # SideCheckpoints
        self._opens = []
        self._index_clear()
        self._size = 0
        self._counter = 0
        self._damage = []      # corrupt ranges still in the file
        self._heal = False
        self._ring = bytearray()   # forgotten keys still remembered, oldest first
        self._floorkey = _NOKEY    # newest-stamped key forgotten for good

    # ---- events -----------------------------------------------------------
    def _event(self, name, detail):
        if self.on_event is not None:
            self.on_event(name, detail)

    # ---- low-level record I/O ---------------------------------------------
    def _build(self, kind, key, payload):
        n = len(payload)
        b = self._buf
        struct.pack_into("<BBH", b, 0, _MAGIC, kind, n)
        b[4:_HEAD] = key
        if n:
            b[_HEAD:_HEAD + n] = payload
        crc = binascii.crc32(self._mv[0:_HEAD + n]) & 0xFFFFFFFF
        struct.pack_into("<I", b, _HEAD + n, crc)
        return _HEAD + n + 4

    def _write_all(self, f, size):
        _put(f, self._mv[0:size])
        self.written += size
    def _read_rec(self, f, off, size):
        """Record at off into _buf if it is complete and valid: its payload
        length, else -1."""
        avail = size - off
        if avail < _OVERHEAD:
            return -1
        want = avail if avail < _REC_MAX else _REC_MAX
        f.seek(off)
        mv = self._mv
        got = 0
        while got < want:
            k = f.readinto(mv[got:want])
            if not k:
                break
            got += k
        b = self._buf
        if got < _OVERHEAD or b[0] != _MAGIC or b[1] == 0 or b[1] == 0xFF:
            return -1
        n = b[2] | (b[3] << 8)
        if n > _MAX_PAYLOAD or _OVERHEAD + n > got:
            return -1
        crc = binascii.crc32(mv[0:_HEAD + n]) & 0xFFFFFFFF
        if crc != struct.unpack_from("<I", b, _HEAD + n)[0]:
            return -1
        return n

    def _resync(self, f, pos, size):
        """First offset >= pos holding a valid record, or -1."""
        scan = self._scan
        while pos < size:
            f.seek(pos)
            k = f.readinto(scan)
            if not k:
                return -1
            i = 0
            while True:
                i = scan.find(b"\xa5", i)
                if i < 0 or i >= k:
                    break
                if self._read_rec(f, pos + i, size) >= 0:
                    return pos + i
                i += 1
            pos += k
        return -1

    def _file_size(self, path):
        try:
            return self.fs.stat(path)[6]
        except OSError:
            return -1

    # ---- state transitions (shared by recovery and the live API) -----------
    def _apply(self, kind, key, off, n):
        """Apply the record in _buf at off; False if it changes nothing,
        None for a kind this firmware does not know."""
        oe = self._oe
        if kind == SESSION_OPEN:
            if key in oe or self._find(key) is not None:
                return False
            oe[key] = _pack(off, n, _OPEN)
            self._opens.append(key)
        elif kind == CHECKPOINT:
            if key not in oe:
                return False
            self._ck[key] = _pack(off, n, 0)
        elif kind == BILL_SEALED:
            # A bill without its session record is normal after compaction;
            # a second bill for a serial is never accepted.
            if key in oe:
                self._opens.remove(key)
                del oe[key]
                self._ck.pop(key, None)
                self._sck.pop(key, None)
                self._iadd(key, off, n, _PENDING)
            elif self._ix is not None:
                if not self._maybe(key):
                    self._iadd(key, off, n, _PENDING)
                else:
                    h = self._hit
                    if h is not None and h[0] == key:
                        return False
                    self._sus.append(self._nb)
                    self._iadd(key, off, n, _PENDING, False)
                    if len(self._sus) >= SUSPECTS:
                        self._verify()
            elif self._find(key) is not None:
                return False
            else:
                self._iadd(key, off, n, _PENDING)
        elif kind == CONFIRMED or kind == ILLEGAL or kind == SETTLED:
            if key in oe:
                return False
            r = self._find(key)
            if r is None:
                return False
            st = r[4]
            if kind == CONFIRMED:
                if st != _PENDING:
                    return False
                self._setst(r, _CONFIRMED, 0)
            elif kind == ILLEGAL:
                if st != _PENDING and st != _CONFIRMED:
                    return False
                self._setst(r, _ILLEGAL, self._buf[_HEAD] if n else 0)
            else:
                if st < _PENDING or st > _ILLEGAL:
                    return False
                self._setst(r, _SETTLED, 0)
        elif kind == SERIAL_COUNTER:
            if n != 4:
                return False
            c = struct.unpack_from("<I", self._buf, _HEAD)[0]
            if c <= self._counter:
                return False
            self._counter = c
        elif kind == FORGOTTEN:
            if n % 16:
                return False
            if key != _NOKEY:
                self._lower(key)
            ring = self._ring
            ring.extend(self._mv[_HEAD:_HEAD + n])
            while len(ring) > 16 * _RING_KEYS:
                self._lower(bytes(ring[0:16]))
                ring[0:16] = b""
        else:
            return None
        return True

    # ---- what compaction forgot ---------------------------------------------
    def _lower(self, key):
        """key leaves the ring: the floor rises to its stamp if later."""
        f = self._floorkey
        if f == _NOKEY or key[8:14] > f[8:14]:
            self._floorkey = key

    def _remembered(self, key):
        ring = self._ring
        i = ring.find(key)
        while i >= 0:
            if i % 16 == 0:
                return True
            i = ring.find(key, i + 1)
        return False

    def _below_floor(self, key):
        f = self._floorkey
        return f != _NOKEY and key[8:14] <= f[8:14]


    # ---- recovery -----------------------------------------------------------
    def recover(self):
        """Rebuild the state from flash; returns (and keeps) a Report."""
        self._clear()
        self._ready = True
        rep = Report()
        fs = self.fs
        if self._file_size(self.tmp) >= 0:
            # A compaction was cut. Its temp file is complete only once the
            # rename has started, and then the old file may already be gone.
            if self._file_size(self.path) >= 0:
                fs.remove(self.tmp)
                rep.temp = "removed"
            else:
                fs.rename(self.tmp, self.path)
                rep.temp = "adopted"
            fs.sync(None, self.path)
            self._event("temp", rep.temp)
        size = self._file_size(self.path)
        # The index is written again from the journal, through one handle
        # kept open (one commit at its close).
        ix = fs.open(self.ipath, "w+b")
        self._ix = ix
        try:
            if size > 0:
                f = fs.open(self.path, "rb")
                try:
                    self._parse(f, size, rep)
                finally:
                    f.close()
            self._verify()
            rep.ignored += self._dups
        except:  # noqa: E722
            self._ready = False
            raise
        finally:
            self._ix = None
            ix.close()
        self._size = size if size > 0 else 0
        self._load_side()
        if rep.corrupt:
            self._damage = rep.corrupt[:]
            self._counter += _COUNTER_SKIP
            self._event("corrupt", rep.corrupt)
        if rep.torn_tail:
            self._event("torn_tail", rep.torn_tail)
            # Cut the torn bytes off so new records follow a clean tail.
            try:
                self.compact()
                rep.healed = True
            except OSError as ex:
                self._event("heal_failed", ex)
        self._fill(rep)
        self.report = rep
        return rep
    def _parse(self, f, size, rep):
        off = 0
        buf = self._buf
        while off < size:
            n = self._read_rec(f, off, size)
            if n >= 0:
                key = bytes(self._mv[4:_HEAD])
                r = self._apply(buf[1], key, off, n)
                rep.records += 1
                if r is None:
                    rep.unknown += 1
                elif not r:
                    rep.ignored += 1
                off += _OVERHEAD + n
                continue
            nxt = self._resync(f, off + 1, size)
            if nxt < 0:
                rep.torn_tail = size - off
                rep.torn_offset = off
                break
            rep.corrupt.append((off, nxt))
            off = nxt

    def _fill(self, rep):
        rep.counter = self._counter
        rep.bytes_used = self._size
        rep.remembered = len(self._ring) // 16
        f = self._floorkey
        rep.floor = unpack_serial(f) if f != _NOKEY else None
        c = self._cnt
        rep._j = self
        rep._n = (c[_PENDING], c[_CONFIRMED], c[_ILLEGAL])
        rep.settled = c[_SETTLED]
        rep.open_sessions = self.open_sessions()

    def _ensure(self):
        if not self._ready:
            self.recover()

    # ---- appending ----------------------------------------------------------
    def _append(self, kind, key, payload):
        n = len(payload)
        size = _OVERHEAD + n
        if self._heal:
            self.compact()
        if self._size + size > self.limit:
            self.compact(size, key)
            if self._size + size > self.limit:
                raise JournalFull("no room for a %d-byte record (%d of %d bytes used)"
                                  % (size, self._size, self.limit))
        self._build(kind, key, payload)
        off = self._size
        # RAM and the index (a cache) first; the commit below is what counts.
        # If it fails, the next call recovers from flash.
        self._apply(kind, key, off, n)
        f = None
        try:
            f = self.fs.open(self.path, "ab")
            self._write_all(f, size)
            f.flush()
            self.fs.sync(f)
            if off == 0:
                self.fs.sync(None, self.path)  # a new file: its folder entry too
        except:  # noqa: E722
            self._ready = False
            raise
        finally:
            if f is not None:
                f.close()
        self._size = off + size
        return off

    def _state(self, key):
        if key in self._oe:
            return S_OPEN
        r = self._find(key)
        return _NAMES[r[4]] if r is not None else None

    def _key(self, serial):
        # Every call by serial: the serial packed (ValueError if it is not 32
        # digits), then the journal recovered if it was not yet.
        key = pack_serial(serial)
        self._ensure()
        return key

    # ---- public API ---------------------------------------------------------
    def open_session(self, serial, header):
        key = self._key(serial)
        _fits(header, _MAX_HEADER, "session header")
        if self._state(key) is not None or self._remembered(key):
            return "exists"
        if self._below_floor(key):
            raise SerialTooOld("trade serial %s: stamp not after %s, the newest serial"
                               " the journal forgot" % (serial, unpack_serial(self._floorkey)))
        if not self.can_start():
            raise JournalFull(self.refusal)
        self._append(SESSION_OPEN, key, header)
        return "opened"

    def checkpoint(self, serial, payload):
        key = self._key(serial)
        _fits(payload, _MAX_CHECKPOINT, "checkpoint")
        if key not in self._oe:
            return "no_session"
        if not self._side_ck(key, payload):
            self._append(CHECKPOINT, key, payload)
        return "ok"

    def seal(self, serial, bill_body):
        key = self._key(serial)
        _fits(bill_body, _MAX_BILL, "bill")
        st = self._state(key)
        if st is None:
            return "no_session"
        if st != S_OPEN:
            return "already_sealed"
        self._append(BILL_SEALED, key, bill_body)
        return "sealed"

    def _mark(self, serial, kind, target, allowed, payload=b""):
        key = self._key(serial)
        st = self._state(key)
        if st is None or st == S_OPEN:
            return "unknown"
        if st == target:
            return "duplicate"
        if st not in allowed:
            return "refused"
        if payload and st == S_CONFIRMED:
            # A confirmed bill may be dropped under pressure; kept as refused
            # it never is, so it must fit beside what no compaction can free.
            if self._floor() + _rec(self._find(key)[3]) + 2 * _MARK > self.limit:
                self._event("full", "no room to keep refused bill %s" % serial)
                return "full"
        self._append(kind, key, payload)
        return "ok"

    def confirm(self, serial):
        return self._mark(serial, CONFIRMED, S_CONFIRMED, (S_PENDING,))

    def illegal(self, serial):
        r = self._mark(serial, ILLEGAL, S_ILLEGAL, (S_PENDING, S_CONFIRMED))
        if r == "ok":
            self._event("illegal", serial)
        return r

    def settle(self, serial):
        return self._mark(serial, SETTLED, S_SETTLED, (S_PENDING, S_CONFIRMED, S_ILLEGAL))

    def refuse(self, serial, result):
        """The platform refused the bill (0xE4 result 1..255, docs/platform.md):
        kept as illegal with that result, never resent, never compacted away,
        until settle() (a technician's release). "full": nothing written."""
        if result < 1 or result > 255:
            raise ValueError("refusal result must be 1..255")
        return self._mark(serial, ILLEGAL, S_ILLEGAL, (S_PENDING, S_CONFIRMED),
                          bytes((result,)))

    def platform_result(self, serial):
        """The 0xE4 result a refused bill was kept with; None for any other
        bill (a 0x40 illegal one included)."""
        key = self._key(serial)
        r = self._find(key) if key not in self._oe else None
        if r is None or r[4] != _ILLEGAL or not r[5]:
            return None
        return r[5]

    def status(self, serial):
        key = self._key(serial)
        return self._state(key)

    def each(self, state):
        """Serials of the bills in `state` ("pending", "confirmed",
        "illegal", "settled"), lazily, in journal order, read from the
        index on flash (a compaction meanwhile ends the walk)."""
        self._ensure()
        st = _NAMES.index(state)
        for r in self._entries():
            if r[4] == st:
                yield unpack_serial(r[0])

    def count(self, state):
        """How many bills are in `state`, without reading them."""
        self._ensure()
        return self._cnt[_NAMES.index(state)]

    def first(self, state):
        """The oldest bill in `state`, or None."""
        for s in self.each(state):
            return s
        return None

    def _list(self, state):
        return [s for s in self.each(state)]

    def pending(self):
        """Sealed, unconfirmed bills in journal (seal) order."""
        return self._list(S_PENDING)

    def confirmed(self):
        """Bills the host confirmed and the platform has not settled."""
        return self._list(S_CONFIRMED)

    def illegal_bills(self):
        return self._list(S_ILLEGAL)

    def _payload(self, off, n):
        size = self._size
        f = self.fs.open(self.path, "rb")
        try:
            got = self._read_rec(f, off, size)
        finally:
            f.close()
        if got != n:
            return None
        return bytes(self._mv[_HEAD:_HEAD + n])

    def bill(self, serial):
        """The sealed bill body, byte for byte (None: no bill or damaged)."""
        key = self._key(serial)
        if key in self._oe:
            return None
        r = self._find(key)
        if r is None:
            return None
        body = self._payload(r[2], r[3])
        if body is None:
            self._event("corrupt", [(r[2], r[2] + _rec(r[3]))])
        return body

    def open_sessions(self):
        """[(serial, header, last checkpoint or None)] in start order."""
        self._ensure()
        out = []
        for k in self._opens:
            v = self._oe[k]
            out.append((unpack_serial(k), self._payload(_off(v), _len(v)), self._last_ck(k)))
        return out

    def close_interrupted(self, make_bill):
        """Seal every open session as a bill: make_bill(serial, header,
        last_checkpoint) returns the body (stop reason STOP_POWER_LOSS at the
        last checkpoint). Returns the serials sealed, in start order."""
        done = []
        for serial, hdr, ck in self.open_sessions():
            if self.seal(serial, make_bill(serial, hdr, ck)) == "sealed":
                done.append(serial)
        return done

    def next_serial_counter(self):
        """A counter value never handed out before, persisted first."""
        self._ensure()
        v = self._counter + 1
        payload = struct.pack("<I", v)
        self._append(SERIAL_COUNTER, _NOKEY, payload)
        return v

    def issue_serial(self, pile, gun, stamp):
        """A pile-issued trade serial (stamp: YYMMDDhhmmss as an int) that
        no record carries, the journal does not remember, and open_session
        accepts: a stamp not after the floor (a clock set back) is replaced
        by the second after the floor, which no forgotten serial can carry."""
        self._ensure()
        for _ in range(10000):
            c = self.next_serial_counter()   # may compact: the floor may rise
            f = self._floorkey
            if f != _NOKEY:
                low = int(unpack_serial(f)[16:28])
                if int(stamp) <= low:
                    stamp = _second_after(low)
            s = make_serial(pile, gun, stamp, c)
            k = pack_serial(s)
            if self._state(k) is None and not self._remembered(k):
                return s
        raise JournalError("no free counter value for this stamp")

    def bytes_used(self):
        self._ensure()
        return self._size

    def _floor(self):
        """Bytes that no compaction can free, plus what the live entries may
        still need to append."""
        f = 2 * _COUNTER_REC + _OVERHEAD  # counters, and the floor record
        for k in self._opens:
            f += (_rec(_len(self._oe[k])) + 2 * _rec(_MAX_CHECKPOINT) + _rec(_MAX_BILL)
                  + 2 * _MARK)
        c = self._cnt
        return f + self._lb[_PENDING] + self._lb[_ILLEGAL] + (c[_PENDING] + c[_ILLEGAL]) * 2 * _MARK

    def can_start(self):
        """True if one more session's records are sure to fit. False: the
        journal is full of unconfirmed bills; self.refusal says why and a
        "full" event is raised. Bills are never dropped to make room."""
        self._ensure()
        floor = self._floor()
        if floor + _SESSION_RESERVE + _SLACK_BYTES <= self.limit:
            self.refusal = None
            return True
        held = self._cnt[_PENDING] + self._cnt[_ILLEGAL]
        self.refusal = ("journal full: %d unconfirmed bills and %d open sessions need"
                        " %d of %d bytes" % (held, len(self._opens), floor, self.limit))
        self._event("full", self.refusal)
        return False
    # ---- compaction ---------------------------------------------------------
    def _quarantine(self, f, ranges):
        """Append damaged bytes to <path>.bad (capped) before they go."""
        have = self._file_size(self.bad)
        if have < 0:
            have = 0
        q = None
        try:
            for a, b in ranges:
                while a < b and have < _BAD_BYTES:
                    k = b - a
                    if k > _REC_MAX:
                        k = _REC_MAX
                    if k > _BAD_BYTES - have:
                        k = _BAD_BYTES - have
                    f.seek(a)
                    got = f.readinto(self._mv[0:k])
                    if not got:
                        break
                    if q is None:
                        q = self.fs.open(self.bad, "ab")
                    self._write_all(q, got)
                    have += got
                    a += got
            if q is not None:
                q.flush()
                self.fs.sync(q)
        finally:
            if q is not None:
                q.close()

    def compact(self, need=0, protect=None):
        """Rewrite the live records into <path>.tmp, flush it and rename it
        over the journal. Drops settled bills, then (only if need bytes would
        not fit otherwise) host-confirmed bills oldest first; never pending or
        illegal ones. An open session keeps its header and last checkpoint.
        The index is written beside it (<path>.idn, renamed over <path>.idx).
        Returns {"before", "after", "settled", "confirmed", "lost"}."""
        self._ensure()
        cnt = self._cnt
        lb = self._lb
        oe = self._oe
        size = _COUNTER_REC if self._counter else 0
        for k in self._opens:
            size += _rec(_len(oe[k]))
        for c in self._ck.values():
            size += _rec(_len(c))
        size += (lb[_PENDING] + lb[_CONFIRMED] + lb[_ILLEGAL]
                 + (cnt[_CONFIRMED] + cnt[_ILLEGAL] - self._ncode) * _OVERHEAD
                 + self._ncode * _MARK)
        settled = cnt[_SETTLED]
        # The ring takes the settled serials; it gives up its oldest keys
        # (to the floor) before a host-confirmed bill is dropped.
        had = len(self._ring) // 16
        keys = had + settled
        floor = self._floorkey != _NOKEY or keys > _RING_KEYS
        if keys > _RING_KEYS:
            keys = _RING_KEYS
        room = self.limit - need - _SLACK_BYTES
        while keys and size + _ring_bytes(keys, floor) > room:
            keys -= 1
            floor = True
        # Host-confirmed bills to drop: the first `drop` of them (oldest).
        drop = 0
        if size + _ring_bytes(keys, floor) > room:
            for r in self._entries():
                if size + _ring_bytes(keys, floor) <= room:
                    break
                if r[4] == _CONFIRMED and r[0] != protect:
                    drop += 1
                    floor = True   # a dropped confirmed bill goes to the floor
                    size -= _rec(r[3]) + _OVERHEAD
        dropped = drop
        ring = bytearray(self._ring)
        floorkey = self._floorkey
        before = self._size
        fs = self.fs
        nck = {}
        noe = {}
        ncnt = [0, 0, 0, 0, 0, 0]
        nlb = [0, 0, 0, 0, 0, 0]
        ncode = 0
        nb = 0
        lost = []
        ie = self._ie
        old = fs.open(self.path, "rb") if before > 0 else None
        try:
            if self._damage and old is not None:
                self._quarantine(old, self._damage)
            if self._file_size(self.tmp) >= 0:
                fs.remove(self.tmp)
            t = fs.open(self.tmp, "wb")
            x = None
            try:
                x = fs.open(self.inew, "wb")
                w = 0
                if self._counter:
                    w += self._copy_new(t, SERIAL_COUNTER, _NOKEY, struct.pack("<I", self._counter))
                opens = self._opens
                oi = 0
                bills = self._entries()
                r = None
                while True:
                    if r is None:
                        for r in bills:
                            break
                        else:
                            r = False
                    if oi < len(opens) and (not r or _off(oe[opens[oi]]) < r[2]):
                        k = opens[oi]
                        oi += 1
                        v = oe[k]
                        off, n0, st = _off(v), _len(v), _OPEN
                    elif r:
                        k, off, n0, st, code = r[0], r[2], r[3], r[4], r[5]
                        r = None
                        if st == _SETTLED or (st == _CONFIRMED and drop and k != protect):
                            if st == _CONFIRMED:
                                drop -= 1
                            ring.extend(k)
                            while len(ring) > 16 * keys:
                                f0 = bytes(ring[0:16])
                                if floorkey == _NOKEY or f0[8:14] > floorkey[8:14]:
                                    floorkey = f0
                                ring[0:16] = b""
                            continue
                    else:
                        break
                    n = self._read_rec(old, off, before)
                    if n != n0 or bytes(self._mv[4:_HEAD]) != k:
                        # Flash changed under us: keep the evidence, say so;
                        # its serial goes to the floor.
                        lost.append(unpack_serial(k))
                        if floorkey == _NOKEY or k[8:14] > floorkey[8:14]:
                            floorkey = k
                        self._quarantine(old, [(off, off + _rec(n0))])
                        continue
                    self._write_all(t, _rec(n))
                    if st == _OPEN:
                        noe[k] = _pack(w, n, _OPEN)
                        w += _rec(n)
                        c = self._ck.get(k)
                        if c is not None and self._read_rec(old, _off(c), before) == _len(c):
                            self._write_all(t, _rec(_len(c)))
                            nck[k] = _pack(w, _len(c), 0)
                            w += _rec(_len(c))
                        continue
                    ie[0:16] = k
                    struct.pack_into("<IHBB", ie, 16, w, n, st, code)
                    _put(x, self._iemv)
                    nb += 1
                    ncnt[st] += 1
                    nlb[st] += _rec(n)
                    w += _rec(n)
                    if st == _CONFIRMED:
                        w += self._copy_new(t, CONFIRMED, k, b"")
                    elif st == _ILLEGAL:
                        if code:
                            ncode += 1
                        w += self._copy_new(t, ILLEGAL, k, bytes((code,)) if code else b"")
                # What this file forgets, last: FORGOTTEN records, the first
                # carrying the floor key.
                fk = floorkey
                i = 0
                while i < len(ring) or (i == 0 and fk != _NOKEY):
                    j = i + 16 * _RING_PER_REC
                    w += self._copy_new(t, FORGOTTEN, fk, ring[i:j])
                    fk = _NOKEY
                    i = j
                t.flush()
                fs.sync(t)
            finally:
                close_all(t, x)
        finally:
            if old is not None:
                old.close()
        # The only step that changes what the journal says: atomic.
        fs.rename(self.tmp, self.path)
        try:
            fs.sync(None, self.path)
            fs.rename(self.inew, self.ipath)
        except:  # noqa: E722 - the next call rebuilds the index
            self._ready = False
            raise
        self._oe = noe
        self._ck = nck
        self._opens = [k for k in opens if k in noe]
        self._nb = nb
        self._cnt = ncnt
        self._lb = nlb
        self._ncode = ncode
        self._hit = None
        self._ibi = -1
        self._gen += 1
        self._size = w
        self._ring = ring
        self._floorkey = floorkey
        self._damage = []
        self._heal = False
        self.compactions += 1
        self._rebloom()
        if lost:
            self._event("lost", lost)
        return {"before": before, "after": w, "settled": settled,
                "confirmed": dropped, "lost": lost}

    def _copy_new(self, f, kind, key, payload):
        size = self._build(kind, key, payload)
        self._write_all(f, size)
        return size
