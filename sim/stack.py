"""The whole product on one machine, for pile-demo and pile-chaos.

    broker = start_broker("mosquitto")            # sim/brokers.py, started
    bridge = BridgeProcess(workdir, "demo", broker.port)
    bridge.start()                                # a child: python -m host.bridge
    platform, task = await start_platform(broker.port, workdir + "/platform.db")
    ... piles dial 127.0.0.1:bridge.tcp_port ...
    bridge.kill(); bridge.start()                 # SIGKILL, same database, same port
    task.cancel(); bridge.stop(); broker.close()

Every process is a child started here and stopped by its pid; ports are the
kernel's choice at run time (the bridge's TCP port is kept across restarts
so piles dial the same address again).
"""
import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time

from sim.brokers import make_broker, stop_process
from host.platform import Platform

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READY_S = 30.0      # a bridge gets this long to print its ready line
_STOP_S = 10.0       # SIGTERM, then SIGKILL after this long


def start_broker(prefer="mosquitto", **opts):
    """A started broker (Mosquitto when installed, else amqtt)."""
    b = make_broker(prefer, **opts)
    b.start()
    return b


class BridgeDidNotStart(RuntimeError):
    """The bridge child exited, or said nothing, before its ready line; the
    message names it, why, and ends with its log."""


class BridgeProcess:
    """`pile-bridge` as a child process on one config and one database.

    start() writes the config, starts the child and reads its JSON ready
    line (tcp_port). The first start listens on a port the kernel picks;
    later starts listen on that same port, so a restart after kill() keeps
    the address the piles dial. extra: TOML sections appended to the
    config (e.g. "[piles]\\ncommand_timeout_s = 2\\n")."""

    def __init__(self, workdir, site, mqtt_port, extra="", retry_initial_s=0.5,
                 retry_max_s=2.0, log_level="warning", status=False, mqtt_urls=None):
        self.dir = workdir
        self.site = site
        self.mqtt_port = mqtt_port
        self.extra = extra
        self.retry = (retry_initial_s, retry_max_s)
        self.log_level = log_level
        self.config_path = os.path.join(workdir, "bridge.toml")
        self.database = os.path.join(workdir, "bridge.db")
        self.log_path = os.path.join(workdir, "bridge.log")
        self.tcp_port = None
        self.mqtt_urls = mqtt_urls    # a broker cluster's nodes (mqtt.url as a list)
        self.status = status          # serve the status page (True, or {key: value} of [status])
        self.status_port = None
        self.proc = None
        self.starts = 0

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self):
        listen = "127.0.0.1:%d" % (self.tcp_port or 0)
        # One broker, or a cluster's nodes tried in turn (mqtt_urls).
        url = json.dumps(list(self.mqtt_urls)) if self.mqtt_urls else \
            '"mqtt://127.0.0.1:%d"' % self.mqtt_port
        with open(self.config_path, "w") as f:
            f.write('site = "%s"\ndatabase = "%s"\nlog_level = "%s"\n'
                    '[mqtt]\nurl = %s\n'
                    # every simulated pile dials from 127.0.0.1: per-address cap raised
                    '[tcp]\nlisten = "%s"\next = true\nmax_per_address = 1024\n'
                    'max_unauthenticated = 1024\n'
                    % (self.site, self.database, self.log_level, url, listen))
            if self.status:
                f.write('[status]\nlisten = "127.0.0.1:%d"\n' % (self.status_port or 0))
                for k, v in (self.status.items() if isinstance(self.status, dict) else ()):
                    f.write('%s = %s\n' % (k, json.dumps(v)))
            extra = self.extra
            if "[bills]" not in extra:
                f.write("[bills]\nretry_initial_s = %s\nretry_max_s = %s\n" % self.retry)
            f.write(extra)

    def start(self):
        """Start the child; returns its TCP port once it listens
        (BridgeDidNotStart otherwise: a test that needs it fails, never skips)."""
        if self.running:
            return self.tcp_port
        self._write_config()
        log = open(self.log_path, "a")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "host.bridge", "--config",
                                          self.config_path], stdout=subprocess.PIPE,
                                         stderr=log, stdin=subprocess.DEVNULL, text=True,
                                         env=_env())
        finally:
            log.close()
        line = self._ready_line()
        try:
            ready = json.loads(line)
            self.tcp_port = ready["tcp_port"]
            self.status_port = ready.get("status_port")
        except (ValueError, TypeError, KeyError):
            self._did_not_start(line)
        self.starts += 1
        return self.tcp_port

    def _did_not_start(self, line):
        if not line:
            try:
                self.proc.wait(_STOP_S)   # its stdout closed: it is exiting
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is not None:
            why = "exited with code %d before its ready line" % self.proc.returncode
        elif line:
            why = "printed %r instead of its JSON ready line" % line.strip()[:200]
        else:
            why = "printed no ready line within %.0f s" % _READY_S
        self.kill()
        raise BridgeDidNotStart("the bridge (python -m host.bridge --config %s) did not start: "
                                "%s\n--- the end of its log %s ---\n%s"
                                % (self.config_path, why, self.log_path, self.log_tail()))

    def log_tail(self, n=20):
        """The last n lines of the bridge's log (its stderr, every start)."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-n:]) or "(empty)"

    def _ready_line(self):
        end = time.monotonic() + _READY_S
        out = self.proc.stdout
        while time.monotonic() < end:
            r, _, _ = select.select([out], [], [], 0.2)
            if r:
                return out.readline()
            if self.proc.poll() is not None:
                return ""
        return ""

    def kill(self):
        """SIGKILL by pid: a crash, nothing flushed or said goodbye."""
        self._end(signal.SIGKILL)

    def stop(self):
        """SIGTERM (clean stop), SIGKILL if it does not end in time."""
        self._end(signal.SIGTERM)

    def _end(self, sig):
        p, self.proc = self.proc, None
        if p is None:
            return
        stop_process(p, sig, _STOP_S)
        if p.stdout:
            p.stdout.close()


def _env():
    # The child imports host.bridge from this checkout whatever the cwd.
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _ROOT + (os.pathsep + path if path else "")
    return env


async def start_platform(mqtt_port, db, timeout=20.0, cmd_key=None, url=None):
    """The reference platform, consuming in a task; (platform, task) once
    it has subscribed. cmd_key: the site's platform key (signed commands
    and confirmations); url: instead of the port, e.g. a cluster's
    "URL,URL,..."."""
    platform = Platform(url or "mqtt://127.0.0.1:%d" % mqtt_port, db, cmd_key=cmd_key)
    ready = asyncio.Event()
    task = asyncio.create_task(platform.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout)
    except asyncio.TimeoutError:
        task.cancel()
        raise
    return platform, task
