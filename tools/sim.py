# pile-sim: the real pile firmware (firmware/pile.py) on simulated hardware
# (sim/hardware.py), in simulated time, many piles in one process.
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
# Scenario files are JSON (docs/scenarios.md). The library is sim/scenario.py
# (scenarios), sim/fleet.py (the fleet) and sim/testkit.py (third-party
# piles); this module is the command line.
import argparse
import json
import os
import signal
import sys

from host import cli
from sim.fleet import SimFleet, parse_hostport
from sim.scenario import format_table, run_scenario
from sim.scenario_file import ScenarioError, load_scenario
from sim.testkit import THIRD_PARTY_VARIANTS, ThirdPartyPile, third_party_corpus
from sim.links import TcpTransport


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
