# The bridge with the real pile firmware (firmware/pile.py on simulated
# hardware) on a pty: a platform-started session ends in one bill that goes
# pile -> bridge -> broker -> platform -> confirmation -> settled in the
# pile's journal; the tariff model reaches the pile; a reboot is reported.
import os

from tests.test_bridge_commands import TARIFF
from tests.test_bridge_helpers import (
    PILE_A, FirmwarePile, Platform, bridge_running, fast_config, in_tempdir, url_of)


def _pty_site(tmp, path, broker):
    """A bridge config with the pile on the pty at `path` (our firmware, fast
    heartbeats) and the pile's flash folder."""
    cfg = fast_config(tmp, url_of(broker), tcp={"listen": None},
                      serial=[{"url": path, "baudrate": 115200, "ext": True}],
                      piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0},
                      tariff=TARIFF)
    root = os.path.join(tmp, "flash")
    os.mkdir(root)
    return cfg, root


def test_real_firmware_session_bill_settles_through_the_bridge(mosquitto):
    async def scenario(tmp, master, path):
        cfg, root = _pty_site(tmp, path, mosquitto)
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            async with FirmwarePile(root, master, PILE_A, speed=60) as fw:
                online = lambda: (lambda s: s if s and s["online"] else None)(
                    plat.status.get(plat.topics.status(PILE_A)))
                await plat.wait_for(online, 15)
                # After login the pile checks its model: the site's 0007 differs
                # from its own 0100, so it asks for it and keeps it.
                await fw.wait_for(lambda: fw.pile.gun.tariff and fw.pile.gun.tariff.model == "0007")
                st = await plat.wait_for(lambda: (lambda s: s if s and s["versions"]["fw"] else None)(
                    plat.status.get(plat.topics.status(PILE_A))))
                assert st["versions"]["hmi"] == "103"
                r = await plat.command(PILE_A, {"id": "go", "cmd": "start", "gun": "01",
                                                "balance": 100000, "card": "D14B0A54"})
                assert r["ok"], r
                serial = r["serial"]
                await plat.wait_for(lambda: any(x["status"] == "charging" for x in plat.realtime))
                await fw.wait_for(lambda: fw.world.meter.read_energy() > 5000)   # 0.5 kWh
                # The field's lost bills: a stop sent three times. One bill.
                r1 = await plat.command(PILE_A, {"id": "stop1", "cmd": "stop"})
                r2 = await plat.command(PILE_A, {"id": "stop2", "cmd": "stop"})
                r3 = await plat.command(PILE_A, {"id": "stop3", "cmd": "stop"})
                assert r1["ok"] and r2["code"] == r3["code"] == "refused"
                doc = await plat.wait_for(lambda: plat.bills.get(serial), 15)
                assert doc["stop_reason"]["name"] == "remote_stop"
                assert doc["checks"]["ok"], doc["checks"]
                assert doc["complete"] and doc["raw"]["total_energy"] > 0
                fees = doc["raw"]["extra"]
                assert sum(fees[p + "_energy_fee"] + fees[p + "_service_fee"]
                           for p in ("sharp", "peak", "flat", "valley", "deep")) \
                    == doc["raw"]["total_amount"]
                # Confirmed by the platform -> 0xE4 -> settled on the pile's flash.
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled")
                assert fw.pile.journal.pending() == [] and fw.pile.journal.confirmed() == []
                assert list(plat.bills) == [serial]
                # Reboot when idle: accepted, done, and the boot reason reported.
                r = await plat.command(PILE_A, {"id": "rb", "cmd": "reboot", "when": "idle"})
                assert r["ok"], r
                await fw.wait_for(lambda: fw.reboots == 1)
                st = await plat.wait_for(lambda: (lambda s: s if s and s["online"]
                                                  and s["boot_reason"] == 2 else None)(
                    plat.status.get(plat.topics.status(PILE_A))), 15)
                assert st["versions"]["fw"]
                # No status of this login carried the boot before's reason (0, power-on).
                this_boot = [s for s in plat.status_log if s.get("pile") == PILE_A
                             and s.get("online") and s.get("since") == st["since"]]
                assert {s["boot_reason"] for s in this_boot} <= {None, 2}, this_boot
    in_tempdir("firmware", scenario, timeout=90, pty=True)


def _journal_full_of_refused_bills(root, limit):
    """The pile's flash as an earlier platform left it: offline sessions until
    the journal refused a start, every bill refused as illegal (0x40 result
    1): kept for the technician, never dropped, never confirmed."""
    from firmware import session as S
    from tests.mp.pilekit import Rig
    r = Rig(root, cfg={"pile": PILE_A, "journal_bytes": limit})
    r.platform.answer_login = False
    n = 0
    while True:
        res, why = r.pile.gun.offline_start("D14B0A54")
        if not res:
            assert why == S.START_JOURNAL_FULL, why
            break
        r.run(5000)
        assert r.pile.gun.manual_stop()
        n += 1
        assert n < 50, "the journal never filled"
    held = r.pile.journal.pending()
    assert len(held) == n
    for s in held:
        assert r.pile.outbox.confirmed(s, 1) == "ok"
    return held


def test_real_firmware_journal_full_of_unconfirmed_bills_makes_the_bridge_publish_journal_full(mosquitto):
    from firmware.journal import MIN_LIMIT
    limit = MIN_LIMIT + 1200

    class SmallJournalPile(FirmwarePile):
        def _boot(self):
            self.cfg["journal_bytes"] = limit
            FirmwarePile._boot(self)

    async def scenario(tmp, master, path):
        cfg, root = _pty_site(tmp, path, mosquitto)
        held = _journal_full_of_refused_bills(root, limit)
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            async with SmallJournalPile(root, master, PILE_A, speed=60) as fw:
                # the status poll after login: refusing_starts, far below the limit
                ev = await plat.wait_for(
                    lambda: [e for e in plat.events if e["type"] == "journal_full"], 15)
                assert ev[0]["journal_used"] < ev[0]["journal_limit"] == limit
                assert ev[0]["pending"] == 0 and fw.pile.journal.illegal_bills() == held
                # a start is refused with its own reason, and nothing is billed
                r = await plat.command(PILE_A, {"id": "full", "cmd": "start", "gun": "01",
                                                "balance": 100000, "card": "D14B0A54"})
                assert r["code"] == "refused", r
                assert "journal full of unconfirmed bills (reason 10)" in r["message"], r
                refused = await plat.wait_for(
                    lambda: [e for e in plat.events if e["type"] == "start_refused"])
                assert refused[0]["reason"] == 0x0A
                assert fw.pile.gun.state != 3 and fw.pile.journal.illegal_bills() == held
                # one event for one full journal, however often the bridge looks
                assert [e["type"] for e in plat.events].count("journal_full") == 1
    in_tempdir("fwfull", scenario, timeout=90, pty=True)
