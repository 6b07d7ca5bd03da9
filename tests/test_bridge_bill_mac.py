# The bill MAC checked at the bridge before the 0x40 (issue 17 item 1,
# shared/context/decisions.md "Custody and ownership"): a keyed pile's bill
# (one that proved its key at login) is committed raw at once, but it is
# acknowledged only when the fee split (0xEB) that follows it carries a MAC
# that checks. A bill changed on the way, or one with no MAC, is quarantined
# with its reason: no 0x40, no 0xEC, and it never takes the serial from the
# true bill, which the pile sends again and which takes the normal path.
# Real bridge (in this process), Mosquitto, a raw TCP pile that logs in with
# its key.
import os
import sqlite3

from host import store as S
from sim.testkit import make_bill, make_extra
from protocol import codec, sign
from tests.test_bridge_custody import RawPile, _LOGIN, _events
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, bridge_and_platform, db_rows, in_tempdir, tempdir)

KEY = bytes(range(32))


def _keys(tmp):
    d = os.path.join(tmp, "keys")
    os.mkdir(d)
    fd = os.open(os.path.join(d, PILE_A + ".key"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(KEY.hex() + "\n")
    return {"dir": d}


async def _keyed_login(p, code, key):
    await p.write(codec.encode("login", dict(_LOGIN, pile=code), 1))
    await p.wait(lambda: p.named("login_challenge"))
    nonce = bytes.fromhex(p.named("login_challenge")[-1].fields["nonce"])
    mac = sign.login_mac(key, code, nonce).hex().upper()
    await p.write(codec.encode("login_proof", {"pile": code, "nonce": nonce.hex().upper(),
                                               "mac": mac}, 2))
    await p.wait(lambda: p.named("login_reply"))
    assert p.named("login_reply")[-1].fields["result"] == 0


def _pair(bill, seq, key=KEY, mac_of=None):
    """(0x3B, 0xEB) as a keyed pile sends them: the MAC over the 0x3B body
    (or over `mac_of`'s body: a bill changed after it was signed)."""
    raw = codec.encode("bill", bill, seq)
    signed = codec.encode("bill", mac_of, seq) if mac_of is not None else raw
    x = make_extra(bill)
    x["mac"] = sign.bill_mac(key, signed[6:-2]).hex().upper() if key is not None else "00" * 32
    return raw, codec.encode("bill_extra", x, seq + 1)


def _extra_acks(p):
    return [f.fields["serial"] for f in p.named("bill_extra_ack")]


def test_a_keyed_piles_bill_is_acknowledged_only_once_its_mac_checks(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto,
                                       keys=_keys(tmp), bills={"mac_wait_s": 0.5}) as (cfg, b, plat):
            p = await RawPile.connect(b.tcp_port)
            await _keyed_login(p, PILE_A, KEY)
            # 1. A bill and its fee split with the right MAC: the normal path.
            good = make_bill(PILE_A, 1)
            for raw in _pair(good, 10):
                await p.write(raw)
            doc = await plat.wait_for(lambda: plat.bills.get(good["serial"]))
            assert doc["decoded"] is True
            await p.wait(lambda: good["serial"] in _extra_acks(p))
            assert p.confirms() == [(bytes.fromhex(good["serial"]), 0)]

            # 2. A bill changed on the way (its amount raised after the pile
            #    signed it): quarantined with its fee split, no 0x40, no 0xEC.
            true = make_bill(PILE_A, 2)
            forged = dict(true, total_amount=true["total_amount"] + 10000)
            f_raw, f_extra = _pair(forged, 20, mac_of=true)
            await p.write(f_raw)
            await p.write(f_extra)
            ev = await _events(plat, "bill_quarantined", 1)
            assert ev[0]["serial"] == true["serial"] and ev[0]["reason"] == "bad_mac"
            assert "MAC does not match" in ev[0]["message"]
            rows = db_rows(cfg["database"], "SELECT kind, frame FROM rejected WHERE serial = ? "
                         "ORDER BY id", true["serial"])
            assert [(k, bytes(fr)) for k, fr in rows] == [("quarantine", f_raw),
                                                          ("extra_quarantine", f_extra)]
            # 3. The true bill, sent again by the pile, takes the normal path:
            #    the forged copy never took its serial.
            for raw in _pair(true, 30):
                await p.write(raw)
            doc = await plat.wait_for(lambda: plat.bills.get(true["serial"]))
            assert doc["raw"]["total_amount"] == true["total_amount"]
            assert p.confirms() == [(bytes.fromhex(s), 0) for s in (good["serial"], true["serial"])]

            # 4. A bill whose fee split never comes: quarantined after
            #    mac_wait_s, no 0x40; nothing left waiting.
            lone = make_bill(PILE_A, 3)
            lone_raw = codec.encode("bill", lone, 40)
            await p.write(lone_raw)
            ev = await _events(plat, "bill_quarantined", 2)
            assert ev[1]["serial"] == lone["serial"] and "no fee split" in ev[1]["message"]
            assert db_rows(cfg["database"], "SELECT COUNT(*) FROM held_bills") == [(0,)]
            assert (bytes.fromhex(lone["serial"]), 0) not in p.confirms()

            # 5. A fee split alone whose MAC does not match the bill held:
            #    quarantined, no 0xEC, the held fee split unchanged.
            x = make_extra(good)
            x["mac"] = "11" * 32
            await p.write(codec.encode("bill_extra", x, 50))
            ev = await _events(plat, "bill_quarantined", 3)
            assert ev[2]["frame_type"] == "bill_extra" and "does not match" in ev[2]["message"]
            assert _extra_acks(p).count(good["serial"]) == 1

            # 6. A bill with a zero MAC (what an unkeyed firmware sends) from
            #    a pile that proved its key: quarantined too.
            zero = make_bill(PILE_A, 4)
            for raw in _pair(zero, 60, key=None):
                await p.write(raw)
            ev = await _events(plat, "bill_quarantined", 4)
            assert ev[3]["serial"] == zero["serial"]
            assert set(plat.bills) == {good["serial"], true["serial"]}
            assert db_rows(cfg["database"], "SELECT serial FROM bills ORDER BY id") == \
                [(good["serial"],), (true["serial"],)]
            await p.close()

            # An unkeyed pile (no key on the bridge) is acknowledged at once,
            # as before: there is nothing to check its bill against.
            q = await RawPile.connect(b.tcp_port, login=PILE_B)
            other = make_bill(PILE_B, 1)
            await q.write(codec.encode("bill", other, 5))
            await q.wait(lambda: q.confirms() == [(bytes.fromhex(other["serial"]), 0)])
            await q.close()
    in_tempdir("billmac", scenario)


def test_a_bill_held_for_its_mac_when_the_bridge_stops_is_quarantined_at_the_next_start():
    with tempdir("billmac-store") as tmp:
        path = os.path.join(tmp, "bridge.db")
        bill = make_bill(PILE_A, 7)
        raw = codec.encode("bill", bill, 3)
        st = S.Store(path)
        try:
            st.call_sync(S._hold_bill, PILE_A, bill["serial"], raw, 100.0)
            assert st.call_sync(S._counts)["held"] == 1
        finally:
            st.close()
        st = S.Store(path)
        try:
            assert st.stale_held == 1
            assert st.call_sync(S._held) == [] and st.call_sync(S._counts)["bills"] == 0
        finally:
            st.close()
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT pile, serial, kind, frame, reason FROM rejected").fetchall()
        finally:
            db.close()
        assert [(r[0], r[1], r[2], bytes(r[3])) for r in rows] == \
            [(PILE_A, bill["serial"], "quarantine", raw)]
        assert "waited for its MAC" in rows[0][4]
