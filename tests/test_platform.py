# The reference platform: stores each trade serial once, reconciles bills on
# their raw integers, verifies the pile's bill MAC for piles whose key it
# holds, confirms every copy (refusing tampered ones), completes incomplete
# copies, and says clearly what is wrong with its options and database.
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import types

import aiomqtt
import pytest

from host import platform as P
from host import schema
from host.platform import BillKeys, Platform, PlatformError, reconcile
from sim.testkit import make_bill, make_extra
from protocol import codec
from protocol.bill import payload as bill_payload, split as split_payload
from protocol import sign
from tests import broker as brokers
from tests.test_bridge_helpers import PILE_A, PILE_B, bridge_running, connect_pile, fast_config, \
    fees_yuan, run, tempdir, until, url_of

KEY_A = bytes(range(32))
KEY_OTHER = bytes(range(1, 33))


def bill_doc(serial="1" * 32, energies=(100, 200, 300, 400), price=100000):
    raw = {"serial": serial, "pile": "55031412782305", "meter_start": 1000,
           "meter_stop": 1000 + sum(energies), "total_energy": sum(energies),
           "total_loss": sum(energies), "start_time": 770000000, "end_time": 770003600,
           "stop_reason": 0x40, "extra": {}}
    amount = 0
    for p, e in zip(("sharp", "peak", "flat", "valley"), energies):
        a = e * price // 100000
        raw[p + "_energy"] = e
        raw[p + "_loss"] = e
        raw[p + "_amount"] = a
        raw["extra"][p + "_energy_fee"] = a
        raw["extra"][p + "_service_fee"] = 0
        amount += a
    raw["total_amount"] = amount
    return {"serial": serial, "site": "s1", "pile": raw["pile"], "raw": raw}


def pile_doc(n=1, key=KEY_A, pile=PILE_A, complete=True, body_hook=None, extra_hook=None):
    """A bill document exactly as the bridge publishes it (host.schema.bill_json)
    for a bill the real firmware sealed (protocol.bill.payload, MAC under
    `key`). body_hook(bytes) -> bytes changes the 0x3B body after the pile."""
    values = make_bill(pile, n)
    values.update(make_extra(values))
    body, extra = split_payload(bill_payload(values, key))
    if body_hook:
        body = body_hook(body)
    if extra_hook:
        extra = extra_hook(extra)
    bill = types.SimpleNamespace(frame=codec.wrap(0x3B, body, 7), pile_seq=n,
                                 extra=codec.wrap(0xEB, extra, 8) if complete else None,
                                 received_at=1700000000.0, crc_swapped=False)
    return schema.bill_json("s1", bill)


def flip_byte(i):
    def hook(body):
        b = bytearray(body)
        b[i] ^= 1
        return bytes(b)
    return hook


def test_a_sound_bill_reconciles():
    assert reconcile(bill_doc()) == []


def test_period_sums_that_miss_the_total_are_named():
    d = bill_doc()
    d["raw"]["total_energy"] += 1
    probs = reconcile(d)
    assert any("period energy" in p for p in probs) and any("meter" in p for p in probs)
    d = bill_doc()
    d["raw"]["extra"]["peak_service_fee"] = 5
    assert any("peak fees" in p for p in reconcile(d))


def test_same_serial_is_stored_once():
    p = Platform()
    assert p.take_bill(bill_doc())[0] is True
    assert p.take_bill(bill_doc())[0] is False
    s = p.summary()
    assert s["bills"] == 1 and s["received_more_than_once"] == 1 and s["unreconciled"] == 0


def test_unreconciled_is_measured_on_our_piles_and_third_party_bills_are_counted_by_class():
    p = Platform()
    ours_bad = bill_doc("1" * 32)
    ours_bad["raw"]["total_energy"] += 1                 # energy_mismatch, meter_mismatch
    third_ok = dict(bill_doc("2" * 32), pile_kind="third_party")
    third_bad = dict(bill_doc("3" * 32), pile_kind="third_party")
    third_bad["raw"]["meter_start"] = third_bad["raw"]["meter_stop"] = 0    # meter_absent
    third_bad["decode_problems"] = ["not_bcd: gun 0A"]
    third_raw = {"serial": "4" * 32, "site": "s1", "pile": PILE_A, "decoded": False,
                 "error": "BadLength: short", "pile_kind": "third_party", "raw": None}
    for d in (ours_bad, bill_doc("5" * 32), third_ok, third_bad, third_raw):
        p.take_bill(d)
    s = p.summary()
    assert s["unreconciled"] == 1 and s["ours"] == {"bills": 2, "unreconciled": 1}
    assert s["third_party"] == {"bills": 3, "unreconciled": 2, "by_class": {
        "not_bcd": 1, "meter_absent": 1, "undecodable": 1}}
    assert p.bill("3" * 32)["problems"] == [
        "not_bcd: gun 0A", "meter_absent: meter_start and meter_stop 0, total_energy 1000"]


def test_an_older_bridges_illegal_bill_event_is_stored_as_unreconciled_bill():
    assert P.event_kind({"type": "illegal_bill", "refused": False, "problems": ["x: y"]}) \
        == "unreconciled_bill"
    # YKC's own meaning (the pile's count of bills refused 0x40 result 1) keeps its name
    assert P.event_kind({"type": "illegal_bill", "source": "pile", "illegal": 2}) == "illegal_bill"
    assert P.event_kind({"type": "unreconciled_bill"}) == "unreconciled_bill"
    assert P.event_kind("not a dict") == ""


# --- bill MAC ------------------------------------------------------------------------

def keyed(**kw):
    return Platform(keys=BillKeys({PILE_A: KEY_A}), **kw)


def test_a_bill_signed_by_the_pile_verifies_with_its_key():
    p = keyed()
    doc = pile_doc()
    assert doc["mac"] != "0" * 64
    new, problems = p.take_bill(doc)
    assert new and problems == []
    b = p.bill(doc["serial"])
    assert b["mac"] == P.MAC_VERIFIED and b["reconciled"]
    assert p.confirm_result(doc["serial"]) == P.CONFIRM_OK
    s = p.summary()
    assert s["mac_verified"] == 1 and s["tampered"] == 0 and s["unreconciled"] == 0


def test_a_bill_changed_between_pile_and_platform_is_kept_marked_tampered_and_refused():
    p = keyed()
    # The stop reason byte changed on the way (a re-framed copy with a good CRC).
    stop_at = codec.layout_named("bill").size - 9
    doc = pile_doc(body_hook=flip_byte(stop_at))
    assert doc["checks"]["ok"]                        # the arithmetic still adds up
    new, problems = p.take_bill(doc)
    assert new and any("MAC does not verify" in x for x in problems)
    b = p.bill(doc["serial"])
    assert b["mac"] == P.MAC_FAILED and not b["reconciled"]
    assert b["doc"] == doc                             # stored as received, for audit
    assert p.confirm_result(doc["serial"]) == P.CONFIRM_REFUSED_MAC
    s = p.summary()
    assert s["bills"] == 1 and s["tampered"] == 1 and s["unreconciled"] == 1


def test_raw_fields_edited_beside_an_intact_signed_frame_are_caught():
    # The platform stores and sums `raw`: editing it alone must not pass.
    p = keyed()
    doc = pile_doc()
    doc["raw"]["total_amount"] -= 1
    doc["raw"]["sharp_amount"] -= 1
    doc["raw"]["extra"]["sharp_energy_fee"] -= 1
    assert reconcile(doc) == []                       # consistent with itself
    _, problems = p.take_bill(doc)
    assert p.bill(doc["serial"])["mac"] == P.MAC_FAILED
    assert any("raw fields differ" in x and "total_amount" in x for x in problems)


def test_a_bill_signed_with_another_key_does_not_verify():
    p = keyed()
    doc = pile_doc(key=KEY_OTHER)
    p.take_bill(doc)
    assert p.bill(doc["serial"])["mac"] == P.MAC_FAILED


def test_an_unsigned_bill_from_a_keyed_pile_is_refused_as_unsigned():
    p = keyed()
    doc = pile_doc(key=None)
    assert doc["mac"] == "0" * 64
    _, problems = p.take_bill(doc)
    assert p.bill(doc["serial"])["mac"] == P.MAC_MISSING and problems
    assert p.confirm_result(doc["serial"]) == P.CONFIRM_REFUSED_UNSIGNED
    assert p.summary()["unsigned"] == 1


def test_bills_from_piles_without_a_key_are_accepted_with_mac_not_checked():
    p = keyed()
    doc = pile_doc(pile=PILE_B, key=None)
    assert p.take_bill(doc) == (True, [])
    assert p.confirm_result(doc["serial"]) == P.CONFIRM_OK
    s = p.summary()
    assert s["mac_not_checked"] == 1 and s["mac_verified"] == 0 and s["unreconciled"] == 0


def test_a_site_key_verifies_every_pile_by_its_derived_key(tmp_path):
    site = bytes(range(100, 132))
    f = tmp_path / "keys"
    f.write_text("# site sz-01\n* %s\n" % site.hex())
    f.chmod(0o600)
    p = Platform(keys=BillKeys().add_file(str(f)))
    for n, pile in enumerate((PILE_A, PILE_B)):
        doc = pile_doc(n, key=sign.pile_key(site, pile), pile=pile)
        p.take_bill(doc)
        assert p.bill(doc["serial"])["mac"] == P.MAC_VERIFIED


def test_keys_file_lines_are_checked_with_their_line_number(tmp_path):
    good = tmp_path / "keys"
    good.write_text("%s %s  # pile A\n\n" % (PILE_A, KEY_A.hex()))
    assert BillKeys().add_file(str(good)).get(PILE_A) == KEY_A
    for text, why in (("%s abcd\n" % PILE_A, "64 hex digits"),
                      ("5503141278230 %s\n" % KEY_A.hex(), "not a 14-digit pile code"),
                      ("%s\n" % PILE_A, "expected `PILE KEY`"),
                      ("* %s\n* %s\n" % (KEY_A.hex(), KEY_A.hex()), "line 3: a second site key"),
                      ("%s %s\n" % (PILE_A, "g" * 64), "64 hex digits")):
        bad = tmp_path / "bad"
        bad.write_text("# header\n" + text)
        with pytest.raises(PlatformError) as e:
            BillKeys().add_file(str(bad))
        assert why in str(e.value) and ("line 2" in str(e.value) or "line 3" in why)
    with pytest.raises(PlatformError, match="No such file"):
        BillKeys().add_file(str(tmp_path / "nope"))
    kf = tmp_path / "a.key"
    kf.write_text(KEY_A.hex() + "\n")
    assert BillKeys().add_option("%s=%s" % (PILE_A, kf)).get(PILE_A) == KEY_A
    with pytest.raises(PlatformError, match="PILE=PATH"):
        BillKeys().add_option(str(kf))


# --- incomplete and differing copies ---------------------------------------------------

def test_the_completed_copy_replaces_the_incomplete_one_and_is_reconciled_on_its_fees():
    p = Platform()
    first = pile_doc(complete=False, key=None)
    assert first["complete"] is False and "extra" not in first["raw"]
    p.take_bill(first)
    # The completed copy's fee split does not add up: only a reconciliation
    # of the completed copy can see it.
    def bad_fees(extra):
        x = codec.decode_body(codec.layout_named("bill_extra"), extra)
        x["sharp_service_fee"] += 1
        return codec.encode_body(codec.layout_named("bill_extra"), x)
    done = pile_doc(key=None, extra_hook=bad_fees)
    new, problems = p.take_bill(done)
    assert not new and any("sharp fees" in x for x in problems)
    b = p.bill(done["serial"])
    assert b["complete"] and b["doc"] == done and b["copies"] == 2 and not b["reconciled"]
    assert p.summary()["incomplete"] == 0
    # The incomplete copy is kept for audit, never the other way round.
    assert [r[0] for r in p.db.execute("SELECT why FROM copies")] == [
        "incomplete copy, replaced by the completed one"]
    p.take_bill(first)
    assert p.bill(done["serial"])["doc"] == done and p.bill(done["serial"])["copies"] == 3


def test_a_keyed_piles_incomplete_copy_waits_for_its_mac_then_verifies():
    p = keyed(mac_wait_s=60)
    first = pile_doc(complete=False)
    p.take_bill(first)
    b = p.bill(first["serial"])
    assert b["mac"] == P.MAC_PENDING
    now = p.db.execute("SELECT received_at FROM bills").fetchone()[0]
    assert p.confirm_result(first["serial"], now + 1) is None          # held
    p.take_bill(pile_doc())
    assert p.bill(first["serial"])["mac"] == P.MAC_VERIFIED
    assert p.confirm_result(first["serial"], now + 1) == P.CONFIRM_OK


def test_a_keyed_piles_bill_whose_mac_never_comes_is_refused_as_unsigned_after_the_wait():
    p = keyed(mac_wait_s=60)
    first = pile_doc(complete=False)
    p.take_bill(first)
    now = p.db.execute("SELECT received_at FROM bills").fetchone()[0]
    assert p.confirm_result(first["serial"], now + 61) == P.CONFIRM_REFUSED_UNSIGNED
    b = p.bill(first["serial"])
    assert b["mac"] == P.MAC_MISSING and not b["reconciled"]
    assert any("no MAC arrived" in x for x in b["problems"])


def test_a_second_complete_copy_that_differs_is_flagged_and_kept_apart():
    p = Platform()
    doc = pile_doc(key=None)
    p.take_bill(doc)
    other = pile_doc(key=None, body_hook=flip_byte(codec.layout_named("bill").size - 9))
    _, problems = p.take_bill(other)
    b = p.bill(doc["serial"])
    assert b["doc"] == doc                           # the first copy stays the bill
    assert b["conflicts"] == 1 and not b["reconciled"] and any("differs" in x for x in problems)
    kept = [json.loads(r[0]) for r in p.db.execute("SELECT doc FROM copies")]
    assert kept == [other]
    s = p.summary()
    assert s["conflicting_copies"] == 1 and s["unreconciled"] == 1 and s["bills"] == 1


def test_a_verified_copy_replaces_a_stored_tampered_one():
    p = keyed()
    bad = pile_doc(body_hook=flip_byte(codec.layout_named("bill").size - 9))
    p.take_bill(bad)
    good = pile_doc()
    p.take_bill(good)
    b = p.bill(good["serial"])
    assert b["doc"] == good and b["mac"] == P.MAC_VERIFIED and b["conflicts"] == 1
    assert [json.loads(r[0]) for r in p.db.execute("SELECT doc FROM copies")] == [bad]


def test_a_fee_split_that_comes_after_the_confirmation_completes_the_bill(mosquitto):
    # The bridge published the bill without its 0xEB (extra_wait_s), the
    # platform confirmed it, then the 0xEB came: the bridge says so in a
    # bill_extra_late event, from which the platform completes the bill.
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), site="s1", bills={"extra_wait_s": 0.05})
        p = Platform(url_of(mosquitto))
        async with running(p):
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 1)
                s = bill["serial"]
                assert await pile.send_bill(bill) == 0
                await until(lambda: (p.bill(s) or {}).get("confirm_result") == 0, what="confirmed")
                assert p.bill(s)["complete"] is False
                # The 0xEB must reach a bridge that has the confirmation: before
                # that the bridge publishes the bill again, complete (no event;
                # the race a loaded CI run lost).
                for _ in range(1000):
                    if (await b.store.bill(s)).confirmed_at is not None:
                        break
                    await asyncio.sleep(0.01)
                assert (await b.store.bill(s)).confirmed_at is not None
                x = make_extra(bill)
                x["sharp_service_fee"] += 1          # a fee split that does not add up
                assert await pile.send_bill(bill, x) == 0
                await until(lambda: p.bill(s)["complete"], what="completed from the event")
                await pile.close()
            assert [r[0] for r in p.db.execute("SELECT kind FROM events")] == ["bill_extra_late"]
            return p.bill(s), p.summary(), x
    with tempdir("lateextra") as tmp:
        b, s, x = run(scenario(tmp))
    assert b["doc"]["extra_frame"]
    assert (b["doc"]["energy_fee"], b["doc"]["service_fee"]) == fees_yuan(x)
    assert any("sharp fees" in x for x in b["problems"]) and not b["reconciled"]
    assert s["incomplete"] == 0 and s["unreconciled"] == 1


# --- the database and the command line ---------------------------------------------------

def test_summary_of_a_missing_database_is_an_error_and_creates_nothing(tmp_path, capsys):
    path = tmp_path / "none.db"
    assert P.main(["--summary", "--db", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not path.exists()
    assert P.main(["--summary", "--db", str(tmp_path / "no" / "dir.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_of_a_file_that_is_not_a_platform_database_is_an_error(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    assert P.main(["--summary", "--db", str(junk)]) == 2
    assert "junk.db" in capsys.readouterr().err
    other = tmp_path / "other.db"
    sqlite3.connect(str(other)).execute("CREATE TABLE t (x)").connection.commit()
    assert P.main(["--summary", "--db", str(other)]) == 2
    assert "not a pile-platform database" in capsys.readouterr().err
    assert P.main(["--summary", "--db", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_summary_of_a_platform_database_reads_it(tmp_path, capsys):
    path = str(tmp_path / "p.db")
    p = keyed(db=path)
    p.take_bill(pile_doc(1))
    p.take_bill(pile_doc(2, pile=PILE_B, key=None))
    p.db.close()
    assert P.main(["--summary", "--db", path]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bills"] == 2 and s["mac_verified"] == 1 and s["mac_not_checked"] == 1


def test_an_older_database_gains_the_new_columns(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(P._SCHEMA.split("CREATE TABLE IF NOT EXISTS copies")[0])
    db.execute("INSERT INTO bills (serial, site, pile, stop_code, energy, amount, reconciled,"
               " problems, doc, received_at) VALUES ('1', 's', 'p', 64, 1, 1, 1, '[]', '{}', 0)")
    db.commit()
    db.close()
    p = Platform(db=path)
    assert p.summary()["bills"] == 1 and p.summary()["mac_not_checked"] == 1


def test_bad_options_are_clear_errors(tmp_path, capsys):
    assert P.main(["--broker", "http://x", "--db", str(tmp_path / "a.db")]) == 2
    assert "mqtt://" in capsys.readouterr().err
    assert P.main(["--broker", "mqtt://127.0.0.1:1", "--ca", str(tmp_path / "nope.crt"),
                   "--db", str(tmp_path / "a.db")]) == 2
    err = capsys.readouterr().err          # the option and the file, named
    assert "--ca" in err and "nope.crt" in err and "no such file" in err
    assert P.main(["--bill-keys", str(tmp_path / "nope"), "--db", str(tmp_path / "a.db")]) == 2
    assert "keys file" in capsys.readouterr().err
    assert P.main(["--db", str(tmp_path / "no" / "a.db")]) == 2
    assert "directory" in capsys.readouterr().err
    assert P.main(["--cmd", "s1", PILE_A]) == 2


# --- over real Mosquitto ------------------------------------------------------------------

async def started(p):
    ready = asyncio.Event()
    task = asyncio.create_task(p.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def stopped(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(p):
    """The platform p's run() as a task: subscribed before the block,
    stopped after it."""
    task = await started(p)
    try:
        yield task
    finally:
        await stopped(task)


def test_platform_confirms_every_copy_over_real_mosquitto(mosquitto):
    async def scenario():
        p = Platform("mqtt://%s:%d" % (mosquitto.host, mosquitto.port))
        task = await started(p)
        got = []
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
            await c.subscribe("pc/s1/confirm/+", qos=1)
            for _ in range(2):
                await c.publish("pc/s1/bills/55031412782305", json.dumps(bill_doc()), qos=1)
            async for m in c.messages:
                got.append(json.loads(m.payload))
                if len(got) == 2:
                    break
        await stopped(task)
        return p, got
    p, got = asyncio.run(asyncio.wait_for(scenario(), 30))
    # This hand-made document has no frame: nothing to hash, and a bridge
    # would ignore such a confirmation (tests/test_bridge_confirm.py).
    assert got == [{"serial": "1" * 32, "result": 0, "hash": None, "fence": 1}] * 2
    assert p.summary()["bills"] == 1


def test_tampered_bill_is_confirmed_refused_and_an_incomplete_one_held_over_mosquitto(mosquitto):
    async def scenario():
        p = keyed(url="mqtt://%s:%d" % (mosquitto.host, mosquitto.port))
        task = await started(p)
        tampered = pile_doc(1, body_hook=flip_byte(codec.layout_named("bill").size - 9))
        incomplete = pile_doc(2, complete=False)
        completed = pile_doc(2)
        got = []
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
            await c.subscribe("pc/s1/confirm/+", qos=1)
            for d in (tampered, incomplete, completed):
                await c.publish("pc/s1/bills/%s" % PILE_A, json.dumps(d), qos=1)
            async for m in c.messages:
                got.append(json.loads(m.payload))
                if len(got) == 2:
                    break
        await stopped(task)
        return p, got, tampered, completed
    p, got, tampered, completed = asyncio.run(asyncio.wait_for(scenario(), 30))
    bad, good = tampered["serial"], completed["serial"]
    # In order: the tampered one refused; the incomplete one not answered; the
    # completed one confirmed. Each names the hash of the frame the platform holds.
    assert got == [{"serial": bad, "result": P.CONFIRM_REFUSED_MAC, "hash": P.content_hash(tampered), "fence": 1},
                   {"serial": good, "result": P.CONFIRM_OK, "hash": P.content_hash(completed), "fence": 1}]
    assert got[1]["hash"] == hashlib.sha256(bytes.fromhex(completed["frame"])).hexdigest()
    assert p.stats["held"] == 1 and p.stats["refusals_sent"] == 1
    assert p.bill(bad)["confirm_result"] == P.CONFIRM_REFUSED_MAC
    s = p.summary()
    assert s["bills"] == 2 and s["tampered"] == 1 and s["mac_verified"] == 1


def test_through_the_bridge_a_refused_bill_is_closed_with_the_refusal_and_kept(mosquitto):
    # What the bridge does with a non-zero confirmation: it stops
    # republishing, records the result and passes it to the pile in 0xE4.
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), site="s1")
        p = keyed(url=url_of(mosquitto), db=os.path.join(tmp, "platform.db"))
        async with running(p):
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                good = make_bill(PILE_A, 1)
                bad = make_bill(PILE_A, 2)
                for bill, signed in ((good, good), (bad, dict(bad, stop_reason=0x41))):
                    # The pile signs `signed`; for `bad` the bytes that arrive
                    # are not what it signed (changed on the link).
                    body = codec.encode("bill", signed)[6:-2]
                    x = dict(make_extra(bill), mac=sign.bill_mac(KEY_A, body).hex().upper())
                    assert await pile.send_bill(bill, x) == 0
                await pile.wait_for(lambda: {good["serial"], bad["serial"]} <= set(pile.settled), 15)
                row = await b.store.bill(bad["serial"])
                await pile.close()
            return pile.settled, row
    with tempdir("platmac") as tmp:
        settled, row = run(scenario(tmp))
        p = Platform(db=os.path.join(tmp, "platform.db"))
        goods = [s for s in settled if settled[s] == 0]
        bads = [s for s in settled if settled[s] == P.CONFIRM_REFUSED_MAC]
        assert len(goods) == 1 and len(bads) == 1
        assert row.confirm_result == P.CONFIRM_REFUSED_MAC
        assert p.bill(bads[0])["mac"] == P.MAC_FAILED
        assert p.bill(goods[0])["mac"] == P.MAC_VERIFIED
        s = p.summary()
        assert s["bills"] == 2 and s["tampered"] == 1 and s["unreconciled"] == 1


def test_a_platform_whose_database_fills_up_once_retries_and_stores_the_bill_once_confirmed(
        mosquitto):
    # The platform's own SQLite refuses a write (SQLITE_FULL: its page limit
    # pinned to what the file holds, as a full disk would): the platform
    # logs, backs off and takes the same message again once space is back,
    # instead of ending run(). The bridge's republication is 30 s away, so
    # the bill reaching the pile settled proves the platform's own retry.
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), site="s1",
                          bills={"retry_initial_s": 30.0, "retry_max_s": 60.0})
        path = os.path.join(tmp, "platform.db")
        pre = sqlite3.connect(path)
        pre.execute("PRAGMA page_size=512")     # small pages: a bill needs new ones
        pre.executescript(P._SCHEMA)
        pre.close()
        p = Platform(url_of(mosquitto), db=path)
        pages = p.db.execute("PRAGMA page_count").fetchone()[0]
        p.db.execute("PRAGMA max_page_count=%d" % pages)      # full from here on
        async with running(p) as task:
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 1)
                s = bill["serial"]
                assert await pile.send_bill(bill, make_extra(bill)) == 0
                await until(lambda: p.stats["db_errors"] >= 1 or task.done(), 10, "a failed write")
                assert not task.done(), task.exception()   # run() did not end on it
                assert "full" in p.last_db_error and p.serials() == set()
                p.db.execute("PRAGMA max_page_count=1073741823")   # space again
                await pile.wait_for(lambda: s in pile.settled, 10)
                row = await b.store.bill(s)
                await pile.close()
            assert not task.done()                  # run() went on through the failure
            return s, pile.settled, row
    with tempdir("platfull") as tmp:
        s, settled, row = run(scenario(tmp))
        p = Platform(db=os.path.join(tmp, "platform.db"))
        assert settled == {s: 0} and row.confirmed_at is not None and row.confirm_result == 0
        assert row.publish_count == 1                 # no republication was needed
        b = p.bill(s)
        assert b["copies"] == 1 and b["confirm_result"] == 0 and b["reconciled"]
        assert p.summary()["bills"] == 1


# --- TLS and credentials against the shipped, locked-down Mosquitto ------------------------------

needs_tls = pytest.mark.skipif(
    not brokers.mosquitto_available() or shutil.which("openssl") is None
    or brokers.find_mosquitto_passwd() is None,
    reason="needs mosquitto, mosquitto_passwd and openssl")


@pytest.fixture(scope="module")
def site_broker():
    from host import mqtt_site
    from tools import mqtt_site as mqtt_site_cli
    with tempdir("platls") as tmp:
        root = os.path.join(tmp, "pki")
        assert mqtt_site_cli.main(["init", "--dir", root, "--server-name", "localhost",
                               "--server-ip", "127.0.0.1"]) == 0
        assert mqtt_site_cli.main(["add-site", "s1", "--dir", root]) == 0
        assert mqtt_site_cli.main(["add-platform", "platform-cmd", "--dir", root]) == 0
        pki = mqtt_site.Pki(root)
        conf = mqtt_site.render_conf(pki.root, port="{tls_port}", bind="{host}")
        with brokers.Mosquitto(config=conf) as broker:
            yield tmp, pki, broker


def tls_args(pki, broker, user="platform-cmd", **over):
    f = pki.client_files(user)
    a = {"--broker": "mqtts://127.0.0.1:%d" % broker.tls_port, "--user": user,
         "--password-file": f["password"], "--ca": pki.ca_crt, "--cert": f["cert"],
         "--key": f["key"], "--connect-timeout": "3", "--timeout": "5"}
    a.update(over)
    out = []
    for k, v in a.items():
        if v is not None:
            out += [k, v]
    return out


@needs_tls
def test_pile_platform_over_tls_sends_a_command_and_takes_a_bill(site_broker, capsys):
    tmp, pki, broker = site_broker

    async def scenario():
        site = pki.client_files("s1")
        cfg = fast_config(tmp, "mqtts://127.0.0.1:%d" % broker.tls_port, site="s1",
                          mqtt={"username": "s1", "password_file": site["password"],
                                "ca_file": pki.ca_crt, "cert_file": site["cert"],
                                "key_file": site["key"]})
        f = pki.client_files("platform")
        with open(f["password"]) as fh:
            pw = fh.read().strip()
        p = Platform("mqtts://127.0.0.1:%d" % broker.tls_port, username="platform", password=pw,
                     client_id="platform",
                     tls_context=P.tls_context(pki.ca_crt, f["cert"], f["key"]))
        loop = asyncio.get_running_loop()
        async with running(p):
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 1)
                assert await pile.send_bill(bill, make_extra(bill)) == 0
                await pile.wait_for(lambda: bill["serial"] in pile.settled, 10)
                # A one-off command from the CLI, as its own platform user.
                rc = await loop.run_in_executor(None, P.main, tls_args(pki, broker) + [
                    "--cmd", "s1", PILE_A, "query_versions"])
                await pile.close()
        return rc, p.summary()
    rc, s = run(scenario())
    out = capsys.readouterr().out
    assert s["bills"] == 1 and s["mac_not_checked"] == 1
    res = json.loads(out[out.index("{"):])
    assert res["cmd"] == "query_versions" and res["pile"] == PILE_A and rc in (0, 1)


@needs_tls
def test_mqtts_never_falls_back_to_plain_and_bad_credentials_are_named(site_broker, capsys):
    tmp, pki, broker = site_broker
    cmd = ["--cmd", "s1", PILE_A, "query_versions"]
    # mqtts:// without --ca: TLS with the system's CAs, which do not trust the
    # site CA: refused (not a plain connection), within the connect timeout.
    # exit 3: cannot reach (host/cli.py)
    assert P.main(tls_args(pki, broker, **{"--ca": None, "--cert": None, "--key": None}) + cmd) == 3
    err = capsys.readouterr().err
    assert "not reached in 3 s" in err and "certificate verify failed" in err
    # The right CA and certificate, a wrong password.
    bad = os.path.join(tmp, "wrong-password")
    with open(bad, "w") as f:
        f.write("not-the-password\n")
    assert P.main(tls_args(pki, broker, **{"--password-file": bad}) + cmd) == 3
    assert "not authorized" in capsys.readouterr().err.lower()
    # TLS files with a plain URL: a contradiction, refused before connecting.
    assert P.main(tls_args(pki, broker, **{"--broker": "mqtt://127.0.0.1:%d" % broker.tls_port})
                  + cmd) == 2
    assert "use mqtts://" in capsys.readouterr().err


def test_a_bill_kept_raw_is_stored_flagged_and_confirmed_with_its_hash(mosquitto):
    # decoded=false (the bridge could not read it): the platform keeps it,
    # says why, and confirms it naming the hash of the frame it stored, so
    # the bridge releases the pile.
    frame = codec.wrap(0x3D, b"\x55\x03\x14\x12\x78\x23\x05" * 4, 9)
    doc = {"schema": "pc.bill/1", "site": "s1", "pile": "55031412782305", "serial": "AB" * 16,
           "decoded": False, "error": "UnknownType: 0x3D", "raw": None, "complete": True,
           "frame": frame.hex().upper(), "extra_frame": None, "mac": None}

    async def scenario():
        p = Platform("mqtt://%s:%d" % (mosquitto.host, mosquitto.port))
        task = await started(p)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
            await c.subscribe("pc/s1/confirm/+", qos=1)
            await c.publish("pc/s1/bills/55031412782305", json.dumps(doc), qos=1)
            async for m in c.messages:
                got = json.loads(m.payload)
                break
        await stopped(task)
        return p, got
    p, got = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert got == {"serial": "AB" * 16, "result": 0, "hash": hashlib.sha256(frame).hexdigest(),
                   "fence": 1}
    assert P.reconcile(doc) == ["undecodable: UnknownType: 0x3D"]
    assert p.summary()["bills"] == 1
