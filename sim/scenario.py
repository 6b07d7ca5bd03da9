# Scenarios for simulated piles (docs/scenarios.md): the real pile firmware
# (firmware/pile.py) on simulated hardware (sim/hardware.py), in simulated
# time, many piles in one process, each talking to a built-in scripted
# platform over an in-memory UART. The front end is `pile-sim scenario FILE`
# (tools/sim.py); the fleet that dials in to a bridge is sim/fleet.py.
#
#   result = run_scenario(load_scenario("tools/scenarios/triple_stop.json"))
#
# The scenario file and its exact parsing are sim/scenario_file.py.
import os
import shutil
import tempfile

from firmware import session as S
from firmware.pile import Pile
from protocol import fields as F
from protocol import reconcile as R
from protocol.router import on, route
from sim.hardware import SimWorld
from sim.links import PtyUart, TcpUart
from sim.loopuart import LoopUart
from sim.platform import ScriptedPlatform
from sim.scenario_file import (DEFAULT_CARD, DEFAULT_LOGICAL, PLATFORM_ACTIONS, START_REASONS,
                               STOP_NAMES, _SETTLE_CAP_MS, _STEP_CAP_MS, parse_vin_policy, yuan_e4)


# --- one simulated pile ----------------------------------------------------------------------

class _SimPile(Pile):
    """The firmware's Pile, unchanged, with its bills and events copied out as
    they are sealed (the result lists what the pile sealed, not what arrived)."""

    def __init__(self, unit, *a, **kw):
        self._unit = unit
        Pile.__init__(self, *a, **kw)

    def event(self, kind, detail=""):
        Pile.event(self, kind, detail)
        self._unit.record("pile_event", name=kind, detail=str(detail))

    def _on_seal(self, serial, bill):
        Pile._on_seal(self, serial, bill)
        self._unit.sealed(serial, bill, "live")

    def _rebuild(self, serial, header, checkpoint):
        bill = S.rebuild_bill(header, checkpoint)
        self._unit.sealed(serial, bill, "power_cut_rebuild")
        return Pile._rebuild(self, serial, header, checkpoint)


def sim_ocmf_entropy(code):
    """A simulated pile's OCMF key from its code (docs/ocmf.md), so that a
    demo can register it before the pile first boots. Simulators only: a
    real pile's key comes from its own random source and is known nowhere
    else."""
    import hashlib
    seed = hashlib.sha256(b"pile-sim ocmf key " + code.encode()).digest()
    return lambda n: seed[:n]


def sim_ocmf_key(code):
    """The OCMF public key a simulated pile makes at its first boot, as the
    site config registers it (DER hex)."""
    from protocol import p256
    return p256.spki_der(p256.public_key(p256.keygen(sim_ocmf_entropy(code)(32)))).hex().upper()


class SimUnit:
    """One pile: world (clock, meter, vehicle, contactor), flash folder, a
    Pile on it (replaced on a power cut or reboot), and its link: a scripted
    platform (scenario mode), a TCP connection or a pty (fleet mode)."""

    def __init__(self, code, root, start_secs, tariff, power_w=60000, vehicle=None,
                 meter_start=0, plugged=False, vin_policy=None, link="loop", confirm=True,
                 settle=True, tcp=None, record=None, fs=None, console=False, pin=None,
                 guns=1, bms=False):
        veh = vehicle or {}
        self.code = code
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.world = SimWorld(now=start_secs, pile_max_w=power_w,
                              capacity_wh=veh.get("capacity_wh", 60000), soc=veh.get("soc", 20),
                              vin=veh.get("vin"), vehicle_max_w=veh.get("max_power_w", 250000),
                              meter_start=meter_start, plugged=plugged)
        # One world per gun on one clock; with bms, each gun's vehicle is the
        # simulated BMS on python-can's virtual bus and the gun talks GB/T
        # 27930 to it (sim/bms.py BmsGun, firmware/bms.py).
        self.worlds = [self.world]
        self.bms = bms
        if bms:
            from sim.bms import BmsGun, VirtualBus
            prof = {"capacity_wh": veh.get("capacity_wh", 60000), "soc": veh.get("soc", 20),
                    "vin": veh.get("vin") or "", "max_power": veh.get("max_power_w", 250000),
                    "plugged": plugged}
            prof.update(veh.get("bms") or {})    # more of SimBms's profile (voltage_dv, ...)
            clock = self.world.clock
            self.worlds = [BmsGun(clock, VirtualBus("pile-sim-%s-%s-%d" % (code, id(self), g + 1)),
                                  meter_start=meter_start, **prof) for g in range(guns)]
        else:
            for _ in range(guns - 1):
                self.worlds.append(SimWorld(pile_max_w=power_w, capacity_wh=veh.get("capacity_wh",
                                                                                    60000),
                                            soc=veh.get("soc", 20), vin=veh.get("vin"),
                                            vehicle_max_w=veh.get("max_power_w", 250000),
                                            meter_start=meter_start, plugged=plugged,
                                            clock=self.world.clock))
        self.cfg = {"pile": code, "gun": "01", "tariff": tariff, "hmi_version": "sim",
                    "vin_policy": vin_policy, "ocmf_entropy": sim_ocmf_entropy(code)}
        if guns > 1:
            self.cfg["guns"] = guns
        if pin:
            self.cfg["pin"] = pin
        # The technician console (firmware/console.py) on a pty of its own:
        # the USB-serial cable's end for pile-console. It outlives reboots
        # and power cuts, as the cable does; a new boot prints a new banner.
        self.console_uart = PtyUart() if console else None
        self.link_kind = link
        self.tcp = tcp
        self.fs = fs              # the journal's flash (None: files under root)
        self._record = record
        self.platform = None
        self.pile = None
        self.uart = None
        self.down_until = None    # ticks: powered off until then
        self.bills = {}           # serial -> (bill dict, how)
        self.executed = []        # serials of executed starts
        self.reboots = 0
        self.power_cuts = 0
        self.counter = 0
        self._confirm = confirm
        self._settle = settle
        self.boot()

    @property
    def clock(self):
        return self.world.clock

    def record(self, what, **kw):
        if self._record is not None:
            self._record(self, what, kw)

    def sealed(self, serial, bill, how):
        if serial not in self.bills:
            self.bills[serial] = (dict(bill), how)

    def boot(self):
        if self.link_kind == "loop":
            a, b = LoopUart.pair()
            if self.platform is None:
                self.platform = ScriptedPlatform(b, self._confirm, self._settle, clock=self.clock)
            else:
                self.platform.pump()  # what the pile wrote before the reset still arrives
                self.platform.new_link(b)
            self.uart = a
        elif self.link_kind == "pty":
            # The line outlives the pile: a reboot or power cut keeps the
            # pty (the bridge holds its path open); what the bridge sent
            # while the pile was off is not there for the new boot to read.
            if self.uart is None:
                self.uart = PtyUart()
            self.uart.drain()
        else:
            if self.uart is not None:
                self.uart.close()
            self.uart = self.new_uart()
        ws = self.worlds
        if len(ws) == 1:
            hw = (ws[0].meter, ws[0].contactor, ws[0].vehicle)
        else:
            hw = ([x.meter for x in ws], [x.contactor for x in ws], [x.vehicle for x in ws])
        self.pile = _SimPile(self, self.cfg, self.root, self.clock, self.uart, hw[0], hw[1], hw[2],
                             fs=self.fs, reboot=self._reboot_hook)
        if self.console_uart is not None:
            from firmware.console import Console
            self.pile.console = Console(self.pile, self.console_uart)

    def new_uart(self):
        """The TCP link of a fresh boot (sim/chaos_fleet.py puts faults in it)."""
        return TcpUart(self.tcp[0], self.tcp[1], on_change=self._link_changed)

    def _link_changed(self, up):
        if self.pile is not None:
            self.pile.link.go_offline("tcp connected" if up else "tcp connection lost")

    def _reboot_hook(self):
        self.reboots += 1
        for w in self.worlds:
            w.contactor.open()
        self.boot()
        self.record("reboot", boot_reason=self.pile.boot_reason)

    def power_cut(self, off_ms):
        self.power_cuts += 1
        for w in self.worlds:
            w.contactor.open()        # the relays drop with the power
        if self.platform is not None:
            self.platform.pump()
        if self.uart is not None and self.link_kind == "tcp":
            self.uart.close()
        self.pile = None
        self.down_until = self.clock.ticks_ms() + off_ms

    def poll(self):
        """Run the pile (and its scripted platform); ms until it wants to run."""
        if self.pile is None:
            if self.clock.ticks_ms() < self.down_until:
                return self.down_until - self.clock.ticks_ms()
            self.down_until = None
            self.boot()
            self.record("power_on", recovered=list(self.pile.recovered))
        d = self.pile.poll()
        if self.platform is not None:
            for f in self.platform.pump():
                self._watch(f)
        return d

    def _watch(self, f):
        route(WATCH, self, f)       # what the unit records of the frames the pile sends

    # --- actions (the timeline's verbs) -----------------------------------------

    def new_serial(self, gun="01"):
        self.counter += 1
        y, mo, d, h, mi, s, _ = F.to_civil(self.clock.now())
        return "%s%s%02d%02d%02d%02d%02d%02d%04d" % (self.code, gun, y % 100, mo, d, h, mi, s,
                                                     self.counter % 10000)

    def close(self):
        """Release the simulated BMSs' buses."""
        for w in self.worlds:
            b = getattr(w, "bus", None)
            if b is not None and hasattr(b, "close"):
                b.close()

    def act(self, a):
        do = a["do"]
        if self.pile is None and do not in ("plug", "unplug"):
            self.record("skipped", action=do, why="the pile is powered off")
            return
        gi = int(a.get("gun", "01")) - 1
        w = self.worlds[gi]
        car = w.bms if self.bms else w.vehicle     # what is plugged in
        if do == "plug":
            veh = a.get("vehicle")
            if veh:
                set_vehicle(car, **veh)
            car.plugged = True
        elif do == "unplug":
            car.plugged = False
        elif do == "bms":
            self._bms_fault(w.bms, a)
        elif do == "stop_button":
            self.record("stop_button", stopped=self.pile.guns[gi].manual_stop())
        elif do == "card":
            t = a.get("targets", {})
            gun = self.pile.guns[gi]
            res, why = gun.offline_start(a.get("card", DEFAULT_CARD), a.get("balance"), **t)
            serial = gun.trade.h["serial"] if gun.trade is not None else (
                gun.bill["serial"] if gun.bill and res else "")
            if res:
                self.executed.append(serial)
            self.record("card_start", serial=serial, result=res, reason=why,
                        reason_name=_start_reason(why))
        elif do == "power_cut":
            self.power_cut(a["off"])
        elif do == "meter_fault":
            if "silent_reads" in a:
                w.meter.fail_next(a["silent_reads"])
            else:
                w.meter.go_backwards(a["backwards"])
        elif do in PLATFORM_ACTIONS:
            if self.platform is None:
                self.record("skipped", action=do, why="attached to a bridge: the platform decides")
                return
            self._platform_act(a)

    def _bms_fault(self, b, a):
        f = a["fault"]
        if f == "silent" and a.get("stage"):
            b.silent_at = a["stage"]     # falls silent on reaching that stage
        elif f == "silent":
            b.silent = True
        elif f == "stop":
            b.stop(a["flags"], at=a.get("stage"))
        elif f == "alarm":
            b.alarm(a["flags"][0] if a["flags"] else "overtemp")
        elif f == "forbid":
            b.forbid = True
        elif f == "permit":
            b.forbid = False
        elif f == "bem":
            b.bem(a["flags"])
        self.record("bms_fault", gun=a.get("gun", "01"), fault=f, flags=a.get("flags", []))

    def _platform_act(self, a):
        do = a["do"]
        p = self.platform
        if do == "outage":
            p.outage_until = self.clock.ticks_ms() + a["for"]
            return
        if p.in_outage():
            self.record("skipped", action=do, why="platform outage")
            return
        gun = a.get("gun", "01")
        if do == "start":
            serial = a.get("serial") or self.new_serial(gun)
            t = a.get("targets") or {}
            v = {"serial": serial, "pile": self.code, "gun": gun,
                 "logical_card": a.get("logical_card", DEFAULT_LOGICAL),
                 "card": a.get("card", DEFAULT_CARD), "balance": a.get("balance", 100000)}
            if t:
                v.update({"target_amount": t.get("amount", 0), "target_energy": t.get("energy", 0),
                          "target_minutes": t.get("minutes", 0), "target_soc": t.get("soc", 0),
                          "flags": 0})
                p.send("ext_start", v)
            else:
                p.send("remote_start", v)
            self.record("start_sent", serial=serial, frame="0xE2" if t else "0x34",
                        targets=dict(t))
        elif do == "stop":
            for _ in range(a.get("times", 1)):
                p.send("remote_stop", {"pile": self.code, "gun": gun})
        elif do == "reboot":
            p.send("reboot", {"pile": self.code, "when": a["when"]})

    def quiet(self):
        """Nothing left to happen: not charging, no bill waiting for the platform."""
        if self.pile is None:
            return False
        j = self.pile.journal
        for g in self.pile.guns:
            if g.state in (S.CHARGING, S.STOPPING, S.AUTHORISING):
                return False
        if self.platform is not None:
            if self.platform.in_outage():
                return False   # the scenario runs until the platform is back
            if not self.platform.confirm:
                return True    # bills can never be confirmed: not charging is enough
        return not j.pending() and (not self._settle or not j.confirmed())


def set_vehicle(v, capacity_wh=None, soc=None, vin=None, max_power_w=None, bms=None):
    """A different vehicle arrives at the gun (the sim's vehicle is reused);
    bms: a BMS car's battery profile (voltage_dv, max_dv, ...)."""
    if hasattr(v, "stage"):      # a simulated BMS (sim/bms.py SimBms)
        v.arrive(capacity_wh, soc, vin, max_power_w, **(bms or {}))
        return
    if capacity_wh is not None:
        v._cap = capacity_wh * 3600000
    if soc is not None:
        v._e = v._cap * soc // 100
    if vin is not None or soc is not None:
        v._vin = vin
        v._vin_seen = False
    if max_power_w is not None:
        v.max_power = max_power_w


def _start_reason(r):
    return START_REASONS.get(r, "code_%d" % r)


# What a unit records of the frames its pile sends the platform: functions by
# frame code (protocol/router.py; they answer nothing, the platform does).
WATCH = {}


@on(WATCH, 0x33)                # remote_start_reply
def _start_reply(u, f):
    v = f.fields
    if v["result"] == 1 and v["serial"] not in u.executed:
        u.executed.append(v["serial"])
    u.record("start_reply", serial=v["serial"], result=v["result"], reason=v["reason"],
             reason_name=_start_reason(v["reason"]))


@on(WATCH, 0x35)                # remote_stop_reply
def _stop_reply(u, f):
    u.record("stop_reply", result=f.fields["result"], reason=f.fields["reason"])


@on(WATCH, 0x91)                # reboot_reply
def _reboot_reply(u, f):
    u.record("reboot_reply", result=f.fields["result"])


@on(WATCH, 0x01)                # login
def _login(u, f):
    u.record("login")


# --- scenario runner ---------------------------------------------------------------------

def _advance(units, target_ms, t_ms, until=None, lazy=False):
    """Poll every unit and move all clocks together up to target_ms (sim ms
    since the scenario start). Returns the new sim time. lazy: between the
    first and the last poll, a unit is polled, and its clock moved on, only
    once the ms it asked for have passed (a fleet's GB/T 27930 pile wants
    50 ms steps while charging: the other piles are not made to run at its
    pace; their clocks move in sub-steps of their own all the same)."""
    due = {}
    owed = {}
    while t_ms < target_ms:
        wait = _STEP_CAP_MS
        for u in units:
            d = due.get(u, t_ms) - t_ms
            if d <= 0:
                o = owed.pop(u, 0)
                if o:
                    u.clock.sleep_ms(o)
                d = u.poll()
                if lazy:
                    due[u] = t_ms + d
            if d < wait:
                wait = d
        if until is not None and until():
            return t_ms
        dt = min(max(1, wait), target_ms - t_ms)
        for u in units:
            if lazy and due[u] > t_ms + dt:
                owed[u] = owed.get(u, 0) + dt
            else:
                u.clock.sleep_ms(dt)
        t_ms += dt
    for u in units:
        o = owed.pop(u, 0)
        if o:
            u.clock.sleep_ms(o)
        u.poll()
    return t_ms


def run_scenario(sc, root=None, keep=False):
    """Run a parsed scenario (parse_scenario / load_scenario) and return the
    result dict (see docs/scenarios.md). root: the flash folders' parent
    (a fresh temp dir by default, removed unless keep)."""
    own = root is None
    if own:
        root = tempfile.mkdtemp(prefix="pile-sim-")
    events = []
    start = sc["start"]

    def rec(unit, kind, kw):
        e = {"t": F.iso(unit.clock.now()), "at_s": unit.clock.ticks_ms() // 1000,
             "pile": unit.code, "event": kind}
        e.update(kw)
        events.append(e)
    units = []
    try:
        for i, p in enumerate(sc["piles"]):
            units.append(SimUnit(p["code"], os.path.join(root, "pile%d-%s" % (i, p["code"])),
                                 start, sc["tariff"], p["power_w"], p["vehicle"],
                                 p["meter_start"], p["plugged"], parse_vin_policy(sc["vin_policy"]),
                                 "loop", sc["confirm"], sc["settle"], record=rec,
                                 guns=p["guns"], bms=p["bms"]))
        by_code = dict((u.code, u) for u in units)
        t = 0
        for a in sc["timeline"]:
            t = _advance(units, a["at"], t)
            u = by_code[a["pile"]]
            ev = {"t": F.iso(u.clock.now()), "at_s": t // 1000, "pile": u.code,
                  "event": "action", "do": a["do"]}
            if a.get("note"):
                ev["note"] = a["note"]
            events.append(ev)
            u.act(a)
        t = _advance(units, max(t, sc["end"]), t)
        # Then until every session has ended and every bill is settled (or cap).
        t = _advance(units, t + _SETTLE_CAP_MS, t, lambda: all(u.quiet() for u in units))
        return _result(sc, units, events, t)
    finally:
        for u in units:
            u.close()
        if own and not keep:
            shutil.rmtree(root, ignore_errors=True)


def reconcile(b):
    """protocol/reconcile.py on a sealed bill (its fee split included):
    (ok, {problem class: passed}, problems)."""
    problems = R.reconcile(b, b)
    bad = R.problem_classes(problems)
    return not problems, dict((c, c not in bad) for c in R.CLASSES), problems


def _e4(v):
    return "%d.%04d" % (v // 10000, v % 10000)


def bill_json(b, how, unit):
    ok, checks, errors = reconcile(b)
    periods = []
    for c in R.periods_of(b):
        periods.append({"class": c, "price": b[c + "_price"], "energy": b[c + "_energy"],
                        "loss": b[c + "_loss"], "amount": b[c + "_amount"],
                        "energy_fee": b[c + "_energy_fee"], "service_fee": b[c + "_service_fee"]})
    serial = b["serial"]
    copies = 0
    status = None
    if unit.platform is not None:
        copies = len([f for f in unit.platform.named("bill", "bill5")
                      if f.fields["serial"] == serial])
    if unit.pile is not None:
        status = unit.pile.journal.status(serial)
    r = b["stop_reason"]
    return {"serial": serial, "pile": b["pile"], "gun": b["gun"],
            "stop_reason": r, "stop_reason_hex": "0x%02X" % r,
            "stop_reason_name": STOP_NAMES.get(r, "code_0x%02X" % r),
            "sealed": how, "start_time": F.iso(b["start_time"]), "end_time": F.iso(b["end_time"]),
            "meter_start": b["meter_start"], "meter_stop": b["meter_stop"], "periods": periods,
            "total_energy": b["total_energy"], "total_loss": b["total_loss"],
            "total_amount": b["total_amount"], "energy_fee": b["energy_fee"],
            "service_fee": b["service_fee"], "kwh": _e4(b["total_energy"]),
            "yuan": _e4(b["total_amount"]), "vin": b["vin"], "nameplate_vin": b["nameplate_vin"],
            "vin_mismatch": bool(b["vin_mismatch"]), "trade_flag": b["trade_flag"],
            "card": b["card"], "model": b["model"], "copies_received": copies,
            "journal_status": status,
            "reconcile": {"ok": ok, "checks": checks, "errors": errors}}


def _result(sc, units, events, t):
    bills = []
    problems = []
    for u in units:
        for serial in sorted(u.bills, key=lambda s: u.bills[s][0]["end_time"]):
            b, how = u.bills[serial]
            j = bill_json(b, how, u)
            bills.append(j)
            if not j["reconcile"]["ok"]:
                problems.append("bill %s does not reconcile: %s"
                                % (serial, "; ".join(j["reconcile"]["errors"])))
        for serial in u.executed:
            if serial not in u.bills:
                problems.append("start %s was executed but has no bill" % serial)
    refusals = [dict((k, e[k]) for k in e if k != "event")
                for e in events if e["event"] in ("start_reply", "card_start")
                and e["result"] == 0]
    piles = []
    for u in units:
        j = u.pile.journal if u.pile is not None else None
        piles.append({"pile": u.code, "bills": len(u.bills), "executed_starts": len(u.executed),
                      "reboots": u.reboots, "power_cuts": u.power_cuts,
                      "logins": len(u.platform.named("login")),
                      "pending": len(j.pending()) if j else None,
                      "unsettled": len(j.confirmed()) if j else None,
                      "frames_lost_in_outage": u.platform.lost})
    res = {"scenario": sc["name"], "description": sc["description"],
           "start": F.iso(sc["start"]), "end": F.iso(sc["start"] + t // 1000),
           "sim_seconds": t // 1000, "piles": piles, "bills": bills, "refusals": refusals,
           "events": events}
    exp = check_expect(sc.get("expect") or {}, res)
    res["expect"] = exp
    problems.extend(exp["failed"])
    res["problems"] = problems
    res["ok"] = not problems
    return res


def check_expect(exp, res):
    """The scenario's own expectations ("expect"): bills, stop_reasons (names
    or codes, in seal order), refusals, max_total_amount (yuan),
    vin_mismatch (count)."""
    failed = []
    bills = res["bills"]
    if "bills" in exp and len(bills) != exp["bills"]:
        failed.append("expected %d bills, got %d" % (exp["bills"], len(bills)))
    if "stop_reasons" in exp:
        got = [b["stop_reason_name"] for b in bills]
        want = [STOP_NAMES.get(x, x) if isinstance(x, int) else x for x in exp["stop_reasons"]]
        if got != want:
            failed.append("expected stop reasons %s, got %s" % (want, got))
    if "refusals" in exp and len(res["refusals"]) != exp["refusals"]:
        failed.append("expected %d refusals, got %d" % (exp["refusals"], len(res["refusals"])))
    if "max_total_amount" in exp:
        cap = yuan_e4(exp["max_total_amount"], "expect.max_total_amount")
        for b in bills:
            if b["total_amount"] > cap:
                failed.append("bill %s: %s yuan > %s" % (b["serial"], b["yuan"], _e4(cap)))
    if "min_periods_used" in exp:
        for b in bills:
            used = len([p for p in b["periods"] if p["energy"]])
            if used < exp["min_periods_used"]:
                failed.append("bill %s uses %d price periods, expected >= %d"
                              % (b["serial"], used, exp["min_periods_used"]))
    if "vin_mismatch" in exp:
        n = len([b for b in bills if b["vin_mismatch"]])
        if n != exp["vin_mismatch"]:
            failed.append("expected %d bills flagged vin_mismatch, got %d" % (exp["vin_mismatch"], n))
    if exp.get("all_delivered"):
        for b in bills:
            if not b["copies_received"] or b["journal_status"] not in ("confirmed", "settled"):
                failed.append("bill %s not delivered and confirmed (%s)"
                              % (b["serial"], b["journal_status"]))
    return {"checked": sorted(exp), "failed": failed}


def format_table(res):
    out = ["scenario %s: %s .. %s (%d s simulated)" % (res["scenario"], res["start"], res["end"],
                                                      res["sim_seconds"])]
    if res["description"]:
        out.append("  " + res["description"])
    out.append("")
    hdr = "%-32s %-6s %-18s %10s %10s %-16s %-9s %s" % (
        "trade serial", "stop", "reason", "kWh", "yuan", "periods (kWh)", "status", "reconciles")
    out.append(hdr)
    out.append("-" * len(hdr))
    for b in res["bills"]:
        per = "/".join(_e4(p["energy"]).rstrip("0").rstrip(".") for p in b["periods"])
        out.append("%-32s %-6s %-18s %10s %10s %-16s %-9s %s" % (
            b["serial"], b["stop_reason_hex"], b["stop_reason_name"], b["kwh"], b["yuan"], per,
            b["journal_status"], "yes" if b["reconcile"]["ok"] else
            "NO: " + "; ".join(b["reconcile"]["errors"])))
    if not res["bills"]:
        out.append("(no bills)")
    out.append("")
    for r in res["refusals"]:
        out.append("refused: %s %s at %s: reason %d (%s)" % (
            r["pile"], r.get("serial", ""), r["t"], r["reason"], r["reason_name"]))
    for p in res["problems"]:
        out.append("PROBLEM: " + p)
    out.append("%s: %d bills, %d refusals, %d problems"
               % ("OK" if res["ok"] else "FAILED", len(res["bills"]), len(res["refusals"]),
                  len(res["problems"])))
    return "\n".join(out)
