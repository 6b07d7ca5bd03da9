# Benchmark: a fleet of site bridges through a 3-node NATS cluster and
# through one Mosquitto, side by side in one run (docs/benchmarks.md,
# "## Fleet"; docs/scaling.md for the 1,000-site projection).
#
# For each broker: the reference platform's workers as child processes
# (pile-platform --workers W, one shared database, site leases), N bridges
# in this process (host.bridge.Bridge, one SQLite store each, the broker's
# node list as mqtt.url) and P scripted piles per bridge on TCP, each
# sending K bills (0x3B + 0xEB) one after the other (a burst, or paced by
# --interval). Measured: bills/s from
# the first bill sent until the last one is confirmed at its bridge; bill
# -> confirm latency per bill from the bridge's own store (received_at ->
# confirmed_at); the brokers' memory (VmRSS of every broker process at the
# end). Checked: every bill stored once at the platform, confirmed and
# settled once. --kill-node: the cluster's first node is SIGKILLed halfway
# through (and not restarted): what its bridges pay for the failover.
#
#   python3 -m tools.bench_fleet [--bridges 20] [--piles 2] [--bills 10] [--workers 2]
#                                [--interval S] [--kill-node] [--json] [--keep DIR]
import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from host import bridge as bridgemod
from host import cli
from host import config as configmod
from sim.brokers import Mosquitto
from sim.nats import NatsCluster
from sim.links import TcpTransport
from sim.testkit import ScriptedPile, make_bill, make_extra

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOUND_S = 600.0          # a run that has not finished by then failed


def _rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid=None):
    # utime + stime of a process (ours when pid is None), in seconds.
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else None


async def _start_workers(urls, db, workers, logdir):
    procs = []
    for i in range(workers):
        log = open(os.path.join(logdir, "platform-%d.log" % i), "ab")
        p = await asyncio.create_subprocess_exec(
            # Spread over the nodes: each worker starts on another one.
            sys.executable, "-m", "host.platform", "--broker",
            ",".join(urls[i % len(urls):] + urls[:i % len(urls)]), "--db", db,
            "--workers", str(workers), "--worker-index", str(i), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=log)
        log.close()
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("platform worker %d did not start (log in %s)" % (i, logdir))
        procs.append(p)
    return procs


async def _stop_workers(procs):
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 15)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()


async def run_fleet(name, urls, broker_pids, args, tmp, kill=None):
    """One fleet run on one broker; returns its figures (dict)."""
    os.makedirs(tmp)
    pdb = os.path.join(tmp, "platform.db")
    workers = await _start_workers(urls, pdb, args.workers, tmp)
    bridges, piles = [], []
    try:
        for i in range(args.bridges):
            cfg = configmod.load(None, {
                "site": "fleet-%03d" % i, "database": os.path.join(tmp, "bridge-%03d.db" % i),
                "log_level": "warning",
                # Spread over the nodes, as sites would be (each its own order).
                "mqtt": {"url": urls[i % len(urls):] + urls[:i % len(urls)],
                         "reconnect_min_s": 0.1, "reconnect_max_s": 2.0},
                "bills": {"retry_initial_s": 10.0, "retry_max_s": 60.0, "extra_wait_s": 0.5},
                "tcp": {"listen": "127.0.0.1:0", "ext": True}})
            b = bridgemod.Bridge(cfg)
            await b.start()
            bridges.append(b)
        for b in bridges:
            await asyncio.wait_for(b.mqtt.connected.wait(), 60)
        for i, b in enumerate(bridges):
            for j in range(args.piles):
                code = "5503%010d" % (i * 100 + j + 1)
                p = ScriptedPile(code, await TcpTransport.connect("127.0.0.1", b.tcp_port))
                if await p.login() != 0:
                    raise RuntimeError("pile %s not logged in" % code)
                piles.append(p)
        total = len(piles) * args.bills
        half = asyncio.Event()
        sent = [0]

        async def pile_run(p, k):
            # --interval: paced piles (an offered load of piles / interval
            # bills/s), phases spread; without it, a burst.
            await asyncio.sleep(args.interval * k / len(piles))
            for n in range(1, args.bills + 1):
                if n > 1:
                    await asyncio.sleep(args.interval)
                bill = make_bill(p.code, n)
                if await p.send_bill(bill, make_extra(bill), timeout=60) != 0:
                    raise RuntimeError("bill %s not acknowledged" % bill["serial"])
                sent[0] += 1
                if sent[0] * 2 >= total:
                    half.set()

        killed = {}

        async def killer():
            await half.wait()
            killed["victims"] = sum(1 for b in bridges if b.mqtt.url == urls[0])
            kill()
            killed["at"] = time.time()

        pids = {"brokers": broker_pids, "workers": lambda: [w.pid for w in workers]}
        cpu0 = {k: sum(_cpu_s(p) for p in f()) for k, f in pids.items()}
        cpu0["bridges"] = _cpu_s()
        t0 = time.time()
        tasks = [asyncio.ensure_future(pile_run(p, k)) for k, p in enumerate(piles)]
        if kill is not None:
            tasks.append(asyncio.ensure_future(killer()))
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + _BOUND_S
        while sum(b.stats["confirms"] for b in bridges) < total:
            if time.monotonic() > deadline:
                raise RuntimeError("%s: %d of %d bills confirmed after %g s" % (
                    name, sum(b.stats["confirms"] for b in bridges), total, _BOUND_S))
            await asyncio.sleep(0.02)
        elapsed = time.time() - t0
        # CPU seconds per part over the run: what bounds the figures.
        cpu = {k: sum(_cpu_s(p) for p in f()) - cpu0[k] for k, f in pids.items()}
        cpu["bridges"] = _cpu_s() - cpu0["bridges"]
        rss = sum(_rss_kb(pid) for pid in broker_pids())
        lat = []
        for b in bridges:
            db = sqlite3.connect(b.cfg["database"])
            lat += [r[0] - r[1] for r in db.execute(
                "SELECT confirmed_at, received_at FROM bills WHERE confirmed_at IS NOT NULL")]
            db.close()
        db = sqlite3.connect(pdb)
        stored, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT serial) FROM bills").fetchone()
        db.close()
        out = {"broker": name, "bridges": len(bridges), "piles": len(piles), "bills": total,
               "interval_s": args.interval,
               "platform_workers": args.workers, "seconds": round(elapsed, 2),
               "bills_per_s": round(total / elapsed, 1),
               "confirm_p50_ms": round(_pct(lat, 50) * 1000, 1),
               "confirm_p99_ms": round(_pct(lat, 99) * 1000, 1),
               "confirm_max_ms": round(max(lat) * 1000, 1), "broker_rss_mb": round(rss / 1024, 1),
               "stored_at_platform": stored, "stored_twice": stored - distinct,
               "lost": total - distinct,
               "cpu_s": {k: round(v, 1) for k, v in cpu.items()}}
        if killed:
            # Bridges on the dead node: their bills confirmed after the kill.
            out["node_killed_bridges"] = killed["victims"]
        return out
    finally:
        await asyncio.gather(*(p.close() for p in piles), return_exceptions=True)
        for b in bridges:
            await b.stop()
        await _stop_workers(workers)


async def bench(args, tmp):
    results = []
    with Mosquitto(persistence=True, verbose=False) as m:
        results.append(await run_fleet("mosquitto", [m.url], lambda: [m.pid], args,
                                       os.path.join(tmp, "mosquitto")))
    with NatsCluster() as c:
        kill = (lambda: c.kill(0)) if args.kill_node else None
        results.append(await run_fleet(
            "nats-3" + ("-kill" if kill else ""), c.urls,
            lambda: [n.pid for n in c.nodes if n.pid], args, os.path.join(tmp, "nats"), kill))
    return results


def table(results):
    cols = ("broker", "bridges", "piles", "bills", "interval_s", "platform_workers", "bills_per_s",
            "confirm_p50_ms", "confirm_p99_ms", "confirm_max_ms", "broker_rss_mb", "lost",
            "stored_twice", "cpu_s")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(k)) for k in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_fleet", description="Many site bridges through a "
                                 "3-node NATS cluster and through one Mosquitto, side by side")
    ap.add_argument("--bridges", type=int, default=20, help="site bridges (in this process)")
    ap.add_argument("--piles", type=int, default=2, help="piles per bridge")
    ap.add_argument("--bills", type=int, default=10, help="bills per pile, one after the other")
    ap.add_argument("--interval", type=float, default=0.0, metavar="S",
                    help="each pile waits S seconds between its bills (default: a burst)")
    ap.add_argument("--workers", type=int, default=2, help="platform worker processes")
    ap.add_argument("--kill-node", action="store_true",
                    help="SIGKILL the cluster's first node halfway through")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep the databases and worker logs in DIR")
    cli.common(ap, log_level=None)
    args = ap.parse_args(argv)
    if min(args.bridges, args.piles, args.bills, args.workers) < 1 or args.piles > 99:
        ap.error("--bridges, --piles (at most 99), --bills and --workers are at least 1")
    logging.basicConfig(level=logging.ERROR)
    tmp = args.keep or tempfile.mkdtemp(prefix="pc-fleet-")
    try:
        results = asyncio.run(asyncio.wait_for(bench(args, tmp), 2 * _BOUND_S))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 1 if any(r["lost"] or r["stored_twice"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
