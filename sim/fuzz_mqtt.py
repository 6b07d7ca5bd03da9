# pile-fuzz mqtt-commands (docs/fuzzing.md): the bridge's MQTT command
# handler fed malformed commands.
import asyncio
import collections
import json
import re
import tempfile
import time

from sim.bridge_child import (GOOD_PILE, GOOD_TARIFF, BridgeChild, RssWatch, SlowRelay, wind_up,
                              _start_broker, bridge_config)
from sim.mqtt_platform import MqttPlatform
from sim.fuzz import Report, _pick, case_rng, garbage


# --- target: mqtt-commands ------------------------------------------------------------

OFFLINE_PILE = "55031412789999"      # configured, never connected
UNKNOWN_PILE = "99999999999901"      # neither configured nor ever logged in
# Random bytes and mutated JSON go to targets where even a command that the
# mutation happened to make valid cannot succeed.
_NOWHERE = ("99999999999902", "not-a-pile", "\u2603", "")
_MAX_BYTES = 65536


# Arguments of each command that are wrong by the contract in host/commands.py
# (and docs/mqtt.md): the value is a sure defect whatever the rest is.
_BAD_SCALARS = [None, True, False, 1.5, -1, [], {}, "", "x", "12a", "\u0661\u0662", "\u00b2",
                " 1", "0x1", "1_0", "\ud800", 10 ** 40, "9" * 400, float("nan"), [1, 2], {"a": 1}]
_BAD = {
    "gun": [True, False, 1.5, -1, [], {}, "", "x", "1a", "001", "\u0661", "\u00b2", " 1", 10 ** 20,
            float("inf")],
    "serial": [True, 1.5, -1, [], {}, "x", "1" * 33, "\u0661" * 4, "12 34", "-1", 10 ** 40],
    "logical_card": [True, 1.5, -1, [], "x", "1" * 17, "\u0663", " 1"],
    "card": [1, True, [], "xyz", "1" * 17, "0x1F", " 1F", "1_F", "\u0661", "g"],
    "balance": [True, 1.5, -1, 2 ** 32, "1", [], {}, 10 ** 20],
    "targets": [1, "x", [], {"amount": -1}, {"energy": "1"}, {"minutes": 70000}, {"soc": 101},
                {"soc": True}, {"kwh": 1}, {"amount": 1.5}],
    "when": [1, True, "later", "", [], "NOW"],
    "tariff": [None, 1, "x", [], {}, {"model": "1"}, dict(GOOD_TARIFF, model="12345"),
               dict(GOOD_TARIFF, slots="3" * 47), dict(GOOD_TARIFF, slots="4" * 48),
               dict(GOOD_TARIFF, slots=[0] * 47 + [True]), dict(GOOD_TARIFF, loss_ratio=256),
               dict(GOOD_TARIFF, rates={"sharp": {"energy": 1, "service": 1}}),
               dict(GOOD_TARIFF, rates=dict(GOOD_TARIFF["rates"], deep={"energy": 1, "service": 1})),
               dict(GOOD_TARIFF, rates=dict(GOOD_TARIFF["rates"], peak={"energy": -1, "service": 1})),
               dict(GOOD_TARIFF, rates=dict(GOOD_TARIFF["rates"], flat={"energy": 2 ** 32, "service": 1})),
               dict(GOOD_TARIFF, rates=[1, 2])],
    "ok": [],       # any value is read as a truth value: no sure defect
    "reason": [True, -1, 256, 1.5, "1"],
    "vins": [None, 1, "LSVAU2180N2183294", {}, ["SHORT"], ["LSVAU2180N218329\u00e9"], [1],
             ["LSVAU2180N2183294!"], [{"vin": "LSVAU2180N2183294", "department": -1}],
             [{"vin": "LSVAU2180N2183294", "x": 1}], ["L" * 18], [[]]],
    "version": [True, -1, 2 ** 32, 1.5, "1"],
}
_GOOD_ARGS = {
    "start": {"gun": "01", "logical_card": "1234", "card": "D14B0A54", "balance": 100000},
    "stop": {"gun": "01"},
    "reboot": {"when": "idle"},
    "tariff_set": {"tariff": GOOD_TARIFF},
    "time_sync": {},
    "versions": {},
    "journal_status": {},
    "read_realtime": {"gun": "01"},
    "status": {},
    "authorize": {"gun": "01", "serial": "5503141278230501240501080000" + "0001", "ok": False},
    "vin_list": {"vins": ["LSVAU2180N2183294"], "version": 7},
}
_DEFECTS = (("bad_argument", 30), ("unknown_field", 8), ("no_id", 6), ("bad_id", 8),
            ("long_id", 3), ("no_cmd", 4), ("unknown_cmd", 6), ("not_an_object", 5),
            ("expired", 4), ("bad_expires", 3), ("deep_nesting", 5), ("huge", 2),
            ("unicode_keys", 3), ("duplicate_keys", 3), ("missing_required", 4))


def expected_id(v):
    """The id a result carries for a command whose "id" is v (commands.parse):
    a string as sent (cut at 128), an int as its decimal string; None else."""
    if isinstance(v, (str, int)):
        return str(v)[:128]
    return None


def _dumps(doc, rng):
    """JSON bytes of doc, non-ASCII as UTF-8 or as \\u escapes (both valid)."""
    if rng.random() < 0.5:
        try:
            return json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate: only the escaped form is valid UTF-8
            pass
    return json.dumps(doc).encode()


def _id_in(payload):
    m = re.search(rb'"id": ?"((?:mx-)?fz-[0-9]+-[0-9]+)"', payload)
    return m.group(1).decode() if m else None


class CommandCase:
    __slots__ = ("target", "payload", "rid", "predictable", "codes", "kind")

    def __init__(self, kind, target, payload, rid, predictable=True, codes=None):
        self.kind = kind
        self.target = target
        self.payload = payload
        self.rid = rid                  # the id its result must carry (None: unreadable)
        self.predictable = predictable  # False: mutated text, its id may or may not survive
        self.codes = codes              # acceptable result codes, None = any failure code


_FIRST_KINDS = ["random_bytes", "mutated_json", "unknown_pile", "offline_pile"] + [k for k, _ in _DEFECTS]


def make_command_case(seed, i):
    rng = case_rng(seed, i)
    r = rng.random()
    # The first cases take every kind once (a short run still tries them all).
    first = _FIRST_KINDS[i] if i < len(_FIRST_KINDS) else None
    if first is not None:
        r = {"random_bytes": 0.0, "mutated_json": 0.2, "unknown_pile": 0.3, "offline_pile": 0.34}.get(first, 0.5)
    uid = "fz-%d-%d" % (seed, i)
    if r < 0.12:        # random bytes
        return CommandCase("random_bytes", rng.choice(_NOWHERE), garbage(rng, [], 1500)
                           if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 2000)),
                           None, predictable=False)
    if r < 0.27:        # a well-formed command's text, mutated
        cmd = rng.choice(sorted(_GOOD_ARGS))
        text = bytearray(_dumps(dict(_GOOD_ARGS[cmd], id="mx-" + uid, cmd=cmd), rng))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            n = len(text)
            if op == 0 and n:
                text[rng.randrange(n)] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                del text[rng.randrange(n):]
            elif op == 2:
                j = rng.randint(0, n)
                text[j:j] = rng.choice([b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\\u",
                                        b"\x00", b"\xff", b"\xc3", rng.randbytes(3)])
            elif op == 3 and n:
                j = rng.randrange(n)
                del text[j:j + rng.randint(1, 6)]
            else:
                j = rng.randint(0, n)
                text[j:j] = text[:rng.randint(0, n)]
        return CommandCase("mutated_json", rng.choice(_NOWHERE), bytes(text), None, predictable=False)
    if r < 0.32:        # a well-formed command for a pile nobody knows
        cmd = rng.choice(sorted(set(_GOOD_ARGS) - {"tariff_set"}) + ["tariff_set"])
        return CommandCase("unknown_pile", UNKNOWN_PILE, _dumps(dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd), rng),
                           uid, codes={"unknown_pile"})
    if r < 0.36:        # needs the pile online; it is configured but offline
        cmd = rng.choice(["start", "stop", "reboot", "time_sync", "versions", "read_realtime",
                          "vin_list", "journal_status"])
        return CommandCase("offline_pile", OFFLINE_PILE, _dumps(dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd), rng),
                           uid, codes={"offline"})
    # A structured command with one sure defect, to any target (the good
    # pile online, the offline one, an unknown one, "site", not a pile).
    target = rng.choice([GOOD_PILE, GOOD_PILE, OFFLINE_PILE, UNKNOWN_PILE, "site", "x\u00e9"])
    cmd = rng.choice(sorted(_GOOD_ARGS))
    doc = dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd)
    defect = first or _pick(rng, _DEFECTS)
    rid = uid
    codes = None
    if defect == "bad_argument":
        cands = [k for k in _BAD if _BAD[k] and (k in _GOOD_ARGS[cmd] or k in _ARGS_OF[cmd])]
        if not cands:
            defect = "unknown_field"
        else:
            k = rng.choice(cands)
            doc[k] = rng.choice(_BAD[k])
    if defect == "unknown_field":
        doc[rng.choice(["x", "GUN", "gun ", "targets2", "\u00fcber", "auth2", "Id"])] = rng.choice(_BAD_SCALARS)
        codes = {"bad_request"}
    elif defect == "no_id":
        del doc["id"]
        rid = None
        codes = {"bad_request"}
    elif defect == "bad_id":
        # Ints (and bools) are read as their decimal string and "" as "":
        # such ids repeat across cases, so these are counted, not matched.
        doc["id"] = rng.choice([None, 1.5, [], {}, [uid], {"id": uid}, "", True, -7, 10 ** 30])
        return CommandCase("bad_id", target, _dumps(doc, rng), None, predictable=False,
                           codes={"bad_request"})
    elif defect == "long_id":
        doc["id"] = uid + "-" + "\u00e9x" * rng.randint(64, 300)
        rid = doc["id"][:128]
        codes = {"bad_request"}
    elif defect == "no_cmd":
        del doc["cmd"]
        codes = {"unknown_command"}
    elif defect == "unknown_cmd":
        doc["cmd"] = rng.choice(["", "STOP", "stop ", "sto", "\u2603", "__init__", "start\x00", 1, [], None,
                                 {"cmd": "stop"}, "x" * 10000])
        codes = {"unknown_command"}
    elif defect == "not_an_object":
        doc = rng.choice([[doc], uid, 1, None, True, [], "\u2603"])
        rid = None
        codes = {"bad_request"}
    elif defect == "expired":
        doc["expires"] = rng.choice([0, 1, 1.5, time.time() - 3600, -1e300])
        codes = {"expired"}
    elif defect == "bad_expires":
        doc["expires"] = rng.choice(["tomorrow", [], {}, True, "1e10"])
        codes = {"bad_request"}
    elif defect == "deep_nesting":
        depth = rng.choice([50, 500, 1000, 3000, 20000])
        open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
        nest = open_ * depth + "1" + close * depth
        key = rng.choice(["x", "gun", "targets", "tariff", "vins"])
        text = _dumps(doc, rng)[:-1] + (', "%s": ' % key).encode() + nest.encode() + b"}"
        # Deep enough and the JSON parser gives up (id unreadable); shallower
        # and the command is refused for its field: counted, not matched.
        return CommandCase("deep_nesting", target, text, None, predictable=False,
                           codes={"bad_request", "too_large"})
    elif defect == "huge":
        doc["pad"] = "x" * (_MAX_BYTES + rng.randint(1, 200000))
        rid = None
        codes = {"too_large"}
    elif defect == "unicode_keys":
        doc[rng.choice(["\u00e9", "\u0000", "\ud83d\ude00", "\u202e", "g\u0075n\u0301"])] = 1
        codes = {"bad_request"}
    elif defect == "duplicate_keys":
        # The last copy wins in json.loads: a later, bad id or cmd.
        text = _dumps(doc, rng)[:-1]
        if rng.random() < 0.5:
            text += b', "cmd": 17}'
            codes = {"unknown_command"}
        else:
            text += b', "id": [1]}'
            rid = None
            codes = {"bad_request"}
        return CommandCase("duplicate_keys", target, text, rid, codes=codes)
    elif defect == "missing_required":
        if cmd == "authorize":
            del doc["serial"]
        elif cmd == "tariff_set":
            del doc["tariff"]
        elif cmd == "vin_list":
            del doc["vins"]
        else:
            doc["cmd"] = "authorize"
            doc = {k: v for k, v in doc.items() if k in ("id", "cmd", "gun")}
        codes = {"bad_request"}
    return CommandCase(defect, target, _dumps(doc, rng), rid, codes=codes)


# Arguments a command takes (host/commands.SPEC), for picking defects.
_ARGS_OF = {
    "start": {"gun", "serial", "logical_card", "card", "balance", "targets"},
    "stop": {"gun"}, "reboot": {"when"}, "tariff_set": {"tariff"}, "time_sync": set(),
    "versions": set(), "journal_status": set(), "read_realtime": {"gun"}, "status": set(),
    "authorize": {"gun", "serial", "logical_card", "balance", "ok", "reason"},
    "vin_list": {"vins", "version"},
}


async def _fuzz_mqtt_commands(count, seed, case=None, window=100, rss_limit_mb=64, keep=False,
                              bridge_mqtt_delay_s=0):
    from host.commands import CODES
    from sim.testkit import ScriptedPile
    from sim.links import TcpTransport
    rep = Report("mqtt-commands", seed)
    tmp = tempfile.mkdtemp(prefix="pc-fuzz-mqtt-")
    broker = await asyncio.get_running_loop().run_in_executor(None, _start_broker)
    bridge = None
    pile = None
    relay = None
    try:
        cfg = bridge_config(tmp, broker, "fuzz", pile={OFFLINE_PILE: {"ext": True}},
                            mqtt={"max_command_bytes": _MAX_BYTES})
        if bridge_mqtt_delay_s:
            relay = await SlowRelay(broker.host, broker.port, bridge_mqtt_delay_s).start()
            cfg["mqtt"]["url"] = "mqtt://127.0.0.1:%d" % relay.listen_port
        cfg["piles"]["heartbeat_s"] = 30.0
        bridge = await BridgeChild(tmp, cfg).start()
        async with MqttPlatform("mqtt://%s:%d" % (broker.host, broker.port), "fuzz",
                                name="pc-fuzz-platform", fast=True) as plat:
            await plat.bridge_online(bridge)
            topics = plat.topics
            pile = ScriptedPile(GOOD_PILE, await TcpTransport.connect("127.0.0.1", bridge.tcp_port),
                                ext=True, heartbeat_s=5.0, reply_timeout=20.0)
            if await pile.login() != 0:
                rep.violation(None, "setup", "the good pile's login was refused")
            base_rss = bridge.rss_kb()
            watch = RssWatch(bridge).start()
            sent = 0
            expect = {}                       # (target, rid) -> (case, CommandCase)
            blind = collections.Counter()     # target -> messages whose id is unreadable/unknown
            blind_cases = collections.defaultdict(list)
            controls = {}                     # rid -> what a valid command must give
            ctl_n = 0

            async def control(target, cmd, **args):
                nonlocal ctl_n, sent
                ctl_n += 1
                rid = "ctl-%d-%d" % (seed, ctl_n)
                controls[rid] = (target, cmd)
                await plat.publish(topics.command(target), json.dumps(dict(args, id=rid, cmd=cmd)))
                sent += 1
                return rid

            cases = [case] if case is not None else range(count)
            for n, i in enumerate(cases):
                if watch.died:
                    break
                c = make_command_case(seed, i)
                rep.inputs += 1
                rep.kinds[c.kind] += 1
                if c.rid is not None and c.predictable:
                    if (c.target, c.rid) in expect:
                        rep.violation(i, c.kind, "fuzzer made id %r twice" % c.rid)
                    expect[(c.target, c.rid)] = (i, c)
                else:
                    blind[c.target] += 1
                    blind_cases[c.target].append((i, c))
                await plat.publish(topics.command(c.target), c.payload)
                sent += 1
                if n % 500 == 499:            # a valid command now and then still works
                    await control("site", "status")
                    await control(GOOD_PILE, "read_realtime", gun="01")
                if sent - plat.result_count > window:
                    await plat.poll_for(lambda: sent - plat.result_count <= window // 2, 30)
            # The barrier: valid commands sent after everything else.
            last = [await control("site", "status"), await control(GOOD_PILE, "status"),
                    await control(GOOD_PILE, "read_realtime", gun="01")]
            await plat.poll_for(lambda: plat.result_count >= sent and
                                {d.get("id") for _, d in plat.result_log} >= set(last), 60)
            fuzz_s = time.monotonic() - rep.t0
            # Judge every result.
            seen = collections.Counter()
            per_target_other = collections.Counter()
            for target, d in plat.result_log:
                rid = d.get("id")
                code = d.get("code")
                rep.outcomes[str(code)] += 1
                if rid in controls:
                    seen[rid] += 1
                    if d.get("ok") is not True:
                        rep.violation(None, "control", "valid %s for %s failed: %s %s"
                                      % (controls[rid][1], controls[rid][0], code, d.get("message")))
                    continue
                key = (target, rid)
                if key in expect:
                    seen[key] += 1
                    i, c = expect[key]
                    if c.codes is not None and code not in c.codes:
                        rep.violation(i, c.kind, "result code %r, want one of %s: %s"
                                      % (code, sorted(c.codes), d.get("message")), c.payload)
                else:
                    per_target_other[target] += 1
                    i, c = None, None
                if d.get("ok") is not False:
                    rep.violation(i, c.kind if c else "?", "result ok=%r for a bad command (%s)"
                                  % (d.get("ok"), d.get("message")), c.payload if c else None)
                if code not in CODES or code in ("ok", "error"):
                    rep.violation(i, c.kind if c else "?", "unclear result code %r: %s"
                                  % (code, d.get("message")), c.payload if c else None)
                if not isinstance(d.get("message"), str) or not d.get("message"):
                    rep.violation(i, c.kind if c else "?", "result without a message: %r" % d)
            for key, (i, c) in expect.items():
                if seen[key] != 1:
                    rep.violation(i, c.kind, "%d results for id %r on %r, want exactly 1"
                                  % (seen[key], key[1], key[0]), c.payload)
            for rid in controls:
                if seen[rid] != 1:
                    rep.violation(None, "control", "%d results for valid command %s, want 1"
                                  % (seen[rid], rid))
            for target in set(blind) | set(per_target_other):
                if blind[target] != per_target_other[target]:
                    # Name the likely culprits: messages whose id, still
                    # readable in their text, is on no result.
                    ids = {d.get("id") for t, d in plat.result_log if t == target}
                    suspects = [i for i, c in blind_cases[target]
                                if _id_in(c.payload) and _id_in(c.payload) not in ids]
                    rep.violation(None, "count", "target %r: %d messages without a predictable id, "
                                  "%d results not matched to one; no result for the ids of cases %s"
                                  % (target, blind[target], per_target_other[target], suspects[:10]))
            if not pile.connected:
                rep.violation(None, "good_pile", "the good pile was disconnected")
            await watch.stop()
            if watch.died or not bridge.alive:
                rep.violation(None, "bridge", "the bridge process died")
            peak = watch.peak()
            rep.extra["rss_kb"] = {"baseline": base_rss, "peak": peak, "limit_growth": rss_limit_mb * 1024}
            if peak > base_rss + rss_limit_mb * 1024:
                rep.violation(None, "bridge", "RSS peaked at %d KB, %d KB over the %d KB baseline"
                              % (peak, peak - base_rss, base_rss))
            for line in bridge.log_problems():
                rep.violation(None, "bridge_log", line)
            rep.extra["messages"] = {"sent": sent, "results": plat.result_count, "controls": len(controls),
                                     "seconds": round(fuzz_s, 1),
                                     "inputs_per_s": round(rep.inputs / max(1e-9, fuzz_s))}
    finally:
        if pile is not None:
            await pile.close()
        await wind_up(rep, tmp, keep, broker, bridge, relay)
    return rep


def fuzz_mqtt_commands(count, seed, case=None, **kw):
    return asyncio.run(_fuzz_mqtt_commands(count, seed, case, **kw))
