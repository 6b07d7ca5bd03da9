# A two-gun pile running the real firmware (firmware/pile.py, cfg guns 2)
# behind the bridge: the MQTT status shows each gun, a start and a stop for
# gun 2 reach gun 2 only, and its bill names gun 2 and settles on the pile.
import contextlib
import os

from sim.hardware import SimWorld
from tests.test_bridge_commands import TARIFF
from tests.test_bridge_helpers import (
    PILE_A, FirmwarePile, Platform, bridge_running, fast_config, in_tempdir, pty_pair, run,
    tempdir, url_of)


class TwoGunPile(FirmwarePile):
    def _boot(self):
        if not hasattr(self, "worlds"):
            self.worlds = [self.world, SimWorld(pile_max_w=60000, soc=30, clock=self.world.clock)]
            self.cfg["guns"] = 2
        ws = self.worlds
        self.pile = self._Pile(self.cfg, self.root, self.world.clock, self.uart,
                               [w.meter for w in ws], [w.contactor for w in ws],
                               [w.vehicle for w in ws], reboot=self._reboot)


@contextlib.asynccontextmanager
async def two_guns_online(tmp, master, path, broker, cls=TwoGunPile, **over):
    """A bridge on the serial link `path` (the TARIFF, 1 s heartbeats; `over`
    as fast_config takes it), the platform double and the firmware pile
    `cls` on `master`: yields (platform, pile)."""
    cfg = fast_config(tmp, url_of(broker), tcp={"listen": None},
                      serial=[{"url": path, "baudrate": 115200, "ext": True}],
                      piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0}, tariff=TARIFF, **over)
    root = os.path.join(tmp, "flash")
    os.mkdir(root)
    async with bridge_running(cfg), Platform(url_of(broker)) as plat:
        async with cls(root, master, PILE_A, speed=60) as fw:
            yield plat, fw


def _gun_status(plat, gun, status):
    s = plat.status.get(plat.topics.status(PILE_A))
    g = s and s["guns"].get(gun)
    return s if g and g.get("status") == status else None


def test_two_gun_firmware_pile_shows_each_gun_and_gun_2_bills_alone(mosquitto):
    async def scenario(tmp, master, path):
        async with two_guns_online(tmp, master, path, mosquitto) as (plat, fw):
            st = await plat.wait_for(lambda: _gun_status(plat, "02", "idle"), 15)
            assert st["login"]["guns"] == 2 and st["guns"]["01"]["status"] == "idle"
            r = await plat.command(PILE_A, {"id": "g2", "cmd": "start", "gun": "02",
                                            "balance": 100000, "card": "D14B0A54"})
            assert r["ok"], r
            serial = r["serial"]
            st = await plat.wait_for(lambda: _gun_status(plat, "02", "charging"), 15)
            assert st["guns"]["02"]["serial"] == serial
            assert st["guns"]["01"]["status"] == "idle"
            g1, g2 = fw.pile.guns
            await fw.wait_for(lambda: fw.worlds[1].meter.read_energy() > 2000)
            assert g1.trade is None and not fw.worlds[0].contactor.closed
            r = await plat.command(PILE_A, {"id": "s2", "cmd": "stop", "gun": "02"})
            assert r["ok"], r
            doc = await plat.wait_for(lambda: plat.bills.get(serial), 15)
            assert doc["raw"]["gun"] == "02" and doc["checks"]["ok"], doc["checks"]
            await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled")
            await plat.wait_for(lambda: _gun_status(plat, "02", "idle"), 15)
    in_tempdir("guns2", scenario, timeout=90, pty=True)


class SharingTwoGunPile(TwoGunPile):
    # power sharing on: one output per gun, a 60 kW pile
    def _boot(self):
        from sim.hardware import SimOutput
        if not hasattr(self, "worlds"):
            self.worlds = [self.world, SimWorld(pile_max_w=60000, soc=30, clock=self.world.clock)]
            self.cfg["guns"] = 2
            self.cfg["power_w"] = 60000
            self.outputs = [SimOutput(w.vehicle) for w in self.worlds]
        ws = self.worlds
        self.pile = self._Pile(self.cfg, self.root, self.world.clock, self.uart,
                               [w.meter for w in ws], [w.contactor for w in ws],
                               [w.vehicle for w in ws], reboot=self._reboot,
                               outputs=self.outputs)


def test_the_bridge_pushes_the_site_cap_after_login_and_a_pile_without_sharing_raises_an_event(
        mosquitto):
    async def scenario(tmp, master, path, cls, event):
        async with two_guns_online(tmp, master, path, mosquitto, cls,
                                   pile={PILE_A: {"power_cap_kw": 22.5}}) as (plat, fw):
            if event:
                ev = await plat.wait_for(
                    lambda: [e for e in plat.events if e["type"] == "site_cap_refused"], 15)
                assert ev[0]["cap"] == 22500
            else:
                await fw.wait_for(lambda: fw.pile.sharing.site_cap == 22500, 15)
                r = await plat.command(PILE_A, {"id": "g1", "cmd": "start", "gun": "01",
                                                "balance": 100000, "card": "D14B0A54"})
                assert r["ok"], r
                await fw.wait_for(lambda: fw.worlds[0].vehicle.power == 22500, 15)
                assert [e for e in plat.events if e["type"] == "site_cap_refused"] == []
    for cls, event in ((SharingTwoGunPile, False), (TwoGunPile, True)):
        with tempdir("sitecap") as tmp, pty_pair() as (master, path):
            run(scenario(tmp, master, path, cls, event), timeout=90)


def test_parallel_charging_through_the_bridge_start_group_stop_and_card_requests(mosquitto):
    # One vehicle on both guns (YKC 0xA1..0xA4) started from MQTT: one 0xA4
    # per gun, the main first; a stop of either gun ends both; one bill per
    # gun, each reconciling and settled. Then a card for two guns at the pile:
    # two parallel_request events, answered by `authorize` with the group.
    async def scenario(tmp, master, path):
        async with two_guns_online(tmp, master, path, mosquitto) as (plat, fw):
            await plat.wait_for(lambda: _gun_status(plat, "02", "idle"), 15)
            bad = await plat.command(PILE_A, {"id": "p0", "cmd": "parallel_start",
                                              "guns": ["02", "02"]})
            assert bad["code"] == "bad_request" and "two different guns" in bad["message"]
            r = await plat.command(PILE_A, {"id": "p1", "cmd": "parallel_start",
                                            "balance": 100000, "card": "D14B0A54",
                                            "group": "261207120000"})
            assert r["ok"], r
            s1, s2 = r["serials"]
            assert [(g["gun"], g["role"]) for g in r["reply"]["guns"]] == [("01", 1), ("02", 2)]
            g1, g2 = fw.pile.guns
            assert g1.group == g2.group == "261207120000" and (g1.role, g2.role) == (1, 2)
            await plat.wait_for(lambda: _gun_status(plat, "01", "charging") and
                                _gun_status(plat, "02", "charging"), 15)
            await fw.wait_for(lambda: min(w.meter.read_energy() for w in fw.worlds) > 2000)
            # The same group again while it runs: the main is busy, nothing starts.
            again = await plat.command(PILE_A, {"id": "p2", "cmd": "parallel_start",
                                                "balance": 100000, "group": "261207120000"})
            assert again["code"] == "refused" and len(again["reply"]["guns"]) == 1, again
            # A stop for the auxiliary ends both guns: two bills.
            st = await plat.command(PILE_A, {"id": "s2", "cmd": "stop", "gun": "02"})
            assert st["ok"], st
            for s, gun in ((s1, "01"), (s2, "02")):
                doc = await plat.wait_for(lambda: plat.bills.get(s), 15)
                assert doc["raw"]["gun"] == gun and doc["checks"]["ok"], doc["checks"]
                assert doc["raw"]["total_energy"] > 0
                await fw.wait_for(lambda: fw.pile.journal.status(s) == "settled")
            await plat.wait_for(lambda: _gun_status(plat, "01", "idle") and
                                _gun_status(plat, "02", "idle"), 15)
            # A card for both guns at the pile: 0xA1 per gun -> events.
            assert fw.pile.parallel_swiped("D14B0A55") == "asked"
            evs = await plat.wait_for(lambda: (lambda e: e if len(e) == 2 else None)(
                [e for e in plat.events if e["type"] == "parallel_request"]), 15)
            reqs = sorted((e["request"] for e in evs), key=lambda q: q["role"])
            assert [q["gun"] for q in reqs] == ["01", "02"]
            grp = reqs[0]["group"]
            assert reqs[1]["group"] == grp
            new = []
            for q in reqs:
                serial = "%s%s%s0001" % (PILE_A, q["gun"], grp)
                a = await plat.command(PILE_A, {"id": "a" + q["gun"], "cmd": "authorize",
                                                "gun": q["gun"], "serial": serial,
                                                "balance": 100000, "group": grp})
                assert a["ok"] and "parallel_auth" in a["message"], a
                new.append(serial)
            await fw.wait_for(lambda: g1.group == g2.group == grp and (g1.role, g2.role) == (1, 2))
            await plat.wait_for(lambda: _gun_status(plat, "01", "charging") and
                                _gun_status(plat, "02", "charging"), 15)
            st = await plat.command(PILE_A, {"id": "s1", "cmd": "stop", "gun": "01"})
            assert st["ok"], st
            for s in new:
                doc = await plat.wait_for(lambda: plat.bills.get(s), 15)
                assert doc["checks"]["ok"], doc["checks"]
                await fw.wait_for(lambda: fw.pile.journal.status(s) == "settled")
    in_tempdir("parallel", scenario, timeout=120, pty=True)
