"""pile-demo: the whole product on one machine, in about a minute.

Starts a broker (Mosquitto when installed, else the embedded amqtt), the
bridge (`pile-bridge`, a child process), the reference platform and seven
simulated piles running the real firmware over TCP, in simulated time. Then
it replays the field cases through MQTT commands, as a platform would:

  pile 1  triple stop: one start, then three stop commands
  pile 2  "charge to 1 yuan" at 60 kW, then a stop after the automatic stop
  pile 3  power cut mid-session (the bill comes back after boot, 0x83)
  pile 4  VIN refusal: a fleet card, a bus whose VIN is not the fleet's (0x8A)
  pile 5  a session across five tariff classes (deep valley .. sharp)
  pile 6  a bill made during a platform outage (delivered when it is back)
  pile 7  a two-gun DC pile talking GB/T 27930 over CAN (python-can's virtual
          bus) to a simulated BMS per gun (docs/bms.md): gun 1 charges to
          SOC 80 % and stops on the SOC the BMS reports (0x41); on gun 2 the
          BMS stops mid-charge for battery over-temperature (0x7C), the bill
          sealed and confirmed

Each case is announced as it begins; stop commands the piles refuse
because the session had already ended are shown as expected. It ends with a
table per case (what should happen, what happened, PASS or FAIL: the limit
case with its target and result) and the totals: sessions, bills,
confirmed, lost, duplicated, unreconciled. `--json` prints the same as JSON,
with each case and each bill. A progress bar on stderr follows the
simulated clock when stderr is a terminal (never with --json); otherwise a
line every 10 simulated minutes. Exit status 1 if a case failed or anything
was lost, duplicated or does not add up.

`--ocpp` (issue 15, docs/ocpp.md): the bridge also runs its OCPP 2.0.1
uplink (`--ocpp-version 1.6` for 1.6J) to a CSMS built on the `ocpp`
library (tools/ocpp_csms.py), side by side with MQTT. The CSMS goes down
with the platform's outage and comes back; the table adds the transactions
that reached the CSMS, lost and duplicated there, and piles are settled only
once both uplinks acknowledged.
"""
import argparse
import asyncio
import json
import os
import sys

from host import cli
from sim.demo import Demo, table


def _stay(url):
    # --status: the site stays up for a look at its status page until
    # Ctrl-C (or a service manager's SIGTERM, taken the same way).
    import signal
    import time

    def _stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)
    print("the site runs on: status page %s (Ctrl-C stops it)" % url, file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pile-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--speed", type=float, default=120.0, help="simulated seconds per real second")
    ap.add_argument("--keep", metavar="DIR", help="keep logs and databases in DIR")
    ap.add_argument("--broker", choices=("mosquitto", "amqtt"), default="mosquitto",
                    help="broker to start (amqtt, embedded, is used when Mosquitto is missing)")
    ap.add_argument("--ocpp", action="store_true",
                    help="also run the OCPP uplink to a CSMS (the ocpp library), down during the outage")
    ap.add_argument("--ocpp-version", choices=("2.0.1", "1.6"), default="2.0.1")
    ap.add_argument("--status", action="store_true",
                    help="serve the bridge's status page (its URL is printed) and keep the site "
                         "running after the summary until Ctrl-C: each bill's OCMF record is there")
    cli.common(ap, log_level="warning")
    args = ap.parse_args(argv)
    cli.setup_logging(args)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    d = Demo(args.speed, quiet=args.json, workdir=args.keep, broker=args.broker,
             ocpp=args.ocpp_version if args.ocpp else None, status=args.status)
    try:
        s = asyncio.run(d.run())
        print(json.dumps(s, indent=2) if args.json else table(s), flush=True)
        if args.status:
            _stay(d.status_url)
    finally:
        d.stop()
    bad = s["lost"] or s["duplicated"] or s["unreconciled"] or \
        not all(c["pass"] for c in s["cases"]) or s.get("csms_lost") or s.get("csms_duplicated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
