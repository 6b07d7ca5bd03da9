# pile-sim: the real pile firmware (firmware/pile.py) on simulated hardware
# (firmware/sim.py), in simulated time, many piles in one process.
#
#   pile-sim scenario FILE [--json]      one scenario, no bridge: each pile talks
#                                        to a built-in scripted platform over an
#                                        in-memory UART; prints every sealed bill,
#                                        its reconciliation, refusals and events
#   pile-sim run --bridge HOST:PORT --piles N [--speed X] [--scenario FILE]
#                                        piles dial in to a bridge over TCP, as
#                                        YKC piles do; time runs X times faster
#   pile-sim run --pty --piles N ...     one pty per pile instead; the ready line
#                                        names them: pile-bridge --serial PATH;
#                                        and each pile's technician console on a
#                                        pty of its own: pile-console PATH
#
# Library use (the demo drives the same code):
#   result = run_scenario(load_scenario("tools/scenarios/triple_stop.json"))
#   fleet = SimFleet(("127.0.0.1", 8767), piles=4, speed=60); fleet.start(); ...
#   fleet.stop()
#
# Scenario files are JSON (docs/scenarios.md). Money and energy in them are
# decimal strings ("1.00" yuan, "0.1" kWh) parsed exactly to the protocol's
# integers: no float ever touches a figure (docs/CONVENTIONS.md).
import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from firmware import session as S
from firmware.loopuart import LoopUart
from firmware.pile import Pile
from firmware.sim import SimWorld
from firmware.tariff import CLASSES, Tariff, TariffError
from firmware.vinauth import CARD_FLEET, CARD_SITE_ADMIN, VinPolicy
from host import cli
from host.testkit import THIRD_PARTY_VARIANTS, TcpTransport, ThirdPartyPile, third_party_corpus
from protocol import codec
from protocol import fields as F
from protocol import reconcile as R

DEFAULT_PILE = "55031412782305"
DEFAULT_CARD = "D14B0A54"
DEFAULT_LOGICAL = "1000000573"
_SETTLE_CAP_MS = 4 * 3600 * 1000   # after the timeline: at most this long to go quiet
_DEFAULT_TAIL_MS = 10 * 60 * 1000  # simulated after the last action by default
_STEP_CAP_MS = 1000

STOP_NAMES = {
    0x40: "remote", 0x41: "soc", 0x42: "energy_target", 0x43: "amount_target",
    0x44: "time_target", 0x45: "manual", 0x4A: "start_failed_control",
    0x4B: "start_failed_pilot", 0x4D: "start_failed_meter", 0x4E: "start_failed_balance",
    0x56: "start_failed_contactor", 0x6B: "unplugged", 0x6D: "meter_lost",
    0x6E: "balance_exhausted", 0x76: "no_current", 0x83: "power_loss",
    0x8A: "vin_denied", 0x8B: "vin_missing", 0x90: "unknown",
    # the BMS side (firmware/bms.py, docs/bms.md)
    0x52: "start_failed_bms_not_ready", 0x53: "start_failed_temperature",
    0x57: "start_failed_insulation", 0x59: "start_failed_bhm_timeout",
    0x5A: "start_failed_brm_timeout", 0x5B: "start_failed_bcp_timeout",
    0x5C: "start_failed_bro_timeout", 0x5D: "start_failed_bcs_timeout",
    0x5E: "start_failed_bcl_timeout",
    0x74: "temperature", 0x79: "bms_voltage", 0x7A: "bms_current", 0x7B: "bms_cell_voltage",
    0x7C: "bms_battery_temp", 0x81: "bms_battery_fault", 0x82: "bms_forbids",
    0x84: "bcs_timeout", 0x85: "bcl_timeout", 0x86: "bsm_timeout", 0x89: "bms_bem",
}
# 0x33 refusal reasons by name: YKC's 0..5 and ours (firmware/session.py
# START_JOURNAL_FULL 0x0A, START_SERIAL_USED 0x0C); docs/scenarios.md.
START_REASONS = {0: "none", 1: "wrong_pile", 2: "busy", 3: "fault", 4: "offline", 5: "not_plugged",
                 0x0A: "journal_full", 0x0C: "serial_used"}


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the field at fault."""


# --- exact parsing ---------------------------------------------------------------

class _JsonNumber(str):
    """A JSON number with a fraction, kept as its literal text (never a float)."""


_DEC = re.compile(r"^(\d+)(?:\.(\d*))?$")
_DUR = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_decimal(value, places, what):
    """Exact decimal -> integer in units of 10^-places: ("1.00", 4) -> 10000,
    ("0.1", 4) -> 1000. Accepts int, decimal str; refuses floats, negative
    numbers, exponents and more fractional digits than the unit resolves."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ScenarioError("%s: %r: give money and energy as a decimal string (\"1.00\")"
                            % (what, value))
    if isinstance(value, int):
        if value < 0:
            raise ScenarioError("%s: %d is negative" % (what, value))
        return value * 10 ** places
    if not isinstance(value, str):
        raise ScenarioError("%s: %r is not a decimal number" % (what, value))
    m = _DEC.match(value.strip())
    if not m:
        raise ScenarioError("%s: %r is not a decimal number like \"1.00\"" % (what, str(value)))
    whole, frac = m.group(1), (m.group(2) or "")
    if len(frac) > places:
        if frac[places:].strip("0"):
            raise ScenarioError("%s: %r has more than %d decimal places (the unit's resolution)"
                                % (what, str(value), places))
        frac = frac[:places]
    return int(whole) * 10 ** places + int(frac.ljust(places, "0") or "0")


def yuan_e4(v, what="amount"):
    return parse_decimal(v, 4, what + " (yuan)")


def kwh_e4(v, what="energy"):
    return parse_decimal(v, 4, what + " (kWh)")


def balance_e2(v, what="balance"):
    return parse_decimal(v, 2, what + " (yuan)")


def parse_int(v, what, lo=0, hi=None):
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int):
        raise ScenarioError("%s: %r is not a whole number" % (what, v))
    if v < lo or (hi is not None and v > hi):
        raise ScenarioError("%s: %d is outside %d..%s" % (what, v, lo, hi if hi is not None else "")
                            )
    return v


def parse_duration_ms(v, what="at"):
    """Seconds (int or decimal string) or "1h30m", "10m", "90s", "1.5s", "500ms"."""
    if isinstance(v, bool):
        raise ScenarioError("%s: %r is not a duration" % (what, v))
    if isinstance(v, int) or (isinstance(v, str) and _DEC.match(v.strip())):
        return parse_decimal(v, 3, what + " (seconds)")
    if isinstance(v, str):
        s = v.strip().replace(" ", "")
        m = _DUR.match(s)
        if s and m and any(m.groups()):
            h, mi, sec, ms = m.groups()
            return ((int(h or 0) * 60 + int(mi or 0)) * 60000
                    + parse_decimal(sec or "0", 3, what) + int(ms or 0))
    raise ScenarioError("%s: %r is not a duration (seconds, or like \"1h30m\", \"10m\", \"90s\")"
                        % (what, v))


_WALL = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d))?$")


def parse_wall(v, what="start"):
    """"2026-11-24T10:00[:00]" local time -> seconds since 2000-01-01."""
    m = _WALL.match(str(v).strip()) if isinstance(v, str) else None
    if not m:
        raise ScenarioError("%s: %r is not a local time like \"2026-11-24T10:00:00\"" % (what, v))
    y, mo, d, h, mi = [int(x) for x in m.groups()[:5]]
    s = int(m.group(6) or 0)
    if not (2000 <= y <= 2099 and 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60):
        raise ScenarioError("%s: %r is out of range" % (what, v))
    return F.to_secs(y, mo, d, h, mi, s)


def _digits(v, n, what):
    if not isinstance(v, str) or len(v) != n or not v.isdigit():
        raise ScenarioError("%s: %r is not %d digits" % (what, v, n))
    return v


def _class_no(v, n, what):
    if isinstance(v, str) and v in CLASSES[:n]:
        return CLASSES.index(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
        return v
    raise ScenarioError("%s: %r is not a price class (%s or 0..%d)"
                        % (what, v, ", ".join(CLASSES[:n]), n - 1))


def _hhmm_slot(v, what):
    m = re.match(r"^(\d\d):(00|30)$", str(v))
    if not m or int(m.group(1)) > 24 or (m.group(1) == "24" and m.group(2) != "00"):
        raise ScenarioError("%s: %r is not a half-hour boundary like \"07:30\"" % (what, v))
    return int(m.group(1)) * 2 + (1 if m.group(2) == "30" else 0)


def parse_tariff(t):
    """The scenario's tariff object -> firmware.tariff.Tariff."""
    if not isinstance(t, dict):
        raise ScenarioError("tariff: an object is needed")
    prices = t.get("prices")
    if isinstance(prices, dict):
        bad = [k for k in prices if k not in CLASSES]
        if bad:
            raise ScenarioError("tariff.prices: unknown class %r" % bad[0])
        n = 5 if "deep" in prices else 4
        plist = []
        for c in CLASSES[:n]:
            plist.append(prices.get(c))
    elif isinstance(prices, list):
        plist = prices
        n = len(plist)
    else:
        raise ScenarioError("tariff.prices: a list of 4 or 5 [energy, service] pairs, or an "
                            "object by class name, is needed")
    if n not in (4, 5):
        raise ScenarioError("tariff.prices: %d classes given, 4 or 5 expected" % n)
    out = []
    for i, p in enumerate(plist):
        what = "tariff.prices.%s" % CLASSES[i]
        if p is None:
            out.append(None)
            continue
        if not isinstance(p, list) or len(p) != 2:
            raise ScenarioError("%s: [energy price, service price] expected" % what)
        # Prices are integers in x10^5 yuan/kWh; a decimal string is read as yuan/kWh.
        out.append(tuple(parse_decimal(x, 5, what + " (yuan/kWh)") if isinstance(x, str)
                         else parse_int(x, what + " (x10^5 yuan/kWh)") for x in p))
    slots = t.get("slots")
    if isinstance(slots, list) and slots and isinstance(slots[0], dict):
        cls = [None] * 48
        for j, r in enumerate(slots):
            w = "tariff.slots[%d]" % j
            a, b = _hhmm_slot(r.get("from"), w + ".from"), _hhmm_slot(r.get("to"), w + ".to")
            c = _class_no(r.get("class"), n, w + ".class")
            # [from, to), wrapping past midnight when to <= from ("24:00" is 48)
            for k in range((b - a) % 48 or 48):
                cls[(a + k) % 48] = c
        if None in cls:
            i = cls.index(None)
            raise ScenarioError("tariff.slots: the half hour from %02d:%02d has no class"
                                % (i // 2, 30 * (i % 2)))
        slots = cls
    elif isinstance(slots, list):
        if len(slots) != 48:
            raise ScenarioError("tariff.slots: %d given, 48 half-hour slots expected" % len(slots))
        slots = [_class_no(c, n, "tariff.slots[%d]" % i) for i, c in enumerate(slots)]
    else:
        raise ScenarioError("tariff.slots: 48 classes, or ranges "
                            "[{\"from\": \"00:00\", \"to\": \"08:00\", \"class\": \"valley\"}]")
    try:
        return Tariff(str(t.get("model", "0001")), out, slots,
                      parse_int(t.get("loss_ratio", 0), "tariff.loss_ratio", 0, 100),
                      bool(t.get("free", False)))
    except TariffError as e:
        raise ScenarioError("tariff: %s" % e)


def parse_vin_policy(v):
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ScenarioError("vin_policy: an object is needed")
    pol = VinPolicy()
    try:
        for vin, dept in (v.get("vins") or {}).items():
            pol.add_vin(vin, dept)
        for dept, on in (v.get("departments") or {}).items():
            pol.set_department(dept, bool(on))
        for card, c in (v.get("cards") or {}).items():
            kind = {"fleet": CARD_FLEET, "site_admin": CARD_SITE_ADMIN}.get(c.get("kind"))
            if kind is None:
                raise ScenarioError("vin_policy.cards.%s.kind: \"fleet\" or \"site_admin\"" % card)
            pol.set_card(card, kind, c.get("department", ""), c.get("nameplate", ""))
    except (ValueError, AttributeError) as e:
        if isinstance(e, ScenarioError):
            raise
        raise ScenarioError("vin_policy: %s" % e)
    return pol


# --- the scenario model --------------------------------------------------------------

ACTIONS = ("plug", "unplug", "start", "stop", "stop_button", "card", "power_cut",
           "meter_fault", "reboot", "outage", "bms")
# "bms" faults on demand (a pile with "bms": true; sim/bms.py SimBms)
BMS_FAULTS = ("silent", "stop", "alarm", "forbid", "permit", "bem")
PLATFORM_ACTIONS = ("start", "stop", "reboot", "outage")  # need the scripted platform


def _targets(a, what):
    t = {}
    if "amount" in a:
        t["amount"] = yuan_e4(a["amount"], what + ".amount")
    if "energy" in a:
        t["energy"] = kwh_e4(a["energy"], what + ".energy")
    if "minutes" in a:
        t["minutes"] = parse_int(a["minutes"], what + ".minutes", 1, 65535)
    if "soc" in a:
        t["soc"] = parse_int(a["soc"], what + ".soc", 1, 100)
    return t


def _action(a, i, piles):
    what = "timeline[%d]" % i
    if not isinstance(a, dict):
        raise ScenarioError("%s: an object is needed" % what)
    do = a.get("do")
    if do not in ACTIONS:
        raise ScenarioError("%s.do: %r is not one of %s" % (what, do, ", ".join(ACTIONS)))
    known = {"at", "do", "pile", "note", "serial", "card", "logical_card", "balance", "amount",
             "energy", "minutes", "soc", "times", "when", "for", "off", "silent_reads",
             "backwards", "vehicle", "gun", "fault", "flags", "stage"}
    extra = [k for k in a if k not in known]
    if extra:
        raise ScenarioError("%s: unknown key %r" % (what, extra[0]))
    p = a.get("pile", piles[0]["code"])
    codes = [x["code"] for x in piles]
    if isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(piles):
        p = codes[p]
    if p not in codes:
        raise ScenarioError("%s.pile: %r is not a pile of the scenario" % (what, p))
    out = {"at": parse_duration_ms(a.get("at", 0), what + ".at"), "do": do, "pile": p,
           "note": a.get("note", ""), "index": i}
    # the gun it is for: 1..the pile's guns (default 1)
    pile = piles[codes.index(p)]
    out["gun"] = "%02d" % parse_int(a.get("gun", 1), what + ".gun", 1, pile["guns"])
    if do == "bms":
        if not pile["bms"]:
            raise ScenarioError("%s: a \"bms\" action needs a pile with \"bms\": true" % what)
        f = a.get("fault")
        if f not in BMS_FAULTS:
            raise ScenarioError("%s.fault: %r is not one of %s" % (what, f, ", ".join(BMS_FAULTS)))
        out["fault"] = f
        flags = a.get("flags", ["soc"] if f == "stop" else ["CCS"] if f == "bem"
                      else ["overtemp"] if f == "alarm" else [])
        if not isinstance(flags, list) or not all(isinstance(x, str) for x in flags):
            raise ScenarioError("%s.flags: a list of flag names is needed" % what)
        out["flags"] = flags
        st = a.get("stage")
        if st is not None and (f != "stop" or st not in ("BHM", "BRM", "BCP", "BRO", "BCL")):
            raise ScenarioError("%s.stage: only for \"stop\", one of BHM, BRM, BCP, BRO, BCL"
                                % what)
        out["stage"] = st
    if do == "start":
        if "serial" in a:
            out["serial"] = _digits(a["serial"], 32, what + ".serial")
        out["card"] = a.get("card", DEFAULT_CARD)
        lc = a.get("logical_card", DEFAULT_LOGICAL)
        if not isinstance(lc, str) or not lc.isdigit() or len(lc) > 16:
            raise ScenarioError("%s.logical_card: %r is not up to 16 digits" % (what, lc))
        out["logical_card"] = lc
        card = out["card"]
        if not isinstance(card, str) or not re.match(r"^[0-9A-Fa-f]{1,16}$", card):
            raise ScenarioError("%s.card: %r is not up to 16 hex digits" % (what, card))
        out["balance"] = balance_e2(a.get("balance", "1000.00"), what + ".balance")
        out["targets"] = _targets(a, what)
    elif do == "card":
        out["card"] = a.get("card", DEFAULT_CARD)
        out["balance"] = balance_e2(a["balance"], what + ".balance") if "balance" in a else None
        out["targets"] = _targets(a, what)
    elif do == "stop":
        out["times"] = parse_int(a.get("times", 1), what + ".times", 1, 100)
    elif do == "power_cut":
        out["off"] = parse_duration_ms(a.get("off", "30s"), what + ".off")
    elif do == "meter_fault":
        if "silent_reads" in a:
            out["silent_reads"] = parse_int(a["silent_reads"], what + ".silent_reads", 1)
        elif "backwards" in a:
            out["backwards"] = kwh_e4(a["backwards"], what + ".backwards")
        else:
            raise ScenarioError("%s: meter_fault needs \"silent_reads\": N or "
                                "\"backwards\": \"0.05\" (kWh)" % what)
    elif do == "reboot":
        w = a.get("when", "now")
        if w not in ("now", "idle"):
            raise ScenarioError("%s.when: \"now\" or \"idle\"" % what)
        out["when"] = 1 if w == "now" else 2
    elif do == "outage":
        out["for"] = parse_duration_ms(a.get("for"), what + ".for")
    elif do == "plug" and "vehicle" in a:
        out["vehicle"] = _vehicle(a["vehicle"], what + ".vehicle")
    return out


def _vehicle(v, what):
    if not isinstance(v, dict):
        raise ScenarioError("%s: an object is needed" % what)
    out = {}
    if "capacity" in v:
        out["capacity_wh"] = kwh_e4(v["capacity"], what + ".capacity") // 10  # e4kWh -> Wh
    if "soc" in v:
        out["soc"] = parse_int(v["soc"], what + ".soc", 0, 100)
    if "vin" in v:
        vin = v["vin"]
        if vin is not None and (not isinstance(vin, str) or len(vin) != 17):
            raise ScenarioError("%s.vin: %r is not 17 characters" % (what, vin))
        out["vin"] = vin
    if "max_power_w" in v:
        out["max_power_w"] = parse_int(v["max_power_w"], what + ".max_power_w", 1)
    return out


def parse_scenario(d, name="scenario"):
    """A scenario dict (as loaded from JSON) -> the runnable form. Raises
    ScenarioError naming the first field at fault."""
    if not isinstance(d, dict):
        raise ScenarioError("the scenario must be a JSON object")
    known = {"name", "description", "start", "tariff", "piles", "platform", "vin_policy",
             "timeline", "end", "expect"}
    extra = [k for k in d if k not in known]
    if extra:
        raise ScenarioError("unknown key %r (known: %s)" % (extra[0], ", ".join(sorted(known))))
    sc = {"name": d.get("name", name), "description": d.get("description", "")}
    sc["start"] = parse_wall(d.get("start", "2026-11-24T10:00:00"))
    sc["tariff"] = parse_tariff(d.get("tariff"))
    raw = d.get("piles") or [{}]
    if not isinstance(raw, list):
        raise ScenarioError("piles: a list is needed")
    piles = []
    for i, p in enumerate(raw):
        what = "piles[%d]" % i
        if not isinstance(p, dict):
            raise ScenarioError("%s: an object is needed" % what)
        code = _digits(p.get("code", DEFAULT_PILE if i == 0 else "%014d" % (55031412782305 + i)),
                       14, what + ".code")
        veh = {"capacity_wh": 60000, "soc": 20, "vin": None, "max_power_w": 250000}
        veh.update(_vehicle(p.get("vehicle", {}), what + ".vehicle"))
        piles.append({"code": code,
                      "guns": parse_int(p.get("guns", 1), what + ".guns", 1, 4),
                      "bms": bool(p.get("bms", False)),
                      "power_w": parse_int(p.get("power_w", 60000), what + ".power_w", 1),
                      "meter_start": kwh_e4(p.get("meter_start", "0"), what + ".meter_start"),
                      "plugged": bool(p.get("plugged", False)), "vehicle": veh})
    if len(set(p["code"] for p in piles)) != len(piles):
        raise ScenarioError("piles: two piles have the same code")
    sc["piles"] = piles
    plat = d.get("platform", {}) or {}
    sc["confirm"] = bool(plat.get("confirm", True))
    sc["settle"] = bool(plat.get("settle", True))
    sc["vin_policy"] = d.get("vin_policy")
    parse_vin_policy(sc["vin_policy"])  # validated now; built per pile (each keeps its own)
    tl = d.get("timeline", [])
    if not isinstance(tl, list):
        raise ScenarioError("timeline: a list of actions is needed")
    acts = [_action(a, i, piles) for i, a in enumerate(tl)]
    acts.sort(key=lambda a: (a["at"], a["index"]))
    sc["timeline"] = acts
    last = acts[-1]["at"] if acts else 0
    sc["end"] = parse_duration_ms(d["end"], "end") if "end" in d else last + _DEFAULT_TAIL_MS
    sc["expect"] = d.get("expect", {})
    return sc


def load_scenario(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError("%s: %s" % (path, e.strerror or e))
    try:
        d = json.loads(text, parse_float=_JsonNumber)
    except ValueError as e:
        raise ScenarioError("%s: not valid JSON: %s" % (path, e))
    return parse_scenario(d, os.path.splitext(os.path.basename(path))[0])


# --- the scripted platform ---------------------------------------------------------------

class ScriptedPlatform:
    """The platform end of one pile's link: answers login, heartbeats and the
    tariff check; confirms (0x40) and settles (0xE4) every bill; sends what the
    timeline asks. During an outage it reads nothing and answers nothing."""

    def __init__(self, uart, clock, confirm=True, settle=True):
        self.uart = uart
        self.clock = clock
        self.reader = codec.FrameReader()
        self.frames = []          # (ticks, frame) received
        self.confirm = confirm
        self.settle = settle
        self.seq = 0x100
        self.outage_until = None  # ticks
        self.lost = 0             # frames dropped by an outage

    def new_link(self, uart):
        """The pile rebooted: a fresh connection (its half-read frame is gone)."""
        self.uart = uart
        self.reader = codec.FrameReader()

    def in_outage(self):
        if self.outage_until is None:
            return False
        if self.clock.ticks_ms() >= self.outage_until:
            self.outage_until = None
            return False
        return True

    def send(self, name, values, seq=None):
        if self.in_outage():
            return False
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
        self.uart.write(codec.encode(name, values, seq))
        return True

    def pump(self):
        data = self.uart.read(4096)
        if not data:
            return []
        if self.in_outage():
            self.lost += 1
            return []
        out = []
        for f in self.reader.push(data):
            if not isinstance(f, codec.Frame):
                continue
            self.frames.append((self.clock.ticks_ms(), f))
            out.append(f)
            self._answer(f)
        return out

    def _answer(self, f):
        v = f.fields
        n = f.name
        if n == "login":
            self.send("login_reply", {"pile": v["pile"], "result": 0}, codec.reply_seq(f))
        elif n == "heartbeat":
            self.send("heartbeat_reply", {"pile": v["pile"], "gun": v["gun"], "reply": 0},
                      codec.reply_seq(f))
        elif n == "tariff_check":
            self.send("tariff_check_reply", {"pile": v["pile"], "model": v["model"], "result": 0},
                      codec.reply_seq(f))
        elif n in ("bill", "bill5") and self.confirm:
            self.send("bill_confirm", {"serial": v["serial"], "result": 0}, codec.reply_seq(f))
            if self.settle:
                self.send("settled", {"serial": v["serial"], "result": 0})
        elif n == "bill_extra" and self.confirm:
            self.send("bill_extra_ack", {"serial": v["serial"], "result": 0}, codec.reply_seq(f))

    def named(self, *names):
        return [f for _, f in self.frames if f.name in names]


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
                    "vin_policy": vin_policy}
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
                self.platform = ScriptedPlatform(b, self.clock, self._confirm, self._settle)
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
        """The TCP link of a fresh boot (tools/chaos.py puts faults in it)."""
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
        v = f.fields
        if f.name == "remote_start_reply":
            ok = v["result"] == 1
            if ok:
                if v["serial"] not in self.executed:
                    self.executed.append(v["serial"])
            self.record("start_reply", serial=v["serial"], result=v["result"], reason=v["reason"],
                        reason_name=_start_reason(v["reason"]))
        elif f.name == "remote_stop_reply":
            self.record("stop_reply", result=v["result"], reason=v["reason"])
        elif f.name == "reboot_reply":
            self.record("reboot_reply", result=v["result"])
        elif f.name == "login":
            self.record("login")

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
        if f == "silent":
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


def set_vehicle(v, capacity_wh=None, soc=None, vin=None, max_power_w=None):
    """A different vehicle arrives at the gun (the sim's vehicle is reused)."""
    if hasattr(v, "stage"):      # a simulated BMS (sim/bms.py SimBms)
        if capacity_wh is not None:
            v._cap = capacity_wh * 3600000
        if soc is not None:
            v._e = v._cap * soc // 100
        if vin is not None or soc is not None:
            v.vin = vin or ""
        if max_power_w is not None:
            v.max_power = max_power_w
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


# --- scenario runner ---------------------------------------------------------------------

def _advance(units, target_ms, t_ms, until=None):
    """Poll every unit and move all clocks together up to target_ms (sim ms
    since the scenario start). Returns the new sim time."""
    while t_ms < target_ms:
        wait = _STEP_CAP_MS
        for u in units:
            d = u.poll()
            if d < wait:
                wait = d
        if until is not None and until():
            return t_ms
        dt = min(max(1, wait), target_ms - t_ms)
        for u in units:
            u.clock.sleep_ms(dt)
        t_ms += dt
    for u in units:
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


# --- TCP mode ------------------------------------------------------------------------

class TcpUart:
    """The injected-uart interface over a non-blocking TCP connection to the
    bridge's pile port: read(n) -> bytes | None, write(b) -> int. Reconnects
    (after retry_s, real time) when the connection fails or closes; bytes
    written while there is no connection are lost, as on a dead line.
    on_change(up) is called when the connection comes up or goes down."""

    def __init__(self, host, port, on_change=None, retry_s=1.0):
        self.host = host
        self.port = port
        self.on_change = on_change
        self.retry_s = retry_s
        self.sock = None
        self.connected = False
        self.connects = 0
        self.closed = False
        self._tx = bytearray()
        self._retry_at = 0.0

    def _start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex((self.host, self.port))
        self.sock = s
        if err == 0:
            self._up()
        elif err not in (115, 36, 10035, 11):  # EINPROGRESS / EWOULDBLOCK family
            self._down()

    def _up(self):
        self.connected = True
        self.connects += 1
        if self.on_change:
            self.on_change(True)

    def _down(self):
        was = self.connected
        self.connected = False
        self._tx = bytearray()
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._retry_at = time.monotonic() + self.retry_s
        if was and self.on_change:
            self.on_change(False)

    def service(self):
        """Connect, finish a connect, flush queued bytes. Cheap; call often."""
        if self.closed:
            return
        if self.sock is None:
            if time.monotonic() >= self._retry_at:
                self._start()
            return
        if not self.connected:
            _, w, _ = select.select([], [self.sock], [], 0)
            if not w:
                return
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._down()
                return
            self._up()
        if self._tx:
            try:
                n = self.sock.send(self._tx)
                del self._tx[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._down()

    def read(self, n=256):
        self.service()
        if not self.connected:
            return None
        try:
            data = self.sock.recv(n)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._down()
            return None
        if not data:
            self._down()
            return None
        return data

    def write(self, b):
        if self.connected:
            self._tx.extend(b)
            self.service()
        return len(b)

    def close(self):
        self.closed = True
        if self.sock is not None:
            try:
                if self._tx:
                    self.sock.setblocking(True)
                    self.sock.settimeout(1.0)
                    self.sock.sendall(self._tx)
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.connected = False


class PtyUart:
    """The injected-uart interface on the master side of a pty, as a
    USB-serial cable on the bridge's side would see it: the bridge opens
    `path` (the slave) as a serial link. The slave is also held open here,
    so the master never reads EIO while the bridge has not opened it yet or
    is reopening it. Ptys ignore the baud rate (no line-rate pacing).

    Bytes the bridge does not read stay in the pty (a few KB), then in a
    queue of up to _TX_MAX bytes; beyond that they are dropped and counted,
    as on a line nobody listens to."""

    _TX_MAX = 65536

    def __init__(self):
        import pty
        import tty
        self.fd, self._slave = pty.openpty()
        tty.setraw(self._slave)          # no echo, no line editing, 8 bits
        os.set_blocking(self.fd, False)
        self.path = os.ttyname(self._slave)
        self.connected = True
        self.connects = 0
        self.dropped = 0
        self.closed = False
        self._tx = bytearray()

    def fileno(self):
        return self.fd

    def drain(self):
        """Throw away whatever arrived while nobody was reading (a power cut)."""
        while self.read(4096):
            pass

    def _flush(self):
        while self._tx:
            try:
                n = os.write(self.fd, self._tx)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            del self._tx[:n]

    def read(self, n=256):
        if self.closed:
            return None
        self._flush()
        try:
            return os.read(self.fd, n) or None
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:   # EIO: no slave open (not while we hold ours)
            return None

    def write(self, b):
        if self.closed:
            return len(b)
        room = self._TX_MAX - len(self._tx)
        if len(b) > room:
            self.dropped += len(b) - room
            b = b[:room]
        self._tx.extend(b)
        self._flush()
        return len(b)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.connected = False
        for fd in (self.fd, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class SimFleet:
    """Many simulated piles, each a real firmware Pile whose UART is a TCP
    connection to the bridge's pile port (link="tcp", bridge=(host, port)) or
    a pty the bridge opens as a serial link (link="pty", bridge=None; the
    paths are `fleet.ptys()`), in simulated time running `speed` times faster
    than real time.

      fleet = SimFleet(("127.0.0.1", 8767), piles=4, speed=60, mix="cards")
      fleet.start()                 # a background thread runs the piles
      fleet.wait(lambda f: f.stats()["bills"] >= 3, timeout=30)
      fleet.call(lambda: fleet.units[0].act({"do": "unplug"}))
      fleet.stop()                  # closes every connection; returns stats()
      fleet.run_for(10)             # or: run in this thread for 10 real seconds

    mix: "cards" (each pile runs offline-card sessions with random targets,
    unplugs and replugs), "idle" (vehicles plugged, sessions are the
    platform's business). scenario: a parsed scenario whose pile-side actions
    (plug, unplug, card, stop_button, power_cut, meter_fault) are played on
    its piles; platform actions are the bridge's, and are skipped."""

    def __init__(self, bridge, piles=1, speed=60.0, mix="cards", scenario=None, root=None,
                 seed=1, start_secs=None, tariff=None, power_w=60000, first_code=55031412780001,
                 log=None, link="tcp", console=None, pin="0000"):
        if link not in ("tcp", "pty"):
            raise ValueError('link: "tcp" or "pty"')
        if (link == "tcp") != (bridge is not None):
            raise ValueError("bridge: (host, port) for a TCP link, None for ptys")
        self.bridge = bridge
        self.link = link
        self.speed = float(speed)
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        self.mix = mix if scenario is None else "scenario"
        if self.mix not in ("cards", "idle", "scenario"):
            raise ValueError("mix: \"cards\", \"idle\" (or a scenario)")
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="pile-sim-fleet-")
        self.events = []
        self._log = log
        self._lock = threading.Condition()
        self._calls = []
        self._stop = threading.Event()
        self._thread = None
        self.sim_ms = 0
        self.iterations = 0
        self.timeline = []
        if scenario is not None:
            start = scenario["start"]
            specs = scenario["piles"]
            tariff = scenario["tariff"]
            pol = scenario.get("vin_policy")
            self.timeline = list(scenario["timeline"])
        else:
            start = start_secs if start_secs is not None else _local_now()
            tariff = tariff or default_tariff()
            specs = []
            rnd = random.Random(seed)
            for i in range(piles):
                specs.append({"code": "%014d" % (first_code + i), "power_w": power_w,
                              "meter_start": rnd.randrange(0, 5000000, 100), "plugged": True,
                              "vehicle": {"capacity_wh": rnd.choice((40000, 60000, 80000)),
                                          "soc": rnd.randrange(10, 60), "vin": None,
                                          "max_power_w": 250000}})
            pol = None
        self.units = []
        for i, p in enumerate(specs):
            self.units.append(SimUnit(p["code"], os.path.join(self.root, p["code"]), start,
                                      tariff, p["power_w"], p["vehicle"], p["meter_start"],
                                      p["plugged"], parse_vin_policy(pol), link,
                                      tcp=self.bridge, record=self._rec,
                                      console=(link == "pty") if console is None else console,
                                      pin=pin))
        self._plans = [_CardMix(u, random.Random(seed * 7919 + i))
                       for i, u in enumerate(self.units)] if self.mix == "cards" else []

    def ptys(self):
        """{pile code: pty path} of a pty fleet (the bridge's serial URLs)."""
        return dict((u.code, u.uart.path) for u in self.units if isinstance(u.uart, PtyUart))

    def consoles(self):
        """{pile code: pty path} of each pile's technician console (pile-console URL)."""
        return dict((u.code, u.console_uart.path) for u in self.units
                    if u.console_uart is not None)

    def _rec(self, unit, kind, kw):
        e = {"t": F.iso(unit.clock.now()), "pile": unit.code, "event": kind}
        e.update(kw)
        self.events.append(e)
        if len(self.events) > 10000:
            del self.events[:1000]
        if self._log:
            self._log(e)

    # --- control -----------------------------------------------------------------

    def start(self):
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pile-sim fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop the piles, close their connections; returns stats()."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._thread = None
        st = self.stats()
        for u in self.units:
            if u.uart is not None:
                u.uart.close()
            if u.console_uart is not None:
                u.console_uart.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        return st

    def run_for(self, seconds):
        """Run in the calling thread for `seconds` of real time (or until
        stop() / a signal). Returns stats()."""
        self._stop.clear()
        self._run(time.monotonic() + seconds)
        return self.stats()

    def call(self, fn):
        """Run fn() in the fleet's thread between two polls (thread-safe)."""
        with self._lock:
            self._calls.append(fn)

    def wait(self, predicate, timeout=30.0):
        """Block until predicate(fleet) is true (checked in the fleet's thread
        after each round); returns its last value."""
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                v = predicate(self)
                if v or self._stop.is_set():
                    return v
                left = end - time.monotonic()
                if left <= 0:
                    return v
                self._lock.wait(left)

    def stats(self):
        with self._lock:
            return self._stats()

    def _stats(self):
        piles = []
        tot = {"piles": len(self.units), "online": 0, "bills": 0, "pending": 0,
               "confirmed": 0, "settled": 0, "executed_starts": 0, "power_cuts": 0,
               "sim_seconds": self.sim_ms // 1000}
        for u in self.units:
            p = u.pile
            st = {"pile": u.code, "online": bool(p and p.link.online),
                  "state": S.STATE_NAMES[p.gun.state] if p else "off", "bills": len(u.bills),
                  "executed_starts": len(u.executed), "power_cuts": u.power_cuts,
                  "reboots": u.reboots,
                  "connects": u.uart.connects if isinstance(u.uart, TcpUart) else 0}
            if isinstance(u.uart, PtyUart):
                st["pty"] = u.uart.path
                st["dropped_bytes"] = u.uart.dropped
            if p:
                j = p.journal
                st["pending"] = len(j.pending())
                st["unsettled"] = len(j.confirmed())
                stat = [j.status(s) for s in u.bills]
                st["confirmed"] = len([s for s in stat if s in ("confirmed", "settled")])
                st["settled"] = len([s for s in stat if s == "settled"])
                for k in ("pending", "confirmed", "settled"):
                    tot[k] += st[k]
            tot["online"] += 1 if st["online"] else 0
            tot["bills"] += st["bills"]
            tot["executed_starts"] += st["executed_starts"]
            tot["power_cuts"] += u.power_cuts
            piles.append(st)
        tot["per_pile"] = piles
        return tot

    def bills(self):
        """Every bill the fleet's piles sealed, as in the scenario result."""
        with self._lock:
            return self._bills()

    def _bills(self):
        out = []
        for u in self.units:
            for serial in u.bills:
                b, how = u.bills[serial]
                out.append(bill_json(b, how, u))
        return out

    # --- the loop ----------------------------------------------------------------------

    def _run(self, deadline=None):
        t0 = time.monotonic()
        base = self.sim_ms
        ti = 0
        tl = self.timeline
        by_code = dict((u.code, u) for u in self.units)
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            # A round runs under the lock: wait() predicates, stats() and
            # call() see the piles between two rounds, never in the middle.
            with self._lock:
                calls, self._calls = self._calls, []
                for fn in calls:
                    fn()
                target = base + int((now - t0) * self.speed * 1000)
                if target > self.sim_ms + 5000:
                    # A slow host: at most 5 simulated s per round, and the lag
                    # is dropped (a slower clock, not a burst that starves sockets).
                    target = self.sim_ms + 5000
                    base, t0 = target, now
                while ti < len(tl) and tl[ti]["at"] <= target:
                    a = tl[ti]
                    if a["at"] > self.sim_ms:
                        self.sim_ms = _advance(self.units, a["at"], self.sim_ms)
                    by_code[a["pile"]].act(a)
                    ti += 1
                if target > self.sim_ms:
                    self.sim_ms = _advance(self.units, target, self.sim_ms)
                else:
                    for u in self.units:
                        u.poll()
                for m in self._plans:
                    m.step()
                self.iterations += 1
                self._lock.notify_all()
                socks = [u.uart.sock for u in self.units
                         if isinstance(u.uart, TcpUart) and u.uart.connected and u.uart.sock]
                socks += [u.uart.fd for u in self.units
                          if isinstance(u.uart, PtyUart) and not u.uart.closed and u.pile]
                socks += [u.console_uart.fd for u in self.units   # a keystroke wakes us
                          if u.console_uart is not None and not u.console_uart.closed
                          and u.pile]
            # Wait for bytes from the bridge or the next round, whichever is first.
            pause = min(0.02, max(0.001, 1.0 / self.speed))
            if socks:
                try:
                    select.select(socks, [], [], pause)
                except (OSError, ValueError):
                    time.sleep(pause)
            else:
                time.sleep(pause)
        with self._lock:
            self._lock.notify_all()


class _CardMix:
    """The built-in session mix for one pile: a vehicle arrives, a card is
    swiped (offline start: the pile issues the serial), the session ends by a
    target, the stop button or a full battery; the vehicle leaves; repeat."""

    def __init__(self, unit, rnd):
        self.u = unit
        self.rnd = rnd
        self.next_at = unit.clock.ticks_ms() + rnd.randrange(5000, 60000)
        self.phase = "plugged" if unit.world.vehicle.plugged else "away"
        self.stop_at = None

    def step(self):
        u = self.u
        p = u.pile
        if p is None:
            return
        t = u.clock.ticks_ms()
        gun = p.gun
        r = self.rnd
        if self.phase == "charging":
            if self.stop_at is not None and t >= self.stop_at and gun.state == S.CHARGING:
                u.act({"do": "stop_button"})
            if gun.state != S.CHARGING:
                self.phase = "done"
                self.next_at = t + r.randrange(30000, 180000)
            return
        if t < self.next_at:
            return
        if self.phase == "away":
            u.act({"do": "plug", "vehicle": {"soc": r.randrange(10, 70)}})
            self.phase = "plugged"
            self.next_at = t + r.randrange(10000, 60000)
        elif self.phase == "plugged":
            kind = r.choice(("amount", "energy", "minutes", "button", "full"))
            targets = {}
            self.stop_at = None
            if kind == "amount":
                targets["amount"] = r.randrange(5, 40) * 10000
            elif kind == "energy":
                targets["energy"] = r.randrange(3, 30) * 10000
            elif kind == "minutes":
                targets["minutes"] = r.randrange(5, 45)
            elif kind == "button":
                self.stop_at = t + r.randrange(3, 40) * 60000
            u.act({"do": "card", "card": "%08X" % r.randrange(1 << 32), "targets": targets})
            self.phase = "charging" if gun.state == S.CHARGING else "done"
            self.next_at = t + r.randrange(30000, 120000)
        elif self.phase == "done":
            u.act({"do": "unplug"})
            self.phase = "away"
            self.next_at = t + r.randrange(60000, 600000)


def default_tariff():
    """The fleet's tariff when no scenario gives one: sharp 10-12, peak 8-10
    and 12-18, flat 18-22, valley otherwise (x10^5 yuan/kWh)."""
    slots = []
    for i in range(48):
        h = i // 2
        slots.append(0 if 10 <= h < 12 else 1 if 8 <= h < 18 else 2 if 18 <= h < 22 else 3)
    return Tariff("0100", [(120000, 40000), (100000, 40000), (70000, 40000), (30000, 40000)],
                  slots)


def _local_now():
    lt = time.localtime()
    return F.to_secs(lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec)


def parse_hostport(s):
    m = re.match(r"^\[?([^\]]*?)\]?:(\d+)$", s or "")
    if not m or not (0 < int(m.group(2)) < 65536):
        raise ScenarioError("--bridge: %r is not HOST:PORT" % s)
    return (m.group(1) or "127.0.0.1", int(m.group(2)))


# --- CLI ---------------------------------------------------------------------------------

def _parser():
    ap = argparse.ArgumentParser(prog="pile-sim", description="Simulated charging piles running "
                                 "the real firmware, in simulated time.")
    cli.common(ap, log_level="warning")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("scenario", help="run one scenario file without a bridge")
    a.add_argument("file")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.add_argument("--keep", metavar="DIR", help="keep the piles' flash folders in DIR")
    for name in ("run", "attach"):
        r = sub.add_parser(name, help="piles attached to a bridge over TCP or ptys"
                           if name == "run" else "same as run")
        how = r.add_mutually_exclusive_group(required=True)
        how.add_argument("--bridge", metavar="HOST:PORT",
                         help="the bridge's TCP pile port: each pile dials in")
        how.add_argument("--pty", action="store_true",
                         help="one pty per pile, paths printed in the ready line: give them "
                         "to pile-bridge as serial links (--serial PATH); each pile's "
                         "technician console on a pty too (pile-console PATH)")
        r.add_argument("--console", action="store_true",
                       help="with --bridge: open each pile's console pty too (--pty always does)")
        r.add_argument("--pin", default="0000",
                       help="the simulated piles' technician PIN (default 0000)")
        r.add_argument("--piles", type=int, default=1, help="number of piles (built-in mix)")
        r.add_argument("--speed", type=float, default=60.0,
                       help="simulated seconds per real second (default 60)")
        r.add_argument("--mix", choices=("cards", "idle"), default="cards",
                       help="cards: offline-card sessions with random targets; idle: vehicles "
                       "plugged, sessions started by the platform")
        r.add_argument("--scenario", metavar="FILE", help="play a scenario's pile-side actions")
        r.add_argument("--duration", type=float, metavar="S", help="stop after S real seconds")
        r.add_argument("--seed", type=int, default=1)
        r.add_argument("--quiet", action="store_true", help="no event lines on stderr")
    t = sub.add_parser("third-party", help="vendor piles (not our firmware) sending every "
                       "third-party bill variant to a bridge over TCP")
    t.add_argument("--bridge", metavar="HOST:PORT", required=True)
    t.add_argument("--piles", type=int, default=1, help="number of vendor piles")
    t.add_argument("--first", default="55990000000001", help="the first pile code (14 digits)")
    t.add_argument("--variants", default="all", metavar="V,...",
                   help="which bills (default all): " + ",".join(THIRD_PARTY_VARIANTS))
    t.add_argument("--resend-s", type=float, default=30.0,
                   help="seconds to wait for a 0x40 before each of the 3 resends (YKC: 30)")
    return ap


def _third_party(args):
    """pile-sim third-party: one JSON line per bill (variant, serial, 0x40 or given up)."""
    import asyncio
    host, port = parse_hostport(args.bridge)
    if args.piles < 1 or not (len(args.first) == 14 and args.first.isdigit()):
        raise ScenarioError("--piles at least 1, --first 14 digits")
    variants = THIRD_PARTY_VARIANTS if args.variants == "all" else tuple(
        v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in THIRD_PARTY_VARIANTS]
    if bad:
        raise ScenarioError("--variants: unknown %r (known: %s)" % (bad[0], ", ".join(
            THIRD_PARTY_VARIANTS)))

    async def one(code):
        try:
            t = await TcpTransport.connect(host, port)
        except OSError as e:
            raise ScenarioError("--bridge %s:%d: %s" % (host, port, e))
        pile = ThirdPartyPile(code, t, resend_s=args.resend_s)
        try:
            if await pile.login() != 0:
                raise ScenarioError("pile %s: login refused" % code)
            out = []
            for b in third_party_corpus(code, variants=variants):
                ok = await pile.send_raw_bill(b)
                line = {"pile": code, "variant": b["variant"], "serial": b["serial"],
                        "sent": pile.sent[b["serial"]],
                        "result": "confirmed (0x40)" if ok else "given up after %d resends"
                        % pile.resends}
                print(json.dumps(line), flush=True)
                out.append(ok)
            return out
        finally:
            await pile.close()

    async def go():
        codes = ["%014d" % (int(args.first) + i) for i in range(args.piles)]
        res = await asyncio.gather(*[one(c) for c in codes])
        return sum(len([x for x in r if x]) for r in res), sum(len(r) for r in res)
    ok, n = asyncio.run(go())
    print(json.dumps({"done": True, "bills": n, "confirmed": ok, "given_up": n - ok}), flush=True)
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    cli.setup_logging(args)
    try:
        if args.cmd == "scenario":
            sc = load_scenario(args.file)
            root = None
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                root = args.keep
            res = run_scenario(sc, root=root)
            if args.json:
                print(json.dumps(res, indent=2, sort_keys=False))
            else:
                print(format_table(res))
            return 0 if res["ok"] else 1
        if args.cmd == "third-party":
            return _third_party(args)
        return _run_fleet(args)
    except ScenarioError as e:
        print("pile-sim: %s" % e, file=sys.stderr)
        return 2


def _run_fleet(args):
    bridge = None if args.pty else parse_hostport(args.bridge)
    if args.piles < 1:
        raise ScenarioError("--piles: at least 1")
    if args.speed <= 0:
        raise ScenarioError("--speed: must be > 0")
    sc = load_scenario(args.scenario) if args.scenario else None

    def log(e):
        if not args.quiet and e["event"] not in ("login", "pile_event"):
            print(json.dumps(e), file=sys.stderr, flush=True)
    fleet = SimFleet(bridge, piles=args.piles, speed=args.speed, mix=args.mix, scenario=sc,
                     seed=args.seed, log=log, link="pty" if args.pty else "tcp",
                     console=bool(args.pty or args.console), pin=args.pin)

    def on_signal(signum, frame):
        fleet._stop.set()
    old = [(s, signal.signal(s, on_signal)) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        ready = {"ready": True, "piles": [u.code for u in fleet.units], "speed": fleet.speed}
        if args.pty:
            ready["ptys"] = fleet.ptys()
        else:
            ready["bridge"] = "%s:%d" % bridge
        if fleet.consoles():
            ready["consoles"] = fleet.consoles()
        if args.pty:
            print(json.dumps(ready), flush=True)
            # The line to paste: pile-bridge --config site.toml --serial P --serial P ...
            print("pile-bridge serial links: " + " ".join(
                "--serial %s" % p for p in ready["ptys"].values()), file=sys.stderr, flush=True)
        else:
            print(json.dumps(ready), flush=True)
        for code, path in sorted(ready.get("consoles", {}).items()):
            print("pile %s console: pile-console %s  (PIN %s)" % (code, path, args.pin),
                  file=sys.stderr, flush=True)
        fleet.run_for(args.duration if args.duration else float("inf"))
    finally:
        for s, h in old:
            signal.signal(s, h)
        st = fleet.stop()
    st.pop("per_pile", None)
    print(json.dumps({"stopped": True, "stats": st}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
