"""Power-sharing benchmark: the firmware's allocator (firmware/sharing.py)
and charge control (firmware/session.py Gun, one per gun) on simulated
vehicles, meters and power outputs (sim/hardware.py), over thousands of
randomised arrivals and departures and randomised cap changes (the
platform's 0x52 percentage, the site cap, module faults and repairs).

Every 100 ms control tick: the tick's events are applied, then
Sharing.tick() divides the cap and commands the outputs, then each Gun
ticks (samples its meter when due), then the simulated world runs for the
tick. Reported:

- ticks over the cap: ticks in which the power the vehicles drew (summed
  over the guns, at every 100 ms sub-step) exceeded the cap in force at
  the tick (goal 0); also ticks whose commanded shares summed over it;
- settle time: after each event, ticks until every charging gun draws its
  max-min fair share of the new cap (within 1 % + 100 W), by the kind of
  event (cap change, departure, arrival); the simulated vehicle's own 3 s
  ramp after its contactor closes is part of it: for arrivals, and for a
  cap change or departure that raises the share of a gun still ramping;
- fairness: Jain's index over the power of the guns of one priority that
  want more than they get (all should draw the same), per settled tick and
  priority level with two or more such guns (1.0 = equal);
- bills: sessions sealed, bills that do not reconcile (protocol/reconcile.py).

    python tools/bench_sharing.py --sessions 2000 --guns 4 --seed 1 [--json]
"""
import argparse
import json
import os
import sys
import time

# Run as a script, tools/ comes first on sys.path, where tools/sim.py would
# hide the sim package: the repository root goes first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from firmware import session as S  # noqa: E402
from firmware.sharing import Sharing, TICK_MS, allocate, gun_demand  # noqa: E402
from protocol import fields as F  # noqa: E402
from protocol.reconcile import reconcile  # noqa: E402
from sim.fleet import default_tariff  # noqa: E402
from sim.hardware import SimOutput, SimWorld  # noqa: E402

_PILE = "55031412782305"


class _Rnd:
    # a small LCG: the same run on any Python
    def __init__(self, seed):
        self.x = seed * 2654435761 % (1 << 31) or 1

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 4) % n


def _jain(xs):
    s = sum(xs)
    q = sum(x * x for x in xs)
    return (s * s) / (len(xs) * q) if q else 1.0


def run(sessions=2000, guns=4, seed=1, modules=8, module_w=20000, rating_w=160000,
        prio=False, mean_gap_s=60):
    rnd = _Rnd(seed)
    now = F.to_secs(2026, 11, 24, 10, 0, 0)
    w0 = SimWorld(now=now, pile_max_w=0, step_ms=TICK_MS, plugged=False)
    worlds = [w0] + [SimWorld(pile_max_w=0, plugged=False, clock=w0.clock) for _ in range(guns - 1)]
    clock = w0.clock
    tariff = default_tariff()
    gl = [S.Gun(_PILE, "%02d" % (i + 1), clock, w.meter, w.contactor, w.vehicle, tariff,
                max_power_w=rating_w) for i, w in enumerate(worlds)]
    outs = [SimOutput(w.vehicle) for w in worlds]
    prios = [1] + [0] * (guns - 1) if prio else [0] * guns
    sh = Sharing(gl, outs, rating_w, modules, module_w, prios)
    started = 0
    bills = []
    unreconciled = 0
    ticks = over = over_cmd = 0
    settle = {"cap": [], "departure": [], "arrival": []}
    unsettled_since = None
    kind = None
    jain = []
    plan = [None] * guns          # per gun: ("idle", ticks until arrival) / ("charging", stop at tick)
    for i in range(guns):
        plan[i] = ["idle", rnd.below(mean_gap_s * 10) + 1]
    n = 0
    cap_events = 0
    t0 = time.time()
    while started < sessions or any(g.state == S.CHARGING for g in gl):
        ticks += 1
        event = False
        # --- the tick's events ---------------------------------------------------
        if rnd.below(600) == 0:                       # about every minute: the cap moves
            k = rnd.below(3)
            if k == 0:
                sh.set_percent(30 + rnd.below(71))
            elif k == 1:
                sh.set_site_cap(0 if rnd.below(3) == 0 else 20000 + rnd.below(140001))
            else:
                sh.module_fault(rnd.below(modules + 1) if rnd.below(2) else 0)
            cap_events += 1
            event = "cap"
        for i in range(guns):
            g, w, p = gl[i], worlds[i], plan[i]
            if p[0] == "idle":
                p[1] -= 1
                if p[1] <= 0 and started < sessions and g.state in (S.IDLE, S.PLUGGED, S.FINISHED):
                    v = w.vehicle
                    v.max_power = 30000 + rnd.below(220001)
                    soc = 5 + rnd.below(85)
                    v._e = v._cap * soc // 100
                    v._on_ms = 0
                    v.plugged = True
                    n += 1
                    serial = _PILE + "%02d" % (i + 1) + "261124" + "%010d" % n
                    energy = (1 + rnd.below(50)) * 1000 if rnd.below(2) else 0
                    res, _ = g.remote_start(serial, balance=None, energy=energy)
                    if res:
                        started += 1
                        # departure: a stop after 10 s .. 5 min, if the target has not ended it
                        p[0], p[1] = "charging", ticks + 100 + rnd.below(2900)
                        event = "arrival"
                    else:
                        v.plugged = False
                        p[1] = 10
            elif p[0] == "charging":
                if g.state != S.CHARGING or ticks >= p[1]:
                    if g.state == S.CHARGING:
                        g.remote_stop()
                    w.vehicle.plugged = False
                    b = g.bill
                    bills.append(b["serial"])
                    if reconcile(b):
                        unreconciled += 1
                    p[0], p[1] = "idle", 1 + rnd.below(mean_gap_s * 20)
                    if event != "arrival":
                        event = "departure"
        if event:
            if unsettled_since is None:
                unsettled_since, kind = ticks, event
            elif event == "arrival" or kind == "cap":
                kind = event      # the slowest kind pending names the wait
        # --- control -------------------------------------------------------------
        cap = sh.cap()
        sh.tick()
        if sum(sh.share) > cap:
            over_cmd += 1
        for g in gl:
            g.tick()
        # --- the world runs for one tick ----------------------------------------
        drawn = 0
        clock.sleep_ms(TICK_MS)
        for w in worlds:
            drawn += w.vehicle.power
        if drawn > cap:
            over += 1
        # --- settled? fair? -------------------------------------------------------
        dem = [gun_demand(g) if g.state == S.CHARGING else 0 for g in gl]
        ideal = [0] * guns
        allocate(cap, dem, prios, ideal)
        ok = True
        for i in range(guns):
            if gl[i].state == S.CHARGING:
                got = worlds[i].vehicle.power
                if abs(got - ideal[i]) > ideal[i] // 100 + 100:
                    ok = False
        if ok and unsettled_since is not None:
            # ticks until settled, counting the event's own: 1 = within the tick
            settle[kind].append(ticks - unsettled_since + 1)
            unsettled_since = None
        if ok:
            # per priority level: the guns held below their demand should draw alike
            for lvl in set(prios):
                want = [worlds[i].vehicle.power for i in range(guns)
                        if gl[i].state == S.CHARGING and prios[i] == lvl and dem[i] > ideal[i]]
                if len(want) >= 2:
                    jain.append(_jain(want))
    out = {}
    for k, xs in settle.items():
        xs.sort()
        out[k] = {"events": len(xs),
                  "median_ms": xs[len(xs) // 2] * TICK_MS if xs else None,
                  "p99_ms": xs[min(len(xs) - 1, len(xs) * 99 // 100)] * TICK_MS if xs else None,
                  "max_ms": xs[-1] * TICK_MS if xs else None}
    return {"sessions": started, "guns": guns, "seed": seed, "prio": prio,
            "simulated_s": ticks * TICK_MS // 1000, "ticks": ticks,
            "ticks_over_cap": over, "ticks_commanded_over_cap": over_cmd,
            "cap_events": cap_events, "settle_cap_change": out["cap"],
            "settle_departure": out["departure"], "settle_arrival": out["arrival"],
            "fairness_jain_mean": round(sum(jain) / len(jain), 6) if jain else None,
            "fairness_jain_min": round(min(jain), 6) if jain else None,
            "fairness_ticks": len(jain), "bills": len(bills), "bills_unreconciled": unreconciled,
            "wall_s": round(time.time() - t0, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--guns", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prio", action="store_true", help="gun 1 has priority over the others")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(a.sessions, a.guns, a.seed, prio=a.prio)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print("%-26s %s" % (k, v))
    return 1 if r["ticks_over_cap"] or r["bills_unreconciled"] else 0


if __name__ == "__main__":
    sys.exit(main())
