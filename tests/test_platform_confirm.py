# The platform's confirmation (host/platform.py _on_message, _take_message,
# confirm_result, content_hash), driven in process with a client that records
# what is published: a bill is stored before it is confirmed, every copy is
# confirmed with the hash of the frame the platform stored, refusals and
# holds are exact, and a database write that fails is retried without
# storing, counting or confirming anything twice. The end-to-end runs over
# Mosquitto are in tests/test_platform.py.
import asyncio
import hashlib
import binascii
import json
import sqlite3

from host import platform as P
from host.platform import BillKeys, Platform
from tests.test_platform import KEY_A, PILE_A, flip_byte, pile_doc


class Client:
    def __init__(self):
        self.sent = []

    async def publish(self, topic, payload, qos=0):
        self.sent.append((topic, json.loads(payload), qos))


def _take(p, topic, doc, client=None):
    client = client or Client()
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    asyncio.run(p._on_message(client, topic, payload))
    return client.sent


def _topic(doc, kind="bills"):
    return "pc/s1/%s/%s" % (kind, doc.get("pile", PILE_A) if isinstance(doc, dict) else PILE_A)


def _hash(doc):
    return hashlib.sha256(binascii.unhexlify(doc["frame"])).hexdigest()


def test_a_bill_is_stored_then_confirmed_with_the_hash_of_its_stored_frame():
    p = Platform()
    doc = pile_doc()
    sent = _take(p, _topic(doc), doc)
    assert sent == [("pc/s1/confirm/%s" % PILE_A,
                     {"serial": doc["serial"], "result": 0, "hash": _hash(doc), "fence": 1}, 1)]
    assert p.bill(doc["serial"])["confirm_result"] == 0
    assert p.changed.is_set()
    assert (p.stats["bill_messages"], p.stats["confirms_sent"], p.stats["refusals_sent"],
            p.stats["held"], p.stats["bad_messages"]) == (1, 1, 0, 0, 0)
    # a copy again (the bridge did not see the answer): confirmed again
    assert len(_take(p, _topic(doc), doc)) == 1
    assert (p.stats["bill_messages"], p.stats["confirms_sent"]) == (2, 2)


def test_a_tampered_bill_is_confirmed_refused_and_counted():
    p = Platform(keys=BillKeys({PILE_A: KEY_A}))
    doc = pile_doc(body_hook=flip_byte(40))
    sent = _take(p, _topic(doc), doc)
    assert [s[1]["result"] for s in sent] == [P.CONFIRM_REFUSED_MAC]
    assert (p.stats["confirms_sent"], p.stats["refusals_sent"]) == (1, 1)
    assert p.bill(doc["serial"])["confirm_result"] == P.CONFIRM_REFUSED_MAC


def test_an_incomplete_copy_from_a_keyed_pile_is_held_unconfirmed():
    p = Platform(keys=BillKeys({PILE_A: KEY_A}))
    doc = pile_doc(complete=False)
    assert _take(p, _topic(doc), doc) == []
    assert (p.stats["held"], p.stats["confirms_sent"]) == (1, 0)
    assert p.bill(doc["serial"])["confirm_result"] is None


def test_a_platform_not_confirming_stores_and_a_silent_one_takes_nothing():
    p = Platform()
    p.confirming = False
    doc = pile_doc()
    assert _take(p, _topic(doc), doc) == []
    assert p.bill(doc["serial"]) is not None and p.stats["bill_messages"] == 1
    q = Platform()
    q.silent = True
    assert _take(q, _topic(doc), doc) == []
    assert q.bill(doc["serial"]) is None and q.stats["bill_messages"] == 0
    assert not q.changed.is_set()


def test_bad_topics_and_messages_are_counted_never_stored_or_confirmed():
    p = Platform()
    doc = pile_doc()
    assert _take(p, "pc/s1/bills", doc) == []
    assert _take(p, "pc/s1/bills/%s/x" % PILE_A, doc) == []
    assert p.stats["bad_messages"] == 0 and p.stats["bill_messages"] == 0
    assert _take(p, _topic(doc), b"{not json") == []
    assert p.stats["bad_messages"] == 1 and p.stats["bill_messages"] == 0
    for bad in ([doc], dict(doc, serial=7), {"site": "s1"}):
        assert _take(p, _topic(doc), bad) == []
    assert (p.stats["bad_messages"], p.stats["bill_messages"]) == (4, 3)
    assert not p.serials() and not p.changed.is_set()


def test_events_are_stored_with_their_kind_and_results_reach_their_waiter():
    p = Platform()
    _take(p, "pc/s1/events/%s" % PILE_A, {"type": "bill_quarantined", "serial": "x"})
    _take(p, "pc/s1/events/%s" % PILE_A, {"kind": "old_style"})
    _take(p, "pc/s1/events/%s" % PILE_A, [1, 2])
    rows = p.db.execute("SELECT site, pile, kind FROM events ORDER BY rowid").fetchall()
    assert rows == [("s1", PILE_A, "bill_quarantined"), ("s1", PILE_A, "old_style"),
                    ("s1", PILE_A, "")]
    assert p.stats["events"] == 3 and p.changed.is_set()

    async def waiting():
        fut = asyncio.get_running_loop().create_future()
        p._waiting["r1"] = fut
        await p._on_message(Client(), "pc/s1/result/%s" % PILE_A, b'{"id": "r1", "ok": true}')
        await p._on_message(Client(), "pc/s1/result/%s" % PILE_A, b'{"id": "r1", "ok": false}')
        return fut.result(), dict(p._waiting)
    assert asyncio.run(waiting()) == ({"id": "r1", "ok": True}, {})


def test_a_fee_split_that_came_late_completes_the_stored_bill():
    p = Platform()
    doc = pile_doc(complete=False, key=KEY_A)
    _take(p, _topic(doc), doc)
    done = pile_doc(key=KEY_A)
    event = {"type": "bill_extra_late", "serial": doc["serial"], "raw": done["raw"]["extra"],
             "frame": done["extra_frame"]}
    _take(p, "pc/s1/events/%s" % PILE_A, event)
    assert p.bill(doc["serial"])["complete"] is True


def test_the_confirm_result_of_a_bill_whose_mac_is_late_turns_at_the_wait_exactly():
    p = Platform(keys=BillKeys({PILE_A: KEY_A}), mac_wait_s=60)
    doc = pile_doc(complete=False)
    p.take_bill(doc)
    first = p.db.execute("SELECT received_at FROM bills").fetchone()[0]
    assert p.confirm_result("no such serial") is None
    assert p.confirm_result(doc["serial"], first + 59.9) is None
    assert p.confirm_result(doc["serial"], first + 60) == P.CONFIRM_REFUSED_UNSIGNED
    b = p.bill(doc["serial"])
    assert b["mac"] == P.MAC_MISSING and b["problems"][-1] == "no MAC arrived within 60 s"
    # decided once: the bill is now plainly unsigned
    assert p.confirm_result(doc["serial"], first + 61) == P.CONFIRM_REFUSED_UNSIGNED
    assert b["problems"].count("no MAC arrived within 60 s") == 1
    assert p.bill(doc["serial"])["problems"] == b["problems"]


def test_unsigned_and_unkeyed_bills_get_their_results():
    p = Platform(keys=BillKeys({PILE_A: KEY_A}))
    unsigned = dict(pile_doc(), mac="0" * 64)     # a keyed pile's bill with a zero MAC
    p.take_bill(unsigned)
    assert p.confirm_result(unsigned["serial"]) == P.CONFIRM_REFUSED_UNSIGNED
    q = Platform()
    q.take_bill(pile_doc())
    assert q.confirm_result(pile_doc()["serial"]) == P.CONFIRM_OK


def test_the_content_hash_is_of_the_frame_and_none_without_one():
    doc = pile_doc()
    assert P.content_hash(doc) == _hash(doc)
    for bad in ({}, {"frame": None}, {"frame": "0G"}, {"frame": "ABC"}):
        assert P.content_hash(bad) is None


class FailingOnce:
    """A database connection whose first write of a statement fails."""

    def __init__(self, db, failing):
        self.db, self.failing, self.failed = db, failing, 0

    def execute(self, sql, *args):
        if self.failed == 0 and sql.startswith(self.failing):
            self.failed += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_write_that_fails_once_is_retried_and_nothing_is_done_twice(monkeypatch):
    for failing in ("INSERT INTO bills", "UPDATE bills SET confirm_result"):
        p = Platform()
        p.db = FailingOnce(p.db, failing)
        slept = []

        async def sleep(s):
            slept.append(s)
        monkeypatch.setattr(P.asyncio, "sleep", sleep)
        doc = pile_doc()
        client = Client()
        asyncio.run(p._take_message(client, _topic(doc), json.dumps(doc).encode()))
        assert p.db.failed == 1, failing
        assert slept == [P.DB_RETRY_MIN_S], failing
        assert [s[1]["result"] for s in client.sent] == [0], failing
        assert (p.stats["bill_messages"], p.stats["confirms_sent"], p.stats["db_errors"]) == \
            (1, 1, 1), failing
        assert p.last_db_error == "database or disk is full"
        assert p.bill(doc["serial"])["copies"] == 1 and p.bill(doc["serial"])["confirm_result"] == 0
