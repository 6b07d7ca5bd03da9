# The scenario file (docs/scenarios.md): JSON with money and energy as
# decimal strings ("1.00" yuan, "0.1" kWh) parsed exactly to the protocol's
# integers (no float ever touches a figure, docs/CONVENTIONS.md), durations,
# wall times, tariffs, VIN policies, vehicles and the timeline of actions.
# sim/scenario.py runs a parsed scenario.
import json
import os
import re

from firmware.tariff import CLASSES, Tariff, TariffError
from firmware.vinauth import CARD_FLEET, CARD_SITE_ADMIN, VinPolicy
from protocol import fields as F


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
                 0x0A: "journal_full", 0x0C: "serial_used", 0x0D: "parallel_group"}


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
        if st is not None and (f not in ("stop", "silent") or
                               st not in ("BHM", "BRM", "BCP", "BRO", "BCL")):
            raise ScenarioError("%s.stage: only for \"stop\" and \"silent\", one of BHM, BRM, "
                                "BCP, BRO, BCL" % what)
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
        if "bms" in out["vehicle"] and not pile["bms"]:
            raise ScenarioError('%s.vehicle.bms: a battery profile needs a pile with "bms": true'
                                % what)
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
    if "bms" in v:
        out["bms"] = _battery(v["bms"], what + ".bms")
    return out


# A BMS car's battery profile beyond capacity and SOC (sim/bms.py SimBms):
# name -> (lowest, highest); voltages 0.1 V, currents 0.1 A, SOC %.
_BATTERY = {"voltage_dv": (1000, 10000), "max_dv": (1000, 10000), "max_da": (10, 10000),
            "taper_soc": (1, 100), "stop_soc": (1, 100)}


def _battery(b, what):
    if not isinstance(b, dict):
        raise ScenarioError("%s: an object is needed (%s)" % (what, ", ".join(_BATTERY)))
    out = {}
    for k, x in b.items():
        if k not in _BATTERY:
            raise ScenarioError("%s: unknown key %r (known: %s)" % (what, k, ", ".join(_BATTERY)))
        out[k] = parse_int(x, what + "." + k, *_BATTERY[k])
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
        if "bms" in veh and not p.get("bms"):
            raise ScenarioError('%s.vehicle.bms: a battery profile needs "bms": true' % what)
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
