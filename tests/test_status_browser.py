# The status page in a real headless browser (issue 19 item 1): Debian's
# chromium driven by selenium (shared/context/tooling.md). The page is
# loaded once; it must show the pile and its bill live, say plainly when
# the bridge stops answering (SIGKILL) and come back by itself when the
# bridge restarts on its store, the bill still listed; and render 500 piles.
# The bridge is a child process (sim/stack.BridgeProcess) with a password
# (what happens without it: tests/test_status_page.py).
import asyncio
import base64
import os
import time

import pytest

from sim.testkit import make_bill
from protocol import codec
from tests.test_bridge_custody import RawPile
from tests.test_bridge_helpers import (
    PILE_A, bridge_running, fast_config, in_tempdir, tempdir, url_of)
from sim import stack

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
PW = "page-pw"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail("chromium and chromedriver are needed (tools/setup.sh installs chromium "
                    "chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


def _auth(driver, pw):
    # Basic credentials for every request the page makes (a URL with
    # user:password@ is not used for the page's own fetches).
    token = base64.b64encode(("tech:%s" % pw).encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                           {"headers": {"Authorization": "Basic " + token}})


def _wait(driver, js, timeout=20.0):
    """Until the page's JS expression is truthy (the page re-renders every 2 s)."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("return " + js))


def test_the_page_follows_a_bill_survives_a_bridge_sigkill_and_comes_back(mosquitto, browser):
    async def pile_sends(port, bill):
        p = await RawPile.connect(port, login=PILE_A)
        await p.write(codec.encode("bill", bill, 3))
        await p.wait(lambda: p.confirms())
        return p

    with tempdir("status-browser") as tmp:
        pw = os.path.join(tmp, "pw")
        with open(pw, "w") as f:
            f.write(PW + "\n")
        bp = stack.BridgeProcess(tmp, "t1", mosquitto.port, status={"password_file": pw})
        bp.start()
        try:
            url = "http://127.0.0.1:%d/" % bp.status_port
            _auth(browser, PW)
            browser.get(url)
            _wait(browser, "document.getElementById('conn').textContent == 'live'")
            bill = make_bill(PILE_A, 1)
            loop = asyncio.new_event_loop()
            try:
                p = loop.run_until_complete(pile_sends(bp.tcp_port, bill))
                row = "document.querySelector('#bills tr[data-serial=\"%s\"]')" % bill["serial"]
                _wait(browser, row)
                state = browser.execute_script("return %s.dataset.state" % row)
                assert state in ("stored", "published")      # no platform on this broker
                _wait(browser, "document.querySelector('#piles tr[data-pile=\"%s\"]')" % PILE_A)
                assert "online" in browser.execute_script(
                    "return document.querySelector('#piles tr[data-pile=\"%s\"]').textContent" % PILE_A)
                # The bridge dies: the page says so and keeps the last figures, stale.
                bp.kill()
                _wait(browser, "document.getElementById('conn').textContent"
                               ".startsWith('bridge not answering')")
                assert browser.execute_script("return document.body.classList.contains('stale')")
                assert browser.execute_script("return !!" + row)
                # Back on the same port and store: live again, the bill still there.
                bp.start()
                _wait(browser, "document.getElementById('conn').textContent == 'live'")
                _wait(browser, row)
                loop.run_until_complete(p.close())
            finally:
                loop.close()
        finally:
            bp.stop()


def test_the_page_renders_500_piles(mosquitto, browser):
    async def scenario(tmp):
        codes = ["%014d" % (55031400100000 + i) for i in range(500)]
        cfg = fast_config(tmp, url_of(mosquitto), status={"listen": "127.0.0.1:0"},
                          pile={c: {"name": "p%d" % i} for i, c in enumerate(codes)})
        async with bridge_running(cfg) as b:
            for c in codes:
                b.pile(c)                       # known to the bridge, offline
            p = await RawPile.connect(b.tcp_port, login=codes[7])
            url = "http://127.0.0.1:%d/" % b.status_port
            t0 = time.monotonic()
            await asyncio.to_thread(browser.get, url)
            n = await asyncio.to_thread(
                _wait, browser, "document.querySelectorAll('#piles tbody tr').length == 500 && "
                                "document.querySelector('#piles tr[data-pile=\"%s\"]')"
                                ".textContent.includes('online')" % codes[7])
            assert n
            offline = await asyncio.to_thread(browser.execute_script,
                                              "return document.querySelectorAll('#piles tr.off').length")
            assert offline == 499
            print("500 piles rendered in %.2f s (page load to first full table)"
                  % (time.monotonic() - t0))
            await p.close()
    in_tempdir("status-500", scenario)


def test_the_page_shows_a_bill_signed_and_verified_and_gives_its_ocmf_record_to_copy(mosquitto,
                                                                                     browser):
    # Issue 19 item 6: a bill and its OCMF signature (0xDB) from a pile
    # whose key the site registers; the page says "signed, verified" and
    # its button puts the record in the text box, selected for copying:
    # the record pyocmf verifies with the pile's key.
    from pyocmf import OCMF

    from host import ocmf_check
    from protocol import ocmf, p256
    d = p256.keygen(bytes(range(40, 72)))
    key = ocmf_check.spki_hex(p256.public_key(d))

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), status={"listen": "127.0.0.1:0"},
                          pile={PILE_A: {"ocmf_key": key}})
        async with bridge_running(cfg) as b:
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            bill = make_bill(PILE_A, 1)
            frame = codec.encode("bill", bill, 3)
            await p.write(frame)
            await p.wait(lambda: p.confirms())
            text = ocmf.payload(codec.decode(frame).fields, fw="pc0.1.0")
            r, s = p256.sign(d, text.encode())
            await p.write(codec.encode("bill_sig", {"serial": bill["serial"], "fw": "pc0.1.0",
                                                    "flags": 0, "r": "%064X" % r,
                                                    "s": "%064X" % s}, 4))
            await asyncio.to_thread(browser.get, "http://127.0.0.1:%d/" % b.status_port)
            row = "document.querySelector('#recent tr[data-serial=\"%s\"]')" % bill["serial"]
            await asyncio.to_thread(_wait, browser, row + " && " + row + ".dataset.ocmf == 'verified'")
            shown = await asyncio.to_thread(browser.execute_script, "return " + row + ".textContent")
            assert "signed, verified" in shown
            await asyncio.to_thread(browser.execute_script, row + ".querySelector('button').click()")
            await asyncio.to_thread(_wait, browser, "document.getElementById('ocmf-record').value")
            got = await asyncio.to_thread(browser.execute_script, "return [document.getElementById("
                                          "'ocmf-record').value, document.getElementById("
                                          "'ocmf-verdict').textContent]")
            assert got[0] == ocmf.record(text, p256.der_signature(r, s))
            assert got[1] == "signed, verified"
            assert OCMF.from_string(got[0], strict=True).verify_signature(key) is True
            await p.close()
    in_tempdir("status-ocmf", scenario)
