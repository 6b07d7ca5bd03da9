# Overdue bills (issue 12 item 4): a session the bridge saw end (a stop the
# pile accepted, or its gun leaving "charging") with no bill within
# bills.overdue_s raises bill_overdue naming its serial, once; a gun that was
# stopped stops saying "charging" at once. Real bridge, Mosquitto.
import asyncio

from sim.testkit import make_bill, make_extra
from tests.test_bridge_helpers import PILE_A, bridge_with_pile, in_tempdir


def test_a_session_that_ended_without_a_bill_is_reported_overdue_once(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto,
                                    bills={"overdue_s": 0.5}) as (cfg, b, plat, pile):
            lost = make_bill(PILE_A, 1)
            billed = make_bill(PILE_A, 2, gun="02")
            await pile.realtime(gun="01", status=3, serial=lost["serial"])
            await pile.realtime(gun="02", status=3, serial=billed["serial"])
            # Gun 01 goes idle and no bill ever comes; gun 02's bill comes.
            await pile.realtime(gun="01", status=2)
            await pile.realtime(gun="02", status=2)
            assert await pile.send_bill(billed, make_extra(billed)) == 0
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "bill_overdue"])
            assert [(e["serial"], e["gun"]) for e in ev] == [(lost["serial"], "01")]
            # Reported once, not at every sweep (the sweep runs every
            # overdue_s / 4; absence can only be shown by letting it run).
            await asyncio.sleep(1.5)
            assert len([e for e in plat.events if e["type"] == "bill_overdue"]) == 1
    in_tempdir("overdue", scenario)


def test_a_stopped_gun_stops_saying_charging_and_its_bill_is_awaited(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto,
                                    bills={"overdue_s": 0.5}) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 3)
            await pile.realtime(gun="01", status=3, serial=bill["serial"])
            topic = plat.topics.status(PILE_A)
            await plat.wait_for(lambda: ((plat.status.get(topic) or {}).get("guns", {})
                                         .get("01", {}).get("status") == "charging"))
            r = await plat.command(PILE_A, {"id": "s1", "cmd": "stop", "gun": "01"})
            assert r["ok"] is True
            # No 0x13 has come since the stop: the status says so already.
            st = await plat.wait_for(lambda: ((plat.status.get(topic) or {}).get("guns", {})
                                              .get("01", {}).get("status") != "charging")
                                     and plat.status[topic])
            assert st["guns"]["01"]["status"] == "idle" and st["guns"]["01"]["serial"] is None
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "bill_overdue"])
            assert ev[0]["serial"] == bill["serial"]
    in_tempdir("stopped", scenario)
