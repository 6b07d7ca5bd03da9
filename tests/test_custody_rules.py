# The rules the docs promise where a bug loses a bill or money, each proved
# directly (issue 23: three plausible bugs survived every suite: the rule for
# when a bill may be marked settled, the fifth tariff period in the bill
# check, the scale of a published price). tools/mutants/fixed.py plants those
# bugs and these tests must catch them.
import asyncio
import types

from firmware.journal import Journal
from firmware.outbox import Outbox
from host import schema
from host.platform import reconcile
from protocol.reconcile import reconcile as check_bill
from host.store import Store
from sim.testkit import make_bill, make_extra
from protocol import codec
from protocol import fields as F
from tests.mp.util import TickClock
from tests.test_bridge_helpers import PILE_A, bridge_with_pile, in_tempdir

SERIAL = "32010200000001" + "01" + "240101120000" + "0001"


def five_period_bill():
    """A sound 5-period bill whose deep-valley period carries energy and
    money, with distinct values per period, so that leaving any period out of
    a sum shows."""
    v = {"serial": "55031412782305012405010800000007", "pile": "55031412782305", "gun": "01",
         "start_time": F.to_secs(2024, 5, 1, 8, 0, 0), "end_time": F.to_secs(2024, 5, 1, 9, 0, 0),
         "meter_start": 1234567, "total_loss": 0, "total_energy": 0, "total_amount": 0,
         "vin": "LSVAU2180N2183294", "trade_flag": 1,
         "trade_time": F.to_secs(2024, 5, 1, 9, 0, 5), "stop_reason": 0x40,
         "card": "00000000D14B0A54"}
    x = {"serial": v["serial"], "model": "0001", "vin_mismatch": 0,
         "nameplate_vin": v["vin"], "mac": "00" * 32}
    prices = {"sharp": 123456, "peak": 110000, "flat": 90000, "valley": 60000, "deep": 30000}
    for i, p in enumerate(("sharp", "peak", "flat", "valley", "deep")):
        e = 12345 + 1111 * i
        v[p + "_price"] = prices[p]
        v[p + "_energy"] = e
        v[p + "_loss"] = 0
        v[p + "_amount"] = (e * prices[p] + 50000) // 100000
        v["total_energy"] += e
        v["total_amount"] += v[p + "_amount"]
        x[p + "_service_fee"] = v[p + "_amount"] // 4
        x[p + "_energy_fee"] = v[p + "_amount"] - x[p + "_service_fee"]
    v["meter_stop"] = v["meter_start"] + v["total_energy"]
    return v, x


# --- never evict a pending bill --------------------------------------------------------

def test_a_0x40_with_an_unknown_result_leaves_the_bill_pending_and_resent(tmp_path):
    j = Journal(str(tmp_path / "bills.j"))
    body = bytes(range(158))
    assert j.open_session(SERIAL, b"hdr") == "opened"
    assert j.seal(SERIAL, body) == "sealed"
    clock = TickClock()
    ob = Outbox(j, clock)
    ob.on_login()
    assert ob.due() == (SERIAL, body)
    ob.sent(SERIAL)
    assert ob.confirmed(SERIAL, 7) == "ignored"     # neither 0 (received) nor 1 (illegal)
    assert j.status(SERIAL) == "pending"
    assert j.illegal_bills() == []
    clock.t += 30000                                   # first_ms: due again, same bytes
    assert ob.due() == (SERIAL, body)


# --- settle only after the platform confirmed ------------------------------------------

def test_a_bill_the_platform_never_confirmed_is_never_marked_settled_nor_pruned(tmp_path):
    bill = make_bill(PILE_A, 1)
    frame = codec.encode(0x3B, bill)
    s = bill["serial"]

    async def scenario():
        st = Store(str(tmp_path / "bridge.db"))
        try:
            kind, _ = await st.add_bill(PILE_A, s, frame, now=1000.0)
            assert kind == "new"
            # A pile's 0xE3 (or any other path) before the platform's confirmation:
            assert await st.mark_settled(s, now=1001.0) is False
            assert (await st.bill(s)).settled_at is None
            assert await st.prune(0, now=1e9) == 0
            assert (await st.bill(s)) is not None
            assert [b.serial for b in await st.open_bills(PILE_A, 10)] == [s]
            # Confirmed, then settled: now it may go.
            _, new = await st.confirm(s, 0, now=1002.0)
            assert new
            assert await st.mark_settled(s, now=1003.0) is True
            assert await st.prune(0, now=1e9) == 1
            assert (await st.bill(s)) is None
        finally:
            st.close()
    asyncio.run(scenario())


def test_a_resent_bill_the_platform_has_not_confirmed_gets_no_settled(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, confirm=False) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 1)
            s = bill["serial"]
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            await plat.wait_for(lambda: s in plat.bills)
            # The pile resends (its 0x40 lost, say): 0x40 again, but no 0xE4:
            # the platform has not confirmed, so the pile must keep the bill.
            assert await pile.resend_bill(bill) == 0
            assert await pile.resend_bill(bill) == 0
            await asyncio.sleep(0.3)
            assert s not in pile.settled
            assert pile.settled_count[s] == 0
            # Once the platform confirms, the settlement follows.
            await plat.confirm_bill(PILE_A, s)
            await pile.wait_for(lambda: s in pile.settled)
    in_tempdir("unconfirmed-resend", scenario)


# --- every period, the fifth included, adds up to the totals ------------------------------

def test_a_five_period_bill_adds_up_and_a_wrong_deep_period_is_named():
    # The one reconciliation (protocol/reconcile.py) the bridge runs on each bill.
    v, x = five_period_bill()
    assert v["deep_energy"] and v["deep_amount"]
    assert check_bill(v) == []
    assert check_bill(v, x) == []
    bad = dict(v, deep_energy=v["deep_energy"] + 1)
    problems = check_bill(bad)
    assert len(problems) == 1 and problems[0].startswith("energy_mismatch:")
    bad = dict(v, deep_amount=v["deep_amount"] + 1, total_amount=v["total_amount"] + 1)
    problems = check_bill(bad, x)
    assert problems == ["fee_mismatch: deep fees %d + %d != deep_amount %d"
                        % (x["deep_energy_fee"], x["deep_service_fee"], v["deep_amount"] + 1)]


def test_the_platform_reconciles_a_five_period_bill_on_all_five_periods():
    v, x = five_period_bill()
    raw = dict(v, extra=x)
    assert reconcile({"raw": raw}) == []
    bad = dict(raw, deep_amount=v["deep_amount"] + 5)
    problems = reconcile({"raw": bad})
    assert any(p.startswith("amount_mismatch:") for p in problems), problems
    assert any(p.startswith("fee_mismatch: deep fees") for p in problems), problems


# --- price, energy and amount scales ------------------------------------------------------

def test_the_bill_document_publishes_prices_energy_and_amounts_at_their_scales():
    v, x = five_period_bill()
    frame = codec.encode(0x3B, v)
    extra = schema.encode("bill_extra", x)
    row = types.SimpleNamespace(frame=frame, extra=extra, pile_seq=1, received_at=0.0,
                                crc_swapped=False)
    doc = schema.bill_json("t1", row)
    sharp = doc["periods"][0]
    assert sharp["period"] == "sharp"
    assert sharp["price"] == "1.23456"       # x10^5 yuan/kWh
    assert sharp["energy"] == "1.2345"       # x10^4 kWh
    assert sharp["amount"] == "1.5241"       # x10^4 yuan: 1.2345 kWh x 1.23456 = 1.52406... -> 1.5241
    deep = doc["periods"][4]
    assert (deep["period"], deep["price"], deep["energy"]) == ("deep", "0.30000", "1.6789")
    assert doc["total_energy"] == "7.2835"
    assert doc["total_amount"] == schema.dec(v["total_amount"], 4)
    assert doc["meter"] == {"start": "123.4567", "stop": "130.7402"}
    assert doc["checks"] == {"ok": True, "problems": []}


def journal_serial(n):
    # platform-style serials growing with n (as tests/mp/test_journal.py)
    return "%014d" % 32010200000001 + "01" + "24010112%02d%02d" % (n // 60 % 60, n % 60) + "%04d" % n


def test_compaction_under_pressure_drops_confirmed_bills_never_pending_ones(tmp_path):
    from firmware import journal as J
    j = Journal(str(tmp_path / "bills.j"), limit_bytes=J.MIN_LIMIT + 1200)
    bodies = {}
    n = 0
    while j.can_start():
        n += 1
        s = journal_serial(n)
        assert j.open_session(s, b"hdr%d" % n) == "opened"
        bodies[s] = bytes((n + i) & 0xFF for i in range(158))
        assert j.seal(s, bodies[s]) == "sealed"
    sealed = list(bodies)
    assert len(sealed) >= 4
    # The oldest half stays pending (the platform never saw it); the newest
    # half the host confirmed, so those may go when room is short.
    half = len(sealed) // 2
    for s in sealed[half:]:
        assert j.confirm(s) == "ok"
    r = j.compact(need=j.limit)          # more room than any compaction can make
    assert r["confirmed"] == len(sealed) - half
    assert j.pending() == sealed[:half]
    for s in sealed[:half]:
        assert j.bill(s) == bodies[s]
    again = Journal(j.path, limit_bytes=J.MIN_LIMIT + 1200).recover()
    assert again.pending == sealed[:half]
