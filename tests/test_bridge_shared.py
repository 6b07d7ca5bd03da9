# The platform scales out: consumers share the bill stream with an MQTT
# shared subscription ($share/<group>/pc/+/bills/+), each bill handled by
# one of them. And the bridge also runs against a pure-Python broker.
import pytest

from sim.testkit import make_bill, make_extra
from host.topics import shared_bills
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, PILE_C, Platform, bridge_and_platform, bridge_running, connect_pile,
    fast_config, fees_yuan, in_tempdir, url_of)


def test_two_shared_subscription_consumers_handle_every_bill_once(mosquitto):
    async def scenario(tmp):
        # No republication during the test: every delivery is a first one.
        cfg = fast_config(tmp, url_of(mosquitto), bills={"retry_initial_s": 60.0})
        async with bridge_running(cfg) as b, \
                Platform(url_of(mosquitto), name="p1", share_group="billing",
                         subscribe_all=False) as c1, \
                Platform(url_of(mosquitto), name="p2", share_group="billing",
                         subscribe_all=False) as c2:
            piles = [await connect_pile(code, b.tcp_port) for code in (PILE_A, PILE_B, PILE_C)]
            serials = set()
            for i in range(10):
                for p in piles:
                    bill = make_bill(p.code, i)
                    serials.add(bill["serial"])
                    assert await p.send_bill(bill, make_extra(bill)) == 0
            for p in piles:
                await p.wait_for(lambda p=p: {s for s in serials if s.startswith(p.code)}
                                 <= set(p.settled), timeout=15)
            got1, got2 = set(c1.bill_count), set(c2.bill_count)
            assert got1 | got2 == serials
            assert not got1 & got2
            assert sum(c1.bill_count.values()) + sum(c2.bill_count.values()) == 30
            assert got1 and got2          # the broker spread the stream over both
            assert shared_bills("billing", "t1") == "$share/billing/pc/t1/bills/+"
            for p in piles:
                await p.close()
    in_tempdir("shared", scenario)


def test_bridge_works_against_an_embedded_amqtt_broker():
    try:
        from amqtt.broker import Broker
    except ImportError:
        pytest.skip("amqtt is not installed")

    class _Url:
        host = "127.0.0.1"
        port = None

    async def scenario(tmp):
        # amqtt inside this process, on this event loop: the zero-install broker,
        # on port 0 (the port it got is read back, as sim/brokers.py's child does).
        broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await broker.start()
        try:
            _Url.port = broker._servers["default"].instance.sockets[0].getsockname()[1]
            async with bridge_and_platform(tmp, _Url) as (cfg, b, plat):
                pile = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 1)
                extra = make_extra(bill)
                assert await pile.send_bill(bill, extra) == 0
                await pile.wait_for(lambda: bill["serial"] in pile.settled, timeout=10)
                doc = plat.bills[bill["serial"]]
                assert (doc["energy_fee"], doc["service_fee"]) == fees_yuan(extra)
                r = await plat.command(PILE_A, {"id": "a1", "cmd": "stop"})
                assert r["ok"]
                await pile.close()
        finally:
            await broker.shutdown()
    in_tempdir("amqtt", scenario)
