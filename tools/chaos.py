"""pile-chaos: try to lose, duplicate or garble a bill, and count.

N simulated piles (the real firmware, sim/fleet.py) x M sessions each,
through the real bridge (a child process), a real broker (Mosquitto) and the
reference platform (host/platform.py), with seeded random faults:

  power_cut        a pile loses power (mid-session or idle), back after a while
  flash_cut        the power goes while the journal writes: a PowerCut at a
                   random byte of the pile's flash (sim/flash.py),
                   sometimes again during the recovery at the next boot
  reboot           the platform asks for a reboot (now / when idle) mid-session
  bridge_kill      the bridge is SIGKILLed and started again on its database
  broker_restart   Mosquitto is restarted (SIGTERM or SIGKILL) on its port;
                   with --cluster, a rolling restart of every node in turn
  node_kill        (--cluster) one node of the NATS cluster is SIGKILLed and
                   started again a moment later
  platform_outage  the platform takes nothing and confirms nothing for a while
  corrupt          1 % of the frames on each pile link get one byte changed
  duplicate        1 % of the frames on each pile link arrive twice
  forge_bill       a rogue pile of the site (its own code and key) logs in and
                   sends a bill and a fee split under a victim's open serial
  fake_login       an intruder logs in with a victim pile's code (it cannot
                   answer the login challenge) and sends a bill under it
  forged_confirm   an intruder on the broker confirms every bill it sees, with
                   the right content hash but without the platform's `auth`
  bms_fault        (--bms) in 15 % of sessions the car's BMS stops (a BST),
                   alarms (BSM), reports a timeout (BEM), falls silent, or
                   aborts or falls silent in a stage before charging
and in every session 2 or 3 stop commands, often after an automatic stop.
The piles are keyed (one site key: login proof, signed commands, bill MAC)
and the platform signs its commands and confirmations (a platform key).

Sessions are started by the platform (MQTT `start` through the bridge) and
by card swipes at the pile (an offline start, the serial issued by the pile).
When every pile has run its sessions the faults stop, everything reconnects,
and the harness waits (bounded) until nothing is in flight. Then it counts,
from the piles' flash and the platform's database (docs/chaos.md):

  sessions      executed starts: trade serials whose session-open record
                landed complete on a pile's flash journal
  bills         bills in the platform's database
  lost          executed starts with no bill at the platform
  duplicated    executed starts billed twice (two different bills sealed on
                the flash or held by the bridge for one serial)
  unreconciled  platform bills whose parts do not add up to their totals
  phantom       platform bills for no executed start
  mismatched    platform bills whose figures differ from the pile's sealed bill
  unconfirmed   bills still pending on a pile or unconfirmed at the bridge

With --third-party N, N vendor piles (sim.testkit.ThirdPartyPile: hex SIM,
swapped CRCs, V1.5, YKC's give-up-after-3-resends rule) run next to ours
through the same faults, each sending the third-party bill corpus (every
variant: 156-byte, V1.7 0x3D, meter 0 -> 0, non-BCD gun, ...). Their bills
are reported apart ("third_party"): none of them counts as phantom or
unreconciled against ours; "lost" there is a bill the pile got a 0x40 for
that the platform does not hold; bills the pile gave up without a 0x40 are
counted, by YKC's rule not ours.

With --bms each pile's gun talks GB/T 27930 to a simulated car's BMS over
python-can's virtual bus (sim/bms.py, docs/bms.md): a new car with a random
battery (capacity, start SOC, pack voltage and limits, taper) every session.

    pile-chaos --piles 20 --sessions 50 --seed 1 --json
    pile-chaos --piles 4 --sessions 20 --third-party 2
    pile-chaos --inproc --piles 200 --sessions 50 --json

--inproc runs the same parts in one process in simulated time, no sockets
(sim/chaos_inproc.py): the real firmware piles, the real bridge (its store on
SQLite) and the real platform, with an in-process broker; its faults are
power_cut, flash_cut, reboot, bridge_kill (a crash: RAM lost, store kept),
broker_restart, platform_outage, corrupt, duplicate and platform_duplicate (the
broker delivers a bill or confirmation to the platform twice). It prints
sessions/s beside the verdict.

exits 1 when any of lost .. unconfirmed is not 0 (or recovery timed out).
"""
import argparse
import asyncio
import json
import logging
import os
import sys

from host import cli
from sim.chaos import Chaos, failed, table
from sim.chaos_fleet import KINDS
from sim import chaos_inproc as inproc

_ALL = KINDS + tuple(k for k in inproc.KINDS if k not in KINDS)


def _kinds(text):
    if text in ("all", ""):
        return "all"
    if text == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in _ALL]
    if bad:
        raise argparse.ArgumentTypeError("unknown fault kind %r (known: %s)"
                                         % (bad[0], ", ".join(_ALL)))
    return kinds


def _inproc(ap, args):
    if args.cluster or args.third_party or args.events or args.bms:
        ap.error("--inproc runs without sockets: no --cluster, --third-party, --events or --bms")
    faults = inproc.KINDS if args.faults == "all" else args.faults
    bad = [k for k in faults if k not in inproc.KINDS]
    if bad:
        ap.error("fault kind %s needs the socket harness (in-process: %s)"
                 % (bad[0], ", ".join(inproc.KINDS)))
    h = inproc.InprocChaos(args.piles, args.sessions, args.seed, args.minutes, faults,
                           args.intensity, args.keep, quiet=not args.verbose,
                           keyed=not args.unkeyed, ocmf=args.ocmf)
    try:
        with cli.progress("pile-chaos sessions", total=args.piles * args.sessions,
                          enabled=cli.progress_enabled(args.json)) as tick:
            if cli.progress_enabled(args.json):
                h.progress = tick
            s = inproc.run(h)
    finally:
        h.close()
    print(json.dumps(s, indent=2) if args.json else table(s) + "\n" + inproc.rate_line(s))
    return 1 if failed(s) else 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pile-chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--piles", type=int, default=20, help="simulated piles (default 20)")
    ap.add_argument("--sessions", type=int, default=50,
                    help="executed starts per pile (default 50)")
    ap.add_argument("--seed", type=int, default=1, help="the fault and session plan (default 1)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--speed", type=float, default=600.0,
                    help="simulated seconds per real second, at most (default 600)")
    ap.add_argument("--minutes", type=int, default=6,
                    help="longest planned session, simulated minutes (default 6)")
    ap.add_argument("--faults", type=_kinds, default="all", metavar="KIND,...",
                    help="fault kinds to inject: all (default), none, or a list of "
                    + ", ".join(_ALL))
    ap.add_argument("--intensity", type=float, default=1.0,
                    help="multiply the pile and process fault rates (default 1)")
    ap.add_argument("--recovery", type=float, default=180.0, metavar="S",
                    help="seconds to wait for everything to settle at the end (default 180)")
    ap.add_argument("--keep", metavar="DIR", help="keep logs and databases in DIR")
    ap.add_argument("--unkeyed", action="store_true",
                    help="piles without keys (no login proof, no bill MAC): shows what the "
                    "intruders get then; the run fails")
    ap.add_argument("--verbose", action="store_true", help="progress and faults on stderr")
    ap.add_argument("--cluster", action="store_true",
                    help="a 3-node NATS cluster (MQTT listeners, JetStream replicas 3) instead of "
                    "one Mosquitto; adds the node_kill fault, and broker_restart is a rolling "
                    "restart (docs/scaling.md)")
    ap.add_argument("--bms", action="store_true",
                    help="each gun charges a simulated car over GB/T 27930 (python-can's virtual "
                    "bus): random batteries, and the bms_fault kind")
    ap.add_argument("--third-party", type=int, default=0, metavar="N",
                    help="vendor piles beside ours, their bills reported apart (default 0)")
    ap.add_argument("--inproc", action="store_true",
                    help="everything in this process in simulated time, no sockets "
                    "(sim/chaos_inproc.py; docs/chaos.md \"In one process\")")
    ap.add_argument("--ocmf", action="store_true",
                    help="--inproc: the piles sign every bill (OCMF, P-256 in Python after each "
                    "session; off by default in --inproc, always on in the socket harness)")
    ap.add_argument("--events", metavar="FILE", help="write custody events (JSON lines) to FILE "
                    "and the bridge's log to FILE.bridge.log, for tools/model_replay.py")
    cli.common(ap, log_level="warning")
    args = ap.parse_args(argv)
    cli.setup_logging(args)
    if not args.verbose:
        # The broker is killed on purpose: its clients' "failed to receive on
        # socket" is the fault working, not news.
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    if args.piles < 1 or args.sessions < 1:
        ap.error("--piles and --sessions must be at least 1")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    if args.inproc:
        return _inproc(ap, args)
    if args.faults == "all":
        args.faults = KINDS
    bad = [k for k in args.faults if k not in KINDS]
    if bad:
        ap.error("fault kind %s is for --inproc only" % bad[0])
    c = Chaos(args.piles, args.sessions, args.seed, args.speed, args.minutes, args.faults,
              args.intensity, args.keep, args.recovery, quiet=not args.verbose,
              keyed=not args.unkeyed, third_party=args.third_party, cluster=args.cluster,
              events=args.events, bms=args.bms)
    try:
        with cli.progress("pile-chaos sessions", total=args.piles * args.sessions,
                          enabled=cli.progress_enabled(args.json)) as tick:
            if cli.progress_enabled(args.json):
                c.progress = tick
            s = asyncio.run(c.run())
    finally:
        c.close()
    print(json.dumps(s, indent=2) if args.json else table(s))
    return 1 if failed(s) else 0


if __name__ == "__main__":
    sys.exit(main())
