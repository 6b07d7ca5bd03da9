# The site status page (issue 19 item 1; host/status.py): the JSON
# snapshot follows a bill through its custody states, /metrics says the
# same in Prometheus text, a password keeps strangers out, and a config that
# would expose it unprotected is refused. Real bridge (in this process),
# Mosquitto, a raw TCP pile, aiohttp as the HTTP client. The headless
# browser test is tests/test_status_browser.py.
import base64
import os

import aiohttp
import pytest

from host import config as configmod
from sim.testkit import make_bill
from protocol import codec
from tests.test_bridge_custody import RawPile
from tests.test_bridge_helpers import (
    PILE_A, Platform, bridge_running, fast_config, in_tempdir, url_of)


def _pw_file(tmp, pw="s3cret"):
    path = os.path.join(tmp, "status.pw")
    with open(path, "w") as f:
        f.write(pw + "\n")
    return path


async def _get(port, path, pw=None, user="tech"):
    headers = {}
    if pw is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            ("%s:%s" % (user, pw)).encode()).decode()
    async with aiohttp.ClientSession() as s:
        async with s.get("http://127.0.0.1:%d%s" % (port, path), headers=headers) as r:
            return r.status, await r.text(), r.headers


async def _poll(snap, pred, timeout=10.0):
    """The page is polled by nature: fetch until pred holds (bounded)."""
    import asyncio
    end = asyncio.get_running_loop().time() + timeout
    while True:
        s = await snap()
        if pred(s):
            return s
        assert asyncio.get_running_loop().time() < end, "status never showed it: %s" % s
        await asyncio.sleep(0.05)


def test_a_bill_is_followed_through_its_custody_states_on_the_page_and_in_metrics(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto),
                          status={"listen": "127.0.0.1:0", "password_file": _pw_file(tmp)})
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto), confirm=False) as plat:
            port = b.status_port
            assert port
            # The password keeps strangers out, on every route.
            for path in ("/", "/status.json", "/metrics"):
                st, _, h = await _get(port, path)
                assert st == 401 and "Basic" in h["WWW-Authenticate"], path
                st, _, _ = await _get(port, path, "wrong")
                assert st == 401, path
            st, page, h = await _get(port, "/", "s3cret")
            assert st == 200 and "status.json" in page and h["Content-Type"].startswith("text/html")

            import json
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            bill = make_bill(PILE_A, 1)
            await p.write(codec.encode("bill", bill, 3))
            await plat.wait_for(lambda: plat.bills.get(bill["serial"]))

            async def snap():
                st, text, _ = await _get(port, "/status.json", "s3cret")
                assert st == 200
                return json.loads(text)

            async def state_of(serial):
                s = await snap()
                return [x["state"] for x in s["bills"] if x["serial"] == serial]
            # Published, the platform has not confirmed it yet (the bridge
            # marks it published on the PUBACK, which may come after the
            # platform already has it).
            s = await _poll(snap, lambda s: [x["state"] for x in s["bills"]] == ["published"])
            assert s["site"] == "t1" and [x["pile"] for x in s["piles"]] == [PILE_A]
            assert s["piles"][0]["online"] is True and s["piles"][0]["trust"] == "none"
            assert await state_of(bill["serial"]) == ["published"]
            assert s["bills_by_state"]["published"] == 1 and s["oldest_unconfirmed_s"] >= 0
            st, metrics, h = await _get(port, "/metrics", "s3cret")
            assert st == 200 and h["Content-Type"].startswith("text/plain")
            assert 'pc_bills{state="published"} 1.0' in metrics
            assert "pc_piles_online 1.0" in metrics and "pc_oldest_unconfirmed_bill_age_seconds" in metrics
            # Confirmed by the platform: waiting for the pile's settle ack
            # (this raw pile never answers the 0xE4).
            await plat.confirm_bill(PILE_A, bill["serial"])
            s = await _poll(snap, lambda s: [x["state"] for x in s["bills"]] == ["confirmed"])
            assert s["bills_by_state"]["published"] == 0 and s["bills_by_state"]["confirmed"] == 1
            assert s["oldest_unconfirmed_s"] is None
            # The pile's link drops: offline, with its reason; its events listed.
            await p.close()
            s = await _poll(snap, lambda s: not s["piles"][0]["online"])
            assert s["piles"][0]["offline_reason"]
            st, metrics, _ = await _get(port, "/metrics", "s3cret")
            assert "pc_piles_online 0.0" in metrics and 'pc_bills{state="confirmed"} 1.0' in metrics
    in_tempdir("status", scenario)


def test_a_status_page_reachable_beyond_loopback_needs_a_password_or_client_certificates(tmp_path):
    with pytest.raises(configmod.ConfigError, match="status.password_file or status.client_ca_file"):
        configmod.load(None, {"site": "s", "status": {"listen": "0.0.0.0:8080"}})
    with pytest.raises(configmod.ConfigError, match="status.password_file: no such file"):
        configmod.load(None, {"site": "s", "status": {"listen": "0.0.0.0:8080",
                                                      "password_file": str(tmp_path / "nope")}})
    with pytest.raises(configmod.ConfigError, match="go together"):
        configmod.load(None, {"site": "s", "status": {"listen": "127.0.0.1:0",
                                                      "tls_cert_file": __file__}})
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    cfg = configmod.load(None, {"site": "s", "status": {"listen": "0.0.0.0:8080",
                                                        "password_file": str(pw)}})
    assert cfg["status"]["listen"] == "0.0.0.0:8080"
    cfg = configmod.load(None, {"site": "s", "status": {"listen": "127.0.0.1:0"}})   # loopback: ok
