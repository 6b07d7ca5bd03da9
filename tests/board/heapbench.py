# Heap cases for tools/board_heap.py, run on the emulated board from frozen
# bytecode. Each case prints "ok" and its figures on success; a MemoryError
# (or any exception) means it does not fit.
#
# cap(n): what follows gets a heap of n bytes (used + free, as
# gc.mem_alloc() + gc.mem_free() count them): the rest of the board's heap
# is taken by one bytearray first. The bisection over n in
# tools/board_heap.py is the smallest heap a case runs in, fragmentation
# included, as `micropython -X heapsize` bisects it on the unix port.
import gc

_ballast = None


def cap(n):
    global _ballast
    gc.collect()
    extra = gc.mem_free() - (n - gc.mem_alloc()) - 16
    if extra > 0:
        _ballast = bytearray(extra)
    gc.collect()


def _used():
    gc.collect()
    return gc.mem_alloc() - (len(_ballast) + 16 if _ballast is not None else 0)


def imports():
    """What the pile's modules keep on the heap once imported (frozen: the
    bytecode stays in flash)."""
    before = _used()
    import firmware.pile  # noqa: F401
    import firmware.dlt645  # noqa: F401
    import firmware.console  # noqa: F401
    import protocol.fields  # noqa: F401
    print("ok retained=%d" % (_used() - before))


def _rig(root, cfg=None):
    from tests.mp.pilekit import Rig
    return Rig(root, cfg=cfg)


def session(minutes=30):
    """The whole pile, one session: boot, log in, remote start, `minutes`
    of charging at 60 kW (30 kWh) with its meter samples and journal checkpoints,
    remote stop, bill sent, confirmed and settled. The scripted platform
    keeps no frames (it is not part of the pile)."""
    import os
    from boardbench import charge
    before = _used()
    os.mkdir("/p")
    r = _rig("/p")
    r.online()
    after_boot = _used() - before
    charge(r, 1, minutes)
    r.run(60000, lambda: bool(r.platform.bills()) and not r.pile.journal.confirmed()
          and not r.pile.journal.pending())
    done = not r.pile.journal.pending() and not r.pile.journal.confirmed()
    assert done, "bill not settled"
    print("ok boot=%d end=%d" % (after_boot, _used() - before))


def boot(pending, limit, root="/p"):
    """The pile's boot over a journal of `pending` pending bills on the
    mounted littlefs (/p/journal, built by tools/board_heap.py)."""
    before = _used()
    r = _rig(root, {"journal_bytes": limit})
    n = r.pile.journal.count("pending")
    assert n == pending, (n, pending)
    r.pile.report = r.pile.journal.report = None    # the boot report is dropped once shown
    print("ok pending=%d retained=%d" % (n, _used() - before))


def journal(pending, limit, root="/p"):
    """The journal alone recovering the same file (what the unix-port rows
    of docs/benchmarks.md measure), to split the pile's boot figure."""
    from firmware.journal import Journal
    before = _used()
    j = Journal(root + "/journal", limit_bytes=limit)
    j.recover()
    assert j.count("pending") == pending
    j.report = None
    print("ok pending=%d retained=%d" % (pending, _used() - before))
