# pile-demo's driver (docs/demo.md): a broker, the bridge as a child process,
# the reference platform and seven simulated piles running the real firmware
# (pile 7 a two-gun DC pile, a simulated BMS on each gun), in simulated time;
# the field cases replayed through MQTT commands, then the summary. The
# command line is tools/demo.py.
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

from firmware.bms import YKC_PACK_TEMP, YKC_SOC
from firmware.vinauth import STOP_VIN_DENIED
from host import cli
from host.mqtt import stop_tasks
from protocol.fields import PERIODS5
from sim.bms import CHARGING as BMS_CHARGING
from sim.fleet import SimFleet
from sim.scenario import sim_ocmf_key
from sim.scenario_file import STOP_NAMES, parse_scenario
from sim import stack

SITE = "demo"
_SCENARIOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "scenarios")
_END_MIN = 110           # the script's last step, simulated minutes after 05:45

# The field cases: (key, pile index, gun, title, what should happen). Checked
# from the bills the platform stored (Demo.cases()).
CASES = (
    ("triple_stop", 0, "01", "triple stop", "one start, three stop commands: exactly one bill"),
    ("amount_target", 1, "01", "charge to 1 yuan",
     "60 kW, amount target 1.00 yuan: the pile stops at or below it (amount_target), "
     "a stop after the automatic stop changes nothing"),
    ("power_cut", 2, "01", "power cut mid-session",
     "the bill comes back after boot, stopped power_lost (0x83)"),
    ("vin_refusal", 3, "01", "VIN refusal",
     "a fleet card, a bus whose VIN is not the fleet's: stopped vin_not_authorised (0x8A)"),
    ("five_classes", 4, "01", "five tariff classes",
     "05:46 .. 07:35, deep valley to sharp: energy in all five classes, totals add up"),
    ("outage", 5, "01", "platform outage", "a bill made while the platform is away is delivered "
     "and confirmed when it is back"),
    # Pile 7: a two-gun DC pile talking GB/T 27930 over CAN to each car's
    # BMS (sim/bms.py on python-can's virtual bus; docs/bms.md).
    ("bms_soc", 6, "01", "charge to SOC 80 % (BMS)",
     "DC gun 1, the car's BMS over CAN: SOC target 80 %, the pile stops on the SOC the BMS "
     "reports (soc, 0x41), the bill reconciles"),
    ("bms_fault", 6, "02", "BMS fault mid-charge",
     "DC gun 2: at 05:49, mid-charge, the car's BMS stops it for battery over-temperature "
     "(BST): stopped bms_battery_temp (0x7C), the bill sealed and confirmed"),
)
_CASE = dict((c[0], c) for c in CASES)
_TARGET_E4 = 10000       # "charge to 1 yuan": x10^4 yuan
_TARGET_SOC = 80         # "charge to SOC 80 %"


def _yuan(e4):
    return "%s%d.%04d" % ("-" if e4 < 0 else "", abs(e4) // 10000, abs(e4) % 10000)


def _stop_name(raw):
    # the simulator's names (sim/scenario_file.py), finer than the platform's for the BMS's
    r = raw.get("stop_reason", 0)
    return STOP_NAMES.get(r, "0x%02X" % r)


def _say(quiet, msg):
    if not quiet:
        print(msg, flush=True)


class Demo:
    def __init__(self, speed=120.0, quiet=False, workdir=None, broker="mosquitto", ocpp=None,
                 status=False):
        self.status = status   # serve the bridge's status page (docs/status.md)
        self.status_url = None
        self.ocpp = ocpp       # None, "2.0.1" or "1.6"
        self.csms = None
        self.prefer = broker
        self.speed = speed
        self.quiet = quiet
        self.own = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="pc-demo-")
        self.broker = None
        self.bridge = None
        self.fleet = None
        self.platform = None
        self.targets = {}      # serial -> amount target (x10^4 yuan)
        self.started = []      # serials the piles accepted (executed starts)
        self.refused = []      # (pile, reply) of starts the piles refused
        self.serial_of = {}    # case key -> the serial of its start
        self.stops = {}        # pile index -> [result codes of its stop commands]
        self._tick = None      # progress: advance(n, note) or None
        self._shown_min = 0

    # --- parts ------------------------------------------------------------------

    def start_broker(self):
        self.broker = stack.start_broker(self.prefer)
        _say(self.quiet, "broker   %s on 127.0.0.1:%d" % (type(self.broker).__name__.lower(),
                                                         self.broker.port))

    def start_bridge(self):
        # The piles live in simulated time (the scenario's 05:45 start, so pile
        # 5 crosses all five tariff classes): the bridge leaves their clocks.
        extra = "[piles]\ntime_sync_s = 0\n"
        # Each pile's OCMF key registered, as a site does from the console's
        # 'key' (docs/ocmf.md): the bills go out with records that verify.
        for code in self._codes():
            extra += '[pile."%s"]\nocmf_key = "%s"\n' % (code, sim_ocmf_key(code))
        if self.csms is not None:
            extra += ("[ocpp]\ncsms_url = %s\nversion = %s\nretry_initial_s = 0.2\n"
                      "retry_max_s = 2.0\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n"
                      % (json.dumps(self.csms.url), json.dumps(self.ocpp)))
        self.bridge = stack.BridgeProcess(self.dir, SITE, self.broker.port, extra=extra,
                                          status=self.status)
        self.tcp_port = self.bridge.start()
        _say(self.quiet, "bridge   pid %d, piles dial 127.0.0.1:%d" % (self.bridge.pid, self.tcp_port))
        if self.status:
            self.status_url = "http://127.0.0.1:%d/" % self.bridge.status_port
            print("status   %s" % self.status_url, file=sys.stderr if self.quiet else sys.stdout,
                  flush=True)

    def _scenario(self):
        with open(os.path.join(_SCENARIOS, "demo.json")) as f:
            return parse_scenario(json.load(f), "demo")

    def _codes(self):
        return [p["code"] for p in self._scenario()["piles"]]

    def start_fleet(self):
        sc = self._scenario()
        self.fleet = SimFleet(("127.0.0.1", self.tcp_port), speed=self.speed, scenario=sc,
                                  root=os.path.join(self.dir, "piles"))
        self.codes = [u.code for u in self.fleet.units]
        self.fleet.start()
        _say(self.quiet, "piles    %d simulated piles (real firmware), %gx simulated time"
             % (len(self.codes), self.speed))

    def stop(self):
        if self.fleet:
            self.fleet.stop()
        if self.bridge:
            self.bridge.stop()
        if self.broker:
            self.broker.close()
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- the script -------------------------------------------------------------

    def _clock(self, minutes):
        h, m = divmod(5 * 60 + 45 + int(minutes), 60)
        return "%02d:%02d" % (h, m)

    async def at(self, minutes):
        """Wait until the piles' simulated clock reaches `minutes`, showing
        the simulated clock meanwhile (the bar, or a line each 10 minutes)."""
        step = 10
        while True:
            now = self.fleet.sim_ms // 60000
            nxt = min(minutes, (now // step + 1) * step)
            ms = int(nxt * 60000)
            await asyncio.to_thread(self.fleet.wait, lambda f: f.sim_ms >= ms, 120)
            done = min(self.fleet.sim_ms // 60000, _END_MIN)
            charging = len([p for p in self.fleet.stats()["per_pile"]
                            if p["state"] == "charging"])
            note = "%s simulated, %d charging" % (self._clock(done), charging)
            if self._tick is not None:
                self._tick(max(0, done - self._shown_min), note)
            elif done // step > self._shown_min // step:
                _say(self.quiet, "  ... %s" % note)
            self._shown_min = max(self._shown_min, done)
            if nxt >= minutes:
                return

    def case(self, key):
        n = CASES.index(_CASE[key])
        _, i, gun, title, what = CASES[n]
        _say(self.quiet, "case %d/%d  %s (pile %d%s): %s" % (
            n + 1, len(CASES), title, i + 1, "" if gun == "01" else " gun %d" % int(gun), what))

    async def cmd(self, i, cmd, **args):
        res = await self.platform.command(SITE, self.codes[i], cmd, timeout=30, **args)
        return res

    async def start(self, key, card="D14B0A54", amount=0, soc=0):
        _, i, gun = _CASE[key][:3]
        args = {"gun": gun, "balance": 100000, "card": card, "logical_card": "1000000573"}
        if amount:
            args["targets"] = {"amount": amount}
        if soc:
            args["targets"] = {"soc": soc}
        res = await self.cmd(i, "start", **args)
        serial = res.get("serial") or (res.get("reply") or {}).get("serial")
        if res.get("ok"):
            self.started.append(serial)
            self.serial_of[key] = serial
            if amount:
                self.targets[serial] = amount
        else:
            self.refused.append((self.codes[i], res.get("message")))
        _say(self.quiet, "  pile %d%s start: %s" % (i + 1, "" if gun == "01" else " gun %d" % int(gun),
                                                   res.get("message")))
        return serial

    async def stop_gun(self, i, ended=False):
        """A stop command; ended=True: the session has already ended (a
        repeated stop, a stop after the automatic stop): the pile's "not
        charging" is the expected answer, and no second bill follows."""
        res = await self.cmd(i, "stop", gun="01")
        self.stops.setdefault(i, []).append(res.get("code"))
        if res.get("ok"):
            msg = "stopping; its bill follows"
        elif ended and res.get("code") == "refused":
            msg = "not charging any more, as expected: no second bill"
        else:
            msg = res.get("message")
        _say(self.quiet, "  pile %d stop: %s" % (i + 1, msg))
        return res

    async def bms_fault(self, key, flags):
        """The car's BMS on the case's gun stops the charge with a BST of
        these flags, once it charges (a BST before charging would be a start
        failure, another case)."""
        bms = self._bms(key)
        charging = await asyncio.to_thread(
            self.fleet.wait, lambda f: bms.stage == BMS_CHARGING and bms.power > 0, 60)
        _, i, gun = _CASE[key][:3]
        unit = self.fleet.units[i]
        self.fleet.call(lambda: unit.act({"do": "bms", "gun": gun, "fault": "stop",
                                          "flags": flags}))
        _say(self.quiet, "pile %d gun %d: the car's BMS sends BST %s at %s%s" % (
            i + 1, int(gun), ", ".join(flags),
            self._clock(self.fleet.sim_ms // 60000),
            "" if charging else " (it never charged)"))

    async def wait_online(self):
        await asyncio.to_thread(self.fleet.wait,
                                lambda f: f.stats()["online"] == len(self.codes), 60)

    async def script(self):
        await self.wait_online()
        _say(self.quiet, "all piles online; replaying the field cases (simulated clock from %s)"
             % self._clock(0))
        await self.at(1)
        self.case("triple_stop")
        await self.start("triple_stop")
        self.case("amount_target")
        await self.start("amount_target", amount=_TARGET_E4)   # "charge to 1 yuan"
        self.case("power_cut")
        await self.start("power_cut")                      # the power cut comes at 12 min
        self.case("vin_refusal")
        await self.start("vin_refusal", card="B0B0B0B0")   # fleet card, foreign bus
        self.case("five_classes")
        await self.start("five_classes")
        self.case("outage")
        await self.start("outage")
        self.case("bms_soc")
        await self.start("bms_soc", soc=_TARGET_SOC)
        self.case("bms_fault")
        await self.start("bms_fault")
        await self.at(4)
        await self.bms_fault("bms_fault", ["battery_temp"])
        await self.at(6)
        _say(self.quiet, "triple stop on pile 1:")
        await self.stop_gun(0)
        await self.stop_gun(0, ended=True)
        await self.stop_gun(0, ended=True)
        await self.at(15)
        _say(self.quiet, "platform outage begins (it stops taking bills)")
        self.platform.silent = True
        if self.csms is not None:
            _say(self.quiet, "CSMS down")
            await self.csms.stop()
        await self.at(18)
        await self.stop_gun(5)
        _say(self.quiet, "pile 3 lost power at %s; its bill is rebuilt at boot:"
             % self._clock(12))
        await self.stop_gun(2, ended=True)
        await self.at(30)
        _say(self.quiet, "platform back")
        self.platform.silent = False
        if self.csms is not None:
            await self.csms.start()
            _say(self.quiet, "CSMS back on 127.0.0.1:%d" % self.csms.port)
        _say(self.quiet, "stop after the automatic stop on pile 2:")
        await self.stop_gun(1, ended=True)
        _say(self.quiet, "pile 5 charges on into the sharp class (07:30)")
        await self.at(_END_MIN)                            # 07:35: into the sharp class
        await self.stop_gun(4)
        _say(self.quiet, "pile 4's session was stopped by the VIN check at its start:")
        await self.stop_gun(3, ended=True)

    async def settle(self, timeout=60):
        """Wait until every bill the piles sealed is in the platform's store."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            sealed = set(s for s, in self._sealed())
            if sealed and sealed <= self.platform.serials() and not self._charging() and (
                    self.csms is None or len(self.csms.ended) >= len(sealed)):
                return True
            self.platform.changed.clear()
            try:
                await asyncio.wait_for(self.platform.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        return False

    def _sealed(self):
        return [(b["serial"],) for b in self.fleet.bills()]

    def _charging(self):
        return any(s in ("charging", "stopping", "authorising")
                   for p in self.fleet.stats()["per_pile"] for s in p.get("guns", [p["state"]]))

    def summary(self):
        sealed = self.fleet.bills()
        got = dict((b["serial"], b) for b in self.platform.bills())
        sealed_serials = [b["serial"] for b in sealed]
        executed = set(self.started) | set(sealed_serials)
        bills_per_start = {}
        for s in sealed_serials:
            bills_per_start[s] = bills_per_start.get(s, 0) + 1
        overshoot = None
        for serial, target in self.targets.items():
            b = got.get(serial)
            if b:
                over = b["raw"]["total_amount"] - target
                overshoot = over if overshoot is None or over > overshoot else overshoot
        stops = {}
        for b in got.values():
            name = b["stop_reason"]["name"] if isinstance(b.get("stop_reason"), dict) else "?"
            stops[name] = stops.get(name, 0) + 1
        # The field cases the summary can vouch for by the bills themselves:
        # a VIN refusal is a bill stopped with 0x8A (firmware/vinauth.py), a
        # five-class session a bill with energy in every one of the five periods.
        vin_refused = [s for s, b in got.items() if b["raw"].get("stop_reason") == STOP_VIN_DENIED]
        five = [s for s, b in got.items()
                if all(b["raw"].get(c + "_energy", 0) > 0 for c in PERIODS5)]
        st = self.platform.summary()
        limits = []
        for serial, target in self.targets.items():
            b = got.get(serial)
            if b:
                d = b["raw"]["total_amount"] - target
                limits.append({"serial": serial, "target_yuan": _yuan(target),
                               "result_yuan": _yuan(b["raw"]["total_amount"]),
                               "difference_yuan": _yuan(d),
                               "within_target": d <= 0})
        return {
            "sessions": len(executed),
            "bills": len(got),
            "confirmed": len([s for s in executed if s in got]),
            "lost": len([s for s in executed if s not in got]),
            "duplicated": len([s for s, n in bills_per_start.items() if n > 1]),
            "unreconciled": st["unreconciled"],
            "worst_limit_overshoot_yuan": None if overshoot is None else _yuan(overshoot),
            "refused_starts": len(self.refused),
            "vin_refused_bills": len(vin_refused),
            "five_class_bills": len(five),
            "stop_reasons": stops,
            "energy_kwh": st["energy_kwh"],
            "amount_yuan": st["amount_yuan"],
            "platform_copies_received_again": st["duplicates_received"],
            "limit_cases": limits,
            "cases": self.cases(got, bills_per_start, sealed),
            "bills_detail": [self._bill_row(b) for b in got.values()],
            # OCMF (docs/ocmf.md): bills whose record checks with the pile's registered key
            "ocmf_verified": len([b for b in got.values()
                                  if (b.get("ocmf") or {}).get("verdict") == "verified"]),
            **self._ocpp_summary(executed, sealed_serials),
        }

    def _ocpp_summary(self, executed, sealed):
        if self.csms is None:
            return {}
        if self.ocpp == "1.6":
            # 1.6: the CSMS numbers transactions itself; count Stops by
            # their meter and time, matched to the sealed bills by count.
            ended = sum(self.csms.ended.values())
            return {"ocpp": self.ocpp, "csms_transactions_ended": ended,
                    "csms_lost": max(0, len(sealed) - ended),
                    "csms_duplicated": len([n for n in self.csms.ended.values() if n > 1]),
                    "csms_messages_received_again": len(self.csms.events) - len(self.csms.unique)}
        ended = self.csms.ended
        return {"ocpp": self.ocpp, "csms_transactions_ended": len(ended),
                "csms_lost": len([s for s in executed if s not in ended]),
                "csms_duplicated": len([s for s, n in ended.items() if n > 1]),
                "csms_messages_received_again": len(self.csms.events) - len(self.csms.unique)}

    def _bill_row(self, b):
        case = [k for k, s in self.serial_of.items() if s == b["serial"]]
        sr = b.get("stop_reason") if isinstance(b.get("stop_reason"), dict) else {}
        row = self.platform.bill(b["serial"]) or {}
        return {"serial": b["serial"], "pile": b.get("pile"), "case": case[0] if case else None,
                "energy_kwh": b.get("total_energy"), "amount_yuan": b.get("total_amount"),
                "stop_reason": sr.get("name"), "stop_code": sr.get("code"),
                "start_time": b.get("start_time"), "end_time": b.get("end_time"),
                "periods": {p["period"]: p["energy"] for p in b.get("periods") or []},
                "reconciled": (b.get("checks") or {}).get("ok"),
                "ocmf": b.get("ocmf"),
                "confirm_result": row.get("confirm_result") if isinstance(row, dict) else None}

    def _bms(self, key):
        """The simulated car on a BMS case's gun (sim/bms.py SimBms)."""
        _, i, gun = _CASE[key][:3]
        return self.fleet.units[i].worlds[int(gun) - 1].bms

    def cases(self, got, per_start, sealed=()):
        """[{case, title, pile, gun, expected, result, pass}] from the stored
        bills (the BMS cases also from the simulated car and the pile's
        journal: sealed is fleet.bills())."""
        status = dict((b["serial"], b.get("journal_status")) for b in sealed)
        out = []
        for key, i, gun, title, what in CASES:
            serial = self.serial_of.get(key)
            b = got.get(serial)
            sr = (b or {}).get("stop_reason") or {}
            name = sr.get("name") if isinstance(sr, dict) else None
            raw = (b or {}).get("raw") or {}
            ok = b is not None and per_start.get(serial, 0) == 1 and \
                bool((b.get("checks") or {}).get("ok"))
            if b is None:
                result = "no bill at the platform"
            elif key == "triple_stop":
                stops = self.stops.get(i, [])
                ok = ok and stops[:1] == ["ok"] and all(c == "refused" for c in stops[1:])
                result = "%d bill for %d stop commands (%s)" % (per_start.get(serial, 0),
                                                               len(stops), name)
            elif key == "amount_target":
                d = raw.get("total_amount", 0) - _TARGET_E4
                ok = ok and name == "amount_target" and d <= 0
                result = "target %s yuan, result %s yuan (%s %s yuan), %s" % (
                    _yuan(_TARGET_E4), _yuan(raw.get("total_amount", 0)),
                    "under by" if d <= 0 else "OVERSHOOT by", _yuan(abs(d)), name)
            elif key == "power_cut":
                ok = ok and name == "power_lost"
                result = "stopped %s, %s kWh" % (name, b.get("total_energy"))
            elif key == "vin_refusal":
                ok = ok and raw.get("stop_reason") == STOP_VIN_DENIED
                result = "stopped %s (0x%02X)" % (name, raw.get("stop_reason", 0))
            elif key == "five_classes":
                five = all(raw.get(c + "_energy", 0) > 0 for c in PERIODS5)
                ok = ok and five
                result = "energy in %d of 5 classes, reconciled" % len(
                    [c for c in PERIODS5 if raw.get(c + "_energy", 0) > 0])
            elif key == "bms_soc":
                # The SOC the car's BMS holds now (nothing charges it after
                # the session): the target, not full (a BMS full stop is
                # 0x41 too, so the stop reason alone proves nothing).
                with self.fleet._lock:
                    soc = self._bms(key).soc
                ok = ok and raw.get("stop_reason") == YKC_SOC and \
                    _TARGET_SOC <= soc <= _TARGET_SOC + 1
                result = "SOC %d %% at the BMS (target %d %%), stopped %s (0x%02X), %s kWh" % (
                    soc, _TARGET_SOC, _stop_name(raw), raw.get("stop_reason", 0),
                    b.get("total_energy"))
            elif key == "bms_fault":
                conf = status.get(serial)
                ok = ok and raw.get("stop_reason") == YKC_PACK_TEMP and \
                    raw.get("total_energy", 0) > 0 and conf in ("confirmed", "settled")
                result = "stopped %s (0x%02X) after %s kWh, bill %s on the pile" % (
                    _stop_name(raw), raw.get("stop_reason", 0), b.get("total_energy"), conf)
            else:
                result = "delivered and confirmed after the outage (%s)" % name
            out.append({"case": key, "title": title, "pile": self.codes[i], "gun": gun,
                        "serial": serial, "expected": what, "result": result, "pass": bool(ok)})
        return out

    async def run(self):
        if self.ocpp:
            from tools.ocpp_csms import Csms
            self.csms = await Csms(version=self.ocpp).start()
            _say(self.quiet, "CSMS     OCPP %s on 127.0.0.1:%d (the ocpp library)"
                 % (self.ocpp, self.csms.port))
        self.start_broker()
        self.start_bridge()
        self.platform, ptask = await stack.start_platform(self.broker.port,
                                                          os.path.join(self.dir, "platform.db"))
        _say(self.quiet, "platform subscribed")
        self.start_fleet()
        try:
            with cli.progress("demo", total=_END_MIN,
                              enabled=not self.quiet and cli.progress_enabled()) as tick:
                self._tick = tick if cli.progress_enabled() and not self.quiet else None
                await self.script()
                self._tick = None
            _say(self.quiet, "waiting for every bill to reach the platform")
            ok = await self.settle()
            if not ok:
                _say(self.quiet, "warning: not every sealed bill reached the platform in time")
            return self.summary()
        finally:
            await stop_tasks([ptask])
            if self.csms is not None:
                await self.csms.stop()


def _limit_text(s):
    v = s["worst_limit_overshoot_yuan"]
    if v is None:
        return "-"
    return "%s (%s)" % (v, "overshoot" if float(v) > 0 else "within the target")


def table(s):
    rows = [("sessions (executed starts)", s["sessions"]), ("bills at the platform", s["bills"]),
            ("confirmed", s["confirmed"]), ("lost", s["lost"]), ("duplicated", s["duplicated"]),
            ("unreconciled", s["unreconciled"]),
            ("limit: result - target (yuan)", _limit_text(s)),
            ("refused starts", s["refused_starts"]),
            ("VIN refusals (0x8A bills)", s["vin_refused_bills"]),
            ("bills over five classes", s["five_class_bills"]),
            ("OCMF-signed, verified", s.get("ocmf_verified", 0)), ("energy (kWh)", s["energy_kwh"]),
            ("amount (yuan)", s["amount_yuan"])]
    out = [""]
    cases = s.get("cases") or []
    if cases:
        w = max(len(c["title"]) for c in cases)
        out.append("%-4s  %-*s  %-7s  %s" % ("case", w, "field case", "verdict", "result"))
        out.append("-" * 78)
        for n, c in enumerate(cases, 1):
            out.append("%-4d  %-*s  %-7s  %s" % (n, w, c["title"], "PASS" if c["pass"] else "FAIL",
                                                 c["result"]))
        out.append("")
    out += ["%-30s %s" % ("pile-demo", "result"), "-" * 44]
    for k, v in rows:
        out.append("%-30s %s" % (k, v))
    if "ocpp" in s:
        for k, v in (("OCPP %s: ended at the CSMS" % s["ocpp"], s["csms_transactions_ended"]),
                     ("CSMS lost", s["csms_lost"]), ("CSMS duplicated", s["csms_duplicated"]),
                     ("CSMS messages resent", s["csms_messages_received_again"])):
            out.append("%-30s %s" % (k, v))
    out.append("stop reasons: " + ", ".join("%s %d" % kv for kv in sorted(s["stop_reasons"].items())))
    return "\n".join(out)
