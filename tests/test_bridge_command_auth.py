# Platform commands carry a MAC and a persisted replay window (issue 17
# item 3): with keys.platform_key_file on the bridge, a command runs only if
# its `auth` (HMAC over the site, the target pile and the whole command,
# `expires` included) matches and its `expires` is at most
# mqtt.command_max_life_s ahead. Tried as an attacker who can publish on the
# command topic (a leaked platform password, a careless ACL): a command with
# no auth, a changed id, a removed or moved expires, another pile's command,
# all refused by name with a `command_refused` event; the same signed
# command again, also after a bridge restart, is not executed again.
# Real bridge (in this process), Mosquitto.
import asyncio
import os
import time

from host import commands as C
from host import platform as P
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, Platform, bridge_running, fast_config, in_tempdir, until, url_of)

KEY = bytes(range(100, 132))


def _key_file(tmp):
    path = os.path.join(tmp, "platform.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(KEY.hex() + "\n")
    return path


def _cfg(tmp, mosquitto):
    return fast_config(tmp, url_of(mosquitto), keys={"platform_key_file": _key_file(tmp)},
                       pile={PILE_A: {"name": "a"}, PILE_B: {"name": "b"}},
                       mqtt={"command_max_life_s": 600.0})


def test_a_command_runs_only_with_its_auth_and_never_twice(mosquitto):
    async def scenario(tmp):
        cfg = _cfg(tmp, mosquitto)
        signed = C.sign_command(KEY, "t1", PILE_A, {"id": "s-1", "cmd": "status"})
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            r = await plat.command(PILE_A, signed)
            assert r["ok"] is True and r["code"] == "ok" and not r.get("duplicate")

            async def refused(pile, doc, code="unauthenticated"):
                r = await plat.command(pile, doc)
                assert r["ok"] is False and r["code"] == code, r
                return r
            # No auth at all.
            await refused(PILE_A, {"id": "u-1", "cmd": "status"})
            # The id changed (a replay under a new id), the rest as signed.
            await refused(PILE_A, dict(signed, id="s-1-again"))
            # expires removed, or moved later, with the old auth.
            await refused(PILE_A, {k: v for k, v in signed.items() if k != "expires"} | {"id": "s-2"})
            later = C.sign_command(KEY, "t1", PILE_A, {"id": "s-3", "cmd": "status"})
            await refused(PILE_A, dict(later, expires=later["expires"] + 3600))
            # Pile A's command sent to pile B, and a command signed with
            # another key.
            await refused(PILE_B, C.sign_command(KEY, "t1", PILE_A, {"id": "s-4", "cmd": "status"}))
            await refused(PILE_A, C.sign_command(bytes(32), "t1", PILE_A, {"id": "s-5", "cmd": "status"}))
            # A valid auth, but expires past the replay window: bad_request.
            far = C.sign_command(KEY, "t1", PILE_A, {"id": "s-6", "cmd": "status",
                                                     "expires": int(time.time()) + 7200})
            r = await refused(PILE_A, far, "bad_request")
            assert "replay window" in r["message"]
            # A past expires is refused as expired even when signed.
            old = C.sign_command(KEY, "t1", PILE_A, {"id": "s-7", "cmd": "status",
                                                     "expires": int(time.time()) - 1})
            await refused(PILE_A, old, "expired")
            # Every unauthenticated one raised an event naming it.
            def refusals():
                ev = [e for e in plat.events if e["type"] == "command_refused"]
                return ev if len(ev) == 6 else None
            ev = await plat.wait_for(refusals)
            assert sorted(e["id"] for e in ev) == ["s-1-again", "s-2", "s-3", "s-4", "s-5", "u-1"]
            # The same signed command again: its earlier result, not run again.
            plat.results.pop("s-1")
            r = await plat.command(PILE_A, signed)
            assert r["duplicate"] is True
        # ... and after a bridge restart (the ids are in the store).
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            r = await plat.command(PILE_A, signed)
            assert r["duplicate"] is True and "not executed again" in r["message"]
            # The reference platform signs with --platform-key (cmd_key).
            ref = P.Platform(url_of(mosquitto), cmd_key=KEY, consume=False)
            ready = asyncio.Event()
            task = asyncio.ensure_future(ref.run(ready))
            try:
                await asyncio.wait_for(ready.wait(), 10)
                r = await ref.command("t1", PILE_A, "status", timeout=10)
                assert r["ok"] is True, r
                ref.cmd_key = None
                r = await ref.command("t1", PILE_A, "status", timeout=10)
                assert r["code"] == "unauthenticated"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    in_tempdir("cmdauth", scenario)


def test_without_a_platform_key_commands_run_unsigned_as_before(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), pile={PILE_A: {"name": "a"}})
        async with bridge_running(cfg), Platform(url_of(mosquitto)) as plat:
            r = await plat.command(PILE_A, {"id": "n-1", "cmd": "status"})
            assert r["ok"] is True
    in_tempdir("cmdauth-off", scenario)


def test_the_command_mac_covers_every_field_the_site_and_the_pile():
    doc = C.sign_command(KEY, "t1", PILE_A, {"id": "x", "cmd": "stop", "gun": "01"}, now=1000)
    assert doc["expires"] == 1300

    def check(d, target=PILE_A, site="t1"):
        try:
            C._check_auth(d, d.get("id"), d.get("cmd"), (KEY, site, target, 600.0), 1000)
            return "ok"
        except C.CommandError as e:
            return e.code
    assert check(doc) == "ok"
    for k, v in (("id", "y"), ("cmd", "start"), ("gun", "02"), ("expires", 1301)):
        assert check(dict(doc, **{k: v})) == "unauthenticated", k
    assert check(dict(doc, extra=1)) == "unauthenticated"
    assert check(doc, target=PILE_B) == "unauthenticated"
    assert check(doc, site="t2") == "unauthenticated"
    assert check(dict(doc, auth=doc["auth"].upper())) == "ok"        # hex case is not the MAC
    assert check({k: v for k, v in doc.items() if k != "auth"}) == "unauthenticated"


def test_with_a_platform_key_only_a_signed_confirmation_confirms_a_bill(mosquitto):
    # The bill's content hash is no secret (it is in the bill document):
    # anyone who can read the bills and publish a confirmation could settle
    # a bill the platform never stored. With a platform key a confirmation
    # must carry its `auth` too.
    import json
    import sqlite3
    from sim.testkit import make_bill
    from protocol import codec
    from tests.test_bridge_custody import RawPile

    async def scenario(tmp):
        cfg = _cfg(tmp, mosquitto)
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto), confirm=False) as plat:
            p = await RawPile.connect(b.tcp_port, login=PILE_B)
            bill = make_bill(PILE_B, 1)
            await p.write(codec.encode("bill", bill, 3))
            doc = await plat.wait_for(lambda: plat.bills.get(bill["serial"]))
            conf = {"serial": bill["serial"], "result": 0, "hash": doc["content_hash"]}
            topic = plat.topics.confirm(PILE_B)

            def confirmed():
                db = sqlite3.connect(cfg["database"])
                try:
                    return db.execute("SELECT confirmed_at IS NOT NULL FROM bills WHERE serial = ?",
                                      (bill["serial"],)).fetchone()[0] == 1
                finally:
                    db.close()
            # Right hash, no auth; right hash, auth for another pile or key.
            await plat.client.publish(topic, json.dumps(conf), qos=1)
            await plat.client.publish(topic, json.dumps(C.sign_confirmation(KEY, "t1", PILE_A, conf)),
                                      qos=1)
            await plat.client.publish(topic, json.dumps(C.sign_confirmation(bytes(32), "t1", PILE_B,
                                                                            conf)), qos=1)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "confirm_refused"]
                                     if len([e for e in plat.events
                                             if e["type"] == "confirm_refused"]) == 3 else None)
            assert all(e["reason"] == "unauthenticated" and e["serials"] == [bill["serial"]]
                       for e in ev)
            assert not confirmed()
            # Signed by the platform: confirmed.
            await plat.client.publish(topic, json.dumps(C.sign_confirmation(KEY, "t1", PILE_B, conf)),
                                      qos=1)
            await until(confirmed, what="the signed confirmation taken")
            await p.close()
    in_tempdir("confauth", scenario)
