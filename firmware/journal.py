"""Crash-safe, append-only bill journal on flash (MicroPython + CPython).

The journal is the pile's only store of sessions and bills, and the retry
queue (firmware/outbox.py is a view over it). Every change is one appended
record that carries its own length and CRC-32, so a power cut after any byte
leaves at worst one torn record at the tail, which recovery ignores and
reports. Files are replaced only by writing a new file and renaming it.
Format, write ordering, limits and figures: docs/journal.md.

Record (little-endian; 24 bytes of overhead):

    0   u8     magic 0xA5
    1   u8     kind (below)
    2   u16    payload length n (<= MAX_PAYLOAD, the largest per-kind cap)
    4   16 B   trade serial, packed BCD (zeros when the kind has none)
    20  n B    payload
    20+n u32   CRC-32 (binascii.crc32) of bytes 0 .. 20+n

Kinds and payloads (payloads are opaque unless stated):

    SESSION_OPEN   1  session header bytes (from charge control)
    CHECKPOINT     2  checkpoint bytes; only the last one per serial matters
    BILL_SEALED    3  the bill frame body (0x3B body, 158 or 174 bytes, plus
                      any supplement) - the bill, byte for byte
    CONFIRMED      4  empty: the host got it (0x40, result 0)
    ILLEGAL        5  empty: 0x40 result 1; or u8: the platform refused the
                      bill (0xE4 result, e.g. 1 MAC, 2 unsigned). Kept,
                      listed, never resent, never compacted away
    SETTLED        6  empty: the platform settled it (our extension frame)
    SERIAL_COUNTER 7  u32: the last pile-issued serial counter handed out
    FORGOTTEN      8  k x 16 B: serials compaction dropped, still remembered
                      (the last RING_KEYS = 40); its serial field: the floor
                      (newest-stamped serial forgotten for good) or zeros

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

Raises RecordTooLong (header > MAX_HEADER, checkpoint > MAX_CHECKPOINT, bill
> MAX_BILL; nothing written), JournalFull, SerialTooOld, ValueError
(malformed serial).
"""
import binascii
import struct

from firmware.fsio import RealFS

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

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

# In RAM a serial's entry is one small int: offset << 12 | length << 3 | state
# (no object per bill: a 1,000-bill journal is a dict of ints).
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
    """What recovery found. pending / confirmed / illegal are computed on
    access from the packed keys the journal already holds, so a boot with
    1,000 pending bills does not build 1,000 strings unless asked to."""
    __slots__ = ("_pending", "_confirmed", "_illegal", "settled", "open_sessions",
                 "torn_tail", "torn_offset", "corrupt", "records", "ignored",
                 "unknown", "counter", "temp", "healed", "bytes_used", "remembered",
                 "floor")

    def __init__(self):
        self._pending = []
        self._confirmed = []
        self._illegal = []
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

    @property
    def pending(self):
        return [unpack_serial(k) for k in self._pending]

    @property
    def confirmed(self):
        return [unpack_serial(k) for k in self._confirmed]

    @property
    def illegal(self):
        return [unpack_serial(k) for k in self._illegal]

    @property
    def damaged(self):
        return bool(self.torn_tail or self.corrupt)

    def __repr__(self):
        return ("Report(pending=%d confirmed=%d illegal=%d settled=%d open=%d "
                "torn_tail=%d corrupt=%r records=%d counter=%d temp=%r)" % (
                    len(self._pending), len(self._confirmed), len(self._illegal),
                    self.settled, len(self.open_sessions), self.torn_tail,
                    self.corrupt, self.records, self.counter, self.temp))


class Journal:
    def __init__(self, path, fs=None, limit_bytes=_JOURNAL_BYTES, on_event=None):
        if limit_bytes < MIN_LIMIT:
            raise ValueError("limit_bytes below %d" % MIN_LIMIT)
        self.path = path
        self.tmp = path + ".tmp"
        self.bad = path + ".bad"
        self.fs = fs if fs is not None else RealFS()
        self.limit = limit_bytes
        self.on_event = on_event
        self._buf = bytearray(_REC_MAX)
        self._mv = memoryview(self._buf)
        self._scan = bytearray(128)
        self.report = None
        self.refusal = None
        self.written = 0       # bytes this object wrote (appends + compaction)
        self.compactions = 0
        self._ready = False
        self._clear()

    def _clear(self):
        # packed serial -> _pack(off, n, state) of its primary record (the
        # header while open, the bill once sealed); _ck: open session ->
        # _pack(off, n, 0) of its last checkpoint. _opens / _bills: keys in
        # start order / seal order (= journal order; never sorted: offsets
        # grow as records are appended, and compaction keeps the order).
        self._e = {}
        self._ck = {}
        self._opens = []
        self._bills = []
        self._size = 0
        self._counter = 0
        self._damage = []      # corrupt ranges still in the file
        self._heal = False
        self._ring = bytearray()   # forgotten keys still remembered, oldest first
        self._floorkey = _NOKEY    # newest-stamped key forgotten for good
        self._code = {}            # refused bill's key -> the platform's 0xE4 result

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
        mv = self._mv
        done = 0
        while done < size:
            w = f.write(mv[done:size])
            if w is None:
                w = size - done
            if w <= 0:
                raise OSError(28)  # ENOSPC
            done += w
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
        e = self._e
        v = e.get(key)
        st = v & 7 if v is not None else 0
        if kind == SESSION_OPEN:
            if v is not None:
                return False
            e[key] = _pack(off, n, _OPEN)
            self._opens.append(key)
        elif kind == CHECKPOINT:
            if st != _OPEN:
                return False
            self._ck[key] = _pack(off, n, 0)
        elif kind == BILL_SEALED:
            # A bill without its session record is normal after compaction;
            # a second bill for a serial is never accepted.
            if st == _OPEN:
                # keep the key object the dict already holds (one per bill)
                key = self._opens.pop(self._opens.index(key))
                self._ck.pop(key, None)
            elif v is not None:
                return False
            e[key] = _pack(off, n, _PENDING)
            self._bills.append(key)
        elif kind == CONFIRMED:
            if st != _PENDING:
                return False
            e[key] = v - st + _CONFIRMED
        elif kind == ILLEGAL:
            if st != _PENDING and st != _CONFIRMED:
                return False
            e[key] = v - st + _ILLEGAL
            if n:
                self._code[key] = self._buf[_HEAD]
        elif kind == SETTLED:
            if st < _PENDING or st > _ILLEGAL:
                return False
            e[key] = v - st + _SETTLED
            self._code.pop(key, None)
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
        if size > 0:
            f = fs.open(self.path, "rb")
            try:
                self._parse(f, size, rep)
            finally:
                f.close()
        self._size = size if size > 0 else 0
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
        e = self._e
        for k in self._bills:
            st = e[k] & 7
            if st == _PENDING:
                rep._pending.append(k)
            elif st == _CONFIRMED:
                rep._confirmed.append(k)
            elif st == _ILLEGAL:
                rep._illegal.append(k)
            else:
                rep.settled += 1
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
        f = self.fs.open(self.path, "ab")
        try:
            self._write_all(f, size)
            f.flush()
            self.fs.sync(f)
            if off == 0:
                self.fs.sync(None, self.path)  # a new file: its folder entry too
        except OSError:
            # Part of the record may be on flash: rewrite before the next one.
            self._heal = True
            s = self._file_size(self.path)
            self._size = s if s > 0 else 0
            raise
        finally:
            f.close()
        self._size = off + size
        self._apply(kind, key, off, n)
        return off

    def _state(self, key):
        v = self._e.get(key)
        return _NAMES[v & 7] if v is not None else None

    # ---- public API ---------------------------------------------------------
    def open_session(self, serial, header):
        key = pack_serial(serial)
        self._ensure()
        _fits(header, _MAX_HEADER, "session header")
        if key in self._e or self._remembered(key):
            return "exists"
        if self._below_floor(key):
            raise SerialTooOld("trade serial %s: stamp not after %s, the newest serial"
                               " the journal forgot" % (serial, unpack_serial(self._floorkey)))
        if not self.can_start():
            raise JournalFull(self.refusal)
        self._append(SESSION_OPEN, key, header)
        return "opened"

    def checkpoint(self, serial, payload):
        key = pack_serial(serial)
        self._ensure()
        _fits(payload, _MAX_CHECKPOINT, "checkpoint")
        if self._state(key) != S_OPEN:
            return "no_session"
        self._append(CHECKPOINT, key, payload)
        return "ok"

    def seal(self, serial, bill_body):
        key = pack_serial(serial)
        self._ensure()
        _fits(bill_body, _MAX_BILL, "bill")
        st = self._state(key)
        if st is None:
            return "no_session"
        if st != S_OPEN:
            return "already_sealed"
        self._append(BILL_SEALED, key, bill_body)
        return "sealed"

    def _mark(self, serial, kind, target, allowed, payload=b""):
        key = pack_serial(serial)
        self._ensure()
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
            if self._floor() + _rec(_len(self._e[key])) + 2 * _MARK > self.limit:
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
        key = pack_serial(serial)
        self._ensure()
        return self._code.get(key)

    def status(self, serial):
        key = pack_serial(serial)
        self._ensure()
        return self._state(key)

    def each(self, state):
        """Serials of the bills in `state` ("pending", "confirmed",
        "illegal", "settled"), lazily, in journal order."""
        self._ensure()
        st = _NAMES.index(state)
        e = self._e
        for k in self._bills:
            if e[k] & 7 == st:
                yield unpack_serial(k)

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
        key = pack_serial(serial)
        self._ensure()
        v = self._e.get(key)
        if v is None or v & 7 == _OPEN:
            return None
        body = self._payload(_off(v), _len(v))
        if body is None:
            self._event("corrupt", [(_off(v), _off(v) + _rec(_len(v)))])
        return body

    def open_sessions(self):
        """[(serial, header, last checkpoint or None)] in start order."""
        self._ensure()
        out = []
        for k in self._opens:
            v = self._e[k]
            c = self._ck.get(k)
            hdr = self._payload(_off(v), _len(v))
            ck = self._payload(_off(c), _len(c)) if c is not None else None
            out.append((unpack_serial(k), hdr, ck))
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
            if k not in self._e and not self._remembered(k):
                return s
        raise JournalError("no free counter value for this stamp")

    def bytes_used(self):
        self._ensure()
        return self._size

    def _floor(self):
        """Bytes that no compaction can free, plus what the live entries may
        still need to append."""
        f = 2 * _COUNTER_REC + _OVERHEAD  # counters, and the floor record
        for v in self._e.values():
            st = v & 7
            if st == _OPEN:
                f += (_rec(_len(v)) + 2 * _rec(_MAX_CHECKPOINT) + _rec(_MAX_BILL)
                      + 2 * _MARK)
            elif st == _PENDING or st == _ILLEGAL:
                f += _rec(_len(v)) + 2 * _MARK
        return f

    def can_start(self):
        """True if one more session's records are sure to fit. False: the
        journal is full of unconfirmed bills; self.refusal says why and a
        "full" event is raised. Bills are never dropped to make room."""
        self._ensure()
        floor = self._floor()
        if floor + _SESSION_RESERVE + _SLACK_BYTES <= self.limit:
            self.refusal = None
            return True
        held = 0
        for v in self._e.values():
            st = v & 7
            if st == _PENDING or st == _ILLEGAL:
                held += 1
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

    def _merged(self):
        """Live keys in file order: open sessions and bills merged by the
        offset of their primary record."""
        e = self._e
        a = self._opens
        b = self._bills
        i = j = 0
        while i < len(a) or j < len(b):
            if j >= len(b) or (i < len(a) and e[a[i]] < e[b[j]]):
                yield a[i]
                i += 1
            else:
                yield b[j]
                j += 1

    def compact(self, need=0, protect=None):
        """Rewrite the live records into <path>.tmp, flush it and rename it
        over the journal. Drops settled bills, then (only if need bytes would
        not fit otherwise) host-confirmed bills oldest first; never pending or
        illegal ones. An open session keeps its header and last checkpoint.
        Returns {"before", "after", "settled", "confirmed", "lost"}."""
        self._ensure()
        e = self._e
        cks = self._ck
        size = _COUNTER_REC if self._counter else 0
        settled = 0
        for k, v in e.items():
            st = v & 7
            if st == _SETTLED:
                settled += 1
                continue
            size += _rec(_len(v))
            if st == _CONFIRMED or st == _ILLEGAL:
                size += _MARK if st == _ILLEGAL and k in self._code else _OVERHEAD
        for c in cks.values():
            size += _rec(_len(c))
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
        drop = {}
        for k in self._bills:
            if size + _ring_bytes(keys, floor) <= room:
                break
            v = e[k]
            if v & 7 == _CONFIRMED and k != protect:
                drop[k] = 1
                floor = True   # a dropped confirmed bill goes to the floor
                size -= _rec(_len(v)) + _OVERHEAD
        # The new ring: the last `keys` of (old ring + forgotten, journal
        # order); what falls off raises the floor.
        ring = bytearray(self._ring)
        for k in self._bills:
            if e[k] & 7 == _SETTLED or k in drop:
                ring.extend(k)
        floorkey = self._floorkey
        cut = len(ring) - 16 * keys
        i = 0
        while i < cut:
            k = bytes(ring[i:i + 16])
            if floorkey == _NOKEY or k[8:14] > floorkey[8:14]:
                floorkey = k
            i += 16
        if cut > 0:
            ring = ring[cut:]
        before = self._size
        fs = self.fs
        new = {}
        nck = {}
        opens = []
        bills = []
        lost = []
        old = fs.open(self.path, "rb") if before > 0 else None
        try:
            if self._damage and old is not None:
                self._quarantine(old, self._damage)
            if self._file_size(self.tmp) >= 0:
                fs.remove(self.tmp)
            t = fs.open(self.tmp, "wb")
            try:
                w = 0
                if self._counter:
                    w += self._copy_new(t, SERIAL_COUNTER, _NOKEY, struct.pack("<I", self._counter))
                for k in self._merged():
                    v = e[k]
                    st = v & 7
                    if st == _SETTLED or k in drop:
                        continue
                    n = self._read_rec(old, _off(v), before)
                    if n != _len(v) or bytes(self._mv[4:_HEAD]) != k:
                        # Flash changed under us: keep the evidence, say so;
                        # its serial goes to the floor.
                        lost.append(unpack_serial(k))
                        if floorkey == _NOKEY or k[8:14] > floorkey[8:14]:
                            floorkey = k
                        self._quarantine(old, [(_off(v), _off(v) + _rec(_len(v)))])
                        continue
                    self._write_all(t, _rec(n))
                    new[k] = _pack(w, n, st)
                    w += _rec(n)
                    if st == _OPEN:
                        opens.append(k)
                        c = cks.get(k)
                        if c is not None and self._read_rec(old, _off(c), before) == _len(c):
                            self._write_all(t, _rec(_len(c)))
                            nck[k] = _pack(w, _len(c), 0)
                            w += _rec(_len(c))
                        continue
                    bills.append(k)
                    if st == _CONFIRMED:
                        w += self._copy_new(t, CONFIRMED, k, b"")
                    elif st == _ILLEGAL:
                        c = self._code.get(k)
                        w += self._copy_new(t, ILLEGAL, k, b"" if c is None else bytes((c,)))
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
                t.close()
        finally:
            if old is not None:
                old.close()
        # The only step that changes what the journal says: atomic.
        fs.rename(self.tmp, self.path)
        fs.sync(None, self.path)
        for k in list(self._code):
            if k not in new:       # lost to corruption: its result goes too
                del self._code[k]
        self._e = new
        self._ck = nck
        self._opens = opens
        self._bills = bills
        self._size = w
        self._ring = ring
        self._floorkey = floorkey
        self._damage = []
        self._heal = False
        self.compactions += 1
        if lost:
            self._event("lost", lost)
        return {"before": before, "after": w, "settled": settled,
                "confirmed": len(drop), "lost": lost}

    def _copy_new(self, f, kind, key, payload):
        size = self._build(kind, key, payload)
        self._write_all(f, size)
        return size
