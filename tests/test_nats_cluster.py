# A broker node can die without losing a bill (issue 22 items 1-2): the
# bridge and the reference platform get the three nodes of a real NATS
# cluster (nats-server with its MQTT listener, JetStream replicating the
# sessions on every node) as their broker list. The node the bridge is
# connected to is SIGKILLed while piles send bills, then the platform's;
# both move to another node with the same client id and persistent
# session, and every bill is stored once at the platform and confirmed at
# the bridge. Real bridge (in this process), real reference platform, raw
# TCP piles.
import asyncio
import os
import sqlite3

from host import platform as P
from sim.brokers import NatsCluster
from sim.testkit import make_bill
from protocol import codec
from tests.test_bridge_custody import RawPile, _rows
from tests.test_bridge_helpers import PILE_A, PILE_B, bridge_running, fast_config, run, tempdir


def test_every_bill_is_stored_once_and_confirmed_while_broker_nodes_are_killed():
    async def scenario(c, tmp):
        cfg = fast_config(tmp, c.urls[0], mqtt={"url": list(c.urls)},
                          tcp={"listen": "127.0.0.1:0", "ext": False})
        db = os.path.join(tmp, "platform.db")
        async with bridge_running(cfg) as b:
            # The platform lists the nodes the other way round: it starts on
            # another node than the bridge.
            plat = P.Platform(",".join(reversed(c.urls)), db)
            ready = asyncio.Event()
            ptask = asyncio.ensure_future(plat.run(ready))
            try:
                await asyncio.wait_for(ready.wait(), 30)
                piles = [await RawPile.connect(b.tcp_port) for _ in range(2)]
                for p, code in zip(piles, (PILE_A, PILE_B)):
                    await p.login(code)
                sent = []

                async def send(n0, n):
                    for i in range(n0, n0 + n):
                        for p, code in zip(piles, (PILE_A, PILE_B)):
                            bill = make_bill(code, i)
                            sent.append(bill["serial"])
                            await p.write(codec.encode("bill", bill, i % 60000))

                def platform_has(k):
                    got = {r[0] for r in plat.db.execute("SELECT serial FROM bills")}
                    return len(got) >= k and set(sent[:k]) <= got

                async def until_platform_has(k, timeout=60):
                    end = asyncio.get_running_loop().time() + timeout
                    while not platform_has(k):
                        assert asyncio.get_running_loop().time() < end, \
                            "platform has %d of %d bills" % (
                                plat.db.execute("SELECT COUNT(*) FROM bills").fetchone()[0], k)
                        await asyncio.sleep(0.05)

                await send(1, 10)
                await until_platform_has(20)
                # The bridge's node dies (SIGKILL), with bills on the way.
                victim = c.index_of(b.mqtt.url)
                c.kill(victim)
                await send(11, 10)
                await until_platform_has(40)
                assert b.mqtt.url != c.urls[victim] and b.mqtt.failovers >= 1
                # It comes back; now the platform's node dies.
                c.start_node(victim)
                pvictim = c.index_of("mqtt://%s:%d" % (plat.host, plat.port))
                c.kill(pvictim)
                await send(21, 10)
                await until_platform_has(60)
                assert (plat.host, plat.port) != ("127.0.0.1", c.nodes[pvictim].port)
                # Every bill confirmed at the bridge (and, third-party style,
                # settled there); each one stored once at the platform.
                end = asyncio.get_running_loop().time() + 60
                while _rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE confirmed_at "
                            "IS NULL")[0][0]:
                    assert asyncio.get_running_loop().time() < end, "bills left unconfirmed"
                    await asyncio.sleep(0.05)
                assert _rows(cfg["database"], "SELECT COUNT(*) FROM bills")[0][0] == 60
                rows = plat.db.execute("SELECT serial FROM bills").fetchall()
                assert sorted(r[0] for r in rows) == sorted(sent) and len(rows) == 60
                for p in piles:
                    assert sorted(s.hex().upper() for s, r in p.confirms()) == \
                        sorted(set(s.hex().upper() for s, r in p.confirms()))
                for p in piles:
                    await p.close()
            finally:
                ptask.cancel()
                await asyncio.gather(ptask, return_exceptions=True)
                plat.db.close()

    with tempdir("nats") as tmp, NatsCluster() as c:
        run(scenario(c, tmp))
