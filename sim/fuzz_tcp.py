# pile-fuzz bridge-tcp (docs/fuzzing.md): host.bridge as a child process, its
# YKC TCP port attacked by hostile clients while a well-behaved pile keeps
# charging.
import asyncio
import os
import socket
import struct
import tempfile
import time

from protocol import codec
from sim.bridge_child import (GOOD_PILE, GOOD_TARIFF, BridgeChild, RssWatch, wind_up,
                              _raise_nofile, _start_broker, bridge_config)
from sim.mqtt_platform import MqttPlatform
from sim.fuzz import (PILE_FRAMES, Report, _pick, case_rng, chunks, frame_pool, garbage, mutate,
                      valid_crc_frame)


# --- target: bridge-tcp ---------------------------------------------------------------

HOSTILE_CODES = ["660000000000%02d" % k for k in range(64)]
_TCP_KINDS = (("random_bytes", 14), ("mutated_frames", 16), ("frames_before_login", 10),
              ("login_then_garbage", 14), ("valid_crc_random_bodies", 12), ("oversized_length", 8),
              ("slowloris", 5), ("abrupt_disconnect", 8), ("bill_for_another_pile", 4),
              ("many_connections", 4), ("idle_until_closed", 1), ("deaf_reader", 1))


def _abort(writer):
    """Drop a connection at once (RST, not FIN)."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class TcpFuzz:
    def __init__(self, seed, report, port, bridge_pid, slow_s=0.02, idle_limit_s=6.0):
        self.bridge_pid = bridge_pid
        self.seed = seed
        self.r = report
        self.port = port
        self.slow_s = slow_s
        self.idle_limit_s = idle_limit_s
        # How long a silent or deaf client may stay before it counts as never
        # closed. The bridge closes it after idle_limit_s; the margin is for a
        # loaded machine's scheduling (two test runs side by side), and a
        # check ends as soon as the socket goes, so a pass costs nothing.
        self.close_bound_s = idle_limit_s * 4 + 30
        self.pool = frame_pool(seed, per_type=8, specs=PILE_FRAMES, pile_codes=HOSTILE_CODES)
        self.bytes_sent = 0
        self.connections = 0
        self.slow = asyncio.Semaphore(8)    # slowloris / idle cases at once
        self.forged = set()                 # serials of bills naming the good pile, sent by others
        # Codes lent to one forger at a time: another login with the same
        # code would (rightly) close its link before the 0x40 comes.
        self.forge_s = 0.0                  # slowest 0x40 for a forged bill
        self.forgers = asyncio.Queue()
        for k in range(16):
            self.forgers.put_nowait("670000000000%02d" % k)

    def login_frame(self, rng, code=None):
        code = code or rng.choice(HOSTILE_CODES)
        return codec.encode("login", {"pile": code, "pile_type": 0, "guns": 1, "proto_version": 0x10,
                                      "sw_version": "FUZZ", "net_type": 0, "sim": "0" * 20,
                                      "carrier": 0}, seq=rng.getrandbits(16))

    async def _connect(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        self.connections += 1
        return r, w

    async def _send(self, w, data):
        w.write(data)
        self.bytes_sent += len(data)
        await w.drain()

    async def _drain_reads(self, r, seconds):
        """Read what the bridge sends for up to `seconds`; 'eof' if it closed."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "open"
            try:
                data = await asyncio.wait_for(r.read(65536), left)
            except asyncio.TimeoutError:
                return "open"
            except (ConnectionError, OSError):
                return "reset"
            if not data:
                return "eof"

    async def _close(self, rng, w):
        if rng.random() < 0.5:
            _abort(w)
        else:
            w.close()
            try:
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass

    SLOW = ("slowloris", "idle_until_closed", "deaf_reader")

    def is_slow(self, i):
        rng = case_rng(self.seed, i)
        kind = _TCP_KINDS[i][0] if i < len(_TCP_KINDS) else _pick(rng, _TCP_KINDS)
        return kind in self.SLOW

    async def run_case(self, i):
        rng = case_rng(self.seed, i)
        rng.case = i              # for violation records
        # The first cases take every kind once (a short run still tries them all).
        kind = _TCP_KINDS[i][0] if i < len(_TCP_KINDS) else _pick(rng, _TCP_KINDS)
        self.r.kinds[kind] += 1
        try:
            n, outcome = await getattr(self, "_" + kind)(rng)
        except (ConnectionError, OSError) as e:
            n, outcome = 1, "client_error:" + type(e).__name__
        self.r.inputs += n
        self.r.outcomes[outcome] += 1
        return kind

    # One method per kind: (inputs, outcome class).

    async def _exchange(self, rng, kind, chunks, wait=0.01):
        # One connection: `chunks` sent in turn, the bridge's answers read for
        # `wait` s, then closed (cleanly or reset): (1, "kind:open" or ":eof").
        r, w = await self._connect()
        for c in chunks:
            await self._send(w, c)
        st = await self._drain_reads(r, wait)
        await self._close(rng, w)
        return 1, kind + ":" + st

    def _login_maybe(self, rng, p):
        # The login first, with probability p.
        return [self.login_frame(rng)] if rng.random() < p else []

    async def _random_bytes(self, rng):
        return await self._exchange(rng, "random_bytes", [garbage(rng, self.pool, 4000)])

    async def _mutated_frames(self, rng):
        data = b"".join(mutate(rng, rng.choice(self.pool)[0], self.pool)
                        for _ in range(rng.randint(1, 12)))
        return await self._exchange(rng, "mutated_frames", chunks(rng, data))

    async def _frames_before_login(self, rng):
        frames = [p[0] for p in (rng.choice(self.pool) for _ in range(rng.randint(1, 10)))
                  if p[1] != 0x01]
        return await self._exchange(rng, "frames_before_login", [b"".join(frames)])

    async def _login_then_garbage(self, rng):
        out = [self.login_frame(rng)]
        out += [garbage(rng, self.pool, 2000) if rng.random() < 0.5 else
                mutate(rng, rng.choice(self.pool)[0], self.pool) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.3:   # then something well-formed: still answered?
            out.append(rng.choice(self.pool)[0])
        return await self._exchange(rng, "login_then_garbage", out, 0.02)

    async def _valid_crc_random_bodies(self, rng):
        out = self._login_maybe(rng, 0.6)
        out.append(b"".join(valid_crc_frame(rng) for _ in range(rng.randint(1, 16))))
        return await self._exchange(rng, "valid_crc_random_bodies", out)

    async def _oversized_length(self, rng):
        out = self._login_maybe(rng, 0.5)
        ln = rng.choice((0xFF, 0xFE, 0, 1, 2, 3, rng.getrandbits(8)))
        out.append(bytes((codec.START, ln)) + rng.randbytes(rng.randint(0, 300)))
        if rng.random() < 0.5:   # and a good frame behind it
            out.append(rng.choice(self.pool)[0])
        return await self._exchange(rng, "oversized_length", out)

    async def _slowloris(self, rng):
        # One byte every slow_s: a frame that takes seconds to arrive (or never ends).
        async with self.slow:
            r, w = await self._connect()
            data = self.login_frame(rng) if rng.random() < 0.5 else rng.choice(self.pool)[0]
            if rng.random() < 0.5:
                data = data[:rng.randint(1, len(data))]      # never finished
            for k in range(len(data)):
                await self._send(w, data[k:k + 1])
                await asyncio.sleep(self.slow_s)
            st = await self._drain_reads(r, 0.01)
            await self._close(rng, w)
        return 1, "slowloris:" + st

    async def _abrupt_disconnect(self, rng):
        r, w = await self._connect()
        if rng.random() < 0.5:
            await self._send(w, self.login_frame(rng))
        frame = rng.choice(self.pool)[0]
        await self._send(w, frame[:rng.randint(0, len(frame))])   # cut mid-frame
        _abort(w)
        return 1, "abrupt_disconnect:reset_sent"

    async def _bill_for_another_pile(self, rng):
        # A hostile pile logs in and sends a well-formed bill naming the good
        # pile: the bridge quarantines it (kept with an event, no 0x40:
        # decisions.md "Custody and ownership"), never files it under the
        # good pile.
        code = await self.forgers.get()
        try:
            return await self._forge(rng, code)
        finally:
            self.forgers.put_nowait(code)

    async def _forge(self, rng, code):
        from sim.testkit import make_bill
        login = self.login_frame(rng, code)
        r, w = await self._logged_in(rng, login)
        v = make_bill(GOOD_PILE, rng.randrange(10000), when=1 + rng.randrange(10 ** 8))
        v["serial"] = "9" * 16 + v["serial"][16:]     # never one of the good pile's serials
        await self._send(w, codec.encode("bill", v, seq=rng.getrandbits(16)))
        # A heartbeat behind it: the bridge handles a link's frames in order
        # and quarantines inline, so its reply comes after the verdict.
        await self._send(w, codec.encode("heartbeat", {"pile": code, "gun": "01", "gun_status": 0},
                                         seq=rng.getrandbits(16)))
        reader = codec.FrameReader()
        confirms = []
        answered = False
        t0 = time.monotonic()
        deadline = t0 + 30
        why = "no heartbeat reply in 30 s"
        while not answered and time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(r.read(4096), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            except (ConnectionError, OSError) as e:
                why = "link reset by the bridge (%s)" % type(e).__name__
                break
            if not data:
                why = "link closed by the bridge"
                break
            for f in reader.push(data):
                if isinstance(f, codec.Frame) and f.name == "bill_confirm" and f.fields["serial"] == v["serial"]:
                    confirms.append(f.fields["result"])
                elif isinstance(f, codec.Frame) and f.name == "heartbeat_reply":
                    answered = True
        took = time.monotonic() - t0
        self.forge_s = max(self.forge_s, took)
        await self._close(rng, w)
        if confirms or not answered:
            self.r.violation(rng.case, "bill_for_another_pile", "bill naming pile %s sent by pile %s got "
                             "0x40 results %r (want none: quarantined)%s after %.1f s"
                             % (GOOD_PILE, code, confirms, "" if answered else ": " + why, took))
        self.forged.add(v["serial"])
        return 1, "bill_for_another_pile:quarantined" if not confirms else "bill_for_another_pile:%r" % confirms

    async def _logged_in(self, rng, login, bound_s=30.0):
        """A connection whose login the bridge answered. A connection the
        bridge closes before answering is its door limit at work (at most
        tcp.max_per_address unauthenticated links from one address, and the
        other cases hold many): the bridge defending itself, not a verdict
        on the forged bill, so it is tried again (bounded)."""
        deadline = time.monotonic() + bound_s
        while True:
            r, w = await self._connect()
            await self._send(w, login)
            reader = codec.FrameReader()
            while time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(r.read(4096), max(0.01, deadline - time.monotonic()))
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    break
                if not data:
                    break
                if any(isinstance(f, codec.Frame) and f.name == "login_reply" for f in reader.push(data)):
                    return r, w
            _abort(w)                          # no draw from rng: a seed replays alike
            if time.monotonic() >= deadline:
                return await self._connect()   # the check below reports it
            await asyncio.sleep(0.1)

    async def _many_connections(self, rng):
        n = rng.randint(20, 150)

        async def one(k):
            try:
                r, w = await self._connect()
                if k % 3 == 0:
                    await self._send(w, self.login_frame(rng))
                await self._send(w, garbage(rng, self.pool, 200))
                if k % 2:
                    _abort(w)
                else:
                    await self._close(rng, w)
            except (ConnectionError, OSError):
                self.r.outcomes["many_connections:client_error"] += 1
        await asyncio.gather(*[one(k) for k in range(n)])
        return n, "many_connections:done"

    async def _idle_until_closed(self, rng):
        # A client that connects (maybe logs in) and goes silent: the bridge
        # closes it after piles.heartbeat_s x missed_heartbeats.
        async with self.slow:
            r, w = await self._connect()
            if rng.random() < 0.5:
                await self._send(w, self.login_frame(rng))
            st = await self._drain_reads(r, self.close_bound_s)
            if st == "open":
                self.r.violation(rng.case, "idle_until_closed", "a silent connection was still open "
                                 "after %.0f s" % self.close_bound_s)
            await self._close(rng, w)
        return 1, "idle_until_closed:" + st

    async def _deaf_reader(self, rng):
        # Logs in and asks for its tariff model (0x09 -> a 0x0A six times
        # longer) over and over without ever reading: the bridge's writes
        # back up until its link is stuck. Then silence: the bridge must let
        # go of the socket (silence limit + links._CLOSE_S), not hold it.
        async with self.slow:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                self.connections += 1
                code = rng.choice(HOSTILE_CODES)
                ask = codec.encode("tariff_request", {"pile": code})
                await loop.sock_sendall(sock, self.login_frame(rng, code))
                chunk = ask * 4096
                for _ in range(200):     # until the bridge stops taking them
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, chunk), 1.0)
                    except asyncio.TimeoutError:
                        break
                    self.bytes_sent += len(chunk)
                port = sock.getsockname()[1]
                wait = self.close_bound_s
                deadline = time.monotonic() + wait
                held = True
                while time.monotonic() < deadline:
                    held = holds_socket(self.bridge_pid, self.port, port)
                    if not held:
                        break
                    await asyncio.sleep(0.2)
            finally:
                sock.close()
            if held:
                self.r.violation(rng.case, "deaf_reader", "the bridge still held the socket of a client "
                                 "that never reads, %.0f s after it went silent" % wait)
        return 1, "deaf_reader:" + ("held" if held else "released")


def holds_socket(pid, local_port, remote_port):
    """True while process `pid` has a descriptor on the TCP connection
    local_port <-> remote_port (this host's network namespace)."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if (int(p[1].rsplit(":", 1)[1], 16) == local_port
                            and int(p[2].rsplit(":", 1)[1], 16) == remote_port):
                        inodes.add(p[9])
        except OSError:
            pass
    inodes.discard("0")       # an orphan: no process holds it any more
    if not inodes:
        return False
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


class GoodPile:
    """A well-behaved pile: logs in, heartbeats, sends realtime data and
    bills (with their 0xEB), reconnecting every few bills; every bill must
    get 0x40 result 0 and reach the platform."""

    def __init__(self, port, report, code=GOOD_PILE, bills_per_link=5, pause_s=0.1):
        self.port = port
        self.pause_s = pause_s
        self.r = report
        self.code = code
        self.bills_per_link = bills_per_link
        self.sent = []
        self.latency = []         # s from a bill's 0x3B to its 0x40 (and 0xEC)
        self.logins = 0
        self.stop = asyncio.Event()
        self._task = None
        self.dropped = 0

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def finish(self):
        self.stop.set()
        await self._task

    async def _run(self):
        from sim.testkit import ScriptedPile, make_bill, make_extra
        from sim.links import TcpTransport
        n = 0
        base = 800000000
        while not self.stop.is_set():
            try:
                t = await TcpTransport.connect("127.0.0.1", self.port)
            except OSError as e:
                self.r.violation(None, "good_pile", "cannot connect to the bridge: %s" % e)
                await asyncio.sleep(0.5)
                continue
            p = ScriptedPile(self.code, t, ext=True, heartbeat_s=0.5, reply_timeout=20.0)
            try:
                if await p.login() != 0:
                    self.r.violation(None, "good_pile", "login refused")
                self.logins += 1
                for _ in range(self.bills_per_link):
                    if self.stop.is_set() and n:
                        break
                    await p.realtime(status=3, energy=n * 10, amount=n * 12)
                    v = make_bill(self.code, n, when=base + n * 61)
                    n += 1
                    t0 = time.monotonic()
                    result = await p.send_bill(v, make_extra(v))
                    self.latency.append(time.monotonic() - t0)
                    self.sent.append(v["serial"])
                    if result != 0:
                        self.r.violation(None, "good_pile", "bill %s got 0x40 result %d" % (v["serial"], result))
                    if not p.connected:
                        self.dropped += 1
                        self.r.violation(None, "good_pile", "the bridge dropped the good pile's link")
                        break
                    try:   # a pile charges between bills; the pause is the time between sessions
                        await asyncio.wait_for(self.stop.wait(), self.pause_s)
                    except asyncio.TimeoutError:
                        pass
            except asyncio.TimeoutError as e:
                self.r.violation(None, "good_pile", "no answer from the bridge: %s" % e)
            except (ConnectionError, OSError) as e:
                self.r.violation(None, "good_pile", "link error: %r" % e)
            finally:
                await p.close()


async def _fuzz_bridge_tcp(count, seed, case=None, workers=16, rss_limit_mb=64, slow_s=0.02,
                           keep=False):
    rep = Report("bridge-tcp", seed)
    _raise_nofile(8192)
    tmp = tempfile.mkdtemp(prefix="pc-fuzz-tcp-")
    broker = await asyncio.get_running_loop().run_in_executor(None, _start_broker)
    bridge = None
    try:
        cfg = bridge_config(tmp, broker, "fuzz", tariff=GOOD_TARIFF)
        bridge = await BridgeChild(tmp, cfg).start()
        limit = cfg["piles"]["heartbeat_s"] * cfg["piles"]["missed_heartbeats"]
        async with MqttPlatform("mqtt://%s:%d" % (broker.host, broker.port), "fuzz",
                                name="pc-fuzz-platform", fast=True) as plat:
            good = GoodPile(bridge.tcp_port, rep).start()
            # Baseline: the good pile has logged in and had a bill taken.
            await plat.poll_for(lambda: plat.by_pile[GOOD_PILE], 30)
            base_rss = bridge.rss_kb()
            base_fds = bridge.fds()
            watch = RssWatch(bridge).start()
            fz = TcpFuzz(seed, rep, bridge.tcp_port, bridge.pid, slow_s=slow_s, idle_limit_s=limit)
            cases = [case] if case is not None else range(count)
            it = iter(cases)

            background = set()

            async def worker():
                # Cases that take seconds (slowloris, silent, deaf clients)
                # run beside the others, at most 8 at once.
                for i in it:
                    if watch.died:
                        return
                    if fz.is_slow(i):
                        while len(background) >= 64:
                            await asyncio.wait(list(background), return_when=asyncio.FIRST_COMPLETED)
                        t = asyncio.ensure_future(fz.run_case(i))
                        background.add(t)
                        t.add_done_callback(background.discard)
                    else:
                        await fz.run_case(i)
            await asyncio.gather(*[worker() for _ in range(max(1, min(workers, len(cases))))])
            if background:
                await asyncio.gather(*list(background))
            hostile_s = time.monotonic() - rep.t0
            await good.finish()
            if watch.died or not bridge.alive:
                rep.violation(None, "bridge", "the bridge process died (exit %s)" % bridge.proc.returncode)
            else:
                # Every good bill reaches the platform; no forged bill is filed
                # under the good pile.
                want = set(good.sent)
                got = await plat.poll_for(lambda: want <= plat.by_pile[GOOD_PILE], 60)
                if not got:
                    missing = sorted(want - plat.by_pile[GOOD_PILE])
                    rep.violation(None, "good_pile", "%d of %d bills never reached the platform: %s"
                                  % (len(missing), len(want), missing[:5]))
                forged = plat.by_pile[GOOD_PILE] & fz.forged
                if forged:
                    rep.violation(None, "bill_for_another_pile", "forged bills published under the "
                                  "good pile: %s" % sorted(forged)[:5])
                # Hostile links are all closed by now: the bridge lets go of
                # their sockets (within the silence limit).
                deadline = time.monotonic() + limit * 2 + 5
                while bridge.fds() > base_fds + 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                end_fds = bridge.fds()
                if end_fds > base_fds + 4:
                    rep.violation(None, "bridge", "%d file descriptors open after the run, %d before"
                                  % (end_fds, base_fds))
                rep.extra["fds"] = {"before": base_fds, "after": end_fds}
            await watch.stop()
            peak = watch.peak()
            end_rss = watch.samples[-1][1] if watch.samples else 0
            rep.extra["rss_kb"] = {"baseline": base_rss, "peak": peak, "end": end_rss,
                                   "limit_growth": rss_limit_mb * 1024, "trend": watch.trend()}
            if peak > base_rss + rss_limit_mb * 1024:
                rep.violation(None, "bridge", "RSS peaked at %d KB, %d KB over the %d KB baseline "
                              "(limit %d MB)" % (peak, peak - base_rss, base_rss, rss_limit_mb))
            for line in bridge.log_problems():
                rep.violation(None, "bridge_log", line)
            lat = sorted(good.latency) or [0.0]
            rep.extra["good_pile"] = {"bills": len(good.sent), "logins": good.logins,
                                      "on_platform": len(set(good.sent) & plat.by_pile[GOOD_PILE]),
                                      "bill_to_0x40_s": {"p50": round(lat[len(lat) // 2], 3),
                                                         "p99": round(lat[len(lat) * 99 // 100], 3),
                                                         "max": round(lat[-1], 3)},
                                      "forged_bill_0x40_max_s": round(fz.forge_s, 3)}
            rep.extra["hostile"] = {"connections": fz.connections, "bytes": fz.bytes_sent,
                                    "seconds": round(hostile_s, 1),
                                    "inputs_per_s": round(rep.inputs / max(1e-9, hostile_s))}
            rep.extra["hostile_piles_billed"] = sum(1 for k in plat.by_pile if k != GOOD_PILE)
    finally:
        await wind_up(rep, tmp, keep, broker, bridge)
    return rep


def fuzz_bridge_tcp(count, seed, case=None, **kw):
    return asyncio.run(_fuzz_bridge_tcp(count, seed, case, **kw))
