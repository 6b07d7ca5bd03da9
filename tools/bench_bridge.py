# Benchmark of pile-bridge (docs/benchmarks.md, "## Bridge"):
#
#  1. durable bills per second relayed: scripted piles send bills (0x3B +
#     0xEB) over TCP to a bridge running as its own process; each bill is
#     committed to SQLite (synchronous=FULL) before its 0x40, published QoS 1,
#     confirmed by a platform consumer, and settled back on the pile (0xE4).
#     Side by side, in the same run: raw aiomqtt QoS 1 publishes of the same
#     JSON payloads (publish + PUBACK), and the ratio.
#  2. session stop -> platform confirmation latency, one bill at a time: from
#     the pile sending its bill to the platform's confirmation arriving back
#     at the pile as 0xE4 (p50 / p99), and to the platform holding the bill.
#  3. backlog drain after an outage over a pile link paced at 115200 baud
#     (8N1): a pile reconnects holding N journaled bills and sends them all
#     without waiting for answers (window N: the line's ceiling) or one at a
#     time waiting for each 0x40 and 0xEC (window 1: close to our firmware's
#     outbox, which waits for the 0x40 only); the drain rate as a fraction of
#     line rate.
#     And the bridge's own backlog (bills held in SQLite while the broker was
#     down) drained to the platform after the broker comes back.
#
#   python3 -m tools.bench_bridge [--bills 2000] [--piles 4] [--write]
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

import aiomqtt

from host import schema
from sim.brokers import Mosquitto
from host.mqtt import Background
from host.store import Bill
from sim.testkit import ScriptedPile, make_bill, make_extra
from sim.links import PacedTransport, TcpTransport
from host.topics import Topics
from host import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = "bench"
BAUD = 115200
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _pile_code(i):
    return "550314127%05d" % i


class Consumer(Background):
    """A platform: takes bills, confirms each once, notes arrival times."""

    def __init__(self, host, port, confirm=True, persistent=False):
        self.host, self.port = host, port
        # persistent: a fixed client id and clean_session=False, so the
        # broker queues bills for it while it reconnects.
        self.persistent = persistent
        self.topics = Topics(SITE)
        self.confirm = confirm
        self.seen = {}
        self.ready = asyncio.Event()
        self._task = None
        self._client = None

    async def _run(self):
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="bench-platform-%d" % os.getpid(),
                                          max_inflight_messages=200, socket_options=NODELAY,
                                          clean_session=not self.persistent) as c:
                    self._client = c
                    await c.subscribe(self.topics.base + "/bills/+", qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        doc = json.loads(m.payload)
                        s = doc["serial"]
                        if s not in self.seen:
                            self.seen[s] = time.monotonic()
                        if self.confirm:
                            await c.publish(self.topics.confirm(doc["pile"]),
                                            json.dumps({"serial": s, "result": 0,
                                                        "hash": doc["content_hash"]}), qos=1)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)


class BridgeProc:
    def __init__(self, tmp, broker, **over):
        cfg = {"site": SITE, "database": os.path.join(tmp, "bridge.db"), "log_level": "warning",
               "mqtt": {"url": "mqtt://%s:%d" % (broker.host, broker.port), "reconnect_min_s": 0.05,
                        "reconnect_max_s": 0.5},
               "bills": {"retry_initial_s": 30.0, "extra_wait_s": 1.0},
               "piles": {"heartbeat_s": 30.0, "command_timeout_s": 5.0},
               "tcp": {"listen": "127.0.0.1:0", "ext": True}}
        for k, v in over.items():
            cfg[k].update(v)
        self.path = os.path.join(tmp, "bridge.toml")
        with open(self.path, "w") as f:
            for k, v in cfg.items():
                if not isinstance(v, dict):
                    f.write("%s = %s\n" % (k, json.dumps(v)))
            for k, v in cfg.items():
                if isinstance(v, dict):
                    f.write("[%s]\n" % k)
                    for k2, v2 in v.items():
                        f.write("%s = %s\n" % (k2, json.dumps(v2)))
        self.log = os.path.join(tmp, "bridge.log")
        self.proc = None
        self.port = None

    async def start(self):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log, "ab") as log:
            prof = os.environ.get("BENCH_BRIDGE_PROFILE")   # a path: profile the bridge
            pre = ["-m", "cProfile", "-o", prof] if prof else []
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, *pre, "-m", "host.bridge", "-c", self.path,
                stdout=asyncio.subprocess.PIPE,
                stderr=log, cwd=ROOT, env=env)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        self.port = json.loads(line)["tcp_port"]

    async def stop(self):
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _pile(port, code, transport=None):
    t = transport or await TcpTransport.connect("127.0.0.1", port)
    p = ScriptedPile(code, t, reply_timeout=30.0)
    assert await p.login() == 0
    return p


async def _send_pipelined(pile, bills, window):
    """Send bills + 0xEB back to back, at most `window` unanswered."""
    inflight = asyncio.Semaphore(window)

    async def one(b):
        async with inflight:
            await pile.send_bill(b, make_extra(b))
    await asyncio.gather(*[one(b) for b in bills])


def _payloads(n):
    # The bridge's own JSON for n bills, for the raw-publish baseline.
    out = []
    for i in range(n):
        v = make_bill(_pile_code(i % 4), i)
        from protocol import codec
        frame = codec.encode("bill", v)
        extra = codec.encode("bill_extra", make_extra(v))
        row = Bill((i + 1, v["serial"], v["pile"], i + 1, frame, 0, time.time(), 0, 0, None, 0,
                    None, None, None, None, extra))
        out.append((v["pile"], json.dumps(schema.bill_json(SITE, row), separators=(",", ":"))))
    return out


async def bench_throughput(broker, tmp, n, piles, window):
    bp = BridgeProc(tmp, broker)
    await bp.start()
    try:
        async with Consumer(broker.host, broker.port):
            ps = [await _pile(bp.port, _pile_code(i)) for i in range(piles)]
            per = [[make_bill(p.code, k) for k in range(i, n, piles)] for i, p in enumerate(ps)]
            t0 = time.monotonic()
            await asyncio.gather(*[_send_pipelined(p, b, window) for p, b in zip(ps, per)])
            t_custody = time.monotonic()
            for p, bills in zip(ps, per):
                want = {b["serial"] for b in bills}
                await p.wait_for(lambda p=p, want=want: want <= set(p.settled), 120)
            t1 = time.monotonic()
            for p in ps:
                await p.close()
    finally:
        await bp.stop()
    # Raw baseline: the same payloads, one aiomqtt client, QoS 1, PUBACK awaited.
    payloads = _payloads(n)
    topics = Topics(SITE + "-raw")
    async with aiomqtt.Client(broker.host, broker.port, max_inflight_messages=200,
                              socket_options=NODELAY) as c:
        c.pending_calls_threshold = 10 ** 9    # silence aiomqtt's "pending publish calls"
        t2 = time.monotonic()
        await asyncio.gather(*[c.publish(topics.bills(pile), p, qos=1) for pile, p in payloads])
        t3 = time.monotonic()
    size = sum(len(p) for _, p in payloads) // n
    return {"bills": n, "piles": piles, "window": window, "payload_bytes": size,
            "custody_per_s": n / (t_custody - t0), "relayed_per_s": n / (t1 - t0),
            "raw_per_s": n / (t3 - t2)}


async def bench_latency(broker, tmp, samples):
    bp = BridgeProc(tmp, broker, bills={"extra_wait_s": 1.0})
    await bp.start()
    lat_settled = []
    lat_platform = []
    try:
        async with Consumer(broker.host, broker.port) as plat:
            p = await _pile(bp.port, _pile_code(90))
            for k in range(samples):
                b = make_bill(p.code, k)
                s = b["serial"]
                t0 = time.monotonic()
                await p.send_bill(b, make_extra(b))
                await p.wait_for(lambda: s in p.settled, 30)
                t1 = time.monotonic()
                lat_settled.append(t1 - t0)
                lat_platform.append(plat.seen[s] - t0)
            await p.close()
    finally:
        await bp.stop()
    return {"samples": samples, "settled": _pct(lat_settled), "platform": _pct(lat_platform)}


def _pct(xs):
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(round(f * (len(xs) - 1))))] * 1000
    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": xs[-1] * 1000,
            "mean_ms": statistics.mean(xs) * 1000}


async def bench_drain(broker, tmp, n):
    bp = BridgeProc(tmp, broker)
    await bp.start()
    out = {}
    try:
        async with Consumer(broker.host, broker.port):
            for mode, window in (("back_to_back", n), ("stop_and_wait", 1)):
                code = _pile_code(70 if mode == "back_to_back" else 71)
                paced = PacedTransport(await TcpTransport.connect("127.0.0.1", bp.port), BAUD)
                p = await _pile(bp.port, code, paced)
                bills = [make_bill(code, k) for k in range(n)]
                up0, down0 = paced.tx_sent, paced.rx_bytes
                t0 = time.monotonic()
                await _send_pipelined(p, bills, window)
                t1 = time.monotonic()
                up = paced.tx_sent - up0        # on the wire by the end of the drain
                from protocol import codec
                bill_bytes = sum(len(codec.encode(0x3B, b)) + len(codec.encode("bill_extra", make_extra(b)))
                                 for b in bills)
                out[mode] = {"bills": n, "seconds": t1 - t0, "bills_per_s": n / (t1 - t0),
                             "bytes_up": up, "bytes_down": paced.rx_bytes - down0,
                             "bill_bytes": bill_bytes,
                             "line_fraction": (up * 10.0 / BAUD) / (t1 - t0),
                             "goodput_fraction": (bill_bytes * 10.0 / BAUD) / (t1 - t0)}
                await p.close()
    finally:
        await bp.stop()
    return out


async def bench_broker_backlog(broker, tmp, n):
    # Its own broker with persistence, so the platform's session (and the
    # bills queued for it) survives the outage whatever reconnects first.
    broker = Mosquitto(verbose=False, persistence=True, extra_config="set_tcp_nodelay true")
    broker.start()
    bp = BridgeProc(tmp, broker)
    await bp.start()
    loop = asyncio.get_running_loop()
    try:
        async with Consumer(broker.host, broker.port, persistent=True) as plat:
            p = await _pile(bp.port, _pile_code(80))
            await loop.run_in_executor(None, broker.stop)
            bills = [make_bill(p.code, k) for k in range(n)]
            await _send_pipelined(p, bills, 16)        # custody taken while the broker is down
            await loop.run_in_executor(None, broker.start)
            t0 = time.monotonic()
            want = {b["serial"] for b in bills}
            await p.wait_for(lambda: want <= set(p.settled), 120)
            t1 = time.monotonic()
            assert want <= set(plat.seen)
            await p.close()
    finally:
        await bp.stop()
        broker.close()
    return {"bills": n, "seconds": t1 - t0, "bills_per_s": n / (t1 - t0)}


def report(r):
    t = r["throughput"]
    lat = r["latency"]
    d = r["drain"]
    bb = r["broker_backlog"]
    lines = [
        "## Bridge",
        "",
        "Rerun: `python3 -m tools.bench_bridge --write` (tools/bench_bridge.py). Mosquitto %s on "
        "loopback, the bridge as its own process (SQLite WAL, synchronous=FULL), scripted piles "
        "(sim/testkit.py) and a platform consumer in the bench process; %s, %d CPU(s)."
        % (r["mosquitto"], r["python"], r["cpus"]),
        "",
        "### Durable bills relayed",
        "",
        "%d bills from %d piles over TCP (0x3B + 0xEB each, at most %d unanswered per pile), "
        "each committed before its 0x40, published QoS 1 (%d-byte JSON), confirmed by the "
        "platform and settled on its pile (0xE4 back). Raw: the same payloads published by one "
        "aiomqtt client, QoS 1, every PUBACK awaited, in the same run."
        % (t["bills"], t["piles"], t["window"], t["payload_bytes"]),
        "",
        "| path | bills/s |",
        "|---|---|",
        "| pile -> SQLite -> 0x40 (custody) | %.0f |" % t["custody_per_s"],
        "| pile -> SQLite -> MQTT QoS 1 -> platform -> confirmation -> 0xE4 on the pile | %.0f |"
        % t["relayed_per_s"],
        "| raw aiomqtt QoS 1 publish of the same payloads | %.0f |" % t["raw_per_s"],
        "| ratio relayed / raw (median of the per-run ratios) | %.2f |" % t["ratio"],
        "",
        "Medians of %d runs; relayed per run: %s; raw per run: %s. The relayed path does "
        "per bill what the raw one does (one QoS 1 publish of the same JSON) plus two "
        "frames in, three out and three back on the pile link, the bill and its fee split "
        "committed with fsync (commits grouped across piles and frames), the bookkeeping "
        "marks, the platform's confirmation "
        "round trip and the 0xE4 / 0xE3 exchange; bench, bridge and broker share the "
        "machine's CPUs." % (t["runs"], ", ".join(map(str, t["relayed_all"])),
                             ", ".join(map(str, t["raw_all"]))),
        "",
        "### Session stop -> platform confirmation",
        "",
        "One bill at a time, %d samples: from the pile sending its bill (the session's end) "
        "to the platform holding it, and to the platform's confirmation arriving back on the "
        "pile as 0xE4 (commit, 0x40, publish, consumer, confirmation, commit, 0xE4)."
        % lat["samples"],
        "",
        "| until | p50 | p99 | max |",
        "|---|---|---|---|",
        "| platform has the bill | %.1f ms | %.1f ms | %.1f ms |"
        % (lat["platform"]["p50_ms"], lat["platform"]["p99_ms"], lat["platform"]["max_ms"]),
        "| confirmation back on the pile (0xE4) | %.1f ms | %.1f ms | %.1f ms |"
        % (lat["settled"]["p50_ms"], lat["settled"]["p99_ms"], lat["settled"]["max_ms"]),
        "",
        "### Backlog drain after an outage, pile link at %d baud" % BAUD,
        "",
        "A pile reconnects holding %d journaled bills; both directions paced at %d baud 8N1 "
        "(ptys ignore the baud rate, so the line rate is modelled: host/testkit.PacedTransport). "
        "Drain time: from the first byte of the first bill to the last 0x40 / 0xEC back on the "
        "pile. Line fraction = upstream bytes on the wire during the drain (bills, fee splits and "
        "the pile's answers to the bridge: 0xE3 settled, 0x55, 0xE5) x 10 bits / %d / drain "
        "time; bill fraction counts only the 0x3B + 0xEB frames (%d bytes a bill). A pile that "
        "sends its journal back to back keeps the line full; one that waits for each answer "
        "loses the answers' transit and the bridge's commit per bill. Our firmware's outbox "
        "has window 1 (firmware/outbox.py): it sends a bill and its 0xEB, then waits for that "
        "bill's 0x40 (not the 0xEC) before the next, so the second row is the closer model of "
        "it; the first is the ceiling, a pile that does not wait."
        % (d["back_to_back"]["bills"], BAUD, BAUD,
           d["back_to_back"]["bill_bytes"] // d["back_to_back"]["bills"]),
        "",
        "| pile sends | bills | drain time | bills/s | bytes up | line fraction | bill fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, label in (("back_to_back", "all at once, no answer awaited (window %d)"
                         % d["back_to_back"]["bills"]),
                        ("stop_and_wait", "one at a time, waiting for each 0x40 and 0xEC "
                         "(window 1)")):
        x = d[mode]
        lines.append("| %s | %d | %.2f s | %.1f | %d | %.2f | %.2f |"
                     % (label, x["bills"], x["seconds"], x["bills_per_s"], x["bytes_up"],
                        x["line_fraction"], x["goodput_fraction"]))
    lines += [
        "",
        "The bridge's own backlog: %d bills taken into custody while the broker was down, "
        "drained to the platform (published, confirmed, settled) in %.2f s after it came back "
        "(%.0f bills/s)." % (bb["bills"], bb["seconds"], bb["bills_per_s"]),
        "",
    ]
    return "\n".join(lines)


def write_section(text, path=os.path.join(ROOT, "docs", "benchmarks.md")):
    try:
        with open(path) as f:
            doc = f.read()
    except OSError:
        doc = "# Benchmarks\n"
    start = doc.find("\n## Bridge\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + 1)
        doc = doc[:start + 1] + text + ("" if end < 0 else doc[end:])
    with open(path, "w") as f:
        f.write(doc.rstrip("\n") + "\n")


async def _main(args):
    tmp = tempfile.mkdtemp(prefix="pc-bench-bridge-")
    # set_tcp_nodelay: the broker's own small packets are not held by Nagle
    # (docs/bridge.md recommends it for production too).
    broker = Mosquitto(verbose=False, extra_config="set_tcp_nodelay true")
    try:
        broker.start()
        import subprocess
        ver = subprocess.run([broker.binary, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
        r = {"mosquitto": ver.replace("mosquitto version ", ""),
             "python": "CPython %d.%d" % sys.version_info[:2], "cpus": os.cpu_count()}
        runs = []
        for i in range(args.repeat):
            print("running throughput %d/%d ..." % (i + 1, args.repeat), file=sys.stderr, flush=True)
            runs.append(await bench_throughput(broker, _sub(tmp, "t%d" % i), args.bills,
                                               args.piles, args.window))
        r["throughput"] = _median_run(runs)
        for name, coro in (
                           ("latency", bench_latency(broker, _sub(tmp, "l"), args.samples)),
                           ("drain", bench_drain(broker, _sub(tmp, "d"), args.backlog)),
                           ("broker_backlog", bench_broker_backlog(broker, _sub(tmp, "b"),
                                                                   args.bills // 2))):
            print("running %s ..." % name, file=sys.stderr, flush=True)
            r[name] = await coro
        return r
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _median_run(runs):
    """Median of each rate over the runs; the ratio is the median of the
    per-run ratios (each run measures both sides back to back)."""
    out = dict(runs[0])
    for k in ("custody_per_s", "relayed_per_s", "raw_per_s"):
        out[k] = statistics.median(r[k] for r in runs)
    out["ratio"] = statistics.median(r["relayed_per_s"] / r["raw_per_s"] for r in runs)
    out["runs"] = len(runs)
    out["relayed_all"] = [round(r["relayed_per_s"]) for r in runs]
    out["raw_all"] = [round(r["raw_per_s"]) for r in runs]
    return out


def _sub(tmp, name):
    p = os.path.join(tmp, name)
    os.mkdir(p)
    return p


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_bridge", description=__doc__)
    ap.add_argument("--bills", type=int, default=2000, help="bills in the throughput run")
    ap.add_argument("--piles", type=int, default=4)
    ap.add_argument("--window", type=int, default=16, help="unanswered bills per pile")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs (medians reported)")
    ap.add_argument("--samples", type=int, default=200, help="latency samples")
    ap.add_argument("--backlog", type=int, default=100, help="bills in the paced drain")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md (## Bridge)")
    args = ap.parse_args(argv)
    with cli.progress("bench_bridge", enabled=cli.progress_enabled(args.json)):
        r = asyncio.run(_main(args))
    text = report(r)
    print(json.dumps(r, indent=2) if args.json else text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
