# The journal's index of bills on flash (<path>.idx; docs/journal.md, "The
# index of bills on flash"), MicroPython + CPython. Journal (firmware/
# journal.py) inherits it: these methods keep the journal's bill entries
# on flash so that RAM holds nothing per bill.
#
# Entry i (24 bytes at 24 * i): key 16 | offset u32 | length u16 | state
# u8 (0: a repeated bill record, never applied) | 0xE4 result u8. The file
# is a cache: recovery writes it again from the journal at every boot,
# and compaction writes it afresh beside the new journal, so it is never
# synced and a cut inside it costs nothing.
import binascii
import struct

from firmware.fsio import exists, load_atomic, try_remove

from protocol import const

# 24 bytes an entry; entries read _IX_CHUNK at a time; the key filter's
# largest size in bytes; bill records checked for repeats in bulk at
# recovery, _SUSPECTS at a time.
_IX = const(24)
_IX_CHUNK = const(16)
_BLOOM_MAX = const(8192)
_BLOOM_PART = const(512)    # the filter in parts: no 8 KB block needed in a fragmented heap
_SUSPECTS = const(32)
_OVERHEAD = const(24)   # a journal record's head + CRC (firmware/journal.py)
_ILLEGAL = const(4)     # the journal's state numbers
INDEX_ENTRY_BYTES = _IX
SUSPECTS = _SUSPECTS

_Z = bytes(256)


def _zero(b):
    for i in range(0, len(b), 256):
        b[i:i + 256] = _Z


def _zero_all(parts):
    for b in parts:
        _zero(b)


def _put(f, data):
    done = 0
    size = len(data)
    while done < size:
        w = f.write(data[done:size])
        if w is None:
            w = size - done
        if w <= 0:
            raise OSError(28)  # ENOSPC
        done += w


class BillIndex:
    """Mixed into Journal: expects self.fs, self.ipath, self._gen,
    self._ready."""

    def _index_init(self, limit):
        # Fixed RAM: one chunk of entries, one entry, and the filter of keys
        # the index may hold, sized by the limit (not by how many bills
        # there are): 1 bit per 16 bytes of journal limit, 256 bytes .. 8 KB.
        self._ib = bytearray(_IX * _IX_CHUNK)
        self._ie = bytearray(_IX)
        self._iemv = memoryview(self._ie)
        nb = 256
        while nb < _BLOOM_MAX and nb * 128 < limit:
            nb *= 2
        parts = []
        while len(parts) * _BLOOM_PART < nb:
            parts.append(bytearray(nb if nb < _BLOOM_PART else _BLOOM_PART))
        self._bloom = parts
        self._bloomn = nb
        self._ix = None
        self._wb = None        # the walks' chunk buffer (each(), compaction), made once
        self._wown = 0         # which walk last filled it

    def _index_clear(self):
        self._nb = 0           # entries (repeated ones included)
        self._cnt = [0, 0, 0, 0, 0, 0]   # entries per state
        self._lb = [0, 0, 0, 0, 0, 0]    # their records' bytes per state
        self._ncode = 0        # refused bills (illegal with a 0xE4 result)
        self._hit = None       # last entry looked up: [key, i, off, n, st, code]
        self._ibi = -1         # first entry of the chunk cached in _ib (-1: none)
        self._ibk = 0          # entries of it cached
        self._sus = []         # entries that may repeat a bill (recovery)
        self._dups = 0         # repeated bill records found by _verify
        self._gen += 1
        _zero_all(self._bloom)

    def _iwrite(self, pos, data):
        f = self._ix
        ibi, ibk = self._ibi, self._ibk
        self._ibi = -1      # until the write is done
        try:
            if f is not None:
                f.seek(pos)
                _put(f, data)
            else:
                f = self.fs.open(self.ipath, "r+b")
                try:
                    f.seek(pos)
                    _put(f, data)
                finally:
                    f.close()
        except:  # noqa: E722 - the index is rebuilt by the next call
            self._ready = False
            raise
        self._ibi, self._ibk = ibi, ibk
        self._cache(pos, data)

    def _maybe(self, key, add=False):
        """The key filter: False means the index holds no entry for key."""
        bb = self._bloom
        m = self._bloomn * 8 - 1
        h = binascii.crc32(key)
        g = binascii.crc32(key, 0x2545F49)
        for x in (h & m, (h >> 16) & m, g & m, (g >> 16) & m):
            bit = 1 << (x & 7)
            y = x >> 3
            b = bb[y // _BLOOM_PART]
            y %= _BLOOM_PART
            if add:
                b[y] |= bit
            elif not b[y] & bit:
                return False
        return True

    def _iadd(self, key, off, n, st, hit=True):
        i = self._nb
        e = self._ie
        e[0:16] = key
        struct.pack_into("<IHBB", e, 16, off, n, st, 0)
        self._iwrite(i * _IX, self._iemv)
        self._nb = i + 1
        self._cnt[st] += 1
        self._lb[st] += (_OVERHEAD + n)
        self._maybe(key, True)
        self._hit = [key, i, off, n, st, 0] if hit else None

    def _setst(self, r, st, code):
        """Entry r ([key, i, off, n, st, code]) moves to state st."""
        old = r[4]
        self._cnt[old] -= 1
        self._lb[old] -= (_OVERHEAD + r[3])
        if old == _ILLEGAL and r[5]:
            self._ncode -= 1
        self._cnt[st] += 1
        self._lb[st] += (_OVERHEAD + r[3])
        if st == _ILLEGAL and code:
            self._ncode += 1
        r[4] = st
        r[5] = code
        self._ie[0] = st
        self._ie[1] = code
        self._iwrite(r[1] * _IX + 22, self._iemv[0:2])

    def _load(self, buf, i):
        """Entries i.. into buf (one chunk at most): how many. The last
        chunk read stays in _ib (kept up to date by _iwrite): a journal of
        up to _IX_CHUNK bills is read from flash once."""
        ib = self._ib
        k = self._nb - i
        if k > _IX_CHUNK:
            k = _IX_CHUNK
        if k <= 0:
            return 0
        if self._ibi == i and self._ibk >= k:
            if buf is not ib:
                buf[0:k * _IX] = ib[0:k * _IX]
            return k
        f = self._ix
        if f is None:
            f = self.fs.open(self.ipath, "rb")
        try:
            f.seek(i * _IX)
            got = 0
            want = k * _IX
            mv = memoryview(buf)
            while got < want:
                r = f.readinto(mv[got:want])
                if not r:
                    break
                got += r
        finally:
            if f is not self._ix:
                f.close()
        k = got // _IX
        if k:
            if buf is not ib:
                ib[0:k * _IX] = buf[0:k * _IX]
            self._ibi = i
            self._ibk = k
        return k

    def _chunks(self, buf):
        """(first entry, entries) chunk by chunk into buf; stops when a
        compaction renumbers the entries."""
        gen = self._gen
        i = 0
        while i < self._nb and gen == self._gen:
            k = self._load(buf, i)
            if not k:
                return
            yield i, k
            i += k

    def _cache(self, pos, data):
        """Keep the cached chunk in step with a write to the index."""
        a = pos - self._ibi * _IX
        n = len(data)
        if self._ibi >= 0 and 0 <= a <= self._ibk * _IX and a + n <= len(self._ib):
            self._ib[a:a + n] = data
            if a + n > self._ibk * _IX:
                self._ibk = (a + n) // _IX
        else:
            self._ibi = -1

    def _entries(self):
        """Every applied entry, in journal order: [key, i, off, n, st, code].
        Walks share one buffer (no allocation per walk): a walk resumed after
        another used it reads its chunk again."""
        if self._wb is None:
            self._wb = bytearray(_IX * _IX_CHUNK)
        b = self._wb
        gen = self._gen
        self._wown += 1
        me = self._wown
        i = 0
        while i < self._nb and gen == self._gen:
            k = self._load(b, i)
            if not k:
                return
            p = 0
            while p < k * _IX:
                st = b[p + 22]
                if st:
                    off, n = struct.unpack_from("<IH", b, p + 16)
                    yield [bytes(b[p:p + 16]), i + p // _IX, off, n, st, b[p + 23]]
                    if gen != self._gen:
                        return
                    if self._wown != me:
                        self._wown += 1
                        me = self._wown
                        k = self._load(b, i)
                p += _IX
            i += k

    def _scanfor(self, keys):
        """{key: the first applied entry holding it} for keys in `keys`."""
        out = {}
        b = self._ib
        for i, k in self._chunks(b):
            lim = k * _IX
            for key in keys:
                if key in out:
                    continue
                p = b.find(key, 0, lim)
                while p >= 0:
                    if p % _IX == 0 and b[p + 22]:
                        off, n, st, code = struct.unpack_from("<IHBB", b, p + 16)
                        out[key] = [key, i + p // _IX, off, n, st, code]
                        break
                    p = b.find(key, p + 1, lim)
            if len(out) == len(keys):
                break
        return out

    def _find(self, key):
        """The applied entry for key ([key, i, off, n, st, code]) or None."""
        h = self._hit
        if h is not None and h[0] == key:
            return h
        if not self._maybe(key):
            return None
        r = self._scanfor((key,)).get(key)
        if r is not None:
            self._hit = r
        return r

    def _verify(self):
        """Recovery: bill records whose key the filter may already hold are
        checked in bulk (one pass over the index per _SUSPECTS); a repeated
        one is never applied."""
        sus = self._sus
        if not sus:
            return
        self._sus = []
        f = self._ix
        mine = []
        for s in sus:
            f.seek(s * _IX)
            mine.append((s, f.read(_IX)))
        first = self._scanfor([e[0:16] for s, e in mine])
        for s, e in mine:
            r = first.get(e[0:16])
            if r is not None and r[1] < s:
                off, n, st, code = struct.unpack_from("<IHBB", e, 16)
                self._setst([e[0:16], s, off, n, st, code], 0, 0)
                self._hit = None
                self._dups += 1

    def _rebloom(self):
        _zero_all(self._bloom)
        for r in self._entries():
            self._maybe(r[0], True)


_MAGIC = const(0xA5)    # a journal record: magic, kind, length, serial (16 B),
_CHECKPOINT = const(2)  # payload, CRC-32 (firmware/journal.py)
_HEAD = const(20)
_SEQ_HALF = const(0x80000000)   # slot sequence numbers compare modulo 2**32
_LEGACY = const(4)      # _sst flag: the old single side file is on flash


def _ck_rec(raw):
    n = len(raw) - _OVERHEAD
    if n < 0 or raw[0] != _MAGIC or raw[1] != _CHECKPOINT:
        return False
    if struct.unpack_from("<H", raw, 2)[0] != n:
        return False
    crc = binascii.crc32(raw[0:_HEAD + n]) & 0xFFFFFFFF
    return struct.unpack_from("<I", raw, _HEAD + n)[0] == crc


def slot_seq(b, size):
    """The sequence number of the side-file slot held in b[0:size], or -1
    if it is not one whole, valid slot. A slot is a CHECKPOINT record whose
    CRC-32 field holds the sequence number (u32), followed by the CRC-32 of
    everything before it: 28 + n bytes, n the payload length."""
    if size < _OVERHEAD + 4 or b[0] != _MAGIC or b[1] != _CHECKPOINT:
        return -1
    n = b[2] | (b[3] << 8)
    if size != _OVERHEAD + 4 + n:
        return -1
    crc = binascii.crc32(memoryview(b)[0:_OVERHEAD + n]) & 0xFFFFFFFF
    if struct.unpack_from("<I", b, _OVERHEAD + n)[0] != crc:
        return -1
    return struct.unpack_from("<I", b, _HEAD + n)[0]


def seq_newer(a, b):
    """True if sequence number a comes after b (modulo 2**32, so the
    counter may wrap: two slots differ by one)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < _SEQ_HALF


class SideCheckpoints:
    """The last checkpoint of an open session, out of the journal (flash
    wear): on littlefs an append to the journal costs one block erase (its
    last block is copied on write) while a small file rewritten whole lives
    inline in its folder's metadata log. Two slot files per gun,
    <path>.c<gun byte, hex>.0 and .1, written in place by turns (one
    littlefs commit each): a slot is a CHECKPOINT record carrying a
    sequence number and a CRC over all of it (slot_seq). A write always
    goes to the slot that does not hold the newest valid record, so a cut
    write (torn, on FAT) leaves the other one; at boot the newest valid slot
    wins. The side file of earlier firmware (<path>.c<gun>, one record by
    fsio.save_atomic) is read when neither slot is valid and removed after
    the first slot write. A gun's slots belong to one open session; another
    open session on that gun appends to the journal. Needs the Journal's
    _oe, _opens, _ck, _build, _buf, _mv, _payload, fs, path; _sck (key ->
    payload), _side (gun -> key) and _sst (gun -> [newest slot or -1, its
    sequence number, flags: 1 << slot for a slot file on flash, _LEGACY])
    are reset by its _clear."""

    def _slot_path(self, g, slot):
        return "%s.c%02x.%d" % (self.path, g, slot)

    def _read_slot(self, path):
        """The slot file at path into _buf: its sequence number, or -1
        (absent, torn, corrupt); -2 if there is no such file."""
        try:
            f = self.fs.open(path, "rb")
        except OSError:
            return -2
        mv = self._mv
        want = len(mv)      # more than any slot: a slot is read to its end
        got = 0
        try:
            while got < want:
                k = f.readinto(mv[got:want])
                if not k:
                    break
                got += k
        except OSError:
            return -1
        finally:
            f.close()
        return slot_seq(self._buf, got)

    def _slots(self, g):
        """Read gun g's slots (once a boot): the newest valid checkpoint
        record is left in _buf; its payload length, or -1 if there is none.
        With no valid slot, the old side file (migration)."""
        st = [-1, 0, 0]
        self._sst[g] = st
        seqs = []
        for slot in (0, 1):
            q = self._read_slot(self._slot_path(g, slot))
            if q != -2:
                st[2] |= 1 << slot
            seqs.append(q)
        best = -1
        for slot in (0, 1):
            q = seqs[slot]
            if q >= 0 and (best < 0 or seq_newer(q, seqs[best])):
                best = slot
        old = "%s.c%02x" % (self.path, g)
        if best < 0:
            raw = load_atomic(self.fs, old, _ck_rec)
            if raw is None or len(raw) > len(self._buf):
                return -1
            st[2] |= _LEGACY
            self._buf[0:len(raw)] = raw
            return len(raw) - _OVERHEAD
        if exists(self.fs, old) or exists(self.fs, old + ".tmp"):
            st[2] |= _LEGACY
        st[0] = best
        st[1] = seqs[best]
        if best == 0 and seqs[1] != -2:
            self._read_slot(self._slot_path(g, 0))   # slot 1's bytes were read last
        return self._buf[2] | (self._buf[3] << 8)

    def _side_ck(self, key, payload):
        """Write the checkpoint to the gun's older slot; False: the slots
        are another open session's (the caller appends to the journal)."""
        g = key[7]
        o = self._side.get(g)
        if o is not None and o != key and o in self._oe:
            return False
        st = self._sst.get(g)
        if st is None:
            self._slots(g)
            st = self._sst[g]
        slot = 1 - st[0] if st[0] >= 0 else 0
        seq = (st[1] + 1) & 0xFFFFFFFF
        size = self._build(_CHECKPOINT, key, payload)
        b = self._buf
        struct.pack_into("<I", b, size - 4, seq)
        struct.pack_into("<I", b, size, binascii.crc32(self._mv[0:size]) & 0xFFFFFFFF)
        path = self._slot_path(g, slot)
        fs = self.fs
        try:
            f = fs.open(path, "wb")
            try:
                _put(f, self._mv[0:size + 4])
                fs.sync(f)
            finally:
                f.close()
            if not st[2] & (1 << slot):
                fs.sync(None, path)     # a new file: its folder entry too
                st[2] |= 1 << slot
            st[0] = slot
            st[1] = seq
            if st[2] & _LEGACY:
                # the old side file, now older than this slot
                old = "%s.c%02x" % (self.path, g)
                try_remove(fs, old + ".tmp")
                try_remove(fs, old)
                st[2] &= ~_LEGACY
        except:  # noqa: E722
            self._ready = False
            raise
        self.written += size + 4
        self._side[g] = key
        self._sck[key] = bytes(payload)
        return True

    def _load_side(self):
        # After the journal: the newest valid slot's checkpoint is the newest
        # of the session it names, if that session is still open.
        for k in self._opens:
            g = k[7]
            if g in self._sst:
                continue
            n = self._slots(g)
            if n < 0:
                continue
            key = bytes(self._mv[4:_HEAD])
            if key in self._oe:
                self._side[g] = key
                self._sck[key] = bytes(self._mv[_HEAD:_HEAD + n])

    def _last_ck(self, k):
        ck = self._sck.get(k)
        c = self._ck.get(k)
        if ck is None and c is not None:
            ck = self._payload(c >> 12, (c >> 3) & 0x1FF)
        return ck
