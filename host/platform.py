# The reference platform (`pile-platform`): an MQTT consumer that takes bills
# from one or more bridges, stores each trade serial once in SQLite, confirms
# (again, when a bill it holds arrives again), checks that every bill
# reconciles, sends commands, and prints a summary. It is what a platform
# engineer reads to learn the contract in docs/mqtt.md, and what the demo and
# the chaos harness count bills with.
#
# Reconciliation is done on the raw integers (protocol units), never on the
# scaled decimals: Σ period energy == total energy == meter stop - meter start,
# Σ period amount == total amount == energy fee + service fee.
import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time
import uuid

import aiomqtt

from host.topics import ROOT, shared_bills

log = logging.getLogger("pile-platform")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bills (
    serial      TEXT PRIMARY KEY,
    site        TEXT NOT NULL,
    pile        TEXT NOT NULL,
    stop_code   INTEGER NOT NULL,
    energy      INTEGER NOT NULL,   -- x10^4 kWh
    amount      INTEGER NOT NULL,   -- x10^4 yuan
    reconciled  INTEGER NOT NULL,
    problems    TEXT NOT NULL,
    doc         TEXT NOT NULL,
    received_at REAL NOT NULL,
    copies      INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT, pile TEXT, kind TEXT, doc TEXT, at REAL
);
"""

_PERIODS = ("sharp", "peak", "flat", "valley", "deep")


def reconcile(doc):
    """Problems (list of str) with a bill document, from its raw integers."""
    raw = doc.get("raw")
    if not isinstance(raw, dict):
        return ["no raw fields"]
    periods = [p for p in _PERIODS if p + "_energy" in raw]
    out = []
    try:
        e = sum(raw[p + "_energy"] for p in periods)
        a = sum(raw[p + "_amount"] for p in periods)
        if e != raw["total_energy"]:
            out.append("period energy %d != total %d" % (e, raw["total_energy"]))
        if a != raw["total_amount"]:
            out.append("period amount %d != total %d" % (a, raw["total_amount"]))
        if raw["meter_stop"] - raw["meter_start"] != raw["total_energy"]:
            out.append("meter %d - %d != total %d" % (raw["meter_stop"], raw["meter_start"],
                                                     raw["total_energy"]))
        x = raw.get("extra")
        if isinstance(x, dict):
            fees = 0
            for p in periods:
                pf = x.get(p + "_energy_fee", 0) + x.get(p + "_service_fee", 0)
                if pf != raw[p + "_amount"]:
                    out.append("%s fees %d != amount %d" % (p, pf, raw[p + "_amount"]))
                fees += pf
            if fees != raw["total_amount"]:
                out.append("energy fee + service fee %d != total %d" % (fees, raw["total_amount"]))
    except (KeyError, TypeError) as err:
        out.append("missing or bad field: %s" % err)
    return out


class Platform:
    """Consumes bills and events; confirms; sends commands and awaits results."""

    def __init__(self, url="mqtt://127.0.0.1:1883", db=":memory:", group=None, site="+",
                 username=None, password=None, client_id=None):
        from urllib.parse import urlsplit
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 1883
        self.username = username
        self.password = password
        self.client_id = client_id or "pc-platform-" + uuid.uuid4().hex[:8]
        self.group = group
        self.site = site
        self.db = sqlite3.connect(db)
        self.db.executescript(_SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.silent = False            # an outage: take nothing, confirm nothing
        self.confirming = True
        self.changed = asyncio.Event()
        self._client = None
        self._waiting = {}             # request id -> future of the result
        self.stats = {"bill_messages": 0, "duplicates": 0, "confirms_sent": 0, "events": 0,
                      "bad_messages": 0}

    # --- storage -----------------------------------------------------------

    def take_bill(self, doc):
        """Store a bill once; returns (new, problems)."""
        serial = doc["serial"]
        problems = reconcile(doc)
        raw = doc.get("raw", {})
        cur = self.db.execute("SELECT 1 FROM bills WHERE serial=?", (serial,))
        if cur.fetchone():
            self.db.execute("UPDATE bills SET copies = copies + 1 WHERE serial=?", (serial,))
            self.db.commit()
            self.stats["duplicates"] += 1
            return False, problems
        self.db.execute(
            "INSERT INTO bills (serial, site, pile, stop_code, energy, amount, reconciled, problems,"
            " doc, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (serial, doc.get("site", ""), doc.get("pile", ""), raw.get("stop_reason", -1),
             raw.get("total_energy", 0), raw.get("total_amount", 0), 0 if problems else 1,
             json.dumps(problems), json.dumps(doc), time.time()))
        self.db.commit()
        if problems:
            log.warning("bill %s does not reconcile: %s", serial, "; ".join(problems))
        return True, problems

    def summary(self):
        q = self.db.execute
        n, energy, amount = q("SELECT COUNT(*), COALESCE(SUM(energy),0), COALESCE(SUM(amount),0)"
                              " FROM bills").fetchone()
        bad = q("SELECT COUNT(*) FROM bills WHERE reconciled=0").fetchone()[0]
        dup = q("SELECT COUNT(*) FROM bills WHERE copies > 1").fetchone()[0]
        return {"bills": n, "unreconciled": bad, "received_more_than_once": dup,
                "energy_kwh": "%d.%04d" % divmod(energy, 10000),
                "amount_yuan": "%d.%04d" % divmod(amount, 10000),
                "duplicates_received": self.stats["duplicates"],
                "confirms_sent": self.stats["confirms_sent"], "events": self.stats["events"]}

    def bills(self):
        return [json.loads(r[0]) for r in self.db.execute("SELECT doc FROM bills ORDER BY rowid")]

    def serials(self):
        return set(r[0] for r in self.db.execute("SELECT serial FROM bills"))

    # --- MQTT --------------------------------------------------------------

    def _subscriptions(self):
        bills = (shared_bills(self.group, self.site) if self.group
                 else "%s/%s/bills/+" % (ROOT, self.site))
        return [bills, "%s/%s/events/+" % (ROOT, self.site), "%s/%s/result/+" % (ROOT, self.site)]

    async def run(self, ready=None):
        """Consume until cancelled; reconnects with backoff."""
        delay = 0.2
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.client_id,
                                          username=self.username, password=self.password,
                                          clean_session=False) as client:
                    # Commands to many piles are in flight at once by design.
                    client.pending_calls_threshold = 1 << 30
                    self._client = client
                    for t in self._subscriptions():
                        await client.subscribe(t, qos=1)
                    delay = 0.2
                    if ready is not None:
                        ready.set()
                    async for m in client.messages:
                        await self._on_message(client, str(m.topic), m.payload)
            except aiomqtt.MqttError as e:
                self._client = None
                log.info("platform: broker connection lost (%s); retry in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_message(self, client, topic, payload):
        parts = topic.split("/")
        if len(parts) != 4:
            return
        _, site, kind, pile = parts
        try:
            doc = json.loads(payload)
        except ValueError:
            self.stats["bad_messages"] += 1
            return
        if kind == "bills":
            if self.silent:
                return  # an outage: the bridge keeps it and sends it again
            self.stats["bill_messages"] += 1
            if not isinstance(doc, dict) or "serial" not in doc:
                self.stats["bad_messages"] += 1
                return
            self.take_bill(doc)
            if self.confirming:
                # Confirm every copy: a resend means the bridge did not see our answer.
                await client.publish("%s/%s/confirm/%s" % (ROOT, site, pile),
                                     json.dumps({"serial": doc["serial"], "result": 0}), qos=1)
                self.stats["confirms_sent"] += 1
            self.changed.set()
        elif kind == "events":
            self.stats["events"] += 1
            self.db.execute("INSERT INTO events (site, pile, kind, doc, at) VALUES (?,?,?,?,?)",
                            (site, pile, doc.get("kind", "") if isinstance(doc, dict) else "",
                             payload.decode(errors="replace"), time.time()))
            self.db.commit()
            self.changed.set()
        elif kind == "result" and isinstance(doc, dict):
            fut = self._waiting.pop(doc.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(doc)

    async def command(self, site, pile, cmd, timeout=30.0, **args):
        """Send one command and return its result document."""
        if self._client is None:
            raise ConnectionError("platform is not connected to the broker")
        req = uuid.uuid4().hex[:12]
        doc = {"id": req, "cmd": cmd}
        doc.update(args)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        await self._client.publish("%s/%s/cmd/%s" % (ROOT, site, pile), json.dumps(doc), qos=1)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(req, None)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pile-platform", description=__doc__)
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    ap.add_argument("--db", default="platform.db", help="SQLite file for bills")
    ap.add_argument("--site", default="+", help="site id, or + for every site")
    ap.add_argument("--group", help="share the bill stream: $share/<group>/...")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--summary", action="store_true", help="print the summary of --db and exit")
    ap.add_argument("--cmd", nargs="+", metavar=("SITE PILE CMD", "k=v"),
                    help="send one command, e.g. --cmd demo 55031412782305 stop gun=01")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.summary:
        print(json.dumps(Platform(db=args.db).summary(), indent=2))
        return 0
    p = Platform(args.broker, args.db, args.group, args.site, args.username, args.password)

    async def go():
        ready = asyncio.Event()
        task = asyncio.create_task(p.run(ready))
        await ready.wait()
        if args.cmd:
            if len(args.cmd) < 3:
                print("pile-platform: --cmd needs SITE PILE CMD [key=value ...]", file=sys.stderr)
                return 2
            site, pile, cmd = args.cmd[:3]
            kw = {}
            for kv in args.cmd[3:]:
                k, _, v = kv.partition("=")
                kw[k] = int(v) if v.isdigit() and k not in ("gun", "serial") else v
            res = await p.command(site, pile, cmd, **kw)
            print(json.dumps(res, indent=2))
            task.cancel()
            return 0 if res.get("ok") else 1
        try:
            while True:
                await asyncio.sleep(10)
                print(json.dumps(p.summary()), flush=True)
        finally:
            task.cancel()
    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        print(json.dumps(p.summary(), indent=2))
        return 0


if __name__ == "__main__":
    sys.exit(main())
