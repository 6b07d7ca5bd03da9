# The platform's confirm/store path (host/platform.py _on_message,
# _take_message, confirm_result), the behaviours cosmic-ray's run 1 of
# host/platform.py showed no test pinned (docs/testing.md, "Surviving
# mutants"): the retry backoff on a failing database, a rollback that fails
# too, a worker that does not own the site, event copies known by their
# event_id, only bill_extra_late completing a bill, only the three kinds of
# topic taken, and a clock that stepped back. Platform methods are called
# directly with crafted messages; no broker, no sleeps.
import asyncio
import json
import sqlite3

from host import platform as P
from host.platform import BillKeys, Platform
from tests.test_platform import KEY_A, PILE_A, pile_doc
from tests.test_platform_confirm import Client, _take, _topic


class Failing:
    """A database connection whose first `times` writes starting with
    `failing` fail; its first `rollbacks` rollbacks fail too."""

    def __init__(self, db, failing, times=1, rollbacks=0):
        self.db, self.failing, self.times, self.rollbacks = db, failing, times, rollbacks
        self.failed = 0

    def execute(self, sql, *args):
        if self.failed < self.times and sql.startswith(self.failing):
            self.failed += 1
            raise sqlite3.OperationalError("database is locked")
        return self.db.execute(sql, *args)

    def rollback(self):
        if self.rollbacks:
            self.rollbacks -= 1
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")
        return self.db.rollback()

    def __getattr__(self, name):
        return getattr(self.db, name)


def _retried(monkeypatch, p, doc):
    slept = []

    async def sleep(s):
        slept.append(s)
    monkeypatch.setattr(P.asyncio, "sleep", sleep)
    client = Client()
    asyncio.run(p._take_message(client, _topic(doc), json.dumps(doc).encode()))
    return slept, client.sent


def test_a_locked_database_is_retried_after_delays_doubling_up_to_the_cap(monkeypatch):
    p = Platform()
    p.db = Failing(p.db, "INSERT INTO bills", times=10)
    doc = pile_doc()
    slept, sent = _retried(monkeypatch, p, doc)
    want, d = [], P.DB_RETRY_MIN_S
    for _ in range(10):
        want.append(d)
        d = min(d * 2, P.DB_RETRY_MAX_S)
    assert want[:3] == [0.2, 0.4, 0.8] and want[-2:] == [30.0, 30.0]
    assert slept == want
    assert [s[1]["result"] for s in sent] == [0]
    assert (p.stats["db_errors"], p.stats["bill_messages"], p.stats["confirms_sent"]) == (10, 1, 1)
    assert p.bill(doc["serial"])["copies"] == 1


def test_a_rollback_that_fails_too_still_retries_the_message(monkeypatch):
    p = Platform()
    p.db = Failing(p.db, "INSERT INTO bills", times=1, rollbacks=1)
    doc = pile_doc()
    slept, sent = _retried(monkeypatch, p, doc)
    assert p.db.rollbacks == 0 and slept == [P.DB_RETRY_MIN_S]
    assert [s[1]["result"] for s in sent] == [0]
    assert p.bill(doc["serial"])["confirm_result"] == 0


class NotOwner:
    """Site leases held by another worker: no fencing token for any site."""

    def token(self, site):
        return None


def test_a_worker_that_does_not_own_the_site_stores_and_confirms_nothing():
    p = Platform()
    p.leases = NotOwner()
    doc = pile_doc()
    assert _take(p, _topic(doc), doc) == []
    assert p.bill(doc["serial"]) is None
    assert (p.stats["not_owner"], p.stats["bill_messages"]) == (1, 0)
    _take(p, "pc/s1/events/%s" % PILE_A, {"type": "bill_quarantined", "event_id": "e1"})
    assert p.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    assert (p.stats["not_owner"], p.stats["events"]) == (2, 0)


def test_an_event_copy_is_known_by_its_event_id_only_when_it_is_a_string():
    p = Platform()
    topic = "pc/s1/events/%s" % PILE_A
    for _ in range(2):
        _take(p, topic, {"type": "bill_quarantined", "event_id": "e1"})
    assert (p.stats["events"], p.stats["duplicate_events"]) == (1, 1)
    _take(p, topic, {"type": "bill_quarantined", "event_id": "e1"})
    assert (p.stats["events"], p.stats["duplicate_events"]) == (1, 2)
    # an event_id that is not a string names nothing: each copy is stored
    for _ in range(2):
        _take(p, topic, {"type": "bill_quarantined", "event_id": 7})
    assert (p.stats["events"], p.stats["duplicate_events"]) == (3, 2)
    assert p.db.execute("SELECT event_id FROM events ORDER BY rowid").fetchall() == \
        [("e1",), (None,), (None,)]


def test_only_a_bill_extra_late_event_completes_a_stored_bill():
    p = Platform()
    doc = pile_doc(complete=False, key=KEY_A)
    _take(p, _topic(doc), doc)
    done = pile_doc(key=KEY_A)
    event = {"serial": doc["serial"], "raw": done["raw"]["extra"], "frame": done["extra_frame"]}
    for other in ({"type": "bill_extra"}, {"type": "bill_quarantined"}, {}):
        _take(p, "pc/s1/events/%s" % PILE_A, dict(event, **other))
        assert p.bill(doc["serial"])["complete"] is False, other
    _take(p, "pc/s1/events/%s" % PILE_A, dict(event, type="bill_extra_late"))
    assert p.bill(doc["serial"])["complete"] is True


def test_a_message_of_another_kind_is_ignored():
    # Only bills, events and result are taken: not the platform's own
    # cmd/confirm topics, nor a kind that sorts before or after the three.
    async def run():
        p = Platform()
        fut = asyncio.get_running_loop().create_future()
        p._waiting["r1"] = fut
        client = Client()
        bill = pile_doc()
        for kind in ("bill", "alerts", "cmd", "confirm", "status", "zz"):
            for doc in (bill, {"type": "bill_quarantined", "event_id": "e-" + kind},
                        {"id": "r1", "cmd": "stop"}):
                await p._on_message(client, "pc/s1/%s/%s" % (kind, PILE_A),
                                    json.dumps(doc).encode())
        # a result that is no document: ignored, the waiter still waits
        await p._on_message(client, "pc/s1/result/%s" % PILE_A, b'["r1"]')
        return p, fut, client
    p, fut, client = asyncio.run(run())
    assert client.sent == [] and not fut.done() and "r1" in p._waiting
    assert not p.serials() and not p.changed.is_set()
    assert p.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    assert all(v == 0 for v in p.stats.values()), p.stats


def test_a_clock_that_stepped_back_holds_an_incomplete_bill_it_does_not_refuse_it():
    p = Platform(keys=BillKeys({PILE_A: KEY_A}), mac_wait_s=60)
    doc = pile_doc(complete=False)
    p.take_bill(doc)
    first = p.db.execute("SELECT received_at FROM bills").fetchone()[0]
    assert p.confirm_result(doc["serial"], first - 1) is None
    assert p.bill(doc["serial"])["mac"] == P.MAC_PENDING
