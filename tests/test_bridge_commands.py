# Commands down: MQTT command -> YKC / extension frame -> the pile's answer
# -> exactly one result. Bad input never crashes the bridge.
import json

from tests.test_bridge_helpers import (
    PILE_A, PILE_B, PILE_C, Platform, bridge_and_platform, bridge_running, bridge_with_pile,
    connect_pile, fast_config, in_tempdir, run, tempdir, until, url_of)

TARIFF = {"model": "0007",
          "rates": {"sharp": {"energy": 120000, "service": 40000},
                    "peak": {"energy": 100000, "service": 40000},
                    "flat": {"energy": 70000, "service": 40000},
                    "valley": {"energy": 30000, "service": 40000}},
          "loss_ratio": 0, "slots": "3" * 16 + "1" * 4 + "0" * 4 + "1" * 12 + "2" * 8 + "3" * 4}


def test_command_for_offline_pile_gets_an_offline_result_at_once(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto,
                                       pile={PILE_B: {"ext": True}}) as (cfg, b, plat):
            # Configured but never logged in.
            r = await plat.command(PILE_B, {"id": "c1", "cmd": "stop", "gun": "01"})
            assert (r["ok"], r["code"]) == (False, "offline")
            assert "never logged in" in r["message"]
            # Logged in, then its link dropped.
            pile = await connect_pile(PILE_A, b.tcp_port)
            await pile.close()
            await until(lambda: not b.piles[PILE_A].online, what="pile offline")
            r = await plat.command(PILE_A, {"id": "c2", "cmd": "start", "gun": "01"})
            assert (r["ok"], r["code"]) == (False, "offline")
            assert "link closed" in r["message"]
            # A pile the bridge has never heard of.
            r = await plat.command(PILE_C, {"id": "c3", "cmd": "reboot"})
            assert (r["ok"], r["code"]) == (False, "unknown_pile")
    in_tempdir("offline", scenario)


def test_malformed_commands_get_clear_errors_and_the_bridge_keeps_serving(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            bad = [
                (b"{not json", "bad_request", None),
                (b"[1, 2]", "bad_request", None),
                (b'{"cmd": "stop"}', "bad_request", None),                       # no id
                (b'{"id": 5, "cmd": "stop"}', "bad_request", "5"),               # id not a string
                (json.dumps({"id": "u1", "cmd": "explode"}), "unknown_command", "u1"),
                (json.dumps({"id": "u2", "cmd": "stop", "gun": [1]}), "bad_request", "u2"),
                (json.dumps({"id": "u3", "cmd": "stop", "force": True}), "bad_request", "u3"),
                (json.dumps({"id": "u4", "cmd": "start", "balance": -1}), "bad_request", "u4"),
                (json.dumps({"id": "u5", "cmd": "reboot", "when": "later"}), "bad_request", "u5"),
                (json.dumps({"id": "u6", "cmd": "tariff_set", "tariff": {"model": "1"}}),
                 "bad_request", "u6"),
                (json.dumps({"id": "u7", "cmd": "stop", "expires": 1}), "expired", "u7"),
                (json.dumps({"id": "u8", "cmd": "stop", "pad": "x" * 70000}), "too_large", None),
                (b"\xff\xfe\x00", "bad_request", None),
            ]
            for payload, _, _ in bad:
                await plat.command(PILE_A, payload)
            await plat.wait_for(lambda: len(plat.result_list) >= len(bad))
            got = [(r["code"], r["id"], r["ok"]) for r in plat.result_list]
            assert got == [(code, rid, False) for _, code, rid in bad]
            assert all(r["message"] for r in plat.result_list)
            # Not a pile code at all.
            await plat.client.publish(plat.topics.command("not-a-pile"), b'{"id":"t1","cmd":"stop"}', qos=1)
            r = await plat.wait_for(lambda: plat.results.get("t1"))
            assert r["code"] == "unknown_pile"
            # Still serving: a good command works.
            r = await plat.command(PILE_A, {"id": "ok1", "cmd": "stop", "gun": "01"})
            assert r["ok"] and r["code"] == "ok"
    in_tempdir("malformed", scenario)


def test_every_command_translates_to_its_frame_and_reports_the_answer(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            serial = PILE_A + "01" + "240501080000" + "0042"
            r = await plat.command(PILE_A, {"id": "s1", "cmd": "start", "gun": "01", "serial": serial,
                                            "balance": 10000, "card": "D14B0A54",
                                            "targets": {"amount": 10000, "energy": 0, "soc": 90}})
            assert r["ok"] and r["serial"] == serial
            f = pile.received("ext_start")[-1].fields
            assert (f["target_amount"], f["target_soc"], f["balance"]) == (10000, 90, 10000)
            r = await plat.command(PILE_A, {"id": "s2", "cmd": "start", "gun": "01"})
            assert r["ok"] and len(r["serial"]) == 32 and r["serial"].startswith(PILE_A + "01")
            assert pile.received("remote_start")[-1].fields["serial"] == r["serial"]
            pile.start_result = (0, 2)
            r = await plat.command(PILE_A, {"id": "s3", "cmd": "start", "gun": "01"})
            assert (r["ok"], r["code"], r["reply"]["reason"]) == (False, "refused", 2)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "start_refused"])
            assert ev[0]["reason"] == 2

            r = await plat.command(PILE_A, {"id": "p1", "cmd": "stop", "gun": "01"})
            assert r["ok"] and pile.received("remote_stop")[-1].fields["gun"] == "01"
            pile.stop_result = (0, 2)
            r = await plat.command(PILE_A, {"id": "p2", "cmd": "stop"})
            assert r["code"] == "refused" and "not charging" in r["message"]

            r = await plat.command(PILE_A, {"id": "r1", "cmd": "reboot", "when": "idle"})
            assert r["ok"] and pile.received("reboot")[-1].fields["when"] == 2

            r = await plat.command(PILE_A, {"id": "t1", "cmd": "tariff_set", "tariff": TARIFF})
            assert r["ok"] and r["delivered"]
            tf = pile.received("tariff_set")[-1].fields
            assert tf["model"] == "0007" and tf["sharp_energy_price"] == 120000
            assert tf["slots"] == "".join("0" + c for c in TARIFF["slots"])
            # The pile's own check now gets "same" for 0007, "differs" otherwise.
            chk = await pile.request("tariff_check", {"pile": PILE_A, "model": "0007"},
                                     "tariff_check_reply")
            assert chk.fields["result"] == 0
            n = len(pile.frames)
            await pile.send("tariff_check", {"pile": PILE_A, "model": "0001"})
            await pile.wait_for(lambda: any(x.name == "tariff_check_reply" for x in pile.frames[n:]))
            assert [x for x in pile.frames[n:] if x.name == "tariff_check_reply"][0].fields["result"] == 1
            model = await pile.request("tariff_request", {"pile": PILE_A}, "tariff_model")
            assert model.fields["model"] == "0007" and model.fields["valley_service_price"] == 40000

            r = await plat.command(PILE_A, {"id": "y1", "cmd": "time_sync"})
            assert r["ok"] and r["reply"]["pile_time"]
            r = await plat.command(PILE_A, {"id": "v1", "cmd": "versions"})
            assert r["ok"] and r["reply"]["fw"] == "209.04.0" and r["reply"]["hmi"] == "103"
            assert r["reply"]["sw"] == "PC-0.1"
            r = await plat.command(PILE_A, {"id": "j1", "cmd": "journal_status"})
            assert r["ok"] and r["reply"]["journal_limit"] == 65536
            r = await plat.command(PILE_A, {"id": "rt1", "cmd": "read_realtime", "gun": "01"})
            assert r["ok"] and r["reply"]["status"] == "idle" and r["reply"]["voltage"] == "380.0"
            r = await plat.command(PILE_A, {"id": "st1", "cmd": "status"})
            assert r["ok"] and r["reply"]["online"] and r["reply"]["versions"]["fw"] == "209.04.0"
            vins = ["LSVAU2180N2183%03d" % i for i in range(30)]
            r = await plat.command(PILE_A, {"id": "vl1", "cmd": "vin_list", "version": 3,
                                            "vins": vins[:-1] + [{"vin": vins[-1], "department": 9}]})
            assert r["ok"] and len(r["reply"]["frames"]) == 3
            assert [x["vin"] for x in pile.vins] == vins and pile.vins[-1]["department"] == 9
            r = await plat.command("site", {"id": "site1", "cmd": "status"})
            assert r["ok"] and r["reply"]["piles"] == {PILE_A: True}
    in_tempdir("commands", scenario)


def test_command_timeout_then_late_and_duplicate_replies_are_ignored(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto,
                                    piles={"command_timeout_s": 0.3}) as (cfg, b, plat, pile):
            pile.silent.add("remote_stop")
            r = await plat.command(PILE_A, {"id": "late", "cmd": "stop"})
            assert (r["ok"], r["code"]) == (False, "timeout")
            assert "0x35" in r["message"]
            # The answer comes after all, twice: nobody waits, both dropped.
            stop = pile.received("remote_stop")[-1]
            for _ in range(2):
                await pile.send("remote_stop_reply", {"pile": PILE_A, "gun": "01", "result": 1,
                                                      "reason": 0}, stop.seq)
            pile.silent.clear()
            # The next stop is answered normally, and twice by a sloppy pile:
            # the first answer completes it, the second is dropped.
            r = await plat.command(PILE_A, {"id": "next", "cmd": "stop"})
            assert r["ok"]
            stop = pile.received("remote_stop")[-1]
            await pile.send("remote_stop_reply", {"pile": PILE_A, "gun": "01", "result": 0,
                                                  "reason": 3}, stop.seq)
            r = await plat.command(PILE_A, {"id": "after", "cmd": "versions"})
            assert r["ok"]
            assert len([x for x in plat.result_list if x["id"] in ("late", "next", "after")]) == 3
    in_tempdir("late", scenario)


def test_concurrent_commands_are_matched_by_sequence_not_by_order(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, pile_kw={"guns": 2}) as (cfg, b, plat, pile):
            pile.silent.add("remote_stop")
            await plat.client.publish(plat.topics.command(PILE_A),
                                      json.dumps({"id": "g1", "cmd": "stop", "gun": "01"}), qos=1)
            await plat.client.publish(plat.topics.command(PILE_A),
                                      json.dumps({"id": "g2", "cmd": "stop", "gun": "02"}), qos=1)
            await pile.wait_for(lambda: len(pile.received("remote_stop")) == 2)
            s1, s2 = pile.received("remote_stop")
            # Answer in reverse order; gun 02 refuses, gun 01 accepts.
            by_gun = {s1.fields["gun"]: s1, s2.fields["gun"]: s2}
            await pile.send("remote_stop_reply", {"pile": PILE_A, "gun": "02", "result": 0, "reason": 2},
                            by_gun["02"].seq)
            await pile.send("remote_stop_reply", {"pile": PILE_A, "gun": "01", "result": 1, "reason": 0},
                            by_gun["01"].seq)
            r1 = await plat.wait_for(lambda: plat.results.get("g1"))
            r2 = await plat.wait_for(lambda: plat.results.get("g2"))
            assert r1["ok"] and not r2["ok"] and r2["code"] == "refused"
    in_tempdir("concurrent", scenario)


def test_repeated_stop_request_id_is_not_sent_twice(mosquitto):
    # The field's lost bills came from a stop sent two or three times: a
    # command redelivered with the same id reaches the pile once.
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            cmd = {"id": "stop-order-77", "cmd": "stop", "gun": "01"}
            for _ in range(3):
                await plat.client.publish(plat.topics.command(PILE_A), json.dumps(cmd), qos=1)
            await plat.wait_for(lambda: len([r for r in plat.result_list
                                             if r["id"] == "stop-order-77"]) == 3)
            rs = [r for r in plat.result_list if r["id"] == "stop-order-77"]
            assert all(r["ok"] for r in rs)
            assert sum(1 for r in rs if r.get("duplicate")) == 2
            assert len(pile.received("remote_stop")) == 1
    in_tempdir("dupid", scenario)


def test_start_targets_are_refused_for_a_third_party_pile(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto, pile_kw={"ext": False},
                                    tcp={"ext": False}) as (cfg, b, plat, pile):
            r = await plat.command(PILE_A, {"id": "x1", "cmd": "start", "targets": {"amount": 10000}})
            assert (r["ok"], r["code"]) == (False, "unsupported")
            assert pile.received("ext_start") == [] and pile.received("remote_start") == []
            r = await plat.command(PILE_A, {"id": "x2", "cmd": "journal_status"})
            assert r["code"] == "unsupported"
            r = await plat.command(PILE_A, {"id": "x3", "cmd": "versions"})
            assert r["ok"] and r["reply"] == {"sw": "PC-0.1"}
            assert pile.received("status_query") == []
    in_tempdir("thirdparty", scenario)


def test_a_start_refused_for_a_full_journal_raises_journal_full(mosquitto):
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            await pile.wait_for(lambda: pile.received("status_query"))
            pile.status["journal_used"] = 65536          # full of unconfirmed bills
            pile.start_result = (0, 3)
            r = await plat.command(PILE_A, {"id": "full1", "cmd": "start"})
            assert r["code"] == "refused"
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "journal_full"])
            assert ev[0]["journal_used"] == ev[0]["journal_limit"] == 65536
            assert [e["type"] for e in plat.events].count("start_refused") == 1
            st = await plat.wait_for(lambda: (lambda s: s if s and s["journal"] and
                                              s["journal"]["journal_used"] == 65536 else None)(
                plat.status.get(plat.topics.status(PILE_A))))
            assert st["journal"]["journal_limit"] == 65536
    in_tempdir("journalfull", scenario)


def test_a_pile_on_firmware_before_refusing_starts_is_read_and_its_journal_judged_by_size(mosquitto):
    # A fleet in mid-upgrade: this pile's 0xE5 is the 55-byte form without
    # refusing_starts. Its status is published, journal_status answers, and a
    # full journal is still seen (journal_used at journal_limit).
    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto,
                                    pile_kw={"status_frame": "status_reply55"}) as (cfg, b, plat, pile):
            pile.status["journal_used"] = 1024
            r = await plat.command(PILE_A, {"id": "old1", "cmd": "journal_status"})
            assert r["ok"] and r["reply"]["journal_limit"] == 65536, r
            assert r["reply"]["journal_used"] == 1024
            assert b.piles[PILE_A].status_reply["fw_version"] == "209.04.0"
            assert "refusing_starts" not in b.piles[PILE_A].status_reply
            st = await plat.wait_for(lambda: (lambda s: s if s and s["journal"] and
                                              s["journal"]["journal_used"] == 1024 else None)(
                plat.status.get(plat.topics.status(PILE_A))))
            assert st["online"] and st["versions"]["fw"] == "209.04.0"
            assert not [e for e in plat.events if e["type"] == "journal_full"]
            pile.status["journal_used"] = 65536
            r = await plat.command(PILE_A, {"id": "old2", "cmd": "journal_status"})
            assert r["ok"] and r["reply"]["journal_used"] == 65536
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "journal_full"])
            assert ev[0]["journal_used"] == ev[0]["journal_limit"] == 65536
    in_tempdir("oldstatus", scenario)


def test_a_command_id_seen_before_a_bridge_restart_is_never_executed_again(mosquitto):
    # Issue 17: duplicate ids were remembered in RAM only: the same command
    # ran again after a bridge restart. They are in the store now.
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        async with Platform(url_of(mosquitto)) as plat:
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                r = await plat.command(PILE_A, {"id": "stop-1", "cmd": "stop", "gun": "01"})
                assert r["ok"] and not r.get("duplicate")
                assert len(pile.received("remote_stop")) == 1
                await pile.close()
            async with bridge_running(cfg) as b:
                pile = await connect_pile(PILE_A, b.tcp_port)
                plat.results.pop("stop-1", None)
                r = await plat.command(PILE_A, {"id": "stop-1", "cmd": "stop", "gun": "01"})
                assert r["duplicate"] is True and r["ok"] is True, r
                assert "not executed again" in r["message"]
                assert pile.received("remote_stop") == []          # the pile saw nothing
                r = await plat.command(PILE_A, {"id": "stop-2", "cmd": "stop", "gun": "01"})
                assert r["ok"] and len(pile.received("remote_stop")) == 1
                await pile.close()
    with tempdir("cmd-restart") as tmp:
        run(scenario(tmp), 60)
