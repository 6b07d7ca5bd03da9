"""Charge-control benchmark: limit overshoot, pile-side vs platform-side, and
the smallest MicroPython heap that runs a full session.

    python3 -m tools.bench_overshoot            # print the tables
    python3 -m tools.bench_overshoot --write    # and update docs/benchmarks.md

Overshoot (field case shared/context/field-cases.md §2): targets amount
1 yuan, energy 1 kWh and time 10 min at 7, 60, 120 and 250 kW, on the
simulated vehicle of sim/hardware.py (3 s ramp, no taper in range) and a flat
1.20 yuan/kWh tariff:
  - pile-side: the target is given to the pile (firmware/session.py), which
    samples the meter every 1 s and stops predictively; a second column with
    faster sampling near the limit (min_period_ms=200);
  - platform-side: the pile only uploads realtime data (0x13) at once when
    charging starts and then every 15 s or 60 s (Cadence); the platform
    compares what it sees with the target and sends 0x36; the link delay is
    1 s each way (2 s from the upload to the stop at the pile). Time is judged
    from the upload's "minutes charged", as a platform that decides on
    uploads does.

Heap: `micropython -X heapsize=N tests/mp/session_30min.py` (start, 30 min of
1 s samples with journal callbacks, stop, bill, power-cut rebuild), bisected
on N to 1 KB, once importing the .py sources and once importing modules
precompiled with mpy-cross (as a board would run them, if mpy-cross exists).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from firmware import session as S
from firmware.realtime import Cadence
from sim.hardware import SimWorld
from firmware.tariff import Tariff
from protocol import fields as F
from sim.programs import find_program
from host import cli
from sim import benchdoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PILE = "55031412782305"
SERIAL = PILE + "01" + "240305100000" + "0001"
PRICE = Tariff.flat("0001", 80000, 40000)  # 1.20 yuan/kWh
POWERS = (7000, 60000, 120000, 250000)
TARGETS = (("amount", 10000, "1 yuan"), ("energy", 10000, "1 kWh"), ("minutes", 10, "10 min"))
LINK_DELAY_MS = 1000  # each way
SESSION_SCRIPT = "tests/mp/session_30min.py"
# Every module of the firmware and protocol packages (what a board carries;
# only what the session imports is loaded). Viper code needs a -march.
MPY_MODULES = tuple(sorted(os.path.relpath(p, ROOT)
                           for d in ("firmware", "protocol")
                           for p in glob.glob(os.path.join(ROOT, d, "*.py"))
                           if not p.endswith("crc_viper.py")))


def _world(kw):
    return SimWorld(now=F.to_secs(2024, 3, 5, 10), pile_max_w=kw, capacity_wh=300000, soc=10,
                    meter_start=12345600)


def _gun(w, kw, bills, **kw2):
    return S.Gun(PILE, "01", w.clock, w.meter, w.contactor, w.vehicle, PRICE, max_power_w=kw,
                 on_seal=lambda s, b: bills.append(b), **kw2)


def _result(b, t_ms):
    return {"amount": b["total_amount"], "energy": b["total_energy"], "ms": t_ms,
            "reason": b["stop_reason"]}


def pile_side(kw, kind, value, min_period_ms=0):
    w = _world(kw)
    bills = []
    g = _gun(w, kw, bills, min_period_ms=min_period_ms)
    args = {kind: value}
    assert g.remote_start(SERIAL, balance=10 ** 7, **args) == (1, 0)
    t = w.run(g, 3 * 3600000, until=lambda: g.state == S.FINISHED)
    return _result(bills[0], t)


def platform_side(kw, kind, value, every_s, link_ms=LINK_DELAY_MS):
    w = _world(kw)
    bills = []
    g = _gun(w, kw, bills)
    clock = w.clock
    cad = Cadence(charging_ms=every_s * 1000)
    t0 = clock.ticks_ms()
    cad.poll(t0, g.status(), 1)  # idle report before the start
    assert g.remote_start(SERIAL, balance=10 ** 7) == (1, 0)
    stop_at = None
    while g.state != S.FINISHED:
        d = g.tick()
        t = clock.ticks_ms()
        if stop_at is not None and t >= stop_at:
            g.remote_stop()
            break
        if cad.poll(t, g.status(), 1) and stop_at is None:
            rt = g.realtime()
            seen = {"amount": rt["amount"], "energy": rt["energy"], "minutes": rt["minutes"]}[kind]
            if seen >= value:
                stop_at = t + 2 * link_ms
        wait = min(d, cad.next_due(t) or d)
        if stop_at is not None:
            wait = min(wait, stop_at - t)
        clock.sleep_ms(max(1, wait))
    return _result(bills[0], clock.ticks_ms() - t0)


def _fmt(kind, target, r):
    if kind == "amount":
        v, scale = r["amount"], 10000   # yuan
    elif kind == "energy":
        v, scale = r["energy"], 10000   # kWh
    else:
        v, scale = r["ms"] // 1000, 1   # s
        target = target * 60
    d = v - target
    sign = "+" if d > 0 else ""
    if scale == 1:
        return "%d s (%s%d s)" % (v, sign, d)
    return "%.4f (%s%.4f)" % (v / scale, sign, d / scale)


def overshoot_table():
    rows = ["| target | power | pile-side, 1 s samples | pile-side, 200 ms near the limit "
            "| platform, 15 s uploads | platform, 60 s uploads |",
            "|---|---|---|---|---|---|"]
    for kind, value, label in TARGETS:
        for kw in POWERS:
            cells = [pile_side(kw, kind, value), pile_side(kw, kind, value, 200),
                     platform_side(kw, kind, value, 15), platform_side(kw, kind, value, 60)]
            rows.append("| %s | %d kW | %s |" % (label, kw // 1000, " | ".join(
                [_fmt(kind, value, c) for c in cells])))
    return "\n".join(rows)


# --- heap ---------------------------------------------------------------------

def _runs(mp, heap, script, cwd, env=None):
    try:
        p = subprocess.run([mp, "-X", "heapsize=%d" % heap, script], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, ""
    out = p.stdout.strip().splitlines()
    ok = p.returncode == 0 and out and out[-1].startswith("ok")
    return ok, out[-1] if out else ""


def min_heap(mp, script, cwd, lo=4096, hi=1 << 20, env=None):
    """Smallest -X heapsize (to 1 KB) with which `script` completes."""
    ok, line = _runs(mp, hi, script, cwd, env)
    if not ok:
        return None, line
    lo_k, hi_k = lo // 1024, hi // 1024
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if _runs(mp, mid * 1024, script, cwd, env)[0]:
            hi_k = mid
        else:
            lo_k = mid
    # the edge once more, to be sure it is not luck
    for _ in range(2):
        if not _runs(mp, hi_k * 1024, script, cwd, env)[0]:
            hi_k += 1
    return hi_k, _runs(mp, hi_k * 1024, script, cwd, env)[1]


def heap_figures():
    mp = find_program("micropython")
    if not mp:
        return ["micropython not found: heap figures skipped"]
    lines = []
    src, info = min_heap(mp, SESSION_SCRIPT, ROOT)
    lines.append(("| .py sources (compiled on import) | %s KB | %s |"
                  % (src, _alloc(info))) if src else "| .py sources | failed | %s |" % info)
    cross = find_program("mpy-cross")
    if cross:
        d = tempfile.mkdtemp(prefix="pc-heap-")
        try:
            for m in MPY_MODULES:
                out = os.path.join(d, m[:-3] + ".mpy")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                subprocess.run([cross, "-o", out, os.path.join(ROOT, m)], check=True)
            shutil.copy(os.path.join(ROOT, SESSION_SCRIPT), os.path.join(d, "session_30min.py"))
            pre, info = min_heap(mp, "session_30min.py", d)
            lines.append(("| mpy-cross precompiled .mpy | %s KB | %s |" % (pre, _alloc(info)))
                         if pre else "| .mpy | failed | %s |" % info)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        lines.append("| mpy-cross precompiled .mpy | not measured (no mpy-cross) | |")
    return lines


def _alloc(line):
    m = re.search(r"alloc_after_import=(\d+) alloc_end=(\d+)", line or "")
    if not m:
        return ""
    a, e = int(m.group(1)), int(m.group(2))
    return "%.1f KB | %.1f KB" % (a / 1024, (e - a) / 1024)


def report(heap=True):
    out = ["## Charge control", "",
           "Rerun: `python3 -m tools.bench_overshoot --write` (tools/bench_overshoot.py; "
           "simulated vehicle and meter of sim/hardware.py, flat tariff 1.20 yuan/kWh, "
           "3 s power ramp; platform link delay 1 s each way).", "",
           "### Limit overshoot: billed figure (difference to the target)", "",
           "Pile-side never exceeds the target; it stops short by at most one sample "
           "period's energy plus the 0.01 kWh register step. Platform-side stopping "
           "overshoots by up to one upload period plus the link delay. Uploads restart "
           "when charging starts (a status change is reported at once), so for the time "
           "target both cadences see \"10 minutes charged\" in the upload at 600 s and "
           "overshoot by the link delay alone; with uploads not aligned to the start it "
           "would be up to one upload period more.", "",
           overshoot_table(), ""]
    if heap:
        out += ["### Smallest MicroPython heap for a full session", "",
                "`micropython -X heapsize=N tests/mp/session_30min.py`: start, 30 min of "
                "1 s samples with journal callbacks (a checkpoint every 0.1 kWh), stop, "
                "bill, power-cut rebuild; N bisected to 1 KB. \"modules\" is what the "
                "imported code keeps on the heap (gc.mem_alloc after import); a board "
                "that freezes the modules into flash needs roughly the heap minus that. "
                "\"session\" is what the session itself still holds at the end.", "",
                "| code loaded as | smallest heapsize | modules | session |",
                "|---|---|---|---|"] + heap_figures() + [""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_overshoot", description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--no-heap", action="store_true", help="skip the MicroPython heap bisection")
    a = ap.parse_args(argv)
    with cli.progress("bench_overshoot", enabled=cli.progress_enabled()):
        text = report(heap=not a.no_heap)
    return benchdoc.show(text, a.write)


if __name__ == "__main__":
    sys.exit(main())
