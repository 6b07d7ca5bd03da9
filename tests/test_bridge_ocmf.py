# OCMF-signed bills through the bridge (issue 19 item 6): the real pile
# firmware on a pty signs each bill after sealing it; the bridge keeps the
# signature beside the bill, checks it against the key the site config
# registers for the pile and publishes the OCMF record in the bill document.
# pyocmf (PyPI) verifies the published record with the registered key and
# refuses it tampered. A pile whose key is not registered, or another key:
# an event, and the bill is still kept, confirmed and relayed.
import asyncio
import os

import pytest
from pyocmf import OCMF

from host import ocmf_check
from protocol import p256
from tests.test_bridge_commands import TARIFF
from tests.test_bridge_helpers import (
    PILE_A, FirmwarePile, Platform, bridge_running, fast_config, in_tempdir, url_of)


def _verifies(record, key_hex):
    try:
        return OCMF.from_string(record, strict=True).verify_signature(key_hex) is True
    except Exception:
        return False


async def _one_bill(plat, fw):
    online = lambda: (lambda s: s if s and s["online"] else None)(
        plat.status.get(plat.topics.status(PILE_A)))
    await plat.wait_for(online, 15)
    r = await plat.command(PILE_A, {"id": "go", "cmd": "start", "gun": "01",
                                    "balance": "1000.00", "card": "D14B0A54"})
    assert r["ok"], r
    await fw.wait_for(lambda: fw.world.meter.read_energy() > 5000)
    assert (await plat.command(PILE_A, {"id": "stop", "cmd": "stop"}))["ok"]
    return r["serial"]


def _site(tmp, path, broker, key_hex):
    pile = {PILE_A: {"ocmf_key": key_hex}} if key_hex else {}
    return fast_config(tmp, url_of(broker), tcp={"listen": None},
                       serial=[{"url": path, "baudrate": 115200, "ext": True}],
                       piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0},
                       bills={"sig_wait_s": 10.0}, pile=pile, tariff=TARIFF,
                       status={"listen": "127.0.0.1:0"})


async def _get(port, path):
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.get("http://127.0.0.1:%d%s" % (port, path)) as r:
            return r.status, await r.text(), r.headers


def test_a_signed_bill_is_published_with_its_ocmf_record_that_pyocmf_verifies(mosquitto):
    async def scenario(tmp, master, path):
        root = os.path.join(tmp, "flash")
        os.mkdir(root)
        fw = FirmwarePile(root, master, PILE_A, speed=60)      # first boot: its key is made
        key = ocmf_check.spki_hex(p256.public_key(fw.pile.ocmf._d))
        cfg = _site(tmp, path, mosquitto, key)
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            fw.start()
            try:
                serial = await _one_bill(plat, fw)
                doc = await plat.wait_for(lambda: plat.bills.get(serial), 20)
                o = doc["ocmf"]
                # Published once, signed: the publication waited for the signature.
                assert o is not None, doc
                assert o["verdict"] == "verified" and o["verified"] is True
                assert o["public_key"] == key
                rec = o["record"]
                assert rec.startswith("OCMF|{") and serial in rec
                assert _verifies(rec, key)
                # A flipped digit of the meter reading: refused.
                i = rec.index('"RV":') + 6
                bad = rec[:i] + ("1" if rec[i] != "1" else "2") + rec[i + 1:]
                assert not _verifies(bad, key)
                # Custody as before: confirmed and settled on the pile.
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled")
                held = await bridge.store.bill(serial)
                assert held.ocmf_verdict == "verified" and held.ocmf_record == rec
                assert not [e for e in plat.events if e["type"].startswith("ocmf_key")]
                # The status page: the bill, settled, signed and verified; its
                # record offered as text to copy, the same record.
                import json
                st, text, _ = await _get(bridge.status_port, "/status.json")
                recent = json.loads(text)["recent_bills"]
                assert [(x["serial"], x["state"], x["ocmf"]) for x in recent] == \
                    [(serial, "settled", "verified")]
                st, text, h = await _get(bridge.status_port, "/ocmf/" + serial)
                assert st == 200 and text == rec and h["X-OCMF-Verdict"] == "verified"
                assert h["X-OCMF-Public-Key"] == key and _verifies(text, h["X-OCMF-Public-Key"])
                other = serial[:-1] + ("1" if serial[-1] == "0" else "0")    # no such bill
                st, _, _ = await _get(bridge.status_port, "/ocmf/" + other)
                assert st == 404
                st, page, _ = await _get(bridge.status_port, "/")
                assert "OCMF record" in page and "ocmf/" in page
            finally:
                await fw.close()
    in_tempdir("ocmf", scenario, timeout=90, pty=True)


@pytest.mark.parametrize("registered", ["none", "other"])
def test_an_unregistered_or_other_key_raises_an_event_and_the_bill_is_still_relayed(mosquitto,
                                                                                      registered):
    async def scenario(tmp, master, path):
        root = os.path.join(tmp, "flash")
        os.mkdir(root)
        fw = FirmwarePile(root, master, PILE_A, speed=60)
        other = ocmf_check.spki_hex(p256.public_key(12345)) if registered == "other" else None
        cfg = _site(tmp, path, mosquitto, other)
        async with bridge_running(cfg) as bridge, Platform(url_of(mosquitto)) as plat:
            fw.start()
            try:
                kind = "ocmf_key_unregistered" if registered == "none" else "ocmf_key_mismatch"
                ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == kind], 20)
                assert ev[0]["key"] == ocmf_check.spki_hex(p256.public_key(fw.pile.ocmf._d))
                serial = await _one_bill(plat, fw)
                await fw.wait_for(lambda: fw.pile.journal.status(serial) == "settled")
                doc = plat.bills[serial]
                assert doc["checks"]["ok"]
                import json
                st, text, _ = await _get(bridge.status_port, "/status.json")
                shown = {x["serial"]: x["ocmf"] for x in json.loads(text)["recent_bills"]}
                assert shown[serial] in (None, "unregistered_key" if registered == "none"
                                         else "bad_signature")
                if registered == "other":
                    bad = await plat.wait_for(lambda: [e for e in plat.events
                                                       if e["type"] == "ocmf_bad_signature"], 20)
                    assert bad[0]["serial"] == serial
                    assert doc["ocmf"] is None or doc["ocmf"]["verdict"] == "bad_signature"
            finally:
                await fw.close()
    in_tempdir("ocmfk", scenario, timeout=90, pty=True)


def test_the_site_config_takes_the_key_as_the_console_shows_it_and_names_a_bad_one():
    from host import config as configmod
    point = p256.public_key(777)
    for given in (ocmf_check.spki_hex(point), point.hex(), ocmf_check.spki_hex(point).lower()):
        cfg = configmod.load(None, {"site": "t1", "pile": {PILE_A: {"ocmf_key": given}}})
        assert cfg["pile"][PILE_A]["ocmf_key"] == point
    off_curve = b"\x04" + point[1:64] + bytes([point[64] ^ 1])
    for bad in ("3059", off_curve.hex(), 42, "zz"):
        with pytest.raises(configmod.ConfigError) as e:
            configmod.load(None, {"site": "t1", "pile": {PILE_A: {"ocmf_key": bad}}})
        assert "pile.%s.ocmf_key" % PILE_A in str(e.value)


def _raw_sig(d, frame, seq, fw="pc0.1.0"):
    from protocol import codec, ocmf
    text = ocmf.payload(codec.decode(frame).fields, fw=fw)
    r, s = p256.sign(d, text.encode())
    return codec.encode("bill_sig", {"serial": codec.decode(frame).fields["serial"], "fw": fw,
                                     "flags": 0, "r": "%064X" % r, "s": "%064X" % s}, seq), text


def test_a_late_signature_republishes_an_unconfirmed_bill_and_is_an_event_for_a_confirmed_one(
        mosquitto):
    # Custody never waits: with sig_wait_s 0 the bill goes out unsigned; its
    # signature then republishes it signed, or, once the platform confirmed
    # it, comes as an ocmf_record event. A signature before its bill is kept
    # and checked when it comes again after the bill.
    from sim.testkit import make_bill
    from protocol import codec
    from tests.test_bridge_custody import RawPile
    d = p256.keygen(bytes(range(3, 35)))
    key = ocmf_check.spki_hex(p256.public_key(d))

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), bills={"sig_wait_s": 0.0},
                          pile={PILE_A: {"ocmf_key": key}})
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto), confirm=False) as plat:
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            f1 = codec.encode("bill", make_bill(PILE_A, 1), 3)
            s1 = make_bill(PILE_A, 1)["serial"]
            await p.write(f1)
            doc = await plat.wait_for(lambda: plat.bills.get(s1))
            assert doc["ocmf"] is None                     # out unsigned, not held back
            sig, _ = _raw_sig(d, f1, 4)
            await p.write(sig)
            doc = await plat.wait_for(lambda: (plat.bills.get(s1) or {}).get("ocmf"))
            assert doc["verdict"] == "verified" and _verifies(doc["record"], key)
            # Confirmed first, signed after: an event with the record.
            f2 = codec.encode("bill", make_bill(PILE_A, 2), 5)
            s2 = make_bill(PILE_A, 2)["serial"]
            await p.write(f2)
            await plat.wait_for(lambda: plat.bills.get(s2))
            await plat.confirm_bill(PILE_A, s2)
            while (await b.store.bill(s2)).confirmed_at is None:
                await asyncio.sleep(0.05)
            sig2, _ = _raw_sig(d, f2, 6)
            await p.write(sig2)
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "ocmf_record"])
            assert ev[0]["serial"] == s2 and ev[0]["ocmf"]["verdict"] == "verified"
            assert _verifies(ev[0]["ocmf"]["record"], key)
            # A signature before its bill: kept, checked once it comes after it.
            f3 = codec.encode("bill", make_bill(PILE_A, 3), 7)
            s3 = make_bill(PILE_A, 3)["serial"]
            sig3, _ = _raw_sig(d, f3, 8)
            await p.write(sig3)
            while (await b.store.ocmf_record(s3)) is None:
                await asyncio.sleep(0.05)
            assert (await b.store.ocmf_record(s3))[1] == "no_bill"
            await p.write(f3)
            await plat.wait_for(lambda: plat.bills.get(s3))
            await p.write(sig3)
            doc = await plat.wait_for(lambda: (plat.bills.get(s3) or {}).get("ocmf"))
            assert doc["verdict"] == "verified"
            await p.close()
    in_tempdir("ocmf-late", scenario)
