# The OCPP uplink against a real CSMS (tests/ocpp_csms.py: the `ocpp`
# library's own classes on a websockets server at port 0). Tests are named
# after the OCPP 2.0.1 use cases they cover (docs/ocpp.md lists them); the
# field cases: a CSMS down for a while, a bridge SIGKILLed mid-transaction,
# a CSMS that answers slowly, a bill sent twice, a stop for an unknown
# transaction. Every transaction reaches the CSMS exactly once per serial
# (no (transactionId, seqNo) missing, no two different Ended for a serial),
# and a pile is settled only when every configured uplink acknowledged.
import asyncio
import os
import sqlite3

import pytest

from host.testkit import make_bill, make_extra
from tests.ocpp_csms import Csms
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, BridgeProcess, Platform, bridge_running, connect_pile, fast_config, run,
    tempdir, until, url_of)

pytest.importorskip("ocpp")


def ocpp_config(tmp, csms, mqtt_url=None, **ocpp):
    o = {"csms_url": csms.url, "retry_initial_s": 0.05, "retry_max_s": 0.5,
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "response_timeout_s": 5.0,
         "meter_interval_s": 0.0}
    o.update(ocpp)
    cfg = fast_config(tmp, mqtt_url or "mqtt://127.0.0.1:1", ocpp=o)
    if mqtt_url is None:
        cfg["mqtt"]["enabled"] = False
    return cfg


def db_all(path, sql, args=()):
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def check_exactly_once(csms, serials, version="2.0.1"):
    """Every serial ended exactly once at the CSMS, its seqNos 0..n-1 with
    none missing, received in order."""
    if version == "1.6":
        assert sorted(csms.ended.values()) == [1] * len(serials)
        return
    assert set(csms.ended) == set(serials), "missing: %s" % (set(serials) - set(csms.ended))
    assert all(n == 1 for n in csms.ended.values())
    for s in serials:
        seqs = sorted(q for (t, q) in csms.unique if t == s)
        assert seqs == list(range(len(seqs))), (s, seqs)
        firsts = [q for (_, t, q, _) in csms.events if t == s]
        # the first arrival of each seqNo is in seqNo order
        seen = []
        for q in firsts:
            if q not in seen:
                seen.append(q)
        assert seen == sorted(seen), (s, seen)
        kinds = [csms.unique[(s, q)][1] for q in seqs]
        assert kinds[0] == "Started" and kinds[-1] == "Ended" and kinds.count("Ended") == 1


def test_B01_E01_E02_E06_a_charge_on_the_pile_reaches_the_csms_once_and_settles_after_its_ack():
    async def scenario(tmp):
        async with Csms() as csms:
            cfg = ocpp_config(tmp, csms)
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = await connect_pile(PILE_A, b.tcp_port)
                await csms.wait_for(lambda: csms.boots[PILE_A] >= 1, what="BootNotification")
                await csms.wait_for(lambda: (PILE_A, 1, "Available") in csms.statuses,
                                    what="StatusNotification Available")
                bill = make_bill(PILE_A, 1)
                await p.realtime(status=3, serial=bill["serial"], energy=500)
                await csms.wait_for(lambda: (PILE_A, 1, "Occupied") in csms.statuses, what="Occupied")
                await p.realtime(status=3, serial=bill["serial"], energy=900)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                check_exactly_once(csms, [bill["serial"]])
                kinds = [csms.unique[(bill["serial"], q)][1] for q in range(3)]
                assert kinds == ["Started", "Updated", "Ended"]
                ended = csms.unique[(bill["serial"], 2)][2]
                # Units: YKC 10^-4 kWh -> Wh; the money exact in customData.
                assert ended["meter_value"][0]["sampled_value"][0]["value"] == bill["meter_stop"] / 10
                assert ended["custom_data"]["amount"] == "%d.%04d" % divmod(bill["total_amount"], 10000)
                row = db_all(cfg["database"], "SELECT ocpp_acked_at IS NOT NULL, settled_at IS NOT NULL "
                             "FROM bills WHERE serial=?", (bill["serial"],))
                assert row == [(1, 1)]
                await p.close()
    with tempdir("ocpp-e06") as tmp:
        run(scenario(tmp))


def test_E04_E13_csms_down_for_a_while_every_bill_arrives_once_with_offline_true_and_no_settle_before():
    async def scenario(tmp):
        csms = await Csms().start()
        cfg = ocpp_config(tmp, csms)
        async with bridge_running(cfg, mqtt_up=False) as b:
            p = await connect_pile(PILE_A, b.tcp_port)
            await csms.wait_for(lambda: csms.boots[PILE_A] >= 1, what="boot")
            await csms.stop()
            bills = [make_bill(PILE_A, i) for i in range(12)]
            for bill in bills:
                # The CSMS is away: custody still passes (0x40), no 0xE4.
                assert await p.send_bill(bill, make_extra(bill)) == 0
            await until(lambda: db_all(cfg["database"], "SELECT COUNT(*) FROM ocpp_out "
                                       "WHERE kind='ended'") == [(12,)], what="12 Ended queued")
            assert p.settled == {}
            await csms.start()                    # back, on the same port
            serials = [x["serial"] for x in bills]
            await p.wait_for(lambda: set(serials) <= set(p.settled), timeout=20)
            check_exactly_once(csms, serials)
            offline = [csms.unique[(s, 1)][2].get("offline") for s in serials]
            assert offline == [True] * 12
            assert all(p.settled_count[s] >= 1 for s in serials)
            await p.close()
        await csms.stop()
    with tempdir("ocpp-down") as tmp:
        run(scenario(tmp))


def test_a_csms_that_answers_slowly_gets_every_transaction_once_in_order():
    async def scenario(tmp):
        async with Csms(delay_s=0.05) as csms:
            cfg = ocpp_config(tmp, csms, response_timeout_s=5.0)
            async with bridge_running(cfg, mqtt_up=False) as b:
                pa = await connect_pile(PILE_A, b.tcp_port)
                pb = await connect_pile(PILE_B, b.tcp_port)
                bills = [make_bill(PILE_A, i) for i in range(8)] + [make_bill(PILE_B, i) for i in range(8)]
                for bill in bills:
                    pile = pa if bill["pile"] == PILE_A else pb
                    assert await pile.send_bill(bill, make_extra(bill)) == 0
                serials = [x["serial"] for x in bills]
                await pa.wait_for(lambda: set(serials[:8]) <= set(pa.settled), timeout=20)
                await pb.wait_for(lambda: set(serials[8:]) <= set(pb.settled), timeout=20)
                check_exactly_once(csms, serials)
                # Per pile, the Ended events arrive in custody order.
                ends = [t for (st, t, q, k) in csms.events if k == "Ended" and st == PILE_A]
                assert ends == serials[:8]
                await pa.close()
                await pb.close()
    with tempdir("ocpp-slow") as tmp:
        run(scenario(tmp))


def test_an_ended_event_is_sent_once_when_the_pile_sends_its_bill_twice():
    async def scenario(tmp):
        async with Csms() as csms:
            cfg = ocpp_config(tmp, csms)
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 7)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                assert await p.resend_bill(bill) == 0
                await p.wait_for(lambda: p.settled_count[bill["serial"]] >= 2, timeout=10)
                check_exactly_once(csms, [bill["serial"]])
                assert len([e for e in csms.events if e[3] == "Ended"]) == 1
                await p.close()
    with tempdir("ocpp-twice") as tmp:
        run(scenario(tmp))
