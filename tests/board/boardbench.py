# Flash wear and time per control tick on the emulated board, for
# tools/board_bench.py. The whole pile (tests/mp/pilekit.Rig: the real
# firmware on simulated hardware, a scripted platform) on littlefs over
# tests/board/boardfs.RamBlocks, which counts erases per block.
import time

from protocol import fields as F
from tests.mp.pilekit import PILE, Rig, serial


BALANCE = 20000000      # 2,000 yuan: the balance never ends a session here


def new_car(r):
    # Every session a car at 20 % SOC, so that 30 minutes at 60 kW never
    # reach the taper.
    v = r.world.vehicle
    v._e = v._cap * 20 // 100


def keep_bills(r):
    # The platform end keeps only the bills (it is not part of the pile).
    r.platform.frames = r.platform.bills()


def _serial(r, n):
    # A platform's serial, stamped with the start's time: the journal
    # refuses a serial stamped at or before its floor (the newest stamp it
    # has forgotten, docs/journal.md), so a fixed stamp ends a long run.
    y, mo, d, h, mi, s, _ = F.to_civil(r.world.clock.now())
    return PILE + "01" + "%02d%02d%02d%02d%02d%02d" % (y % 100, mo, d, h, mi, s) + "%04d" % (n % 10000)


def charge(r, n, minutes, stamped=False):
    """Remote start serial(n) (stamped: with the start's time, _serial),
    `minutes` of charging (the platform end keeping only the bills),
    remote stop."""
    r.start(_serial(r, n) if stamped else serial(n), balance=BALANCE)
    t = 0
    while t < minutes * 60000:
        r.run(10000)
        keep_bills(r)
        t += 10000
    assert not r.platform.bills(), "the session ended before the stop"
    r.stop()


def _session(r, n, minutes, settle=True):
    new_car(r)
    charge(r, n, minutes, stamped=True)
    j = r.pile.journal
    if settle:
        r.run(120000, lambda: bool(r.platform.bills()) and not j.pending() and not j.confirmed()
              and not j.open_sessions())
        assert not j.pending() and not j.confirmed(), "bill not settled"
    else:
        r.run(30000, lambda: bool(r.platform.bills()) and not j.open_sessions())
    b = r.platform.bills()
    assert b, "no bill"
    r.platform.frames = []
    return b[-1].fields["total_energy"]


def wear(bd, sessions, minutes=30, warmup=2, settle=True, root="/p", journal_bytes=65536):
    """Erases per block over `sessions` sessions after `warmup` ones. With
    settle=False the platform confirms nothing (the backlog grows)."""
    import os
    try:
        os.mkdir(root)
    except OSError:
        pass
    r = Rig(root, confirm=settle, settle=settle, cfg={"journal_bytes": journal_bytes})
    r.online()
    for i in range(warmup):
        _session(r, 9000 + i, minutes, settle)
    for i in range(bd.n):
        bd.wear[i] = 0
    if getattr(bd, "sites", None):
        bd.sites.clear()        # erases per call site (tests/board/wearpile.py)
    e0, p0 = bd.erases, bd.progs
    energy = 0
    w0 = r.pile.journal.written
    for i in range(sessions):
        energy += _session(r, i + 1, minutes, settle)
    w = bd.wear
    top = max(w)
    touched = sum(1 for x in w if x)
    print("ok sessions=%d erases=%d progs=%d max_block=%d blocks_erased=%d blocks=%d pending=%d"
          " kwh_x10k=%d journal_bytes=%d compactions=%d"
          % (sessions, bd.erases - e0, bd.progs - p0, top, touched, bd.n, r.pile.journal.count("pending"),
             energy, r.pile.journal.written - w0, r.pile.journal.compactions))


def ticks(bd, minutes=10):
    """Microseconds of emulated time per pile.poll() while charging (run
    qemu with -icount shift=0: one instruction per nanosecond)."""
    import os
    os.mkdir("/p")
    r = Rig("/p")
    r.online()
    new_car(r)
    r.start(serial(1), balance=BALANCE)
    r.run(5000)
    clock = r.world.clock
    pile = r.pile
    n = 0
    total = 0
    worst = 0
    end = clock.ticks_ms() + minutes * 60000
    samples0 = r.world.meter.reads if hasattr(r.world.meter, "reads") else None
    fs_us = 0
    worst_fs = 0
    while clock.ticks_diff(end, clock.ticks_ms()) > 0:
        b0 = bd.us
        t0 = time.ticks_us()
        d = pile.poll()
        dt = time.ticks_diff(time.ticks_us(), t0)
        dfs = bd.us - b0
        fs_us += dfs
        dt -= dfs       # the Python block driver is not the board's (C) flash driver
        if dfs > worst_fs:
            worst_fs = dfs
        n += 1
        total += dt
        if dt > worst:
            worst = dt
        r.platform.pump()
        keep_bills(r)
        clock.sleep_ms(max(1, min(d, 1000)))
    assert not r.platform.bills(), "the session ended early"
    print("ok polls=%d mean_us=%d worst_us=%d total_us=%d fs_driver_us=%d worst_fs_us=%d sim_minutes=%d%s"
          % (n, total // n, worst, total, fs_us, worst_fs, minutes,
             "" if samples0 is None else " meter_reads=%d" % (r.world.meter.reads - samples0)))


def ocmf(bd):
    """Emulated microseconds per OCMF signing step (run qemu with -icount
    shift=0): each pile.poll() while the pile's key point is computed at
    first boot and while a sealed bill is signed (docs/ocmf.md), the
    signer's step alone and the whole poll around it, and the polls of
    the same pile while charging, for comparison."""
    import os
    os.mkdir("/p")
    r = Rig("/p", cfg={"ocmf_entropy": lambda n: bytes(range(1, n + 1))})
    pile = r.pile
    o = pile.ocmf
    link = pile.link
    out = {}

    def measure(tag):
        n = 0
        worst = 0
        total = 0
        while o.busy():
            b0 = bd.us
            t0 = time.ticks_us()
            o.poll(link)
            dt = time.ticks_diff(time.ticks_us(), t0) - (bd.us - b0)   # as ticks(): no Python block driver
            n += 1
            total += dt
            if dt > worst:
                worst = dt
        out[tag] = (n, worst, total)

    measure("key")            # first boot: the public point, in steps
    r.online()
    new_car(r)
    r.start(serial(1), balance=BALANCE)
    clock = r.world.clock
    worst_poll = 0
    for _ in range(60):       # a minute of charging, one poll a second
        b0 = bd.us
        t0 = time.ticks_us()
        d = pile.poll()
        dt = time.ticks_diff(time.ticks_us(), t0) - (bd.us - b0)
        if dt > worst_poll:
            worst_poll = dt
        r.platform.pump()
        clock.sleep_ms(max(1, min(d, 1000)))
    r.stop()
    r.run(5000, lambda: bool(r.platform.bills()))
    assert o.busy(), "no signing after the seal"
    measure("sign")
    r.run(1000, lambda: bool(r.platform.named("bill_sig")))
    assert r.platform.named("bill_sig"), "no signature sent"
    print("ok key_steps=%d key_worst_us=%d key_total_us=%d sign_steps=%d sign_worst_us=%d "
          "sign_total_us=%d charging_worst_poll_us=%d"
          % (out["key"] + out["sign"] + (worst_poll,)))
