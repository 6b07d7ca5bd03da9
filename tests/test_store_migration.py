# The bridge store's schema version (decisions.md: "every change to it comes
# with a migration and a test that upgrades a store holding unconfirmed
# bills, with nothing lost"), and the bad-CRC frames it keeps within caps.
import asyncio
import os
import shutil
import sqlite3
import tempfile

import pytest

from host import store as S
from sim.testkit import make_bill
from protocol import codec

PILE = "55031412782305"
_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "store_v1.sql")


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="pc-store-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _legacy_store(path, n_open=3, n_confirmed=2):
    """A store as a bridge before schema versions wrote it, holding bills."""
    db = sqlite3.connect(path)
    with open(_V1) as f:
        db.executescript(f.read())
    frames = []
    for i in range(n_open + n_confirmed):
        v = make_bill(PILE, i)
        raw = codec.encode("bill", v, i + 1)
        frames.append((v["serial"], raw))
        db.execute("INSERT INTO bills (serial, pile, pile_seq, frame, received_at, confirmed_at) "
                   "VALUES (?,?,?,?,?,?)", (v["serial"], PILE, i + 1, raw, 1000.0 + i,
                                             2000.0 if i >= n_open else None))
    db.execute("INSERT INTO pile_seqs (pile, last) VALUES (?, ?)", (PILE, n_open + n_confirmed))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return frames


def test_a_store_from_before_schema_versions_is_upgraded_with_every_unconfirmed_bill(tmp):
    path = os.path.join(tmp, "bridge.db")
    frames = _legacy_store(path)
    st = S.Store(path)
    try:
        assert st.schema_version == S.SCHEMA_VERSION == 7
        rows = st.call_sync(S._open_bills, PILE, 100)
        assert [(b.serial, bytes(b.frame)) for b in rows] == frames[:3]
        assert st.call_sync(S._unsettled, PILE, 100) != []          # confirmed ones kept too
        # The new table works, and the next bill continues the pile's numbering.
        assert st.call_sync(S._add_bad_frame, "tcp:x", PILE, b"\x68\x05", "bad CRC", 1.0) == 0
        kind, bill = st.call_sync(S._add_bill, PILE, make_bill(PILE, 99)["serial"],
                                  codec.encode("bill", make_bill(PILE, 99), 9), False, 3000.0)
        assert kind == "new" and bill.pile_seq == 6
        # Version 5's held bills: one held, then released into custody.
        b = make_bill(PILE, 98)
        st.call_sync(S._hold_bill, PILE, b["serial"], codec.encode("bill", b, 10), 3001.0)
        assert [h[0] for h in st.call_sync(S._held)] == [b["serial"]]
        kind, bill = st.call_sync(S._release_held, PILE, b["serial"], codec.encode("bill", b, 10),
                                  False, 3002.0)
        assert kind == "new" and bill.pile_seq == 7 and st.call_sync(S._held) == []
    finally:
        st.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 7
    db.close()
    # Opening again changes nothing.
    st = S.Store(path)
    try:
        assert len(st.call_sync(S._open_bills, PILE, 100)) == 5
    finally:
        st.close()


def test_a_store_written_by_a_newer_bridge_is_refused_by_name(tmp):
    path = os.path.join(tmp, "bridge.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(S.StoreError) as e:
        S.Store(path)
    assert "schema version 99 is newer" in str(e.value)


def test_bad_crc_frames_are_kept_within_caps_oldest_dropped_and_counted(tmp, monkeypatch):
    monkeypatch.setattr(S, "BAD_FRAMES_PER_LINK", 5)
    monkeypatch.setattr(S, "BAD_FRAMES_TOTAL", 8)
    st = S.Store(os.path.join(tmp, "bridge.db"))
    try:
        async def go():
            dropped = 0
            for i in range(7):
                dropped += await st.add_bad_frame("serial:/dev/ttyUSB0", PILE, bytes([0x68, i]), "crc")
            for i in range(4):
                dropped += await st.add_bad_frame("tcp:1.2.3.4", None, bytes([0x68, 0x80 + i]), "crc")
            return dropped, await st.bad_frames()
        dropped, (rows, drops) = asyncio.run(go())
        # 7 on one link, cap 5: the 2 oldest go; then 5 + 4 = 9 > 8: one more.
        assert dropped == 3 and drops == {"serial:/dev/ttyUSB0": 3}
        assert [r[2][1] for r in rows] == [3, 4, 5, 6, 0x80, 0x81, 0x82, 0x83]
        assert rows[0][0] == "serial:/dev/ttyUSB0" and rows[0][1] == PILE
    finally:
        st.close()


def _store_at(path, version, monkeypatch):
    """An empty store as a bridge of schema `version` writes it."""
    with monkeypatch.context() as m:
        m.setattr(S, "SCHEMA_VERSION", version)
        m.setattr(S, "_MIGRATIONS", tuple(x for x in S._MIGRATIONS if x[0] <= version))
        st = S.Store(path)
        assert st.schema_version == version
        st.close()


def test_a_version_5_store_holding_unconfirmed_bills_is_upgraded_for_the_ocpp_uplink(tmp, monkeypatch):
    # Version 6 (issue 15): the CSMS's acknowledgement on each bill and the
    # OCPP message queue. A store written by a version-5 bridge keeps every
    # bill; none counts as acknowledged by the CSMS; each is found by the
    # uplink's sweep, which queues its Ended at the first start.
    path = os.path.join(tmp, "bridge.db")
    _store_at(path, 5, monkeypatch)
    # Bills as a version-5 bridge writes them (its SQL: no version-6 column).
    db = sqlite3.connect(path)
    for i in range(4):
        v = make_bill(PILE, i)
        db.execute("INSERT INTO bills (serial, pile, pile_seq, frame, received_at, confirmed_at) "
                   "VALUES (?,?,?,?,?,?)", (v["serial"], PILE, i + 1, codec.encode("bill", v, i + 1),
                                             1.0, 2.0 if i == 0 else None))   # MQTT confirmed one
    db.commit()
    db.close()
    st = S.Store(path)
    try:
        assert st.schema_version == 7
        rows = st.call_sync(S._open_bills, PILE, 100)
        assert [b.serial for b in rows] == [make_bill(PILE, i)["serial"] for i in range(1, 4)]
        missing = st.call_sync(S._ocpp_missing_ended, 100)
        assert [b.serial for b in missing] == [make_bill(PILE, i)["serial"] for i in range(4)]
        assert all(b.ocpp_acked_at is None for b in missing)
        # With OCPP configured, the MQTT-confirmed bill is not settled yet.
        assert st.call_sync(S._mark_settled, missing[0].serial, 3.0, ("mqtt", "ocpp")) is False
        r = st.call_sync(S._ocpp_enqueue, PILE, missing[0].serial, 1, "ended", {"x": 1}, True, 3.0)
        assert r[1] == 0
        assert st.call_sync(S._ocpp_enqueue, PILE, missing[0].serial, 1, "ended", {"x": 1}, True, 3.0) is None
        st.call_sync(S._ocpp_ack, r[0], "{}", None, 4.0)
        assert st.call_sync(S._mark_settled, missing[0].serial, 5.0, ("mqtt", "ocpp")) is True
        # Pruning: the settled bill's answered messages go with it; an
        # unanswered message of another transaction stays (never-drop).
        other = missing[1].serial
        st.call_sync(S._ocpp_enqueue, PILE, other, 1, "ended", {"x": 2}, True, 3.0)
        assert st.call_sync(S._prune, 0, 10.0) == 1
        left = st.call_sync(lambda db: db.execute("SELECT serial, acked_at FROM ocpp_out").fetchall())
        assert left == [(other, None)]
        assert st.call_sync(lambda db: db.execute("SELECT serial FROM ocpp_tx").fetchall()) == [(other,)]
    finally:
        st.close()


def _sig_frame(serial, r="11", seq=1):
    return codec.encode("bill_sig", {"serial": serial, "fw": "pc0.1.0", "flags": 0,
                                     "r": r * 32, "s": "22" * 32}, seq)


def test_a_version_6_store_holding_unconfirmed_bills_is_upgraded_for_ocmf_signatures(tmp, monkeypatch):
    # Version 7 (issue 19 item 6): each bill's OCMF signature beside it. A
    # store written by a version-6 bridge keeps every bill, unconfirmed and
    # confirmed, with its fee split; none has a signature; signatures then
    # join their bills, the first copy kept, one that came before its bill
    # replaced once it can be checked, another pile's quarantined.
    path = os.path.join(tmp, "bridge.db")
    _store_at(path, 6, monkeypatch)
    db = sqlite3.connect(path)
    frames = []
    for i in range(5):
        v = make_bill(PILE, i)
        raw = codec.encode("bill", v, i + 1)
        frames.append((v["serial"], raw))
        db.execute("INSERT INTO bills (serial, pile, pile_seq, frame, received_at, confirmed_at) "
                   "VALUES (?,?,?,?,?,?)", (v["serial"], PILE, i + 1, raw, 1.0,
                                             2.0 if i >= 3 else None))
    db.execute("INSERT INTO extras (serial, frame, received_at) VALUES (?, ?, ?)",
               (frames[0][0], b"\x68extra", 1.5))
    db.commit()
    db.close()
    st = S.Store(path)
    try:
        assert st.schema_version == S.SCHEMA_VERSION == 7
        rows = st.call_sync(S._open_bills, PILE, 100)
        assert [(b.serial, bytes(b.frame)) for b in rows] == frames[:3]
        assert rows[0].extra == b"\x68extra"
        assert all(b.ocmf_record is None and b.ocmf_verdict is None for b in rows)
        assert len(st.call_sync(S._unsettled, PILE, 100)) == 2
        s0 = frames[0][0]
        kind, bill = st.call_sync(S._add_sig, PILE, s0, _sig_frame(s0), "OCMF|{}|{}", "3059",
                                  "verified", 3.0)
        assert kind == "new" and bill.ocmf_record == "OCMF|{}|{}" and bill.ocmf_verdict == "verified"
        assert bill.ocmf_key == "3059" and bytes(bill.frame) == frames[0][1]
        # A resend (another sequence number) is the same; other bytes are kept apart.
        assert st.call_sync(S._add_sig, PILE, s0, _sig_frame(s0, seq=9), "x", None, "verified",
                            4.0)[0] == "same"
        assert st.call_sync(S._add_sig, PILE, s0, _sig_frame(s0, r="33"), "y", None, "bad_signature",
                            4.0)[0] == "conflict"
        assert st.call_sync(S._bill, s0).ocmf_verdict == "verified"
        # Before its bill: kept, then replaced by the copy checked against it.
        later = make_bill(PILE, 50)["serial"]
        assert st.call_sync(S._add_sig, PILE, later, _sig_frame(later), None, None, "no_bill",
                            5.0) == ("new", None)
        st.call_sync(S._add_bill, PILE, later, codec.encode("bill", make_bill(PILE, 50), 7), False, 6.0)
        assert st.call_sync(S._bill, later).ocmf_verdict is None      # not checked: not its yet
        kind, bill = st.call_sync(S._add_sig, PILE, later, _sig_frame(later), "OCMF|a|b", "3059",
                                  "verified", 7.0)
        assert kind == "updated" and bill.ocmf_record == "OCMF|a|b"
        # Another pile's bill: quarantined, never joined.
        assert st.call_sync(S._add_sig, "55031412780001", s0, _sig_frame(s0), "z", None, "verified",
                            8.0) == ("foreign", None)
        kinds = st.call_sync(lambda db: [r[0] for r in db.execute("SELECT kind FROM rejected")])
        assert sorted(kinds) == ["sig_conflict", "sig_quarantine"]
        # Every bill is still there, in custody order.
        assert len(st.call_sync(S._open_bills, PILE, 100)) == 4
    finally:
        st.close()
