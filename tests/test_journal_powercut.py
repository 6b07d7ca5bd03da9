# Power cut after every byte: scripted sessions on the simulated flash are
# cut at each unit (byte written, rename, remove, truncation), the pile
# reboots (a new Journal on the same flash), recovers, and must satisfy the
# invariants below. The flash is strict (FlashSim(strict=True)): only
# fs.sync(f) commits a file's bytes, and at each cut the uncommitted bytes
# are all lost, halved or all kept (by turns), so a missing sync loses an
# acknowledged record and fails the sweep. Invariants:
#   - every bill sealed before the cut is intact, byte for byte, and pending
#     unless its CONFIRMED record was completely written;
#   - never two bills for one trade serial (checked on the raw flash too);
#   - every session open at the cut is reported with its header and last
#     checkpoint, and can be closed as a 0x83 bill;
#   - no counter value is ever handed out twice;
#   - a torn tail is reported with its exact length, never fatal; nothing
#     else is reported damaged; no compaction temp file survives boot.
# Then the journal is used again after recovery (and cut again) and checked.
import binascii
import copy
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from firmware import journal as J
from sim.flash import FlashSim, PowerCut
from firmware.journal import Journal, JournalFull

PATH = "/flash/bills.j"
PRESSURE_LIMIT = J.MIN_LIMIT + 700   # room for a handful of bills only


def serial(i):
    # platform-issued serials: gun 02, YYMMDDhhmmss growing with i (a start
    # is stamped when the platform issues it); pile-issued ones
    # (issue_serial) use gun 01
    return "32010200000001" + "02" + "24010112%02d%02d" % (i // 60 % 60, i % 60) + "%04d" % i


KEEPS = ("none", "half", "all")   # what a cut leaves of uncommitted bytes, by turns


def hdr(i):
    return b"HDR%04d" % i + bytes(25)


def ck(i, k):
    return b"CK%04d-%04d" % (i, k) + bytes(20)


def body(i):
    size = 174 if i % 2 else 158
    return bytes((i * 31 + n) & 0xFF for n in range(size))


def power_loss_bill(s, h, c):
    return b"\x83|" + s.encode() + b"|" + h + b"|" + (c or b"none")


def raw_records(data):
    """Independent reader of the documented format: valid records from the
    start, and the byte count that does not parse (the torn tail)."""
    out = []
    off = 0
    while off + 24 <= len(data):
        magic, kind, n = struct.unpack_from("<BBH", data, off)
        if magic != 0xA5 or n > J.MAX_PAYLOAD or off + 24 + n > len(data):
            break
        crc = struct.unpack_from("<I", data, off + 20 + n)[0]
        if binascii.crc32(data[off:off + 20 + n]) & 0xFFFFFFFF != crc:
            break
        out.append((kind, binascii.hexlify(data[off + 4:off + 20]).decode(),
                    bytes(data[off + 20:off + 20 + n])))
        off += 24 + n
    return out, len(data) - off


class Model:
    """What the API acknowledged before the cut."""

    def __init__(self):
        self.st = {}          # serial -> open/pending/confirmed/illegal/settled/gone
        self.hdr = {}
        self.ck = {}
        self.ck_cut = {}   # a checkpoint whose call was cut: it may be kept
        self.body = {}
        self.opened = []      # open order
        self.sealed = []      # seal order
        self.counters = []


_EXPECT = {
    # op: {state: expected return}; missing states -> the default in step()
    "seal": {"open": "sealed", None: "no_session", "gone": "no_session"},
    "confirm": {"pending": "ok", "confirmed": "duplicate", "illegal": "refused",
                "settled": "refused"},
    "illegal": {"pending": "ok", "confirmed": "ok", "illegal": "duplicate",
                "settled": "refused"},
    "settle": {"pending": "ok", "confirmed": "ok", "illegal": "ok",
               "settled": "duplicate"},
}


class Harness:
    def __init__(self, limit=J.JOURNAL_BYTES, cut=None, keep="all", fat=False):
        self.fs = FlashSim(strict=True, keep=keep, fat=fat)
        self.limit = limit
        self.pressure = limit < 8 * 1024
        self.m = Model()
        self.j = Journal(PATH, self.fs, limit)
        self.j.recover()   # writes the (empty) index: cuts count from here
        self.base = self.fs.units
        if cut is not None:
            self.fs.cut_after = self.base + cut

    def clone(self):
        """Same flash and model, a freshly booted journal (a Journal holds a
        memoryview, so it is rebuilt rather than deep-copied)."""
        h = Harness.__new__(Harness)
        h.fs = copy.deepcopy(self.fs)
        h.limit = self.limit
        h.pressure = self.pressure
        h.m = copy.deepcopy(self.m)
        h.j = Journal(PATH, h.fs, h.limit)
        rep = h.j.recover()
        # a clean boot writes nothing but the index (a cache, rewritten)
        assert not rep.damaged and _files(h.fs) == _files(self.fs)
        return h

    # ---- running ops --------------------------------------------------------
    def run(self, ops):
        """True if every op completed, False if the power went."""
        try:
            for op in ops:
                self.step(op)
        except PowerCut:
            return False
        return True

    def step(self, op):
        j, m = self.j, self.m
        kind = op[0]
        if kind == "counter":
            v = j.next_serial_counter()
            assert not m.counters or v > max(m.counters)
            m.counters.append(v)
        elif kind == "compact":
            j.compact()
        elif kind == "close":
            want = [s for s in m.opened if m.st[s] == "open"]
            made = []

            def mk(s, h, c):
                # close_interrupted seals one session after the other: when it
                # asks for the next bill, the previous seal has completed.
                if made:
                    self._sealed(*made[-1])
                made.append((s, power_loss_bill(s, h, c)))
                return made[-1][1]
            assert j.close_interrupted(mk) == want
            if made:
                self._sealed(*made[-1])
            assert [x[0] for x in made] == want
        elif kind == "issue":
            s = j.issue_serial(32010200000001, 1, 240101120000)
            v = int(s[-4:])
            assert s not in m.st
            assert not m.counters or v > max(m.counters)
            m.counters.append(v)
            self.step(("open", s))
            self.step(("ck", s, 1))
            self.step(("seal", s))
        else:
            s = op[1] if isinstance(op[1], str) else serial(op[1])
            i = int(s[-4:])
            cur = m.st.get(s)
            if kind == "open":
                used = j.bytes_used()
                try:
                    r = j.open_session(s, hdr(i))
                except J.SerialTooOld:
                    # compacted away and no longer in the ring: older than
                    # the floor; nothing written
                    assert cur == "gone" and j.bytes_used() == used, (s, cur)
                    return
                except JournalFull:
                    assert self.pressure and cur is None
                    return
                if cur is None:
                    assert r == "opened"
                    m.st[s] = "open"
                    m.hdr[s] = hdr(i)
                    m.ck[s] = None
                    m.opened.append(s)
                else:
                    # open, sealed, or settled and compacted away: never a
                    # second session (nor bill) for one serial
                    assert r == "exists" and j.bytes_used() == used, (s, cur, r)
            elif kind == "ck":
                m.ck_cut[s] = ck(i, op[2])
                r = j.checkpoint(s, ck(i, op[2]))
                del m.ck_cut[s]
                assert r == ("ok" if cur == "open" else "no_session")
                if r == "ok":
                    m.ck[s] = ck(i, op[2])
            elif kind in ("seal", "reseal"):
                b = body(i) if kind == "seal" else b"second stop"
                r = j.seal(s, b)
                assert r == _EXPECT["seal"].get(cur, "already_sealed"), (op, cur, r)
                if r == "sealed":
                    self._sealed(s, b)
            else:
                r = getattr(j, kind)(s)
                assert r == _EXPECT[kind].get(cur, "unknown"), (op, cur, r)
                if r == "ok":
                    m.st[s] = {"confirm": "confirmed", "illegal": "illegal",
                               "settle": "settled"}[kind]
        self._sync_gone()

    def _sealed(self, s, b):
        self.m.st[s] = "pending"
        self.m.body[s] = b
        self.m.sealed.append(s)

    def _sync_gone(self):
        # Compaction may drop settled bills, and host-confirmed ones under
        # pressure; nothing else may ever vanish.
        for s, cur in self.m.st.items():
            if cur in ("settled", "confirmed") and self.j.status(s) is None:
                assert cur == "settled" or self.pressure, s
                self.m.st[s] = "gone"

    # ---- reboot and invariants ----------------------------------------------
    def reboot(self):
        fs = self.fs
        if not fs.cut:
            fs.reboot()   # the power goes: what was not committed shrinks
        p = fs.partial
        data = bytes(fs.files.get(PATH, b""))
        recs, torn = raw_records(data)
        if fs.keep == "all" and p and p[0] == PATH:
            # nothing lost: the tail is exactly the part of the cut write
            assert torn == p[1], (torn, p)
        assert torn < J.OVERHEAD + J.MAX_PAYLOAD   # at most one record torn
        self._no_double_bill(recs)
        fs.reboot()
        self.j = Journal(PATH, fs, self.limit)
        rep = self.j.recover()
        self.check(rep, torn)
        return rep

    def _no_double_bill(self, recs):
        seen = set()
        for kind, s, _ in recs:
            if kind == J.BILL_SEALED:
                assert s not in seen, "two bills for " + s
                seen.add(s)

    def check(self, rep, torn):
        j, m, fs = self.j, self.m, self.fs
        assert rep.corrupt == []
        assert rep.torn_tail == torn
        assert rep.healed == bool(torn)
        assert PATH + ".tmp" not in fs.files
        self._sync_gone()
        assert rep.pending == [s for s in m.sealed if m.st[s] == "pending"]
        assert rep.illegal == [s for s in m.sealed if m.st[s] == "illegal"]
        assert rep.confirmed == [s for s in m.sealed if m.st[s] == "confirmed"]
        # A checkpoint cut before its "ok" may be kept (its side-file slot
        # written whole, the folder not yet synced); then it is the last one.
        for s, c in m.ck_cut.items():
            if m.st.get(s) == "open" and (s, m.hdr[s], c) in rep.open_sessions:
                m.ck[s] = c
        m.ck_cut.clear()
        assert rep.open_sessions == [(s, m.hdr[s], m.ck[s]) for s in m.opened
                                     if m.st[s] == "open"]
        for s, cur in m.st.items():
            got = j.status(s)
            if cur in ("settled", "gone"):
                assert got in ("settled", None)
            else:
                assert got == cur, (s, cur, got)
            if cur in ("pending", "confirmed", "illegal"):
                assert j.bill(s) == m.body[s]
        if m.counters:
            assert rep.counter >= max(m.counters)
        recs, rest = raw_records(bytes(fs.files.get(PATH, b"")))
        assert rest == 0
        self._no_double_bill(recs)
        assert j.bytes_used() <= self.limit


AFTER = [("close",), ("issue",), ("confirm", 1), ("counter",), ("compact",),
         ("settle", 1), ("issue",), ("compact",), ("open", 1)]

SMALL = [
    ("open", 1), ("ck", 1, 1), ("counter",), ("ck", 1, 2), ("open", 2),
    ("seal", 1), ("reseal", 1), ("ck", 2, 1), ("confirm", 1), ("open", 3),
    ("ck", 3, 1), ("seal", 3), ("settle", 1), ("compact",), ("open", 1), ("ck", 2, 2),
    ("illegal", 3), ("counter",), ("open", 4), ("seal", 4), ("reseal", 4),
]

def _files(fs):
    return {p: bytes(b) for p, b in fs.files.items() if not p.endswith(".idx")}


def _quick(i, *after):
    return [("open", i), ("ck", i, 1), ("seal", i)] + [(a, i) for a in after]


# A small journal: confirmed bills pile up until compaction must drop some
# (settled ones go first), a long session rewrites its side-file checkpoint, and the
# last start is refused while pending bills fill the journal.
PRESSED = (
    _quick(1, "confirm", "settle") + _quick(2)
    + [op for i in range(3, 11) for op in _quick(i, "confirm")]
    + _quick(11, "settle")
    + [("open", 12)] + [("ck", 12, k) for k in range(1, 25)] + [("seal", 12)]
    + _quick(13) + [("counter",)] + _quick(14) + _quick(15) + _quick(16)
)


def units_of(ops, limit):
    h = Harness(limit)
    assert h.run(ops)
    return h.fs.units - h.base


def cut_and_check(ops, limit, cut, after=AFTER, keep="all"):
    h = Harness(limit, cut, keep)
    h.run(ops)
    h.reboot()
    assert h.run(after)
    h.reboot()
    return h


@pytest.mark.parametrize("ops,limit", [(SMALL, J.JOURNAL_BYTES),
                                       pytest.param(PRESSED, PRESSURE_LIMIT, marks=pytest.mark.slow)],
                         ids=["roomy", "pressed"])
def test_power_cut_at_every_byte_of_a_scripted_day(ops, limit):
    total = units_of(ops, limit)
    assert total > 1000
    for cut in range(total + 1):
        cut_and_check(ops, limit, cut, keep=KEEPS[cut % 3])


def test_pressed_script_drops_settled_then_confirmed_and_refuses_starts():
    h = Harness(PRESSURE_LIMIT)
    assert h.run(PRESSED)
    st = h.m.st
    assert h.j.compactions >= 1    # session 12's checkpoints go to its gun's side file
    assert st[serial(1)] == "gone"                            # settled: dropped
    assert st[serial(11)] in ("gone", "settled")
    gone = [i for i in range(3, 11) if st[serial(i)] == "gone"]
    assert gone and gone == list(range(3, 3 + len(gone)))    # confirmed: oldest first
    assert st[serial(2)] == st[serial(12)] == st[serial(13)] == "pending"
    assert serial(14) not in st and not h.j.can_start()      # refused, not dropped
    assert h.reboot().pending == [serial(2), serial(12), serial(13)]


def test_power_cut_during_compaction_keeps_old_or_new_file():
    h = Harness()
    assert h.run(SMALL[:13])
    start = h.fs.units
    probe = h.clone()
    probe.step(("compact",))
    span = probe.fs.units - start
    assert span > 100
    for k in range(span + 1):
        g = h.clone()
        g.fs.cut_after = start + k
        g.fs.keep = KEEPS[k % 3]
        g.run([("compact",)])
        g.reboot()


_KINDS = ["open", "open", "ck", "ck", "burst", "seal", "seal", "reseal",
          "confirm", "confirm", "illegal", "settle", "settle", "counter", "compact"]


@st.composite
def scripts(draw):
    """Random op sequences over a few sessions: starts mostly take a fresh
    serial, other ops mostly name one of the last sessions started (any op
    may still hit a serial in the wrong state: the API must say so)."""
    ops = []
    opened = []
    for k in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(_KINDS))
        if kind in ("counter", "compact"):
            ops.append((kind,))
            continue
        if kind == "open" and (not opened or draw(st.integers(0, 3))):
            opened.append(len(opened) + 1)
            i = opened[-1]
        elif opened:
            i = draw(st.sampled_from(opened[-3:] + [1]))
        else:
            i = 1
        if kind == "burst":  # a long session: many checkpoints in a row
            ops.extend(("ck", i, 1000 * k + m) for m in range(20))
        elif kind == "ck":
            ops.append((kind, i, k))
        else:
            ops.append((kind, i))
    return ops


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=scripts(), pressed=st.booleans(), data=st.data())
def test_random_scripts_cut_twice_recover_and_keep_every_bill(ops, pressed, data):
    limit = J.JOURNAL_BYTES
    if pressed:
        limit = data.draw(st.integers(J.MIN_LIMIT, J.MIN_LIMIT + 1000), label="limit")
    total = units_of(ops, limit)
    h = Harness(limit, data.draw(st.integers(0, total), label="cut"),
                data.draw(st.sampled_from(KEEPS), label="keep"))
    h.run(ops)
    h.reboot()
    # use it again, and cut again somewhere in that
    probe = h.clone()
    start = probe.fs.units
    assert probe.run(AFTER)
    h.fs.cut_after = data.draw(st.integers(start, probe.fs.units), label="cut2")
    h.run(AFTER)
    h.reboot()
    assert h.run(AFTER)
    h.reboot()


_ORDER = {"pending": 0, "confirmed": 1, "settled": 2}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fates=st.lists(st.sampled_from(["pending", "confirmed", "settled"]), min_size=1,
                      max_size=6),
       data=st.data())
def test_random_corruption_is_reported_and_spares_the_records_around_it(fates, data):
    fs = FlashSim()
    j = Journal(PATH, fs)
    where = {}
    for i, fate in enumerate(fates, 1):
        s = serial(i)
        j.open_session(s, hdr(i))
        j.checkpoint(s, ck(i, 1))
        start = j.bytes_used()
        j.seal(s, body(i))
        where[s] = (start, j.bytes_used())
        if fate != "pending":
            j.confirm(s)
        if fate == "settled":
            j.settle(s)
    size = j.bytes_used()
    a = data.draw(st.integers(0, size - 1), label="start")
    n = data.draw(st.integers(1, min(64, size - a)), label="length")
    fs.corrupt(PATH, a, n, data.draw(st.integers(1, 255), label="xor"))
    rep = Journal(PATH, fs).recover()
    assert rep.damaged
    j2 = Journal(PATH, fs)
    j2.recover()
    for i, fate in enumerate(fates, 1):
        s = serial(i)
        lo, hi = where[s]
        got = j2.status(s)
        if got is None and fate == "settled":
            continue  # damage at the tail was cut off by a compaction
        if hi <= a or lo >= a + n:
            # its bill record is untouched: intact, at most a step behind
            # (a damaged CONFIRMED / SETTLED record after it is lost)
            assert j2.bill(s) == body(i)
            assert got in _ORDER and _ORDER[got] <= _ORDER[fate], (got, fate)
        else:
            # the bill record is hit: never another body; the session comes
            # back open if its header survived, to be closed as 0x83
            assert got in (None, "open")
            assert j2.bill(s) is None


def _recovery_sweep(h):
    """h: a harness whose power just went. Cut again at every unit of the
    boot recovery's own writes (heal compaction, temp file removed or
    adopted), with each keep policy by turns; then reboot, check, use the
    journal and check again. Returns the number of recovery units."""
    probe = copy.deepcopy(h.fs).reboot()
    start = probe.units
    Journal(PATH, probe, h.limit).recover()
    span = probe.units - start
    for k in range(span):
        g = Harness.__new__(Harness)
        g.fs = copy.deepcopy(h.fs).reboot(cut_after=start + k)
        g.fs.keep = KEEPS[k % 3]
        g.limit, g.pressure, g.m = h.limit, h.pressure, copy.deepcopy(h.m)
        with pytest.raises(PowerCut):
            Journal(PATH, g.fs, g.limit).recover()
        g.reboot()
        assert g.run(AFTER)
        g.reboot()
    return span


def test_power_cut_during_boot_recovery_heal_and_temp_file_handling():
    base = Harness()
    assert base.run(SMALL[:5])
    probe = base.clone()
    start = probe.fs.units
    assert probe.run([SMALL[5]])           # the seal of bill 1
    # torn tail: cut half way into the bill record; recovery compacts it off
    h = base.clone()
    h.fs.cut_after = (start + probe.fs.units) // 2
    assert not h.run([SMALL[5]])
    assert _recovery_sweep(h) > 120     # checkpoints sit in side files: a shorter journal
    # a compaction cut after its temp file was written: recovery removes it
    assert base.run(SMALL[5:13])
    probe = base.clone()
    start = probe.fs.units
    assert probe.run([("compact",)])
    h = base.clone()
    # everything but the two renames (the journal's, then its index's)
    h.fs.cut_after = probe.fs.units - 2
    assert not h.run([("compact",)])
    assert PATH + ".tmp" in h.fs.files and PATH in h.fs.files
    assert _recovery_sweep(h) >= 1
    # FAT: the rename unlinked the journal, then the power went: adopted
    f = base.clone()
    f.fs.fat = True
    f.fs.cut_after = probe.fs.units - 1    # one more unit: the unlink
    assert not f.run([("compact",)])
    assert PATH + ".tmp" in f.fs.files and PATH not in f.fs.files
    assert _recovery_sweep(f) >= 1
    assert f.reboot().temp == "adopted"
