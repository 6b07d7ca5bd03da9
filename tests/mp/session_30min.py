# One full simulated session for the heap benchmark (tools/bench_overshoot.py):
# start, 30 min of 1 s samples with journal callbacks, stop, bill. Runs under
# MicroPython and CPython; exit status 0 and a last line "ok ..." on success.
#
#   micropython -X heapsize=24K tests/mp/session_30min.py
import sys
import gc

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_ROOT = _HERE + "/../.."
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main():
    from firmware import session as S
    from sim.hardware import SimWorld
    from firmware.tariff import Tariff
    gc.collect()
    after_import = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0

    slots = [3] * 16 + [1] * 8 + [0] * 4 + [2] * 20  # valley/peak/sharp/flat
    t = Tariff("0001", [(123457, 80003), (101111, 60007), (70001, 40009), (33333, 20001)], slots)
    w = SimWorld(now=S.F.to_secs(2024, 3, 5, 11, 45, 0), pile_max_w=120000,
                 capacity_wh=300000, soc=10, vin="LSVAU2180N2183294", meter_start=12345600)
    kept = {"header": None, "ckpt": None, "bill": None, "n": 0}

    def on_open(s, h):
        kept["header"] = h

    def on_checkpoint(s, p):
        kept["ckpt"] = p
        kept["n"] += 1

    def on_seal(s, b):
        kept["bill"] = b

    g = S.Gun("55031412782305", "01", w.clock, w.meter, w.contactor, w.vehicle, t,
              on_open=on_open, on_checkpoint=on_checkpoint, on_seal=on_seal, max_power_w=120000)
    serial = "55031412782305012403051145000001"
    if g.remote_start(serial, card="D14B0A54", balance=10000000) != (1, 0):
        raise SystemExit("start refused")
    w.run(g, 30 * 60 * 1000)
    g.remote_stop()
    b = kept["bill"]
    total = 0
    amount = 0
    for k in ("sharp", "peak", "flat", "valley"):
        total += b[k + "_energy"]
        amount += b[k + "_amount"]
    assert b["total_energy"] == total == b["meter_stop"] - b["meter_start"]
    assert b["total_amount"] == amount == b["energy_fee"] + b["service_fee"]
    assert b["stop_reason"] == S.STOP_REMOTE and kept["n"] > 0
    r = S.rebuild_bill(kept["header"], kept["ckpt"])
    assert r["total_energy"] == r["meter_stop"] - r["meter_start"]
    gc.collect()
    end = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    print("ok energy=%d amount=%d checkpoints=%d alloc_after_import=%d alloc_end=%d"
          % (b["total_energy"], b["total_amount"], kept["n"], after_import, end))


main()
