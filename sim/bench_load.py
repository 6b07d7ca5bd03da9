# The connection-load benchmark's drivers (docs/benchmarks.md): thousands of
# light piles (asyncio protocols) logging in, heartbeating and sending
# real-time data to one bridge, counted at the broker. The command line is
# tools/bench_bridge_load.py.
import asyncio
import os
import random
import resource
import shutil
import socket
import sys
import tempfile
import time

from host.mqtt import Background
from protocol import codec
from protocol.router import on, route
from sim.testkit import make_bill
from sim.bridge_child import BridgeChild, bridge_config, proc_cpu_s


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = "load"
HEARTBEAT_S = 10.0          # YKC: every 10 s
REALTIME_S = 15.0           # YKC: every 15 s while charging
_CONNECT_BATCH = 50         # piles dialling in at once (the listen backlog is 100)
SESSION_S = 600.0           # each pile ends a session (sends its bill) every 10 min on average


def pile_code(i):
    return "5503%010d" % (i + 1)


class Stats:
    def __init__(self):
        self.logins = 0
        self.heartbeats = 0
        self.heartbeat_replies = 0
        self.realtime = 0
        self.time_syncs = 0
        self.frame_errors = 0
        self.lost = 0
        self.stop_ack_s = []    # bill (0x3B) sent -> its 0x40 back, in the window


# What a load pile does with each frame from the bridge (LoadPile methods).
HANDLERS = {}


class LoadPile(asyncio.Protocol):
    """One pile: login, then heartbeats and realtime frames on a timer."""

    def __init__(self, code, stats):
        self.code = code
        self.stats = stats
        self.reader = codec.FrameReader()
        self.transport = None
        self.seq = 0
        self.logged_in = asyncio.get_running_loop().create_future()
        self.closing = False
        self.energy = 0
        self.bills = 0
        self.bill_sent = {}     # serial -> loop time the 0x3B went out

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.closing:
            self.stats.lost += 1
        if not self.logged_in.done():
            self.logged_in.set_exception(ConnectionError("pile %s: link lost before login" % self.code))

    def send(self, name, values, seq=None):
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
        self.transport.write(codec.encode(name, values, seq))

    def data_received(self, data):
        for f in self.reader.push(data):
            if not isinstance(f, codec.Frame):
                self.stats.frame_errors += 1
                continue
            r = route(HANDLERS, self, f)      # protocol/router.py
            if r is not None:
                self.send(r[0], r[1], r[2])

    @on(HANDLERS, 0x02)
    def _login_reply(self, f):
        if not self.logged_in.done():
            self.logged_in.set_result(f.fields["result"])

    @on(HANDLERS, 0x04)
    def _heartbeat_reply(self, f):
        self.stats.heartbeat_replies += 1

    @on(HANDLERS, 0x40)
    def _bill_ack(self, f):
        t = self.bill_sent.pop(f.fields["serial"], None)
        if t is not None:
            self.stats.stop_ack_s.append(asyncio.get_running_loop().time() - t)

    def stop_session(self):
        """The session ends: its bill (0x3B) goes out; _bill_ack times its 0x40."""
        self.bills += 1
        b = make_bill(self.code, self.bills)
        self.bill_sent[b["serial"]] = asyncio.get_running_loop().time()
        self.send(0x3B, b)

    @on(HANDLERS, 0x56)
    def _time_sync(self, f):
        self.stats.time_syncs += 1
        return {"pile": self.code, "time": f.fields["time"]}

    @on(HANDLERS, 0x12)
    def _read_realtime(self, f):
        return self.realtime_values()

    def login(self):
        self.send("login", {"pile": self.code, "pile_type": 0, "guns": 1, "proto_version": 0x10,
                            "sw_version": "LOAD", "net_type": 0, "sim": "0" * 20, "carrier": 0})

    def realtime_values(self):
        return {"serial": self.code + "01" + "0" * 16, "pile": self.code, "gun": "01", "status": 3,
                "homed": 1, "plugged": 1, "voltage": 3800, "current": 1200, "gun_temp": 75,
                "cable_code": "0" * 16, "soc": 55, "battery_temp": 75, "minutes": 10,
                "minutes_left": 30, "energy": self.energy, "loss_energy": 0,
                "amount": self.energy * 12 // 10, "faults": 0}

    async def run(self, phase_hb, phase_rt):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        next_hb = t0 + phase_hb
        next_rt = t0 + phase_rt
        while not self.closing:
            await asyncio.sleep(max(0.0, min(next_hb, next_rt) - loop.time()))
            now = loop.time()
            if self.closing or self.transport.is_closing():
                return
            if now >= next_hb:
                self.send("heartbeat", {"pile": self.code, "gun": "01", "gun_status": 0})
                self.stats.heartbeats += 1
                next_hb += HEARTBEAT_S
            if now >= next_rt:
                self.energy += 250        # 0.025 kWh per 15 s: 6 kW
                self.send("realtime", self.realtime_values())
                self.stats.realtime += 1
                next_rt += REALTIME_S

    def close(self):
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class RealtimeCounter(Background):
    """A platform subscriber counting relayed realtime messages."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.count = 0
        self.ready = asyncio.Event()
        self._task = None

    async def _run(self):
        import aiomqtt
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="bench-load-%d" % os.getpid()) as c:
                    await c.subscribe("pc/%s/pile/+/realtime" % SITE, qos=0)
                    self.ready.set()
                    async for _ in c.messages:
                        self.count += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


async def _stops(piles, rng, rate, until):
    # Ends with the window: the next stop past its end is not waited for.
    while True:
        at = time.monotonic() + rng.expovariate(rate)
        if at >= until:
            return
        await asyncio.sleep(at - time.monotonic())
        rng.choice(piles).stop_session()


def _pcts(xs):
    xs = sorted(xs)
    q = lambda f: round(1000 * xs[min(len(xs) - 1, int(round(f * (len(xs) - 1))))], 1) if xs else None
    return {"stop_ack_p50_ms": q(0.5), "stop_ack_p99_ms": q(0.99), "stop_ack_max_ms": q(1.0)}


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < need:
        raise SystemExit("bench_bridge_load: need %d file descriptors, the hard limit is %d "
                         "(ulimit -Hn)" % (need, hard))
    return new


async def run_load(broker, n, window_s, seed=1):
    """One measurement with n piles; returns a dict of figures."""
    tmp = tempfile.mkdtemp(prefix="pc-bench-load-")
    cfg = bridge_config(tmp, broker, SITE)
    cfg["piles"].update({"heartbeat_s": HEARTBEAT_S, "missed_heartbeats": 3, "time_sync_s": 86400.0,
                         "command_timeout_s": 10.0})
    cfg["tcp"]["ext"] = False          # third-party YKC piles: no extension frames
    bridge = BridgeChild(tmp, cfg)
    stats = Stats()
    piles = []
    tasks = []
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    try:
        await bridge.start()
        async with RealtimeCounter(broker.host, broker.port) as counter:
            rss_idle = bridge.rss_kb()
            cpu0 = bridge.cpu_s()
            t_login0 = time.monotonic()
            for b in range(0, n, _CONNECT_BATCH):
                batch = []
                for i in range(b, min(n, b + _CONNECT_BATCH)):
                    _, p = await loop.create_connection(lambda i=i: LoadPile(pile_code(i), stats),
                                                        "127.0.0.1", bridge.tcp_port)
                    p.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    p.login()
                    batch.append(p)
                for p in batch:
                    if await asyncio.wait_for(p.logged_in, 30) != 0:
                        raise RuntimeError("pile %s: login refused" % p.code)
                    stats.logins += 1
                piles.extend(batch)
            login_s = time.monotonic() - t_login0
            login_cpu = bridge.cpu_s() - cpu0
            # Phases spread evenly over each period, as real piles' are.
            for p in piles:
                tasks.append(asyncio.ensure_future(p.run(rng.uniform(0, HEARTBEAT_S), rng.uniform(0, REALTIME_S))))
            # Warm-up: one full realtime period, so every pile is in its cycle.
            await asyncio.sleep(REALTIME_S + 1)
            rss_samples = []
            c0, rt0, hb0, hbr0 = bridge.cpu_s(), counter.count, stats.heartbeats, stats.heartbeat_replies
            sent0 = stats.realtime
            t0 = time.monotonic()
            own0 = resource.getrusage(resource.RUSAGE_SELF)
            mq0 = proc_cpu_s(broker.pid)
            # Sessions end at random piles, n / SESSION_S bills a second (Poisson).
            stops = asyncio.ensure_future(_stops(piles, rng, n / SESSION_S, t0 + window_s))
            stats.stop_ack_s.clear()
            while time.monotonic() - t0 < window_s:
                rss_samples.append(bridge.rss_kb())
                await asyncio.sleep(1.0)
            await stops
            dt = time.monotonic() - t0
            cpu = bridge.cpu_s() - c0
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            relayed = counter.count - rt0
            sent = stats.realtime - sent0
            res = {
                "piles": n, "window_s": round(dt, 1),
                "logged_in": stats.logins, "login_s": round(login_s, 2),
                "login_cpu_s": round(login_cpu, 2),
                "bridge_cpu_pct": round(100 * cpu / dt, 2),
                "bridge_cpu_ms_per_frame": round(1000 * cpu / max(1, sent + stats.heartbeats - hb0), 3),
                "rss_idle_mb": round(rss_idle / 1024, 1),
                "rss_mb": round(max(rss_samples) / 1024, 1),
                "rss_per_pile_kb": round((max(rss_samples) - rss_idle) / n, 1),
                "fds": bridge.fds(),
                "realtime_sent_per_s": round(sent / dt, 2),
                "realtime_relayed_per_s": round(relayed / dt, 2),
                "realtime_expected_per_s": round(n / REALTIME_S, 2),
                "heartbeats_per_s": round((stats.heartbeats - hb0) / dt, 2),
                "heartbeat_replies_per_s": round((stats.heartbeat_replies - hbr0) / dt, 2),
                "bench_cpu_pct": round(100 * ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) / dt, 1),
                "broker_cpu_pct": round(100 * (proc_cpu_s(broker.pid) - mq0) / dt, 1),
                "links_lost": stats.lost, "frame_errors": stats.frame_errors,
                "time_syncs_answered": stats.time_syncs,
                "bills_sent": sum(p.bills for p in piles), "bills_acked": len(stats.stop_ack_s),
                **_pcts(stats.stop_ack_s),
            }
            if stats.lost or len(stats.stop_ack_s) < res["bills_sent"]:
                # Something gave way: the bridge's own words on it.
                print("bench_load: %d piles: bridge log tail:\n%s" % (n, bridge.log_tail(3000)),
                      file=sys.stderr, flush=True)
    finally:
        for p in piles:
            p.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res
