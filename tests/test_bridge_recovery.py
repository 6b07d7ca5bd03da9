# Recovery paths end to end, with the real pile firmware (firmware/pile.py on
# simulated hardware, its UART on a pty) and real Mosquitto:
#
# - a bill the bridge took custody of (0x40) while the platform was silent,
#   then the gateway lost its disk: the pile's hourly re-offer of confirmed,
#   unsettled bills (firmware/outbox.py resettle_ms) brings it to a new
#   bridge on an empty database; the platform gets it once, it settles.
import os

from firmware.outbox import Outbox
from tests.test_bridge_helpers import (
    PILE_A, FirmwarePile, Platform, bridge_running, charging, fast_config, in_tempdir, url_of)

# The pile's re-offer interval for a bill confirmed by the host (0x40) but
# not settled by the platform (0xE4): Outbox's default, which pile.py uses.
RESETTLE_MS = Outbox.__init__.__defaults__[2]


def online_status(plat, pred=lambda s: True):
    def f():
        s = plat.status.get(plat.topics.status(PILE_A))
        return s if s and s["online"] and pred(s) else None
    return f


def firmware_config(tmp, path, broker):
    return fast_config(tmp, url_of(broker), tcp={"listen": None},
                       serial=[{"url": path, "baudrate": 115200, "ext": True}],
                       piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0})


def body(frame_hex):
    """A frame's body: what the pile's journal holds, without the link's
    header (start, length, sequence, flag, type) and CRC."""
    return frame_hex[12:-4]


def drop_database(db):
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(db + suffix)
        except FileNotFoundError:
            pass


def test_a_bill_in_custody_of_a_bridge_that_lost_its_disk_comes_back_from_the_pile_once(mosquitto):
    assert RESETTLE_MS == 3600000

    async def scenario(tmp, master, path):
        cfg = firmware_config(tmp, path, mosquitto)
        root = os.path.join(tmp, "flash")
        os.mkdir(root)
        fw = FirmwarePile(root, master, PILE_A, speed=60)
        try:
            # 1. A session billed; the bridge stores it and answers 0x40, the
            #    platform takes it but never confirms (an outage).
            async with bridge_running(cfg), \
                    Platform(url_of(mosquitto), name="silent", confirm=False) as silent:
                fw.start()
                await silent.wait_for(online_status(silent), 15)
                serial = await charging(silent, fw, 2000)
                assert (await silent.command(PILE_A, {"id": "halt", "cmd": "stop"}))["ok"]
                first = await silent.wait_for(lambda: silent.bills.get(serial), 15)
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "confirmed")
            # 2. The gateway's disk is lost: a new bridge, an empty database.
            drop_database(cfg["database"])
            logins = fw.pile.link.logins
            fw.pile.send_log = []
            async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
                await fw.wait_for(lambda: fw.pile.link.logins > logins and fw.pile.link.online, 15)
                await plat.wait_for(online_status(plat), 15)
                # Logged in, its stored-bills round and tariff check done: a
                # confirmed bill is not offered at once (that is the hourly
                # re-offer's job), and the new bridge knows nothing of it.
                await fw.wait_for(lambda: not fw.pile._tariff_check)
                assert fw.pile.outbox.next_in(serial) > RESETTLE_MS - 120000
                assert fw.pile.send_log == [] and await bridge.store.bill(serial) is None
                # 3. An hour passes on the pile: the bill is offered again,
                #    the same serial and bytes, to the new bridge.
                fw.world.clock.sleep_ms(RESETTLE_MS)
                doc = await plat.wait_for(lambda: plat.bills.get(serial), 15)
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled", 15)
                row = await bridge.store.bill(serial)
                assert row is not None and row.confirmed_at is not None and row.resends == 0
                assert fw.pile.send_log == [serial]
                assert plat.bill_count == {serial: 1}
                # the same bytes under a new link sequence number (and so CRC)
                assert body(doc["frame"]) == body(first["frame"])
                assert body(doc["extra_frame"]) == body(first["extra_frame"])
                assert doc["raw"] == first["raw"]
                assert doc["checks"]["ok"] and doc["complete"]
                assert fw.pile.journal.pending() == [] and fw.pile.journal.confirmed() == []
        finally:
            await fw.close()
    in_tempdir("lostdisk", scenario, timeout=60, pty=True)
