# Helpers for the bridge suites (tests/test_bridge*.py): a bridge in this
# process or as a child process, the platform double (sim/mqtt_platform.py:
# an MQTT client that takes bills and confirms them), temp dirs and bounded
# waits. No tests here.
#
# The pile is sim.testkit.ScriptedPile until the real firmware app lands;
# `connect_pile` is the one place that builds it, so swapping it is local.
import asyncio
import contextlib
import os
import pty
import shutil
import sqlite3
import tempfile
import time
import tty


from host import bridge as bridgemod
from host import config as configmod
from sim.testkit import ScriptedPile
from sim.links import FdTransport, FdUart, TcpTransport
from sim.bridge_child import BridgeChild as BridgeProcess, with_overrides, write_toml  # noqa: F401
from sim.mqtt_platform import MqttPlatform as Platform  # noqa: F401 (the suites' platform)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PILE_A = "55031412782305"
PILE_B = "55031412782306"
PILE_C = "55031412782307"


def run(coro, timeout=60):
    """Run a test scenario on a fresh loop, bounded."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@contextlib.contextmanager
def tempdir(tag):
    d = tempfile.mkdtemp(prefix="pc-bridge-%s-" % tag)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def until(pred, timeout=10.0, what="condition", poll=0.01):
    """Poll a cheap condition (bounded); for state with no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %g s waiting for %s" % (timeout, what))
        await asyncio.sleep(poll)


def fast_config(tmp, broker_url, site="t1", **over):
    """Config dict for tests: short timers, TCP on a free port (0)."""
    cfg = {
        "site": site,
        "database": os.path.join(tmp, "bridge.db"),
        "log_level": "debug",
        "mqtt": {"url": broker_url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                 "keepalive": 5},
        "bills": {"retry_initial_s": 5.0, "retry_max_s": 10.0, "extra_wait_s": 0.3,
                  "settle_retry_s": 0.5},
        "piles": {"heartbeat_s": 5.0, "command_timeout_s": 2.0, "time_sync_s": 3600.0},
        "tcp": {"listen": "127.0.0.1:0", "ext": True},
    }
    return with_overrides(cfg, over)


@contextlib.asynccontextmanager
async def bridge_running(cfg_dict, mqtt_up=True):
    """A started in-process bridge. With `mqtt_up` (the default) it is also
    connected and subscribed to commands and confirmations before the test
    goes on: a command published before the bridge subscribed is never
    delivered to it (a race a loaded machine loses). Tests that start it
    without a reachable broker pass mqtt_up=False."""
    b = bridgemod.Bridge(configmod.load(None, cfg_dict))
    await b.start()
    try:
        if mqtt_up:
            try:
                await asyncio.wait_for(b.mqtt.connected.wait(), 30)
            except asyncio.TimeoutError:
                raise AssertionError("the bridge did not connect to its broker %s within 30 s"
                                     % b.cfg["mqtt"]["url"]) from None
        yield b
    finally:
        await b.stop()


async def connect_pile(code, bridge_port, ext=True, **kw):
    """A logged-in pile on a TCP link to the bridge."""
    t = await TcpTransport.connect("127.0.0.1", bridge_port)
    p = ScriptedPile(code, t, ext=ext, **kw)
    assert await p.login() == 0
    return p


@contextlib.asynccontextmanager
async def bridge_and_platform(tmp, broker, confirm=True, **over):
    """fast_config(tmp, broker, **over), a bridge started on it and the
    platform double (`confirm`: it confirms bills): yields (cfg, bridge,
    platform)."""
    cfg = fast_config(tmp, url_of(broker), **over)
    async with bridge_running(cfg) as b, Platform(url_of(broker), confirm=confirm) as plat:
        yield cfg, b, plat


@contextlib.asynccontextmanager
async def bridge_with_pile(tmp, broker, code=PILE_A, pile_kw=None, confirm=True, **over):
    """The suites' usual site: bridge_and_platform and a pile `code` logged
    in over TCP (`pile_kw` for ScriptedPile). Yields (cfg, bridge, platform,
    pile); the pile is closed after the block."""
    async with bridge_and_platform(tmp, broker, confirm, **over) as (cfg, b, plat):
        pile = await connect_pile(code, b.tcp_port, **(pile_kw or {}))
        try:
            yield cfg, b, plat, pile
        finally:
            await pile.close()


def in_tempdir(tag, scenario, timeout=60, pty=False):
    """Run the coroutine function `scenario(tmp)` in a temp dir (bounded);
    with `pty`, scenario(tmp, master, path) on a fresh pty_pair too."""
    with tempdir(tag) as tmp:
        if not pty:
            return run(scenario(tmp), timeout)
        with pty_pair() as (master, path):
            return run(scenario(tmp, master, path), timeout)


@contextlib.contextmanager
def pty_pair():
    """(master fd for the pile, slave path for the bridge), raw mode."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


def pty_pile(code, master_fd, **kw):
    return ScriptedPile(code, FdTransport(master_fd), **kw)


async def login_when_open(pile, tries=100):
    """Log a pile in on a serial link the bridge opens in a thread (and
    reopens after an unplug): nothing tells the pile when the port is open,
    so the login is sent again after each 0.2 s without a reply. Fails,
    never gives up silently, if the bridge never answers."""
    for _ in range(tries):
        try:
            assert await pile.login(timeout=0.2) == 0
            return
        except asyncio.TimeoutError:
            continue
    raise AssertionError("the bridge never answered the login of %s on its serial port "
                         "(%d tries, 0.2 s each)" % (pile.code, tries))


def fees_yuan(extra):
    """(energy_fee, service_fee) a bill document shows for 0xEB `extra`:
    the sums of the period fees, x10^4 yuan written as yuan."""
    periods = ("sharp", "peak", "flat", "valley", "deep")
    return tuple("%d.%04d" % divmod(sum(extra.get(p + kind, 0) for p in periods), 10000)
                 for kind in ("_energy_fee", "_service_fee"))


def db_rows(path, sql, *args):
    """The rows of one query on the bridge's SQLite store at `path`."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def url_of(broker):
    return "mqtt://%s:%d" % (broker.host, broker.port)


async def charging(plat, fw, energy):
    """The platform starts gun 01 of the firmware pile `fw` (card D14B0A54,
    balance 100000); once its meter has passed `energy` (x10^4 kWh), the
    session's trade serial."""
    r = await plat.command(fw.code, {"id": "go", "cmd": "start", "gun": "01",
                                     "balance": 100000, "card": "D14B0A54"})
    assert r["ok"], r
    await fw.wait_for(lambda: fw.world.meter.read_energy() > energy)
    return r["serial"]


class FirmwarePile:
    """The real pile firmware (firmware.pile.Pile) on simulated hardware,
    its UART on a pty: the same bridge-facing behaviour as on a board. Its
    simulated clock follows real time times `speed`, so YKC's 10 s heartbeat
    and a charging session take a fraction of a second."""

    def __init__(self, root, master_fd, code, speed=60, soc=20, vin="LSVAU2180N2183294"):
        from firmware.pile import Pile
        from sim.hardware import SimWorld
        from host.schema import local_secs
        from tests.mp.pilekit import tariff4
        self.root = root
        self.code = code
        self.speed = speed
        self.world = SimWorld(now=local_secs(), pile_max_w=60000, soc=soc, vin=vin)
        self.cfg = {"pile": code, "gun": "01", "tariff": tariff4(), "hmi_version": "103"}
        self.uart = FdUart(master_fd)
        self.reboots = 0
        self._Pile = Pile
        self._boot()
        self._task = None

    def _boot(self):
        w = self.world
        self.pile = self._Pile(self.cfg, self.root, w.clock, self.uart, w.meter, w.contactor,
                               w.vehicle, reboot=self._reboot)

    def _reboot(self):
        self.reboots += 1
        self.world.contactor.open()
        self._boot()

    async def _run(self):
        clock = self.world.clock
        last = time.monotonic()
        while True:
            d = self.pile.poll()
            await asyncio.sleep(max(0.002, min(d / 1000.0 / self.speed, 0.01)))
            now = time.monotonic()
            ms = int((now - last) * 1000 * self.speed)
            if ms:
                clock.sleep_ms(ms)
                last = now

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # `async with FirmwarePile(...) as fw:` runs it for the block.
    async def __aenter__(self):
        return self.start()

    async def __aexit__(self, *exc):
        await self.close()

    async def wait_for(self, pred, timeout=10.0):
        return await until(pred, timeout, "a condition on firmware pile %s" % self.code)
