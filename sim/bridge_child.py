# The bridge as a child process for the fuzzers and load benchmarks: its
# config, resource watch (RSS, fds, CPU), a minimal MQTT platform and a slow
# relay (docs/fuzzing.md).
import asyncio
import json
import os
import resource
import shutil
import signal
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the bridge as a child process ----------------------------------------------------

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError("cannot write %r as TOML" % (v,))


def write_toml(path, cfg):
    """A TOML file for a config of scalars, lists and nested tables."""
    lines = []

    def table(prefix, d):
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in d.items() if isinstance(v, dict)]
        if prefix and (scalars or not subs):
            lines.append("\n[%s]" % prefix)
        for k, v in scalars:
            lines.append("%s = %s" % (json.dumps(k), _toml_value(v)))
        for k, v in subs:
            table((prefix + "." if prefix else "") + json.dumps(k), v)
    table("", cfg)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid):
    """User + system CPU seconds of a process (/proc/<pid>/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class BridgeChild:
    """host.bridge run as `python -m host.bridge -c FILE` (for SIGKILL, RSS and
    fd counts), stopped by its pid.
    python_args go before `-m host.bridge` (e.g. -m cProfile -o FILE)."""

    def __init__(self, tmp, cfg, python_args=()):
        self.tmp = tmp
        self.python_args = list(python_args)
        self.cfg = cfg
        self.cfg_path = write_toml(os.path.join(tmp, "bridge.toml"), cfg)
        self.log_path = os.path.join(tmp, "bridge.log")
        self.proc = None
        self.pid = None
        self.tcp_port = None
        self.started_at = None
        self.runs = 0

    async def start(self):
        """Start it and read its JSON ready line (tcp_port, started_at). A
        bridge that exits or says nothing in 30 s is an AssertionError naming
        why, with its log: a test whose bridge does not start fails."""
        self.runs += 1
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, *self.python_args, "-m", "host.bridge", "-c", self.cfg_path,
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                cwd=ROOT, env=env)
        self.pid = self.proc.pid
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except asyncio.TimeoutError:
            line = None
        if not line:
            if line is not None:            # its stdout closed: it is exiting
                try:
                    await asyncio.wait_for(self.proc.wait(), 10)
                except asyncio.TimeoutError:
                    pass
            why = ("no ready line in 30 s" if self.proc.returncode is None else
                   "exited with code %s" % self.proc.returncode)
            await self.stop()
            raise AssertionError("the bridge (python -m host.bridge -c %s) did not start: %s\n"
                                 "--- its log ---\n%s" % (self.cfg_path, why, self.log()))
        ready = json.loads(line)
        self.tcp_port = ready["tcp_port"]
        self.started_at = ready.get("started_at")
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, sig)

    async def wait(self):
        if self.proc is not None:
            await self.proc.wait()

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self):
        return self.proc is not None and self.proc.returncode is None and os.path.exists(
            "/proc/%d/stat" % self.pid) and _state(self.pid) != "Z"

    def rss_kb(self):
        return proc_rss_kb(self.pid)

    def cpu_s(self):
        return proc_cpu_s(self.pid)

    def fds(self):
        return proc_fds(self.pid)

    async def stop(self):
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except asyncio.TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            await self.proc.wait()

    def log_tail(self, n=4000):
        return self.log()[-n:]

    def log_problems(self, limit=10):
        """Error lines and tracebacks in the bridge's log (none expected)."""
        out = []
        try:
            with open(self.log_path, "rb") as f:
                for raw in f:
                    line = raw.decode(errors="replace").rstrip()
                    if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                        out.append(line[:300])
                        if len(out) >= limit:
                            break
        except OSError:
            pass
        return out


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def bridge_config(tmp, broker, site, **over):
    cfg = {
        "site": site,
        "database": os.path.join(tmp, "bridge.db"),
        "log_level": "warning",
        "mqtt": {"url": "mqtt://%s:%d" % (broker.host, broker.port), "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.5, "keepalive": 10},
        "bills": {"retry_initial_s": 10.0, "retry_max_s": 30.0, "extra_wait_s": 0.5,
                  "settle_retry_s": 2.0},
        "piles": {"heartbeat_s": 2.0, "missed_heartbeats": 3, "command_timeout_s": 5.0,
                  "time_sync_s": 3600.0},
        # Every hostile client dials from 127.0.0.1, like the good pile: the
        # limits on connections without a login (tested in
        # tests/test_bridge_limits.py) are sized above the fuzz's own bursts.
        "tcp": {"listen": "127.0.0.1:0", "ext": True, "max_unauthenticated": 4096,
                "max_per_address": 4096},
    }
    return with_overrides(cfg, over)


def with_overrides(cfg, over):
    """A test bridge's config dict with `over` laid on it: a table (dict)
    updates the table of the same name, one level deep; any other value
    replaces. Returns cfg (changed in place)."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


class RssWatch:
    """Samples the bridge's RSS (and that it lives) every `every` seconds."""

    def __init__(self, bridge, every=0.25):
        self.bridge = bridge
        self.every = every
        self.samples = []
        self.died = False
        self._task = None

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self):
        while True:
            if not self.bridge.alive:
                self.died = True
                return
            try:
                self.samples.append((time.monotonic(), self.bridge.rss_kb()))
            except OSError:
                self.died = True
                return
            await asyncio.sleep(self.every)

    async def stop(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def peak(self):
        return max((kb for _, kb in self.samples), default=0)

    def trend(self, points=10):
        """RSS (KB) at the end of each tenth of the run: flat = bounded."""
        n = len(self.samples)
        return [self.samples[min(n - 1, (k + 1) * n // points)][1] for k in range(points)] if n else []


def _raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _start_broker():
    from sim.brokers import Mosquitto
    return Mosquitto(verbose=False).start()


class SlowRelay:
    """A TCP relay in front of the broker that holds a client's first bytes
    (its MQTT CONNECT) for `delay_s`: a bridge that is slow to reach its
    broker, as on a loaded gateway. Binds port 0 itself."""

    def __init__(self, host, port, delay_s):
        self.host, self.port, self.delay_s = host, port, delay_s
        self.server = None
        self.tasks = set()

    async def start(self):
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_client(self, cr, cw):
        br, bw = await asyncio.open_connection(self.host, self.port)

        async def pump(r, w, delay):
            try:
                first = True
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    if first and delay:
                        await asyncio.sleep(delay)
                    first = False
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()
        for t in (pump(cr, bw, self.delay_s), pump(br, cw, 0)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self):
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# The well-behaved pile both bridge targets keep charging, and a sound tariff.
GOOD_PILE = "55031412782305"
GOOD_TARIFF = {"model": "0001", "loss_ratio": 0, "slots": "3" * 16 + "2" * 32,
                "rates": {p: {"energy": 100000, "service": 20000}
                          for p in ("sharp", "peak", "flat", "valley")}}


async def wind_up(rep, tmp, keep, broker, bridge, relay=None):
    """The end of a bridge fuzz run: the bridge stopped, the relay and the
    broker closed, the temp dir kept (named in the report) or removed."""
    if bridge is not None:
        await bridge.stop()
    if relay is not None:
        await relay.close()
    broker.close()
    if keep:
        rep.extra["kept"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
