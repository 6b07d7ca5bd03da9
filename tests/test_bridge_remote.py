# Remote operations through the bridge (issue 8, host side), with the real
# pile firmware attached (firmware/pile.py on simulated hardware, on a pty or
# dialling in over TCP) and real Mosquitto: signed commands for a keyed pile,
# 0xD1 rejections mapped to an immediate MQTT result, a counter that only goes
# up across bridge restarts, firmware pushed by MQTT command and by the CLI
# (resuming after a dropped link), and minimum versions flagged.
import asyncio
import base64
import contextlib
import json
import os
import sys

from firmware import auth
from firmware import session as S
from host import config as configmod
from protocol import image as fwimage
from sim.links import TcpUart
from sim.bridge_child import with_overrides
from tests.test_bridge_helpers import (
    PILE_A, ROOT, FirmwarePile, Platform, bridge_running, charging, fast_config, in_tempdir,
    url_of)

CMD_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
UP_KEY = bytes(range(32, 64))
NEW = "209.5.0"
OLD = "209.4.0"


def key_file(tmp, name, key):
    path = os.path.join(tmp, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return path


def image(tag=b"new", size=3000):
    return fwimage.pack_image([("main.py", b"# main " + tag + b"\n"),
                         ("firmware/big.py", bytes(i & 0xFF for i in range(size)))])


class KeyedPile(FirmwarePile):
    """The real firmware with remote-operation keys in its configuration."""

    def __init__(self, root, fd, code, extra, **kw):
        self._extra = extra
        FirmwarePile.__init__(self, root, fd, code, **kw)

    def _boot(self):
        self.cfg.update(self._extra)
        FirmwarePile._boot(self)


class TcpPile(KeyedPile):
    def __init__(self, root, port, code, extra, **kw):
        self._port = port
        self._uart = None
        placeholder = os.open(os.devnull, os.O_RDONLY)   # FirmwarePile wants a pty fd
        try:
            KeyedPile.__init__(self, root, placeholder, code, extra, **kw)
        finally:
            os.close(placeholder)

    def _boot(self):
        if self._uart is None:
            self._uart = TcpUart("127.0.0.1", self._port, wait_s=5.0)
        self.uart = self._uart
        KeyedPile._boot(self)

    def drop_link(self):
        """The modem loses its connection and dials again; the pile logs in anew."""
        self.uart.drop()
        self.pile.link.go_offline("link dropped")

    async def close(self):
        await KeyedPile.close(self)
        self.uart.close()


def online_status(plat, pile=PILE_A, pred=lambda s: True):
    def f():
        s = plat.status.get(plat.topics.status(pile))
        return s if s and s["online"] and pred(s) else None
    return f


def remote_config(tmp, broker, **over):
    cfg = fast_config(tmp, url_of(broker), tcp={"listen": None},
                      piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0})
    return with_overrides(cfg, over)


def pty_setup(tmp, path, broker, bridge_key=CMD_KEY, **over):
    pile_cfg = {}
    if bridge_key is not None:
        pile_cfg["cmd_key_file"] = key_file(tmp, "pile-a.key", bridge_key)
    cfg = remote_config(tmp, broker, serial=[{"url": path, "baudrate": 115200, "ext": True}],
                        pile={PILE_A: pile_cfg}, **over)
    root = os.path.join(tmp, "flash")
    os.mkdir(root)
    return cfg, root


def pile_counter(root):
    return auth.CounterStore(root + "/cmd.ctr").load()


@contextlib.asynccontextmanager
async def keyed_pile_online(root, master, plat):
    """A KeyedPile with cmd_key CMD_KEY started on the pty and online at the
    platform; closed on the way out."""
    async with KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY}) as fw:
        await plat.wait_for(online_status(plat), 15)
        yield fw


# --- signed commands ----------------------------------------------------------------------

def test_signed_start_stop_and_reboot_to_a_keyed_pile_succeed_through_mqtt(mosquitto):
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto)
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            async with keyed_pile_online(root, master, plat) as fw:
                serial = await charging(plat, fw, 1000)
                r = await plat.command(PILE_A, {"id": "halt", "cmd": "stop"})
                assert r["ok"], r
                assert (await plat.wait_for(lambda: plat.bills.get(serial), 15))["checks"]["ok"]
                r = await plat.command(PILE_A, {"id": "rb", "cmd": "reboot", "when": "now"})
                assert r["ok"], r
                await fw.wait_for(lambda: fw.reboots == 1)
                await plat.wait_for(online_status(plat, pred=lambda s: s["boot_reason"] == 1), 15)
                # Every command went signed: the pile's counter record is the
                # bridge's last counter, and nothing was refused.
                last = await bridge.store.last_counter(PILE_A)
                assert last is not None and last >= configmod.counter_floor() - 120
                assert pile_counter(root) == last
                assert not [e for e in plat.events if e["type"] == "signed_reject"]
    in_tempdir("remote-signed", scenario, timeout=90, pty=True)


def test_a_pile_with_another_key_cannot_log_in_and_nothing_reaches_it(mosquitto):
    # The bridge holds another key than the pile: the pile's login proof
    # (0xD7) does not verify, so its login is refused with an event naming
    # why, and no command reaches it (it was answered 0xD1 "bad mac" per
    # command before the login proof; now it never gets that far).
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, bridge_key=OTHER_KEY,
                              piles={"command_timeout_s": 2.0})
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            async with KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY}) as fw:
                ev = await plat.wait_for(lambda: [e for e in plat.events
                                                  if e["type"] == "login_refused"], 15)
                assert "does not verify" in ev[0]["message"]
                assert not fw.pile.link.online
                r = await plat.command(PILE_A, {"id": "go", "cmd": "start", "gun": "01"})
                assert r["code"] in ("offline", "unknown_pile"), r
                assert fw.pile.gun.state != S.CHARGING and not fw.world.contactor.closed
                assert PILE_A not in bridge.piles or not bridge.piles[PILE_A].online
    in_tempdir("remote-otherkey", scenario, timeout=60, pty=True)


def test_restart_pile_without_the_bridge_knowing_its_key_fails_at_once_as_unsigned(mosquitto):
    # The field case "restart pile timed out": a keyed pile, a bridge without its key.
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, bridge_key=None,
                              piles={"command_timeout_s": 8.0})
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            async with keyed_pile_online(root, master, plat) as fw:
                r = await plat.command(PILE_A, {"id": "rb", "cmd": "reboot"})
                # The pile's own 0xD1 "unsigned", not the 8 s timeout.
                assert r["code"] == "signed_reject" and r["reply"]["reason"] == "unsigned", r
                assert "configure this pile's key" in r["message"]
                assert fw.reboots == 0
    in_tempdir("remote-unsigned", scenario, timeout=60, pty=True)


def test_the_counter_keeps_going_up_across_a_bridge_restart_even_if_the_clock_went_back(
        mosquitto, monkeypatch):
    # The time floor is pinned low (a gateway clock reset, which cannot be
    # staged here): only the stored counter keeps the next run above the last.
    monkeypatch.setattr(configmod, "counter_floor", lambda now=None: 1000)

    async def scenario(tmp, master, path):
        # No time sync (signed too, it would take a counter of its own): the
        # counters below are the two commands'.
        cfg, root = pty_setup(tmp, path, mosquitto, piles={"time_sync_s": 0})
        fw = KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY})
        try:
            async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
                fw.start()
                await plat.wait_for(online_status(plat), 15)
                for i in range(2):
                    r = await plat.command(PILE_A, {"id": "s%d" % i, "cmd": "stop"})
                    assert r["code"] == "refused", r        # signed, executed: nothing charging
                first = await bridge.store.last_counter(PILE_A)
                assert first == 1001 and pile_counter(root) == 1001
            async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
                await plat.wait_for(online_status(plat), 15)
                r = await plat.command(PILE_A, {"id": "again", "cmd": "stop"})
                assert r["code"] == "refused", r            # not signed_reject / replay
                assert pile_counter(root) == 1002
        finally:
            await fw.close()
    in_tempdir("remote-counter", scenario, timeout=90, pty=True)


# --- firmware push --------------------------------------------------------------------------

def test_an_image_pushed_by_mqtt_installs_and_the_pile_reports_the_new_version(mosquitto):
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, keys={
            "upgrade_key_file": key_file(tmp, "upgrade.key", UP_KEY)},
            versions={"min_board": {"*": "209.04.00"}})
        img = image()
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            fw = KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY, "upgrade_key": UP_KEY,
                                                  "sw_version": "209.03.00"}).start()
            try:
                st = await plat.wait_for(online_status(plat), 15)
                assert st["upgrade_required"] and st["versions"]["outdated"] == ["board"]
                r = await plat.command(PILE_A, {"id": "up", "cmd": "upgrade", "version": NEW,
                                                "image_b64": base64.b64encode(img).decode()},
                                       timeout=60)
                assert r["ok"], r
                assert r["reply"]["running"] == NEW and r["bytes_sent"] == len(img)
                assert fw.reboots == 1 and fw.pile.boot_reason == 4
                assert fw.pile.remote.board_version() == NEW
                fw_events = lambda: [e["stage"] for e in plat.events if e["type"] == "firmware"
                                     and e.get("id") == "up"]
                stages = await plat.wait_for(lambda: "running" in fw_events() and fw_events())
                assert stages.count("downloading") == 1, stages
                for s in ("downloading", "verified", "installed", "running"):
                    assert s in stages, stages
                assert stages.index("downloading") < stages.index("verified") \
                    < stages.index("installed") < stages.index("running")
                st = await plat.wait_for(online_status(plat, pred=lambda s: s["versions"]["fw"] == NEW
                                                       and s["versions"]["sw"] == NEW), 15)
                assert not st["upgrade_required"] and st["upgrade"]["stage"] == "running"
                assert st["boot_reason"] == 4
            finally:
                await fw.close()
    in_tempdir("remote-push", scenario, timeout=120, pty=True)


def test_a_push_from_the_cli_resumes_from_the_offset_the_pile_reports_after_a_dropped_link(
        mosquitto):
    async def scenario(tmp):
        images = os.path.join(tmp, "images")
        os.mkdir(images)
        img = image(size=12000)
        with open(os.path.join(images, "fw-209.5.0.img"), "wb") as f:
            f.write(img)
        cfg = remote_config(tmp, mosquitto, tcp={"listen": "127.0.0.1:0", "ext": True},
                            keys={"upgrade_key_file": key_file(tmp, "upgrade.key", UP_KEY)},
                            pile={PILE_A: {"cmd_key_file": key_file(tmp, "a.key", CMD_KEY)}},
                            upgrade={"image_dir": images})
        cli_cfg = os.path.join(tmp, "cli.toml")
        with open(cli_cfg, "w") as f:
            f.write('site = "t1"\n[mqtt]\nurl = "%s"\n[upgrade]\nimage_dir = "%s"\n'
                    % (url_of(mosquitto), images))
        root = os.path.join(tmp, "flash")
        os.mkdir(root)
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            fw = TcpPile(root, bridge.tcp_port, PILE_A,
                         {"cmd_key": CMD_KEY, "upgrade_key": UP_KEY}).start()
            cli = None
            try:
                await plat.wait_for(online_status(plat), 15)
                env = dict(os.environ, PYTHONPATH=ROOT)
                cli = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "host.bridge", "push", "-c", cli_cfg, "--pile", PILE_A,
                    "--version", NEW, os.path.join(images, "fw-209.5.0.img"),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
                up = lambda: fw.pile.remote.updater.status()
                await fw.wait_for(lambda: up()["stage"] == "downloading"
                                  and up()["offset"] >= len(img) // 3, 30)
                fw.drop_link()
                staged = up()["offset"]
                assert 0 < staged < len(img)
                out, err = await asyncio.wait_for(cli.communicate(), 60)
                assert cli.returncode == 0, (out, err)
                res = json.loads(out.decode().strip().splitlines()[-1])
                assert res["ok"] and res["reply"]["running"] == NEW, res
                # announced again after the drop, the pile said where it stood
                # and the bridge went on from there: nothing resent from 0
                assert res["resumed_from"] == [staged], res
                assert res["bytes_sent"] <= len(img) + 2 * 200, res
                assert b"downloading" in out and b"running" in out
                assert fw.uart.drops == 1 and fw.pile.remote.board_version() == NEW
                ev = [e for e in plat.events if e["type"] == "firmware" and e.get("resumed")]
                assert ev and ev[0]["offset"] == staged
            finally:
                if cli is not None and cli.returncode is None:
                    cli.kill()
                    await cli.wait()
                await fw.close()
    in_tempdir("remote-resume", scenario, timeout=120)


def firmware_events(plat, req_id):
    return [e for e in plat.events if e["type"] == "firmware" and e.get("id") == req_id]


def test_an_upgrade_requested_while_charging_waits_for_the_session_then_activates(mosquitto):
    # Activation is refused (busy) while the pile charges: the bridge says it
    # waits (event waiting_idle, status verified) and asks again every
    # activate_retry_s; the session ends, its bill goes out, then the pile
    # activates, reboots and logs in with the new version.
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, keys={
            "upgrade_key_file": key_file(tmp, "upgrade.key", UP_KEY)},
            upgrade={"activate_retry_s": 0.2})
        img = image()
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            fw = KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY, "upgrade_key": UP_KEY,
                                                  "sw_version": OLD}).start()
            at_reboot = []
            reboot = fw._reboot

            def watched_reboot():
                # what the pile held when it went down for the new version
                at_reboot.append((fw.pile.gun.state, fw.pile.journal.status(serial),
                                  list(fw.pile.send_log)))
                reboot()
            fw.pile.reboot_hook = watched_reboot
            try:
                await plat.wait_for(online_status(plat), 15)
                serial = await charging(plat, fw, 1000)
                fw.pile.send_log = []
                await plat.client.publish(plat.topics.command(PILE_A), json.dumps(
                    {"id": "up", "cmd": "upgrade", "version": NEW,
                     "image_b64": base64.b64encode(img).decode()}), qos=1)
                await plat.wait_for(lambda: "waiting_idle" in [e["stage"] for e in
                                                               firmware_events(plat, "up")], 30)
                st = await plat.wait_for(online_status(
                    plat, pred=lambda s: (s.get("upgrade") or {}).get("stage") == "verified"))
                assert st["versions"]["fw"] == OLD
                # several refusals later: still charging, nothing activated
                await fw.wait_for(lambda: fw.pile.remote.updater.status()["stage"] == "verified"
                                  and len([e for e in fw.pile.events
                                           if e[1] == "firmware_refused"]) >= 3)
                assert fw.pile.gun.state == S.CHARGING and fw.world.contactor.closed
                assert fw.reboots == 0 and fw.pile.remote.board_version() == OLD
                assert "up" not in plat.results
                r = await plat.command(PILE_A, {"id": "halt", "cmd": "stop"})
                assert r["ok"], r
                r = await plat.wait_for(lambda: plat.results.get("up"), 30)
                assert r["ok"] and r["reply"]["running"] == NEW, r
                # the session was over, its bill sealed and sent, before the reboot
                assert len(at_reboot) == 1, at_reboot
                state, billed, sent = at_reboot[0]
                assert state not in (S.AUTHORISING, S.CHARGING, S.STOPPING), at_reboot
                assert billed in ("pending", "confirmed", "settled") and serial in sent, at_reboot
                assert fw.reboots == 1 and fw.pile.boot_reason == 4
                assert fw.pile.remote.board_version() == NEW
                doc = await plat.wait_for(lambda: plat.bills.get(serial), 15)
                assert doc["checks"]["ok"] and plat.bill_count[serial] == 1
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled", 15)
                stages = await plat.wait_for(lambda: (lambda st: "running" in st and st)(
                    [e["stage"] for e in firmware_events(plat, "up")]))
                assert stages.count("waiting_idle") == 1, stages
                assert stages.index("verified") < stages.index("waiting_idle") \
                    < stages.index("installed") < stages.index("running"), stages
                st = await plat.wait_for(online_status(plat, pred=lambda s: s["versions"]["fw"] == NEW))
                assert st["upgrade"]["stage"] == "running" and st["boot_reason"] == 4
            finally:
                await fw.close()
    in_tempdir("remote-busy", scenario, timeout=90, pty=True)


class NeverHealthyPile(KeyedPile):
    """The real firmware whose new image never gets online: booted on
    version `broken` the pile's link is deaf (what it sends goes nowhere,
    nothing reaches it), so it never logs in and never marks the slot
    healthy, and a watchdog resets the board after WATCHDOG_MS of its time.
    The firmware's boot counter does the rest (upgrade_boots, default 3)."""

    WATCHDOG_MS = 30000

    def __init__(self, root, fd, code, extra, broken, **kw):
        self.broken = broken
        self.deaf_boots = 0
        KeyedPile.__init__(self, root, fd, code, extra, **kw)

    def _boot(self):
        KeyedPile._boot(self)
        if self.pile.remote.board_version() != self.broken:
            return
        self.deaf_boots += 1
        pile, clock = self.pile, self.world.clock
        pile.link.uart = DeafUart()
        booted = clock.ticks_ms()
        poll = pile.poll

        def poll_until_the_watchdog():
            if clock.ticks_ms() - booted >= self.WATCHDOG_MS:
                self._reboot()          # the next boot, counted by boot_select
                return 0
            return poll()
        pile.poll = poll_until_the_watchdog


class DeafUart:
    def write(self, data):
        return len(data)

    def read(self, n):
        return None


def test_an_image_that_never_comes_up_healthy_rolls_back_and_the_bridge_says_rolled_back(mosquitto):
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, keys={
            "upgrade_key_file": key_file(tmp, "upgrade.key", UP_KEY)})
        img = image(b"broken")
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            fw = NeverHealthyPile(root, master, PILE_A, {"cmd_key": CMD_KEY, "upgrade_key": UP_KEY,
                                                         "sw_version": OLD}, broken=NEW).start()
            try:
                await plat.wait_for(online_status(plat), 15)
                r = await plat.command(PILE_A, {"id": "up", "cmd": "upgrade", "version": NEW,
                                                "image_b64": base64.b64encode(img).decode()},
                                       timeout=60)
                assert not r["ok"] and r["code"] == "rolled_back", r
                assert r["reply"]["stage_name"] == "rolled_back", r
                assert r["reply"]["reason"] == "not healthy" and r["reply"]["running"] == OLD, r
                assert OLD in r["message"] and r["bytes_sent"] == len(img)
                # three boots of the new image, none online, then the old slot
                assert fw.deaf_boots == 3 and fw.reboots == 4
                assert fw.pile.remote.board_version() == OLD and fw.pile.boot_reason == 3
                up = fw.pile.remote.updater.status()
                assert (up["stage"], up["pending"], up["version"]) == ("rolled_back", False, NEW)
                stages = await plat.wait_for(lambda: (lambda st: "rolled_back" in st and st)(
                    [e["stage"] for e in firmware_events(plat, "up")]))
                # one event says how it ended, with the result's code and the pile's reason
                assert stages[-1] == "rolled_back" and stages.count("rolled_back") == 1, stages
                assert "installed" in stages and "running" not in stages, stages
                assert "failed" not in stages, stages
                ev = firmware_events(plat, "up")[-1]
                assert (ev["code"], ev["reason"], ev["result"]) == ("rolled_back", "not healthy", 12)
                assert OLD in ev["message"]
                # the status after the 0xE5 that follows the login: the old version, booted
                # by a rollback
                st = await plat.wait_for(online_status(
                    plat, pred=lambda s: (s.get("upgrade") or {}).get("stage") == "rolled_back"
                    and s["boot_reason"] == 3), 15)
                assert st["versions"]["fw"] == st["versions"]["sw"] == OLD
            finally:
                await fw.close()
    in_tempdir("remote-rollback", scenario, timeout=90, pty=True)


# --- minimum versions -----------------------------------------------------------------------

def test_a_pile_below_the_minimum_version_is_flagged_in_its_status_and_by_an_event(mosquitto):
    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, bridge_key=None,
                              versions={"min_board": {"*": "209.04.00", "ac": "1.0"},
                                        "min_hmi": {"*": "104"}})
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            async with KeyedPile(root, master, PILE_A, {"sw_version": "209.3.12"}):
                st = await plat.wait_for(online_status(plat, pred=lambda s: s["versions"]["hmi"]), 15)
                assert st["upgrade_required"] is True
                assert st["versions"]["min_board"] == "209.04.00"       # a DC pile: "*"
                assert sorted(st["versions"]["outdated"]) == ["board", "hmi"]
                evs = await plat.wait_for(lambda: len([e for e in plat.events
                                                       if e["type"] == "version_below_minimum"]) >= 2
                                          and [e for e in plat.events
                                               if e["type"] == "version_below_minimum"])
                got = {e["part"]: (e["version"], e["minimum"]) for e in evs}
                assert got == {"board": ("209.3.12", "209.04.00"), "hmi": ("103", "104")}
    in_tempdir("remote-versions", scenario, timeout=60, pty=True)


# --- login proof (issue 17 item 2) -------------------------------------------------------

def test_an_impostor_with_a_keyed_piles_code_neither_logs_in_nor_displaces_it(mosquitto):
    # Before: a TCP client with someone else's pile code was accepted, dropped
    # the real pile's link and received its commands. A keyed pile now proves
    # its key at login (0xD6 challenge, 0xD7 proof); the impostor cannot, is
    # refused and closed, and the real pile keeps its link and its commands.
    from sim.testkit import ScriptedPile
    from sim.links import TcpTransport

    async def scenario(tmp, master, path):
        cfg, root = pty_setup(tmp, path, mosquitto, tcp={"listen": "127.0.0.1:0"},
                              piles={"command_timeout_s": 2.0})
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            async with keyed_pile_online(root, master, plat) as fw:
                st = plat.status[plat.topics.status(PILE_A)]
                assert st["authenticated"] is True and st["link"].startswith("serial:")
                imp = ScriptedPile(PILE_A, await TcpTransport.connect("127.0.0.1", bridge.tcp_port),
                                   reply_timeout=10.0)
                assert await imp.login() == 1
                ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "login_refused"])
                assert "no proof" in ev[0]["message"] and ev[0]["link"].startswith("tcp:")
                assert bridge.piles[PILE_A].conn.link.name.startswith("serial:")
                r = await plat.command(PILE_A, {"id": "halt", "cmd": "stop"})
                assert r["code"] == "refused", r       # reached the real pile: nothing charging
                assert not imp.received("remote_stop")
                await imp.close()
    in_tempdir("remote-impostor", scenario, timeout=60, pty=True)
