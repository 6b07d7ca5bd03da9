# Custody under failure: the broker restarts, the bridge is SIGKILLed, the
# platform goes silent, confirmations come twice, piles resend. Every bill
# must reach the platform and be settled on its pile, none stored twice.
import asyncio
import contextlib
import os
import sqlite3
import threading

import pytest

from host import store as storemod

from sim.testkit import ScriptedPile, make_bill, make_extra
from sim.links import TcpTransport
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, BridgeProcess, Platform, bridge_running, bridge_with_pile, connect_pile,
    db_rows, fast_config, fees_yuan, in_tempdir, run, tempdir, until, url_of)


def test_broker_restart_mid_stream_loses_no_bill(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), bills={"retry_initial_s": 1.0},
                          pile={PILE_B: {"ext": False}})
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto)) as plat:
            pa = await connect_pile(PILE_A, b.tcp_port)
            pb = await connect_pile(PILE_B, b.tcp_port, ext=False)
            bills = [make_bill(PILE_A, i) for i in range(10)] + [make_bill(PILE_B, i) for i in range(10)]
            loop = asyncio.get_running_loop()
            restarted = None
            for i, bill in enumerate(bills):
                pile = pa if bill["pile"] == PILE_A else pb
                # Piles keep sending while the broker is away: the bridge
                # still takes custody (0x40) and holds the bills in SQLite.
                assert await pile.send_bill(bill, make_extra(bill)) == 0
                if i == 6:
                    restarted = loop.run_in_executor(None, mosquitto.restart)
            await restarted
            serials = {x["serial"] for x in bills}
            await plat.wait_for(lambda: serials <= set(plat.bills), timeout=20)
            await pa.wait_for(lambda: {s for s in serials if s.startswith(PILE_A)} <= set(pa.settled),
                              timeout=20)
            await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM bills "
                                       "WHERE confirmed_at IS NOT NULL AND settled_at IS NOT NULL")
                        == [(20,)], timeout=20, what="all 20 confirmed and settled")
            assert b.mqtt.connects >= 2
            # Third-party pile (ext false): never sent a 0xE4.
            assert pb.received("settled") == []
            await pa.close()
            await pb.close()
    in_tempdir("brokerrestart", scenario)


def test_a_bridge_child_that_crashes_at_start_up_fails_the_test_naming_it():
    # Its database path is a folder: the store raises as the bridge starts.
    with tempdir("crash") as tmp:
        cfg = fast_config(tmp, "mqtt://127.0.0.1:1")
        os.mkdir(cfg["database"])
        proc = BridgeProcess(tmp, cfg)
        try:
            run(proc.start())
        except AssertionError as e:
            msg = str(e)
        else:
            raise AssertionError("a bridge with no database started")
        # pile-bridge reports an unusable store in one line, exit status 2.
        assert msg.startswith("the bridge (python -m host.bridge -c %s) did not start: "
                              "exited with code 2" % proc.cfg_path), msg
        assert "pile-bridge: cannot open %s" % cfg["database"] in msg


def test_bridge_sigkill_mid_flight_loses_and_duplicates_nothing(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), log_level="info",
                          bills={"retry_initial_s": 1.0, "extra_wait_s": 0.2})
        proc = BridgeProcess(tmp, cfg)
        plat = Platform(url_of(mosquitto), confirm=False)
        await plat.__aenter__()
        pile = None
        try:
            await proc.start()
            pile = ScriptedPile(PILE_A, await TcpTransport.connect("127.0.0.1", proc.tcp_port),
                                reply_timeout=2.0)
            assert await pile.login() == 0
            bills = [make_bill(PILE_A, i) for i in range(12)]

            async def reconnect():
                # What a YKC pile does when its link drops: dial, log in, then
                # send its journal (unconfirmed bills) first.
                await pile.close()
                pile.attach(await TcpTransport.connect("127.0.0.1", proc.tcp_port))
                assert await pile.login() == 0
                await pile.flush_journal()

            # 1. Bills in custody, the platform not confirming: SIGKILL.
            for bill in bills[:4]:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            proc.kill()
            await proc.wait()
            await proc.start()
            await reconnect()
            # 2. SIGKILL with a bill on the wire, maybe before its commit,
            # maybe before its 0x40 left.
            for bill in bills[4:6]:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            await pile.send("bill", bills[6])
            proc.kill()
            pile.journal[bills[6]["serial"]] = (bills[6], None)
            await proc.wait()
            await proc.start()
            await reconnect()
            # 3. The platform answers again; SIGKILL while confirmations and
            # settlements are in flight.
            plat.confirm = True
            for s in list(plat.bills):
                await plat.confirm_bill(PILE_A, s)
            for bill in bills[7:10]:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            proc.kill()
            await proc.wait()
            await proc.start()
            await reconnect()
            for bill in bills[10:]:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            serials = [b_["serial"] for b_ in bills]
            await plat.wait_for(lambda: set(serials) <= set(plat.bills), timeout=30)
            await pile.wait_for(lambda: set(serials) <= set(pile.settled), timeout=30)
            # The pile's 0xE3 answers reach the bridge's store.
            await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE "
                                       "settled_at IS NOT NULL") == [(12,)], what="12 settled")
            await proc.stop()
            rows = db_rows(cfg["database"], "SELECT serial, pile_seq, confirmed_at IS NOT NULL, "
                          "settled_at IS NOT NULL FROM bills ORDER BY id")
            assert [r[0] for r in rows] == serials          # each once, in the pile's order
            assert [r[1] for r in rows] == list(range(1, 13))
            assert all(r[2] and r[3] for r in rows)
            # Every fee split (0xEB) is held too, and reached the platform:
            # in the bill, or (when it came after the confirmation) as an event.
            assert db_rows(cfg["database"], "SELECT COUNT(*) FROM extras") == [(11,)]
            late = {e["serial"] for e in plat.events if e["type"] == "bill_extra_late"}
            assert all(plat.bills[s]["energy_fee"] is not None or s in late for s in serials
                       if s != bills[6]["serial"])
            assert proc.runs == 4
        finally:
            if pile is not None:
                await pile.close()
            await plat.__aexit__(None, None, None)
            await proc.stop()
    in_tempdir("sigkill", scenario, timeout=90)


def test_platform_silent_then_back_bills_republished_with_backoff(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto),
                          bills={"retry_initial_s": 0.1, "retry_max_s": 0.4})
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto), confirm=False) as plat:
            pile = await connect_pile(PILE_A, b.tcp_port)
            bills = [make_bill(PILE_A, i) for i in range(3)]
            for bill in bills:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            serials = [x["serial"] for x in bills]
            # Unanswered, each bill is published again and again (backoff).
            await plat.wait_for(lambda: all(plat.bill_count.get(s, 0) >= 4 for s in serials), 10)
            assert pile.settled == {}
            # First publication kept the pile's order.
            assert [s for s in plat.bill_order if s in serials][:3] == serials
            plat.confirm = True
            for s in serials:
                await plat.confirm_bill(PILE_A, s)
            await pile.wait_for(lambda: set(serials) <= set(pile.settled), 10)
            counts = dict(plat.bill_count)
            # Once confirmed, the republishing stops: a fresh bill goes out and
            # is settled while the old ones stay quiet.
            extra_bill = make_bill(PILE_A, 99)
            await pile.send_bill(extra_bill, make_extra(extra_bill))
            await pile.wait_for(lambda: extra_bill["serial"] in pile.settled, 10)
            assert all(plat.bill_count[s] == counts[s] for s in serials)
            await pile.close()
    in_tempdir("silent", scenario)


def test_duplicate_confirmations_settle_once(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, confirm=False) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 1)
            await pile.send_bill(bill, make_extra(bill))
            s = bill["serial"]
            await plat.wait_for(lambda: s in plat.bills)
            for _ in range(3):
                await plat.confirm_bill(PILE_A, s)
            await plat.confirm_bill(PILE_A, "9" * 32)      # a serial nobody holds
            await pile.wait_for(lambda: s in pile.settled)
            await until(lambda: b.stats["confirms_duplicate"] == 2 and b.stats["confirms_unknown"] == 1,
                        what="duplicate and unknown confirmations counted")
            assert b.stats["confirms"] == 1
            assert pile.settled_count[s] == 1
    in_tempdir("dupconfirm", scenario)


def test_pile_resending_a_held_bill_is_stored_once_and_confirmed_again(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 1)
            s = bill["serial"]
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            assert await pile.resend_bill(bill) == 0        # lost 0x40, say: sent again
            assert pile.confirmed[s] == [0, 0]
            await pile.wait_for(lambda: s in pile.settled)
            # Sent again after settlement (a pile that lost its settled
            # record): 0x40 again and the settlement repeated.
            assert await pile.resend_bill(bill) == 0
            await pile.wait_for(lambda: pile.settled_count[s] == 2)
            rows = db_rows(cfg["database"], "SELECT serial, resends, conflicts FROM bills")
            assert rows == [(s, 2, 0)]
            # Same serial, different bytes: first copy kept, the other kept
            # for audit, an event raised, the pile still gets its 0x40.
            forged = dict(bill, stop_reason=0x41)
            assert await pile.resend_bill(forged) == 0
            ev = await plat.wait_for(lambda: next((e for e in plat.events
                                                   if e["type"] == "serial_conflict"), None))
            assert ev["serial"] == s and ev["pile"] == PILE_A
            rows = db_rows(cfg["database"], "SELECT frame FROM bills")
            assert len(rows) == 1 and rows[0][0][-2 - 8 - 1] == 0x40   # the stop reason kept
            assert db_rows(cfg["database"], "SELECT kind, serial FROM rejected") == [("conflict", s)]
            assert plat.bills[s]["stop_reason"]["code"] == 0x40
    in_tempdir("resend", scenario)


def test_bills_wait_in_sqlite_while_the_broker_is_down(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        mosquitto.stop()
        async with bridge_running(cfg, mqtt_up=False) as b:
            pile = await connect_pile(PILE_A, b.tcp_port)
            bills = [make_bill(PILE_A, i) for i in range(5)]
            for bill in bills:
                assert await pile.send_bill(bill, make_extra(bill)) == 0
            assert db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE published_at IS NULL") \
                == [(5,)]
            await asyncio.get_running_loop().run_in_executor(None, mosquitto.start)
            async with Platform(url_of(mosquitto)) as plat:
                serials = {x["serial"] for x in bills}
                await pile.wait_for(lambda: serials <= set(pile.settled), 15)
                assert serials <= set(plat.bills)
            await pile.close()
    in_tempdir("brokerdown", scenario)


# --- the store's commit fails or hangs -----------------------------------------------
# The fault is put where a full disk or a dying SD card puts it: SQLite's
# COMMIT of the bridge's database raises (and the store rolls back), or it
# does not return. Everything else (the bridge, the store's thread, Mosquitto,
# the platform) is real.

class Disk:
    """What the bridge database's COMMIT does: None (works), an error message
    to raise as sqlite3.OperationalError, or "hang" (until released). Only
    a transaction that takes a bill into custody (INSERT INTO bills) is hit:
    other commits (marks, events) between the test's steps go through, so the
    fault lands on the bill's own commit and nowhere else."""

    def __init__(self):
        self.fault = None
        self.failed = 0
        self.failed_once = threading.Event()
        self.hung = threading.Event()
        self.release = threading.Event()
        self.bill_in_tx = False


@contextlib.contextmanager
def faulty_disk(monkeypatch, path):
    disk = Disk()
    real_connect = sqlite3.connect

    class Conn(sqlite3.Connection):
        def execute(self, sql, *args):
            if sql.startswith("BEGIN"):
                disk.bill_in_tx = False
            elif sql.startswith("INSERT INTO bills"):
                disk.bill_in_tx = True
            elif sql == "COMMIT" and disk.bill_in_tx and disk.fault == "hang":
                disk.hung.set()
                disk.release.wait(30)
            elif sql == "COMMIT" and disk.bill_in_tx and disk.fault is not None:
                disk.failed += 1
                disk.failed_once.set()
                raise sqlite3.OperationalError(disk.fault)
            return super().execute(sql, *args)

    def connect(database, *args, **kw):
        if database == path:
            kw["factory"] = Conn
        return real_connect(database, *args, **kw)
    monkeypatch.setattr(storemod.sqlite3, "connect", connect)
    try:
        yield disk
    finally:
        disk.fault = None
        disk.release.set()       # never leave the store's thread blocked


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@pytest.mark.parametrize("error", ["database or disk is full", "disk I/O error"])
def test_a_bill_whose_commit_fails_gets_no_0x40_and_its_resend_is_taken_once(
        mosquitto, monkeypatch, error):
    async def scenario(tmp, disk):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            lost, later = make_bill(PILE_A, 1), make_bill(PILE_A, 2)
            s = lost["serial"]
            disk.fault = error
            pile.journal[s] = (lost, make_extra(lost))
            await pile.send("bill", lost)
            await pile.send("bill_extra", make_extra(lost))
            assert await in_thread(disk.failed_once.wait, 10)
            disk.fault = None
            # The store works again: the next bill is taken. By then the
            # failed one would have had its 0x40 if one were coming (the store
            # answers in order, and the bridge sends in that order).
            assert await pile.send_bill(later, make_extra(later)) == 0
            assert pile.confirmed[s] == []
            # The failed bill's fee split may have been committed in a later
            # batch, once the disk was back (then it has its 0xEC; the bill
            # itself still has no 0x40): only the later bill's ack is sure.
            assert later["serial"] in [f.fields["serial"] for f in pile.received("bill_extra_ack")]
            assert db_rows(cfg["database"], "SELECT serial FROM bills") == [(later["serial"],)]
            # The pile sends its unanswered bill again: taken, confirmed once.
            await pile.flush_journal()
            assert pile.confirmed[s] == [0]
            await pile.wait_for(lambda: s in pile.settled and later["serial"] in pile.settled, 10)
            await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE "
                                       "settled_at IS NOT NULL") == [(2,)], what="both settled")
            assert db_rows(cfg["database"], "SELECT serial, resends, conflicts FROM bills ORDER BY id") \
                == [(later["serial"], 0, 0), (s, 0, 0)]
            assert plat.bills[s]["complete"]
            assert (plat.bills[s]["energy_fee"], plat.bills[s]["service_fee"]) \
                == fees_yuan(make_extra(lost))
            assert b.stats["confirms"] == 2 and b.stats["confirms_duplicate"] == 0
            assert pile.settled_count[s] == 1
            assert disk.failed >= 1
    with tempdir("commitfail") as tmp:
        with faulty_disk(monkeypatch, fast_config(tmp, "")["database"]) as disk:
            run(scenario(tmp, disk))


def test_a_commit_that_hangs_holds_the_0x40_back_until_it_completes(mosquitto, monkeypatch):
    async def scenario(tmp, disk):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 1)
            s = bill["serial"]
            disk.fault = "hang"
            await pile.send("bill", bill)
            assert await in_thread(disk.hung.wait, 10)
            # The bridge is alive (it answers a heartbeat) but holds the 0x40:
            # the bill is not on disk yet.
            n = len(pile.received("heartbeat_reply"))
            await pile.heartbeat()
            await pile.wait_for(lambda: len(pile.received("heartbeat_reply")) > n)
            assert pile.confirmed[s] == []
            assert s not in plat.bills
            disk.fault = None
            disk.release.set()
            await pile.wait_for(lambda: pile.confirmed[s] == [0], 10)
            assert db_rows(cfg["database"], "SELECT serial FROM bills") == [(s,)]
            await plat.wait_for(lambda: s in plat.bills, 10)
    with tempdir("commithang") as tmp:
        with faulty_disk(monkeypatch, fast_config(tmp, "")["database"]) as disk:
            run(scenario(tmp, disk))


def test_a_broker_that_never_acknowledges_the_disconnect_does_not_hang_the_bridges_stop(
        mosquitto, monkeypatch):
    # aiomqtt's clean exit waits for the broker to close its side, without a
    # bound. A broker that never does must not hold the bridge's stop for ever
    # (the service would hang on SIGTERM with its database open).
    import aiomqtt
    exits = []

    async def never_closes(self, *exc):
        exits.append(1)
        await asyncio.get_running_loop().create_future()     # until cancelled again
    monkeypatch.setattr(aiomqtt.Client, "__aexit__", never_closes)

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        async with bridge_running(cfg) as b:
            pile = await connect_pile(PILE_A, b.tcp_port)
            bill = make_bill(PILE_A, 1)
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            await pile.close()
        # bridge_running's exit is b.stop(): it came back, within the run's bound
        assert exits and b.store is not None
        assert db_rows(cfg["database"], "SELECT serial FROM bills") == [(bill["serial"],)]
    with tempdir("stop-hang") as tmp:
        run(scenario(tmp), 30)
