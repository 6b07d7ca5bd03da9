# The OCPP uplink against a real CSMS (tests/ocpp_csms.py: the `ocpp`
# library's own classes on a websockets server at port 0). Tests are named
# after the OCPP 2.0.1 use cases they cover (docs/ocpp.md lists them); the
# field cases: a CSMS down for a while, a bridge SIGKILLed mid-transaction,
# a CSMS that answers slowly, a bill sent twice, a stop for an unknown
# transaction. Every transaction reaches the CSMS exactly once per serial
# (no (transactionId, seqNo) missing, no two different Ended for a serial),
# and a pile is settled only when every configured uplink acknowledged.
import asyncio
import contextlib
import os

import pytest

from sim.testkit import make_bill, make_extra
from protocol import fields as F
from tools.ocpp_csms import Csms
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, BridgeProcess, Platform, bridge_running, connect_pile, db_rows, fast_config,
    in_tempdir, until, url_of)



def ocpp_config(tmp, csms, mqtt_url=None, over=None, **ocpp):
    """Test config with fast OCPP timers; `over`: other sections, as fast_config takes them."""
    o = {"csms_url": csms.url, "retry_initial_s": 0.05, "retry_max_s": 0.5,
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "response_timeout_s": 5.0,
         "meter_interval_s": 0.0}
    o.update(ocpp)
    cfg = fast_config(tmp, mqtt_url or "mqtt://127.0.0.1:1", ocpp=o, **(over or {}))
    if mqtt_url is None:
        cfg["mqtt"]["enabled"] = False
    return cfg




@contextlib.asynccontextmanager
async def bridge_on_csms(tmp, csms, **ocpp):
    """An OCPP-only bridge on ocpp_config(tmp, csms, **ocpp) and pile A
    logged in over TCP: yields (cfg, bridge, pile); the pile is closed after."""
    cfg = ocpp_config(tmp, csms, **ocpp)
    async with bridge_running(cfg, mqtt_up=False) as b:
        p = await connect_pile(PILE_A, b.tcp_port)
        try:
            yield cfg, b, p
        finally:
            await p.close()


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
            async with bridge_on_csms(tmp, csms) as (cfg, b, p):
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
                await until(lambda: db_rows(cfg["database"], "SELECT ocpp_acked_at IS NOT NULL, "
                                           "settled_at IS NOT NULL FROM bills WHERE serial=?",
                                           bill["serial"]) == [(1, 1)], what="acked and settled")
    in_tempdir("ocpp-e06", scenario)


def test_E04_E13_csms_down_for_a_while_every_bill_arrives_once_with_offline_true_and_no_settle_before():
    async def scenario(tmp):
        csms = await Csms().start()
        async with bridge_on_csms(tmp, csms) as (cfg, b, p):
            await csms.wait_for(lambda: csms.boots[PILE_A] >= 1, what="boot")
            await csms.stop()
            bills = [make_bill(PILE_A, i) for i in range(12)]
            for bill in bills:
                # The CSMS is away: custody still passes (0x40), no 0xE4.
                assert await p.send_bill(bill, make_extra(bill)) == 0
            await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM ocpp_out "
                                       "WHERE kind='ended'") == [(12,)], what="12 Ended queued")
            assert p.settled == {}
            await csms.start()                    # back, on the same port
            serials = [x["serial"] for x in bills]
            await p.wait_for(lambda: set(serials) <= set(p.settled), timeout=20)
            check_exactly_once(csms, serials)
            offline = [csms.unique[(s, 1)][2].get("offline") for s in serials]
            assert offline == [True] * 12
            assert all(p.settled_count[s] >= 1 for s in serials)
        await csms.stop()
    in_tempdir("ocpp-down", scenario)


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
    in_tempdir("ocpp-slow", scenario)


def test_an_ended_event_is_sent_once_when_the_pile_sends_its_bill_twice():
    async def scenario(tmp):
        async with Csms() as csms:
            async with bridge_on_csms(tmp, csms) as (cfg, b, p):
                bill = make_bill(PILE_A, 7)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                assert await p.resend_bill(bill) == 0
                await p.wait_for(lambda: p.settled_count[bill["serial"]] >= 2, timeout=10)
                check_exactly_once(csms, [bill["serial"]])
                assert len([e for e in csms.events if e[3] == "Ended"]) == 1
    in_tempdir("ocpp-twice", scenario)


def test_E13_a_bridge_sigkilled_mid_transaction_and_while_the_csms_is_down_loses_nothing():
    # The bridge is killed (SIGKILL) twice: once with a transaction started
    # at the CSMS and its bill not yet sent, once with Ended events queued
    # while the CSMS is down. seqNo carries on across the restarts, every
    # transaction ends once, and the piles are settled only after.
    async def scenario(tmp):
        csms = await Csms().start()
        cfg = ocpp_config(tmp, csms)
        bp = BridgeProcess(tmp, cfg)
        await bp.start()
        try:
            p = await connect_pile(PILE_A, bp.tcp_port)
            first = make_bill(PILE_A, 1)
            await p.realtime(status=3, serial=first["serial"], energy=100)
            await csms.wait_for(lambda: (first["serial"], 0) in csms.unique, what="Started")
            bp.kill()
            await bp.wait()
            await p.close()
            await bp.start()
            p = await connect_pile(PILE_A, bp.tcp_port)
            assert await p.send_bill(first, make_extra(first)) == 0
            await p.wait_for(lambda: first["serial"] in p.settled, timeout=20)
            # Down: five more bills, custody passes, then the bridge dies.
            await csms.stop()
            later = [make_bill(PILE_A, i) for i in range(2, 7)]
            for bill in later:
                assert await p.send_bill(bill, make_extra(bill)) == 0
            db = os.path.join(tmp, "bridge.db")
            await until(lambda: db_rows(db, "SELECT COUNT(*) FROM ocpp_out WHERE kind='ended' AND "
                                       "acked_at IS NULL") == [(5,)], what="5 Ended queued")
            bp.kill()
            await bp.wait()
            await p.close()
            await csms.start()
            await bp.start()
            p = await connect_pile(PILE_A, bp.tcp_port)
            serials = [first["serial"]] + [b["serial"] for b in later]
            await p.wait_for(lambda: set(serials[1:]) <= set(p.settled), timeout=30)
            check_exactly_once(csms, serials)
            # The first transaction: Started before the kill (seq 0), Ended
            # after it (seq 1): the counter survived.
            assert csms.unique[(first["serial"], 1)][1] == "Ended"
            await p.close()
        finally:
            await bp.stop()
            await csms.stop()
    in_tempdir("ocpp-kill", scenario, timeout=120)


def test_settlement_waits_for_both_the_mqtt_platform_and_the_csms(mosquitto):
    # decisions.md: a bill is settled only when every configured uplink has
    # acknowledged it. The platform confirms at once; the CSMS is down: no
    # 0xE4 until the CSMS answers the Ended event.
    async def scenario(tmp):
        csms = await Csms().start()
        await csms.stop()
        cfg = ocpp_config(tmp, csms, mqtt_url=url_of(mosquitto))
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto)) as plat:
            p = await connect_pile(PILE_A, b.tcp_port)
            bill = make_bill(PILE_A, 3)
            assert await p.send_bill(bill, make_extra(bill)) == 0
            await plat.wait_for(lambda: bill["serial"] in plat.bills)
            await until(lambda: db_rows(cfg["database"], "SELECT confirmed_at IS NOT NULL FROM bills")
                        == [(1,)], what="the platform's confirmation")
            await until(lambda: b.stats["confirms"] >= 1, what="the confirmation handled")
            # Confirmed by MQTT, the CSMS unreachable: not settled. A resend
            # of the bill (answered after anything the confirmation started)
            # gets its 0x40 and still no 0xE4.
            assert await p.resend_bill(bill) == 0
            assert p.received("settled") == []
            assert db_rows(cfg["database"], "SELECT settled_at FROM bills") == [(None,)]
            await csms.start()
            await p.wait_for(lambda: bill["serial"] in p.settled, timeout=20)
            check_exactly_once(csms, [bill["serial"]])
            await p.close()
        await csms.stop()
    in_tempdir("ocpp-both", scenario)


def test_F01_F03_E14_K01_csms_commands_reach_the_pile_and_an_unknown_transaction_is_refused():
    from ocpp.v201 import call

    async def scenario(tmp):
        async with Csms() as csms:
            async with bridge_on_csms(tmp, csms) as (cfg, b, p):
                await csms.wait_for(lambda: PILE_A in csms.stations and csms.boots[PILE_A], what="boot")
                cp = csms.stations[PILE_A]
                # F01/F02: RequestStartTransaction -> 0x34 on gun 1, the trade serial back.
                r = await cp.call(call.RequestStartTransaction(
                    id_token={"id_token": "D14B0A54", "type": "ISO14443"}, remote_start_id=7, evse_id=1))
                assert r.status == "Accepted" and r.transaction_id
                start = p.received("remote_start")[-1].fields
                assert start["gun"] == "01" and start["serial"] == r.transaction_id
                serial = r.transaction_id
                await p.realtime(status=3, serial=serial, energy=100)
                await until(lambda: db_rows(cfg["database"], "SELECT acked_at IS NOT NULL FROM ocpp_out")
                            == [(1,)], what="the Started acknowledged")
                # E14: GetTransactionStatus from the store: ongoing.
                st = await cp.call(call.GetTransactionStatus(transaction_id=serial))
                assert st.ongoing_indicator is True and st.messages_in_queue is False
                # Field case: a stop for an unknown transaction id.
                r = await cp.call(call.RequestStopTransaction(transaction_id="0" * 31 + "9"))
                assert r.status == "Rejected" and p.received("remote_stop") == []
                # F03: RequestStopTransaction -> 0x36 on its gun.
                r = await cp.call(call.RequestStopTransaction(transaction_id=serial))
                assert r.status == "Accepted" and p.received("remote_stop")[-1].fields["gun"] == "01"
                bill = dict(make_bill(PILE_A, 5))
                bill["serial"] = serial
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await p.wait_for(lambda: serial in p.settled, timeout=10)
                ended = [v for (t, q), v in csms.unique.items() if t == serial and v[1] == "Ended"][0][2]
                assert ended["trigger_reason"] == "RemoteStop"
                st = await cp.call(call.GetTransactionStatus(transaction_id=serial))
                assert st.ongoing_indicator is False and st.messages_in_queue is False
                # K01: a profile for an EVSE the pile does not have is refused
                # (the caps themselves: tests/test_ocpp_control.py).
                r = await cp.call(call.SetChargingProfile(evse_id=2, charging_profile={
                    "id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
                    "charging_profile_kind": "Absolute", "charging_schedule": [{
                        "id": 1, "charging_rate_unit": "W", "start_schedule": "2026-01-01T00:00:00Z",
                        "charging_schedule_period": [{"start_period": 0, "limit": 7000}]}]}))
                assert r.status == "Rejected"
                # B11/B12: Reset -> 0x92.
                r = await cp.call(call.Reset(type="OnIdle"))
                assert r.status == "Accepted" and p.received("reboot")[-1].fields["when"] == 2
    in_tempdir("ocpp-cmds", scenario)


def test_E13_strict_mode_stops_retrying_but_never_deletes_nor_settles():
    async def scenario(tmp):
        async with Csms() as csms:
            csms.refuse = True
            async with bridge_on_csms(tmp, csms, mode="strict", message_attempts=2) as (cfg, b, p):
                bill = make_bill(PILE_A, 9)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM ocpp_out WHERE "
                                           "gave_up_at IS NOT NULL") == [(1,)], what="given up")
                # The Started was refused twice; nothing after it went (order).
                assert db_rows(cfg["database"], "SELECT kind, attempts, acked_at FROM ocpp_out "
                              "ORDER BY id") == [("started", 2, None), ("ended", 0, None)]
                assert db_rows(cfg["database"], "SELECT COUNT(*), MAX(settled_at) FROM bills") == [(1, None)]
                assert bill["serial"] not in p.settled
                assert csms.refused == 2 and csms.events == []
    in_tempdir("ocpp-strict", scenario)


def test_never_drop_mode_retries_a_refused_message_until_the_csms_takes_it():
    async def scenario(tmp):
        async with Csms() as csms:
            csms.refuse = True
            async with bridge_on_csms(tmp, csms, message_attempts=2) as (cfg, b, p):
                bill = make_bill(PILE_A, 10)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await csms.wait_for(lambda: csms.refused >= 5, what="5 refused tries")
                csms.refuse = False
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                assert db_rows(cfg["database"], "SELECT COUNT(*) FROM ocpp_out WHERE gave_up_at IS NOT NULL") \
                    == [(0,)]
    in_tempdir("ocpp-neverdrop", scenario)


def test_16_start_meter_values_stop_with_a_persisted_transaction_id_map():
    async def scenario(tmp):
        async with Csms(version="1.6") as csms:
            async with bridge_on_csms(tmp, csms, version="1.6") as (cfg, b, p):
                await csms.wait_for(lambda: (PILE_A, 1, "Available") in csms.statuses, what="status")
                # Distinct start times: a 1.6 CSMS knows a repeated start by them.
                bills = [make_bill(PILE_A, i, when=F.to_secs(2024, 5, 1, 8 + i)) for i in range(3)]
                await p.realtime(status=3, serial=bills[0]["serial"], energy=100)
                await csms.wait_for(lambda: any(e[3] == "Started" for e in csms.events), what="start")
                await p.realtime(status=3, serial=bills[0]["serial"], energy=200)
                await csms.wait_for(lambda: any(e[3] == "MeterValues" for e in csms.events), what="mv")
                for bill in bills:
                    assert await p.send_bill(bill, make_extra(bill)) == 0
                serials = [x["serial"] for x in bills]
                await p.wait_for(lambda: set(serials) <= set(p.settled), timeout=20)
                check_exactly_once(csms, serials, version="1.6")
                ids = db_rows(cfg["database"], "SELECT serial, tx_id FROM ocpp_tx ORDER BY serial")
                assert [s for s, _ in ids] == sorted(serials) and all(t for _, t in ids)
                # StopTransaction carried the id the CSMS gave at the start.
                stops = [(t, k) for (_, t, q, k) in csms.events if k == "Ended"]
                assert sorted(t for t, _ in stops) == sorted(t for _, t in ids)
    in_tempdir("ocpp-16", scenario)


def test_security_profile_1_basic_auth_wrong_password_is_refused_right_one_delivers(tmp_path=None):
    async def scenario(tmp):
        async with Csms(password="s3cret-site") as csms:
            bad = os.path.join(tmp, "bad.pw")
            good = os.path.join(tmp, "good.pw")
            for path, pw in ((bad, "guess"), (good, "s3cret-site")):
                with open(path, "w") as f:
                    f.write(pw + "\n")
                os.chmod(path, 0o600)
            async with bridge_on_csms(tmp, csms, security_profile=1, password_file=bad) as (cfg, b, p):
                await csms.wait_for(lambda: csms.auth_refused >= 2, what="refused twice")
                assert csms.boots[PILE_A] == 0
            cfg["ocpp"]["password_file"] = good
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 4)
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                check_exactly_once(csms, [bill["serial"]])
                await p.close()
    in_tempdir("ocpp-auth", scenario)


def test_A00_security_profiles_2_and_3_tls_with_the_site_ca_and_a_client_certificate():
    # Profile 2: wss:// checked against the site CA (made with pile-mqtt-site's
    # PKI code) plus basic auth; profile 3: wss:// with the station's client
    # certificate, which the CSMS requires.
    import ssl
    from host.mqtt_site import Pki

    async def scenario(tmp):
        pki = Pki(os.path.join(tmp, "pki"))
        os.makedirs(os.path.dirname(pki.ca_key), mode=0o700)
        pki._make_ca("test OCPP CA")
        pki.make_server(ips=["127.0.0.1"])
        ckey, ccrt = os.path.join(tmp, "pki", "station.key"), os.path.join(tmp, "pki", "station.crt")
        pki._issue(ckey, ccrt, PILE_A, "clientAuth")
        pw = os.path.join(tmp, "pw")
        with open(pw, "w") as f:
            f.write("tls-site-pw\n")
        os.chmod(pw, 0o600)
        for profile in (2, 3):
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            sctx.load_cert_chain(pki.server_crt, pki.server_key)
            if profile == 3:
                sctx.verify_mode = ssl.CERT_REQUIRED
                sctx.load_verify_locations(pki.ca_crt)
            async with Csms(password="tls-site-pw" if profile == 2 else None, ssl=sctx) as csms:
                o = {"security_profile": profile, "ca_file": pki.ca_crt}
                if profile == 2:
                    o["password_file"] = pw
                else:
                    o.update(cert_file=ccrt, key_file=ckey)
                cfg = ocpp_config(tmp, csms, **o)
                cfg["database"] = os.path.join(tmp, "bridge%d.db" % profile)
                async with bridge_running(cfg, mqtt_up=False) as b:
                    p = await connect_pile(PILE_A, b.tcp_port)
                    bill = make_bill(PILE_A, 20 + profile)
                    assert await p.send_bill(bill, make_extra(bill)) == 0
                    await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
                    check_exactly_once(csms, [bill["serial"]])
                    await p.close()
    in_tempdir("ocpp-tls", scenario)
