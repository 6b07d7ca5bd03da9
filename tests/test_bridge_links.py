# Pile links: third-party piles (byte-swapped CRCs), heartbeats and offline,
# the allow-list, status and last will, realtime, isolation between piles,
# and bills the bridge must refuse or flag.
import asyncio
import os

from protocol import codec
from protocol.reader import FrameReader
from sim.testkit import ScriptedPile, make_bill, make_extra
from sim.links import TcpTransport
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, BridgeProcess, Platform, bridge_and_platform, bridge_running,
    bridge_with_pile, connect_pile, fast_config, in_tempdir, until, url_of)


def test_third_party_pile_with_byte_swapped_crcs_over_tcp(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, pile_kw={"ext": False, "swap_crc": True},
                                    tcp={"ext": False}) as (cfg, b, plat, pile):
            bill = make_bill(PILE_A, 3)
            assert await pile.send_bill(bill) == 0
            doc = await plat.wait_for(lambda: plat.bills.get(bill["serial"]))
            assert doc["crc_swapped"] is True and doc["complete"] is True
            # The audit copy is the pile's frame as it was on the wire.
            raw = codec.encode("bill", bill)
            assert bytes.fromhex(doc["frame"])[6:-2] == raw[6:-2]
            assert codec.decode(bytes.fromhex(doc["frame"]), tolerant=True).crc_swapped
            # Counted per frame: login, time sync reply, bill.
            assert b.piles[PILE_A].crc_swapped == 3
            st = await plat.wait_for(lambda: plat.status.get(plat.topics.status(PILE_A)))
            assert st["ext"] is False
            # Settled is never sent to a third-party pile; the bill still closes.
            await until(lambda: b.store.path and _settled(cfg["database"]) == 1, what="closed")
            assert pile.received("settled") == []
    in_tempdir("swapcrc", scenario)


def _settled(db_path):
    import sqlite3
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM bills WHERE settled_at IS NOT NULL").fetchone()[0]
    finally:
        db.close()


def test_three_missed_heartbeats_mark_the_pile_offline(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, pile_kw={"heartbeat_s": 0.1},
                                    piles={"heartbeat_s": 0.2,
                                           "missed_heartbeats": 3}) as (cfg, b, plat, pile):
            # Alive while it beats (and every heartbeat gets its 0x04).
            await pile.wait_for(lambda: len(pile.received("heartbeat_reply")) >= 8)
            assert b.piles[PILE_A].online
            # It falls silent: offline after 3 periods, its TCP link closed.
            pile.heartbeat_s = None
            for t in pile._tasks[1:]:
                t.cancel()
            st = await plat.wait_for(lambda: (lambda s: s if s and not s["online"] else None)(
                plat.status.get(plat.topics.status(PILE_A))))
            assert "3 heartbeats missed" in st["offline_reason"]
            await pile.wait_for(lambda: not pile.connected)
    in_tempdir("heartbeat", scenario)


def test_allow_list_refuses_unknown_piles(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto, allow=[PILE_A]) as (cfg, b, plat):
            stranger = ScriptedPile(PILE_B, await TcpTransport.connect("127.0.0.1", b.tcp_port))
            assert await stranger.login() == 1
            await stranger.wait_for(lambda: not stranger.connected)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "login_refused"])
            assert ev[0]["pile"] == PILE_B
            assert PILE_B not in b.piles or not b.piles[PILE_B].online
            friend = await connect_pile(PILE_A, b.tcp_port)
            assert b.piles[PILE_A].online
            await friend.close()
            await stranger.close()
    in_tempdir("allow", scenario)


def test_status_is_retained_and_the_last_will_marks_a_killed_bridge_offline(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), log_level="info")
        proc = BridgeProcess(tmp, cfg)
        await proc.start()
        pile = None
        try:
            pile = await connect_pile(PILE_A, proc.tcp_port)
            # A platform that connects later still learns both statuses.
            async with Platform(url_of(mosquitto), name="late") as plat:
                st = await plat.wait_for(lambda: (lambda s: s if s and s["online"] else None)(
                    plat.status.get(plat.topics.status(PILE_A))))
                assert st["login"]["sw_version"] == "PC-0.1" and st["link"].startswith("tcp:")
                br = await plat.wait_for(lambda: plat.status.get(plat.topics.bridge))
                assert br["online"] is True
                proc.kill()
                await proc.wait()
                br = await plat.wait_for(lambda: (lambda s: s if not s["online"] else None)(
                    plat.status.get(plat.topics.bridge)))
                assert br["reason"] == "connection lost"
                # A clean stop says "shutdown" and marks its piles offline.
                await proc.start()
                await pile.close()
                pile = await connect_pile(PILE_A, proc.tcp_port)
                await plat.wait_for(lambda: plat.status[plat.topics.bridge]["online"])
                await proc.stop()
                br = await plat.wait_for(lambda: (lambda s: s if not s["online"] else None)(
                    plat.status.get(plat.topics.bridge)))
                assert br["reason"] == "shutdown"
                assert plat.status[plat.topics.status(PILE_A)]["online"] is False
        finally:
            if pile is not None:
                await pile.close()
            await proc.stop()
    in_tempdir("lwt", scenario)


def test_realtime_is_relayed_and_faults_raise_events(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            serial = PILE_A + "01" + "240501080000" + "0001"
            await pile.realtime(status=3, serial=serial, energy=12345, amount=20000)
            rt = await plat.wait_for(lambda: plat.realtime and plat.realtime[-1])
            assert rt["status"] == "charging" and rt["energy"] == "1.2345" and rt["amount"] == "2.0000"
            assert rt["raw"]["energy"] == 12345 and rt["gun_temp"] == 25 and rt["serial"] == serial
            st = await plat.wait_for(lambda: (lambda s: s if s and s["guns"].get("01", {}).get(
                "status") == "charging" else None)(plat.status.get(plat.topics.status(PILE_A))))
            assert st["guns"]["01"]["serial"] == serial
            await pile.realtime(status=1, faults=0x0004)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "fault"])
            assert ev[0]["faults"] == 4 and ev[0]["gun"] == "01"
            await pile.realtime(status=2, faults=0)
            await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "fault_cleared"])
    in_tempdir("realtime", scenario)


def test_a_pile_sending_garbage_or_stalling_does_not_affect_another(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto) as (cfg, b, plat):
            bad = await connect_pile(PILE_B, b.tcp_port)
            good = await connect_pile(PILE_A, b.tcp_port)
            # Garbage, a frame with a bad CRC, an unknown type, and half a bill
            # that never completes: the bad pile's reader copes, alone.
            bill_b = codec.encode("bill", make_bill(PILE_B, 1))
            junk = (b"\x00\xff" * 300 + b"\x68\x05\x00\x00\x00\x7f\x00\x00\x00"
                    + bill_b[:-2] + b"\x00\x00" + bill_b[:80])
            await bad.transport.write(junk)
            for i in range(5):
                bill = make_bill(PILE_A, i)
                assert await good.send_bill(bill, make_extra(bill)) == 0
            serials = {make_bill(PILE_A, i)["serial"] for i in range(5)}
            await good.wait_for(lambda: serials <= set(good.settled))
            assert b.piles[PILE_B].frame_errors >= 2
            assert _bill_count(cfg["database"], PILE_B) == 0
            # A raw TCP client that never logs in is just closed after a while.
            r, w = await asyncio.open_connection("127.0.0.1", b.tcp_port)
            w.write(b"hello")
            await good.heartbeat()
            await good.wait_for(lambda: good.received("heartbeat_reply"))
            w.close()
            await bad.close()
            await good.close()
    in_tempdir("isolation", scenario)


def _bill_count(db_path, pile):
    import sqlite3
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM bills WHERE pile = ?", (pile,)).fetchone()[0]
    finally:
        db.close()


def test_a_second_login_replaces_the_old_link(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto)):  # confirms
            old = await connect_pile(PILE_A, b.tcp_port)
            new = await connect_pile(PILE_A, b.tcp_port)
            await old.wait_for(lambda: not old.connected)
            assert b.piles[PILE_A].conn is not None and b.piles[PILE_A].logins == 2
            bill = make_bill(PILE_A, 1)
            assert await new.send_bill(bill, make_extra(bill)) == 0
            await new.wait_for(lambda: bill["serial"] in new.settled)
            await old.close()
            await new.close()
    in_tempdir("relogin", scenario)


def test_login_is_followed_by_time_sync_and_the_configured_tariff_model(mosquitto):
    from tests.test_bridge_commands import TARIFF

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), tariff=TARIFF)
        async with bridge_running(cfg) as b:
            pile = await connect_pile(PILE_A, b.tcp_port)
            ts = await pile.wait_for(lambda: pile.received("time_sync"))
            assert abs(ts[0].fields["time"] - __import__("host.schema").schema.local_secs()) < 5
            chk = await pile.request("tariff_check", {"pile": PILE_A, "model": "0000"},
                                     "tariff_check_reply")
            assert chk.fields["result"] == 1
            model = await pile.request("tariff_request", {"pile": PILE_A}, "tariff_model")
            assert model.fields["model"] == "0007"
            await pile.close()
    in_tempdir("tariff", scenario)


def test_time_sync_0_leaves_the_piles_clock_alone(mosquitto):
    # piles.time_sync_s = 0: piles with a clock of their own get no 0x56.
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        cfg["piles"]["time_sync_s"] = 0
        async with bridge_running(cfg) as b:
            pile = await connect_pile(PILE_A, b.tcp_port)
            # The status query comes after the (skipped) sync: by then a 0x56 would be here.
            await pile.wait_for(lambda: pile.received("status_query"))
            assert not pile.received("time_sync")
            await pile.close()
    in_tempdir("nosync", scenario)


def test_bills_that_do_not_belong_or_do_not_add_up(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            # Another pile's bill on this link: quarantined (no 0x40: the pile
            # it names sends it itself), kept with its reason and an event
            # (tests/test_bridge_custody.py has the whole rule).
            foreign = make_bill(PILE_B, 1)
            await pile.send(0x3B, foreign)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "bill_quarantined"])
            assert ev[0]["serial"] == foreign["serial"] and not pile.confirmed[foreign["serial"]]
            # The field's "totals do not add up" bill (energy, no period energy):
            # custody taken, published with its problems, and an event.
            odd = make_bill(PILE_A, 2)
            for p in ("sharp", "peak", "flat", "valley"):
                odd[p + "_energy"] = 0
            assert await pile.send_bill(odd, make_extra(odd)) == 0
            doc = await plat.wait_for(lambda: plat.bills.get(odd["serial"]))
            assert doc["checks"]["ok"] is False
            assert any("period energy" in p for p in doc["checks"]["problems"])
            ev = await plat.wait_for(lambda: [e for e in plat.events
                                              if e["type"] == "unreconciled_bill"])
            assert ev[0]["refused"] is False and ev[0]["pile_kind"] == "ours"
            assert ev[0]["problems"] == doc["checks"]["problems"]
            assert b.stats["bills_unreconciled"] == 1 and b.stats["bills_illegal"] == 0
            assert not [e for e in plat.events if e["type"] == "illegal_bill"]
            # A five-period bill (deep valley) keeps its fifth period.
            five = make_bill(PILE_A, 3)
            for k in ("price", "energy", "loss", "amount"):
                five["deep_" + k] = 0
            assert await pile.send_bill(five, make_extra(five)) == 0
            doc = await plat.wait_for(lambda: plat.bills.get(five["serial"]))
            assert [p["period"] for p in doc["periods"]][-1] == "deep"
    in_tempdir("illegal", scenario)


def test_a_pile_on_a_loop_url_serial_line_that_echoes_the_bridges_own_frames(mosquitto):
    # pyserial's loop:// returns every byte written, like an RS485 adapter
    # that echoes its own transmission: the bridge must take the pile's frames
    # (written into the line here) and ignore its own frames coming back.
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto,
                                       tcp={"listen": None}, serial=[{"url": "loop://"}]) as (cfg, b, plat):
            conn = await until(lambda: next(iter(b.conns), None), what="the loop:// link open")
            assert conn.link.name == "serial:loop://"
            port = conn.link._port
            sent = []                   # every frame written into the line
            write = port.write
            reader = FrameReader()

            def spy(data):
                sent.extend(reader.push(bytes(data)))
                return write(data)
            port.write = spy
            port.write(codec.encode("login", {
                "pile": PILE_A, "pile_type": 0, "guns": 1, "proto_version": 0x10,
                "sw_version": "PC-0.1", "net_type": 0, "sim": "0" * 20, "carrier": 0}, 1))
            await until(lambda: PILE_A in b.piles and b.piles[PILE_A].online, what="login")
            bill = make_bill(PILE_A, 5)
            port.write(codec.encode("bill", bill, 2))
            port.write(codec.encode("bill_extra", make_extra(bill), 3))
            doc = await plat.wait_for(lambda: plat.bills.get(bill["serial"]), 10)
            assert doc["complete"] and doc["checks"]["ok"]
            # The platform confirmed: 0xE4 settled goes down the line (and
            # comes back, ignored). Our own frames went out once each.
            await until(lambda: any(f.name == "settled" for f in sent), what="0xE4 sent")
            names = [f.name for f in sent]
            assert "login_reply" in names
            confirms = [f.fields for f in sent if f.name == "bill_confirm"]
            assert confirms == [{"serial": bill["serial"], "result": 0}]
            # Nothing the bridge heard back from itself became a bill, an
            # event or a second pile.
            assert b.stats["bills_new"] == 1 and b.stats["bills_illegal"] == 0
            assert list(b.piles) == [PILE_A] and b.piles[PILE_A].online
            assert [e for e in plat.events if e["type"] in ("illegal_bill", "unreconciled_bill")] == []
    in_tempdir("loopurl", scenario)


def test_a_serial_adapter_unplugged_and_plugged_in_again_is_reopened(mosquitto):
    # The bridge names the port by a stable link (as /dev/serial/by-id/... is):
    # the adapter goes away (its tty closes under the bridge), comes back as
    # another tty behind the same link, and the pile's next bill goes through.
    from tests.test_bridge_helpers import login_when_open, pty_pair, pty_pile

    async def scenario(tmp):
        link = os.path.join(tmp, "ttyUSB-pile")
        cfg = fast_config(tmp, url_of(mosquitto), tcp={"listen": None},
                          serial=[{"url": link, "baudrate": 115200}])
        async def plugged_in_sends_bill(master, path, n):
            # The tty `path` behind the link; the pile on `master` logs in
            # once the bridge has opened it and sends bill n.
            os.symlink(path, link)
            pile = pty_pile(PILE_A, master)
            await login_when_open(pile)
            bill = make_bill(PILE_A, n)
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            return pile, bill

        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            with pty_pair() as (master, path):
                pile, first = await plugged_in_sends_bill(master, path, 1)
                await pile.close()
                os.remove(link)
            # Unplugged: both ends of that tty are gone. Plugged in again:
            with pty_pair() as (master, path):
                pile, second = await plugged_in_sends_bill(master, path, 2)
                await pile.wait_for(lambda: second["serial"] in pile.settled)
                await plat.wait_for(lambda: first["serial"] in plat.bills and second["serial"] in plat.bills)
                await pile.close()
    in_tempdir("reopen", scenario)
