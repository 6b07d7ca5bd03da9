# Forged confirmations (issue 17 item 3): a confirmation is honoured only if
# it names the content hash of the exact bill the bridge holds. A client
# that can publish on the confirm topic but never received the bill (or
# received another copy) cannot make the bridge settle the pile's bill.
# Real bridge, Mosquitto, a scripted pile.
import hashlib
import json
import sqlite3

from sim.testkit import make_bill, make_extra
from tests.test_bridge_helpers import PILE_A, bridge_with_pile, in_tempdir, until


def _confirmed(db, serial):
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT confirmed_at IS NOT NULL, settled_at IS NOT NULL FROM bills "
                         "WHERE serial=?", (serial,)).fetchone()
    finally:
        c.close()


def test_a_confirmation_without_the_bills_content_hash_settles_nothing(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, confirm=False) as (cfg, b, plat, pile):
            bills = [make_bill(PILE_A, n) for n in range(3)]
            for v in bills:
                assert await pile.send_bill(v, make_extra(v)) == 0
            await plat.wait_for(lambda: all(v["serial"] in plat.bills for v in bills))
            s0, s1, s2 = [v["serial"] for v in bills]
            frame1 = bytes.fromhex(plat.bills[s1]["frame"])
            # Forged: by serial alone, with a made-up hash, with the hash of another bill.
            await plat.client.publish(plat.topics.confirm(PILE_A), json.dumps({"serial": s0, "result": 0}), qos=1)
            await plat.confirm_bill(PILE_A, s1, content_hash="00" * 32)
            await plat.confirm_bill(PILE_A, s2, content_hash=hashlib.sha256(frame1).hexdigest())
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "confirm_refused"]
                                     if len([e for e in plat.events
                                             if e["type"] == "confirm_refused"]) == 3 else None)
            assert sorted(e["serial"] for e in ev) == sorted([s0, s1, s2])
            assert b.stats["confirms_refused"] == 3 and b.stats["confirms"] == 0
            for s in (s0, s1, s2):
                assert _confirmed(cfg["database"], s) == (0, 0)
            assert not any(pile.settled.get(s) for s in (s0, s1, s2))
            # The real platform's confirmation (the hash of the copy it got) settles.
            for s in (s0, s1, s2):
                assert plat.bills[s]["content_hash"] == hashlib.sha256(
                    bytes.fromhex(plat.bills[s]["frame"])).hexdigest()
                await plat.confirm_bill(PILE_A, s)
            await pile.wait_for(lambda: all(s in pile.settled for s in (s0, s1, s2)), 10)
            await until(lambda: all(_confirmed(cfg["database"], s) == (1, 1) for s in (s0, s1, s2)),
                        what="three bills confirmed and settled")
    in_tempdir("forged-confirm", scenario)
