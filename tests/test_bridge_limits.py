# Connection limits (issue 17 item 7): connections that never log in are
# closed after tcp.login_s whatever they send, at most tcp.max_per_address
# of them per address and tcp.max_unauthenticated in all are held, a refusal
# is one log line (no traceback), and a real pile still logs in and bills.
import asyncio
import logging
import socket

from sim.testkit import make_bill, make_extra
from protocol import codec
from tests.test_bridge_helpers import (
    PILE_A, Platform, bridge_running, connect_pile, fast_config, in_tempdir, until, url_of)


async def _dial(port, src):
    s = socket.socket()
    s.bind((src, 0))
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


def _closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_connections_that_never_log_in_are_capped_and_closed_and_a_real_pile_still_bills(
        mosquitto, caplog):
    caplog.set_level(logging.INFO)

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        cfg["tcp"].update(login_s=1.0, max_unauthenticated=5, max_per_address=3)
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto)) as plat:
            # An attacker at 127.0.0.2: ten connections, three held.
            mine = [await _dial(b.tcp_port, "127.0.0.2") for _ in range(10)]
            await until(lambda: b.stats["tcp_refused"] == 7, what="7 refused by address")
            # Two more from 127.0.0.3 fill the total cap; a third address is refused.
            mine += [await _dial(b.tcp_port, "127.0.0.3") for _ in range(2)]
            other = await _dial(b.tcp_port, "127.0.0.4")
            await until(lambda: b.stats["tcp_refused"] == 8, what="1 refused by the total cap")
            await until(lambda: _closed_by_peer(other), what="the refused socket closed")
            # Keep-alive bytes do not keep them: all closed after login_s.
            loop = asyncio.get_running_loop()
            for _ in range(5):
                for s in mine:
                    try:
                        await loop.sock_sendall(s, b"\x00")
                    except OSError:
                        pass
                await asyncio.sleep(0.1)
            await until(lambda: b.stats["tcp_no_login"] == 5, timeout=10, what="5 closed for no login")
            await until(lambda: all(_closed_by_peer(s) for s in mine), what="all attacker sockets closed")
            assert b._unauth == {}
            # The real pile logs in and its bill goes through.
            pile = await connect_pile(PILE_A, b.tcp_port)
            bill = make_bill(PILE_A, 1)
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            await plat.wait_for(lambda: plat.bills.get(bill["serial"]))
            await pile.close()
            for s in mine + [other]:
                s.close()
    in_tempdir("limits", scenario)
    refusals = [r for r in caplog.records if "refused:" in r.getMessage()]
    assert len(refusals) == 8 and not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
