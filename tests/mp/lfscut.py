# Power cuts on real littlefs (vfs.VfsLfs2, the C library a board runs),
# at every block operation of a journal's life, on the emulated board or
# the unix port:
#
#   micropython tests/mp/lfscut.py [STEP [OFFSET]] [--twice]
#   python3 tools/board_cutsweep.py [--step N] [--twice] [--unix]
#
# Not a dual-interpreter suite (CPython has no littlefs): the board lane
# runs it by name (tools/board_test.py "lfscut": every 16th cut point, and
# a sample of --twice, the test_* functions below), tests/test_board_lane.py
# on the unix port.
# A block device that counts every program and erase "loses power" at
# operation N: that operation and every one after it fail (EIO) and change
# nothing, so nothing after N reaches flash; with odd N the cut operation
# is torn instead (the first half of its bytes programmed, or half the
# block erased). The journal's life: sessions opened, checkpointed and
# sealed, bills confirmed, released (settled), refused by the platform and
# released by a technician, a firmware upgrade received, verified and
# installed into its slot on the same partition, compactions (automatic
# and called), a session left open. After each cut the image is mounted again from scratch, the
# journal recovered and checked against what the API had acknowledged:
# every acknowledged bill there, byte for byte, in its state (the call the
# power cut may have gone either way), never two bill records for one
# serial, an open session back with its header; then the pile's next steps
# (the open session closed as a 0x83 bill, everything confirmed and
# settled, compacted) and a second boot, checked again. With --twice, the
# next boot's recovery (the journal's and the updater's, from the image
# the first cut left) is cut too, at each block operation it makes in
# turn, and every such cut is followed by the same boot, checks, next
# steps and second boot.
# Closing line: "N passed, N failed" (one per cut point), as the suites.
import struct
import sys
import vfs

if __name__ == "__main__":
    sys.path.insert(0, ".")
from firmware.journal import Journal  # noqa: E402

_BLOCK = 4096
NBLOCKS = 32            # a 128 KB partition
LIMIT = 8192            # a small journal, so that compaction runs
_BASE = 0x20200000      # the board's SSRAM past the suites' 2 MB (boardfs.py)


class PowerGone(Exception):
    pass


class CutBlocks:
    """Block device over `mem` (a memoryview of NBLOCKS blocks) whose
    power goes at block operation `cut` (1-based; None: never)."""

    def __init__(self, mem, cut=None):
        self.mem = mem
        self.cut = cut
        self.ops = 0
        self.gone = False

    def _op(self):
        self.ops += 1
        if self.gone or (self.cut is not None and self.ops >= self.cut):
            first = not self.gone
            self.gone = True
            return first
        return None

    def readblocks(self, block, buf, off=0):
        a = block * _BLOCK + off
        try:
            buf[:] = self.mem[a:a + len(buf)]
        except MemoryError:
            # a file of a dead mount closed by the GC's finaliser, where
            # the heap is locked: an error for littlefs, not a traceback
            return -5
        return 0

    def writeblocks(self, block, buf, off=None):
        c = self._op()
        if off is None:
            off = 0
        a = block * _BLOCK + off
        if c is not None:
            if c and self.cut % 2:      # torn: half of it programmed
                h = len(buf) // 2
                self.mem[a:a + h] = buf[0:h]
            return -5                   # EIO: the rest never happens
        self.mem[a:a + len(buf)] = buf
        return 0

    def ioctl(self, op, arg):
        if op == 4:
            return NBLOCKS
        if op == 5:
            return _BLOCK
        if op == 6:
            c = self._op()
            a = arg * _BLOCK
            if c is not None:
                if c and self.cut % 2:
                    _fill(self.mem, a, _BLOCK // 2)
                return -5
            _fill(self.mem, a, _BLOCK)
        return 0


_FF = b"\xff" * 256


def _fill(mem, a, n):
    for i in range(a, a + n, 256):
        mem[i:i + 256] = _FF


def serial(n):
    return "%014d" % 32010200000001 + "01" + "2401011200%02d" % n + "%04d" % n


def body(n):
    # a stand-in bill: the amount (fen) first, then distinct bytes
    b = bytearray(158)
    struct.pack_into("<I", b, 0, 1000 * n + 7)
    for i in range(4, 158):
        b[i] = (n * 13 + i) & 0xFF
    return bytes(b)


def amount(b):
    return struct.unpack_from("<I", b, 0)[0]


def ck(n, k):
    return bytes((n, k)) * 32


# The life of a journal: (op, serial number, argument)
LIFE = (
    [("open", 1, 0)] + [("ck", 1, k) for k in range(6)] + [("seal", 1, 0), ("confirm", 1, 0)]
    + [("open", 2, 0), ("ck", 2, 0), ("seal", 2, 0), ("settle", 1, 0), ("refuse", 2, 1)]
    + [("fw_begin", 0, 0), ("fw_chunks", 0, 0), ("fw_verify", 0, 0), ("fw_activate", 0, 0)]
    + [("open", 3, 0)] + [("ck", 3, k) for k in range(60)] + [("seal", 3, 0)]
    + [("settle", 2, 0), ("compact", 0, 0), ("open", 4, 0), ("ck", 4, 0), ("seal", 4, 0),
       ("confirm", 4, 0), ("open", 5, 0), ("ck", 5, 1)]
)

_NEXT = {"seal": ("open", "pending"), "confirm": ("pending", "confirmed"),
         "settle": (None, "settled"), "refuse": (None, "illegal")}


def _mount(mem, cut=None, fresh=False):
    bd = CutBlocks(mem, cut)
    if fresh:
        vfs.VfsLfs2.mkfs(bd)
    fs = vfs.VfsLfs2(bd)
    vfs.mount(fs, "/cut")
    return bd


def _umount():
    try:
        vfs.umount("/cut")
    except OSError:
        pass


# A firmware upgrade on the same partition (firmware/upgrade.py): the image
# received in chunks, verified, installed into the other slot (its files
# and slot.json written), activated. Its life is interleaved with the
# journal's: its writes must never cost a bill.
KEY = b"\x5a" * 32
FW = "2.0"


def fw_files():
    return [("VERSION", FW.encode())] + [
        ("firmware/m%d.py" % i, (("# %s module %d\n" % (FW, i)) * (20 + 7 * i)).encode())
        for i in range(3)]


def _fw(name, up):
    import hashlib
    from protocol import image as I
    from protocol import sign
    img = I.pack_image(fw_files())
    if name == "fw_begin":
        sha = hashlib.sha256(img).digest()
        assert up.begin(FW, len(img), sha, sign.upgrade_mac(KEY, FW, len(img), sha)) == 0
    elif name == "fw_chunks":
        off = 0
        while off < len(img):
            off = up.chunk(off, img[off:off + 200])
    elif name == "fw_verify":
        r = tuple(up.verify())
        if r == (False, "io"):
            raise OSError(5)
        assert r == (True, None), r
    else:
        r = tuple(up.activate(True))
        if r == (False, "io"):
            raise OSError(5)      # the slot write failed: the power went
        assert r == (True, None), r


def _updater():
    from firmware.upgrade import Updater
    return Updater("/cut", KEY)


def _check_fw(model, cut_op):
    """The upgrade after a cut: the updater boots, and an acknowledged
    activation left the new slot active (pending) with every file in it."""
    up = _updater()
    done = model.get("fw") == "fw_activate"
    maybe = cut_op is not None and cut_op[0] == "fw_activate"
    v = up.running_version()
    if done or (maybe and v == FW):
        assert v == FW and up.st["pending"], up.st
        for name, data in fw_files():
            f = open("/cut/fw/" + up.st["active"] + "/" + name, "rb")
            got = f.read()
            f.close()
            assert got == data, name
    else:
        assert v == "0", up.st


def _run(j, model, ops):
    """Apply ops; model[n] follows every acknowledged call. Returns the op
    the power went in (None: all done)."""
    for op in ops:
        name, n, arg = op
        s = serial(n)
        try:
            if name == "open":
                assert j.open_session(s, b"hdr%d" % n) == "opened"
                model[n] = "open"
            elif name == "ck":
                assert j.checkpoint(s, ck(n, arg)) == "ok"
                model["ck%d" % n] = ck(n, arg)
            elif name == "seal":
                assert j.seal(s, body(n)) == "sealed"
                model[n] = "pending"
            elif name == "confirm":
                assert j.confirm(s) == "ok"
                model[n] = "confirmed"
            elif name == "settle":
                assert j.settle(s) == "ok"
                model[n] = "settled"
            elif name == "refuse":
                assert j.refuse(s, arg) == "ok"
                model[n] = "illegal"
            elif name == "compact":
                j.compact()
            elif name.startswith("fw_"):
                if name == "fw_begin":
                    model["up"] = _updater()
                _fw(name, model["up"])
                model["fw"] = name
        except OSError:
            return op
        except Exception as e:  # noqa: BLE001
            # the updater reports a failed write as UpgradeError("io")
            if type(e).__name__ == "UpgradeError" and e.args[:1] == ("io",):
                return op
            raise
    return None


def _raw_bills(path):
    """Bill records per serial in the raw journal file (every record read
    by its length and CRC, independently of the journal's code)."""
    import binascii
    seen = {}
    try:
        f = open(path, "rb")
    except OSError:
        return seen
    data = f.read()
    f.close()
    off = 0
    while off + 24 <= len(data):
        kind = data[off + 1]
        n = data[off + 2] | (data[off + 3] << 8)
        end = off + 20 + n
        if data[off] != 0xA5 or end + 4 > len(data):
            break
        crc = struct.unpack_from("<I", data, end)[0]
        if binascii.crc32(data[off:end]) & 0xFFFFFFFF != crc:
            break
        if kind == 3:
            k = binascii.hexlify(data[off + 4:off + 20]).decode()
            seen[k] = seen.get(k, 0) + 1
        off = end + 4
    return seen


def _check(j, model, cut_op, closing=False):
    """The recovered journal against the model; returns the total amount of
    the bills it holds unsettled (pending, confirmed, refused). closing: a
    cut boot may have sealed open sessions (close_interrupted)."""
    rep = j.report
    assert not rep.corrupt, rep
    for k, c in _raw_bills(j.path).items():
        assert c == 1, "two bill records for " + k
    held = j.pending() + j.confirmed() + j.illegal_bills()
    assert len(held) == len(set(held)), "a bill listed twice"
    opens = [s for s, h, c in rep.open_sessions]
    for s, h, c in rep.open_sessions:
        # the last acknowledged checkpoint (side-file slots: the newest
        # valid one), or the one the power went in
        n = int(s[-4:])
        want = [model.get("ck%d" % n)]
        if cut_op is not None and cut_op[0] == "ck" and cut_op[1] == n:
            want.append(ck(n, cut_op[2]))
        assert c in want, (s, c, want, cut_op)
    total = 0
    for n, st in model.items():
        if not isinstance(n, int):
            continue
        s = serial(n)
        ok = [st]
        if cut_op is not None and cut_op[1] == n and cut_op[0] in _NEXT:
            ok.append(_NEXT[cut_op[0]][1])
        if "settled" in ok:
            ok.append(None)   # compacted away
        if closing and "open" in ok:
            ok.append("pending")
        got = j.status(s)
        assert got in ok, (s, st, got, cut_op)
        if got == "open":
            assert s in opens
        elif got in ("pending", "confirmed", "illegal"):
            b = j.bill(s)
            assert b == body(n), s
            total += amount(b)
    if cut_op is not None and cut_op[0] == "open" and cut_op[1] not in model:
        assert j.status(serial(cut_op[1])) in (None, "open", "pending" if closing else "open")
    return total


def _expected_total(j, model):
    t = 0
    for n in model:
        if isinstance(n, int) and j.status(serial(n)) in ("pending", "confirmed", "illegal"):
            t += amount(body(n))
    return t


def _close(serial, header, ck):
    return body(int(serial[-4:]))


def _finish(j):
    """What the pile does next: open sessions closed as 0x83 bills, every
    bill confirmed and settled, a compaction."""
    j.close_interrupted(_close)
    assert not j.open_sessions()
    for s in j.pending():
        assert j.confirm(s) == "ok"
    for s in j.pending() + j.confirmed() + j.illegal_bills():
        assert j.settle(s) == "ok"
    j.compact()


def _boot(mem, cut=None):
    _mount(mem, cut)
    j = Journal("/cut/journal", limit_bytes=LIMIT)
    j.recover()
    return j


def _next_boot(mem, cut):
    """The next boot's recovery as firmware/pile.py does it (the journal
    recovered, its open sessions sealed as bills, close_interrupted), then
    the updater's, with the power going at block operation `cut`; True:
    the cut landed."""
    bd = _mount(mem, cut)
    try:
        j = Journal("/cut/journal", limit_bytes=LIMIT)
        j.recover()
        j.close_interrupted(_close)
        _updater()
    except Exception as e:  # noqa: BLE001 - a write refused by the cut
        if not bd.gone:
            raise
        del e
    _umount()
    return bd.gone


def _after(mem, model, cut_op, closing=False):
    """A boot after the cut(s), checked against what the API acknowledged;
    then the pile's next steps and a second boot, checked again."""
    j = _boot(mem)
    total = _check(j, model, cut_op, closing)
    _check_fw(model, cut_op)
    assert total == _expected_total(j, model)
    _finish(j)
    _umount()
    j = _boot(mem)
    assert j.count("pending") == j.count("confirmed") == j.count("illegal") == 0
    assert not j.open_sessions()
    for k, c in _raw_bills(j.path).items():
        assert c == 1
    _umount()


def one(mem, spare, cut, twice):
    """One cut point: run the life with the power going at block operation
    `cut`, then boot(s) and checks. With `twice`, first the next boot's
    recovery is cut at each of its block operations k = 1, 2, ... in turn
    (from the same image), each followed by a boot and the same checks.
    Returns (ops the life took, whether the cut landed, recovery cut
    points tried)."""
    _umount()
    bd = _mount(mem, None, True)
    base = bd.ops
    bd.cut = cut + base       # count from the freshly formatted partition
    model = {}
    j = Journal("/cut/journal", limit_bytes=LIMIT)
    cut_op = None
    try:
        j.recover()
        cut_op = _run(j, model, LIFE)
    except OSError:
        cut_op = ("boot", 0, 0)
    landed = bd.gone
    ops = bd.ops - base
    _umount()
    tried = 0
    if twice and landed:
        spare[:] = mem
        k = 1
        while True:
            mem[:] = spare
            if not _next_boot(mem, k):
                break
            tried += 1
            try:
                _after(mem, model, cut_op, True)
            except Exception as e:  # noqa: BLE001
                raise AssertionError("recovery cut %d: %s %s" % (k, type(e).__name__, e))
            k += 1
        mem[:] = spare
    _after(mem, model, cut_op)
    return ops, landed, tried


def _memory(board):
    n = NBLOCKS * _BLOCK
    if board:
        import uctypes
        return (memoryview(uctypes.bytearray_at(_BASE, n)),
                memoryview(uctypes.bytearray_at(_BASE + n, n)))
    return memoryview(bytearray(n)), memoryview(bytearray(n))


def main(step=1, offset=0, twice=False, board=None):
    import sys
    import time
    if board is None:
        board = sys.platform != "linux"
    mem, spare = _memory(board)
    t0 = time.ticks_ms()
    total, landed, tried = one(mem, spare, 10 ** 9, False)
    assert not landed
    passed = failed = recov = 0
    cut = 1 + offset
    while cut <= total:
        try:
            ops, hit, t = one(mem, spare, cut, twice)
            assert hit, "cut %d did not land" % cut
            passed += 1
            recov += t
        except Exception as e:  # noqa: BLE001 - every cut point is reported
            failed += 1
            print("FAIL cut", cut, type(e).__name__, e)
            try:
                sys.print_exception(e)
            except AttributeError:
                pass
        cut += step
    print("littlefs power cuts: %d block operations in the life, %d cut points (every %d), "
          "%d more in the recoveries after them; %d recovered with every bill once and the "
          "totals reconciled, %d failed; %d ms"
          % (total, passed + failed, step, recov, passed, failed,
             time.ticks_diff(time.ticks_ms(), t0)))
    print("%d passed, %d failed" % (passed, failed))
    return failed


def test_power_cuts_every_16th():
    # the board lane's sample (tools/board_test.py "lfscut")
    assert main(16) == 0


def test_power_cuts_in_the_next_boots_recovery():
    # the board lane's sample of --twice: every 150th cut point of the
    # life from the 11th (3 of 311), and at each of them every block
    # operation of the next boot's recovery (35 more cut points), each
    # followed by a boot and the checks
    assert main(150, 10, True) == 0


if __name__ == "__main__":
    import sys
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    sys.exit(1 if main(int(args[0]) if args else 1, int(args[1]) if len(args) > 1 else 0,
                       "--twice" in sys.argv) else 0)
