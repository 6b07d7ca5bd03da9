# The bridge benchmark's drivers (docs/benchmarks.md "Bridge"): scripted
# piles over TCP (paced at a serial line's rate or not), the bridge as a
# child process, an MQTT consumer that confirms; throughput, latency, drain
# and broker backlog runs. The command line is tools/bench_bridge.py.
import asyncio
import json
import os
import socket
import statistics
import time

import aiomqtt

from host import schema
from sim.brokers import Mosquitto
from host.mqtt import Background
from sim.bridge_child import BridgeChild
from host.store import Bill
from sim.testkit import ScriptedPile, make_bill, make_extra
from sim.links import PacedTransport, TcpTransport
from host.topics import Topics


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


def BridgeProc(tmp, broker, **over):
    """The bridge as a child process (sim/bridge_child.py) with the benchmark's
    config; BENCH_BRIDGE_PROFILE=PATH profiles it with cProfile (into PATH.1,
    PATH.2, ... one file a bridge, in the order they start)."""
    cfg = {"site": SITE, "database": os.path.join(tmp, "bridge.db"), "log_level": "warning",
           "mqtt": {"url": "mqtt://%s:%d" % (broker.host, broker.port), "reconnect_min_s": 0.05,
                    "reconnect_max_s": 0.5},
           "bills": {"retry_initial_s": 30.0, "extra_wait_s": 1.0},
           "piles": {"heartbeat_s": 30.0, "command_timeout_s": 5.0},
           "tcp": {"listen": "127.0.0.1:0", "ext": True}}
    for k, v in over.items():
        cfg[k].update(v)
    prof = os.environ.get("BENCH_BRIDGE_PROFILE")
    _started.append(tmp)
    prof = prof and "%s.%d" % (prof, len(_started))
    return BridgeChild(tmp, cfg, ["-m", "cProfile", "-o", prof] if prof else [])


_started = []


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


async def bench_custody(tmp, n, piles, window):
    """Custody alone (pile -> SQLite -> 0x40), no MQTT: the bridge's broker
    URL names a port nobody listens on, so bills stay in the store."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    bp = BridgeProc(tmp, _NoBroker(dead))
    await bp.start()
    try:
        ps = [await _pile(bp.tcp_port, _pile_code(i)) for i in range(piles)]
        per = [[make_bill(p.code, k) for k in range(i, n, piles)] for i, p in enumerate(ps)]
        t0 = time.monotonic()
        await asyncio.gather(*[_send_pipelined(p, b, window) for p, b in zip(ps, per)])
        t1 = time.monotonic()
        for p in ps:
            await p.close()
    finally:
        await bp.stop()
    return n / (t1 - t0)


class _NoBroker:
    host = "127.0.0.1"

    def __init__(self, port):
        self.port = port


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
    load = os.getloadavg()[0]
    bp = BridgeProc(tmp, broker)
    await bp.start()
    try:
        async with Consumer(broker.host, broker.port):
            ps = [await _pile(bp.tcp_port, _pile_code(i)) for i in range(piles)]
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
    os.makedirs(os.path.join(tmp, "custody"), exist_ok=True)
    custody_alone = await bench_custody(os.path.join(tmp, "custody"), n, piles, window)
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
            "custody_per_s": n / (t_custody - t0), "custody_alone_per_s": custody_alone,
            "relayed_per_s": n / (t1 - t0),
            "raw_per_s": n / (t3 - t2), "load": load}


async def bench_latency(broker, tmp, samples):
    bp = BridgeProc(tmp, broker, bills={"extra_wait_s": 1.0})
    await bp.start()
    lat_settled = []
    lat_platform = []
    try:
        async with Consumer(broker.host, broker.port) as plat:
            p = await _pile(bp.tcp_port, _pile_code(90))
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
                paced = PacedTransport(await TcpTransport.connect("127.0.0.1", bp.tcp_port), BAUD)
                p = await _pile(bp.tcp_port, code, paced)
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
            p = await _pile(bp.tcp_port, _pile_code(80))
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
