# Measuring core of the journal benchmark. Runs under CPython (imported by
# tools/bench_journal.py) and under MicroPython:
#
#   micropython sim/journal_bench.py WORKDIR [BILLS]
#
# prints one JSON object per figure. Stays in the MicroPython subset.
import sys
import time
import json
import gc

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_ROOT = _HERE + "/.."
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from firmware.journal import Journal, RealFS, OVERHEAD  # noqa: E402
from sim.flash import FlashSim  # noqa: E402

HEADER_BYTES = 64       # session header payload the charge control stores
CHECKPOINT_BYTES = 32   # meter u40 + 5 period energies u32 + ticks u32 + 3
BILL_BYTES = 158        # 0x3B body (174 with the deep-valley block)
CK_E4KWH = 1000         # checkpoint every 0.1 kWh ...
CK_MS = 60000           # ... or every 60 s, whichever comes first

try:
    _ticks_us = time.ticks_us
    _diff = time.ticks_diff

    def _now_us():
        return _ticks_us()
except AttributeError:  # CPython
    def _now_us():
        return int(time.perf_counter() * 1000000)

    def _diff(a, b):
        return a - b


def serial(n):
    # YYMMDDhhmmss grows with n, as a platform's serials do (the journal
    # refuses an unknown serial stamped before what it forgot)
    return ("32010200000001" + "01" + "240101%02d%02d%02d" % (n // 3600 % 24, n // 60 % 60, n % 60)
            + "%04d" % (n % 10000))


def checkpoints_for(kwh_e4, power_w):
    """Checkpoints a session of kwh_e4 (x10^4 kWh) at constant power_w takes
    under the 0.1 kWh / 60 s rule (simulated second by second)."""
    per_s = power_w * 10000 // 3600000  # e4kwh per second, integer part
    rem = power_w * 10000 % 3600000
    acc = 0
    e = 0
    last_e = 0
    last_t = 0
    t = 0
    n = 0
    while e < kwh_e4:
        t += 1000
        e += per_s
        acc += rem
        if acc >= 3600000:
            acc -= 3600000
            e += 1
        if e - last_e >= CK_E4KWH or t - last_t >= CK_MS:
            n += 1
            last_e = e
            last_t = t
    return n, t // 1000


def _session(j, i, hdr, ck, checkpoints, bill):
    """Session i written as the charge control writes one: opened,
    `checkpoints` checkpoints (ck, a bytearray, counting), sealed with
    `bill`. Returns its trade serial."""
    s = serial(i + 1)
    j.open_session(s, hdr)
    for k in range(checkpoints):
        ck[0] = k & 0xFF
        j.checkpoint(s, ck)
    j.seal(s, bill)
    return s


def session_bytes(kwh_e4, power_w, sessions=20, bill_bytes=BILL_BYTES,
                  limit=65536):
    """Bytes handed to the filesystem per session in steady state: open,
    checkpoints, seal, host confirm, platform settle, and the compactions
    that come with them, averaged over `sessions` sessions."""
    ncp, secs = checkpoints_for(kwh_e4, power_w)
    fs = FlashSim()
    j = Journal("/flash/bills.j", fs, limit)
    j.recover()
    hdr = bytes(HEADER_BYTES)
    ck = bytearray(CHECKPOINT_BYTES)
    bill = bytes(bill_bytes)
    for i in range(sessions):
        s = _session(j, i, hdr, ck, ncp, bill)
        j.confirm(s)
        j.settle(s)
    per = fs.bytes_written // sessions
    records = (OVERHEAD + HEADER_BYTES + ncp * (OVERHEAD + CHECKPOINT_BYTES)
               + OVERHEAD + bill_bytes + 2 * OVERHEAD)
    return {"figure": "session", "kwh": kwh_e4 / 10000, "power_w": power_w,
            "minutes": secs // 60, "checkpoints": ncp, "bytes_per_session": per,
            "record_bytes": records, "compactions": j.compactions,
            "bill_bytes": bill_bytes, "amplification": per / bill_bytes}


class _NoSync(RealFS):
    # Building the test journal only: no fsync per record.
    def sync(self, f=None, path=None):
        pass


def build_journal(path, bills, compacted):
    """A journal of `bills` pending bills (each session: header, 3
    checkpoints, bill), written to path on the real filesystem."""
    j = Journal(path, _NoSync(), 4 * 1024 * 1024)
    j.recover()
    hdr = bytes(HEADER_BYTES)
    ck = bytearray(CHECKPOINT_BYTES)
    bill = bytearray(BILL_BYTES)
    for i in range(bills):
        bill[0] = i & 0xFF
        _session(j, i, hdr, ck, 3, bill)
    if compacted:
        j.compact()
    return j.bytes_used()


def _load(path):
    j = Journal(path, limit_bytes=4 * 1024 * 1024)
    j.recover()
    j.report = None  # measure what the journal keeps, not the boot report
    return j


def _scrub(n):
    # MicroPython's GC is conservative: stale pointers left on the stack by
    # recover() would keep the report alive; overwrite that stack area.
    pad = [0] * 32
    return len(pad) if n == 0 else _scrub(n - 1)


def journal_ram(path):
    """Heap the recovered journal keeps (MicroPython: gc.mem_alloc delta;
    CPython: tracemalloc)."""
    gc.collect()
    if hasattr(gc, "mem_alloc"):
        before = gc.mem_alloc()
        j = _load(path)
        _scrub(20)
        gc.collect()
        used = gc.mem_alloc() - before
    else:
        import tracemalloc
        tracemalloc.start()
        j = _load(path)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    del j
    return used


def recovery(workdir, bills=1000, compacted=True, rounds=3):
    """Boot recovery of a journal holding `bills` pending bills: best time
    of `rounds`, and the RAM the recovered journal keeps."""
    path = workdir + "/bench-%d-%d.j" % (bills, 1 if compacted else 0)
    size = build_journal(path, bills, compacted)
    best = None
    for _ in range(rounds):
        gc.collect()
        t0 = _now_us()
        j = Journal(path, limit_bytes=4 * 1024 * 1024)
        rep = j.recover()
        us = _diff(_now_us(), t0)
        assert j.count("pending") == bills and not rep.damaged
        best = us if best is None or us < best else best
        del j, rep
    ram = journal_ram(path)
    return {"figure": "recovery", "bills": bills, "compacted": compacted,
            "file_bytes": size, "ms": best / 1000, "ram_bytes": ram}


def run_all(workdir, bills=1000):
    out = []
    for kwh, w in ((300000, 7000), (300000, 60000), (300000, 3300)):
        out.append(session_bytes(kwh, w))
    out.append(session_bytes(300000, 7000, bill_bytes=174))
    out.append(recovery(workdir, bills, True))
    out.append(recovery(workdir, bills, False))
    return out


def main(argv):
    workdir = argv[0] if argv else "/tmp"
    bills = int(argv[1]) if len(argv) > 1 else 1000
    for r in run_all(workdir, bills):
        print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
