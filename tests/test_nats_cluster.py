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

import pytest

from host import platform as P
from sim.nats import NatsCluster
from sim.testkit import make_bill
from protocol import codec
from tests.test_bridge_custody import RawPile
from tests.test_mqtt_security import take_until
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, bridge_running, db_rows, fast_config, run, tempdir)


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
                while db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE confirmed_at "
                            "IS NULL")[0][0]:
                    assert asyncio.get_running_loop().time() < end, "bills left unconfirmed"
                    await asyncio.sleep(0.05)
                assert db_rows(cfg["database"], "SELECT COUNT(*) FROM bills")[0][0] == 60
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


def test_two_platform_workers_on_the_cluster_lose_no_bill_when_the_owners_node_dies():
    # Platform workers sharing one database (site leases, host/leases.py),
    # each on another node; the node of the site's owner is SIGKILLed while
    # bills flow: the owner moves to another node with its session, every
    # bill is stored once and confirmed.
    async def scenario(c, tmp):
        cfg = fast_config(tmp, c.urls[0], mqtt={"url": list(c.urls)},
                          tcp={"listen": "127.0.0.1:0", "ext": False})
        db = os.path.join(tmp, "platform.db")
        workers = [P.Platform(",".join(c.urls[i:] + c.urls[:i]), db, workers=2, worker_index=i,
                              lease_s=5.0) for i in (0, 1)]
        tasks = []
        try:
            for w in workers:
                ready = asyncio.Event()
                tasks.append(asyncio.ensure_future(w.run(ready)))
                await asyncio.wait_for(ready.wait(), 30)
            async with bridge_running(cfg) as b:
                pile = await RawPile.connect(b.tcp_port, login=PILE_A)
                sent = []

                async def send(n0, n):
                    for i in range(n0, n0 + n):
                        bill = make_bill(PILE_A, i)
                        sent.append(bill["serial"])
                        await pile.write(codec.encode("bill", bill, i))

                async def all_confirmed():
                    end = asyncio.get_running_loop().time() + 90
                    while db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE confirmed_at "
                                "IS NOT NULL")[0][0] < len(sent):
                        assert asyncio.get_running_loop().time() < end, "bills left unconfirmed"
                        await asyncio.sleep(0.05)

                await send(1, 10)
                await all_confirmed()
                owner = next(w for w in workers if b.cfg["site"] in w.leases.held)
                c.kill(c.index_of("mqtt://%s:%d" % (owner.host, owner.port)))
                await send(11, 10)
                await all_confirmed()
                await pile.close()
            rows = workers[0].db.execute("SELECT serial FROM bills").fetchall()
            assert sorted(r[0] for r in rows) == sorted(sent) and len(rows) == 20
            assert sum(w.stats["confirms_sent"] for w in workers) >= 20
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with tempdir("nats-workers") as tmp, NatsCluster() as c:
        run(scenario(c, tmp), 180)


# --- site security on the cluster (decisions.md: NATS accounts and
# permissions mirroring the shipped Mosquitto ACL, host/mosquitto/acl).
# A denied NATS subscription is acknowledged and delivers nothing, a denied
# publish is acknowledged and dropped: tested by what is delivered, each
# time beside a control sent after it on a path that is allowed.

_ACL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "host", "mosquitto", "acl")
_USERS = {"A": "pw-of-A", "B": "pw-of-B", "platform": "pw-of-platform"}


@pytest.fixture(scope="module")
def secured():
    """One cluster with the site users for this module's security tests
    (each start creates the account's replicated session streams: seconds)."""
    with NatsCluster(users=_USERS, acl=open(_ACL).read()) as c:
        yield c


def _client(c, user, node=0, **kw):
    import aiomqtt
    return aiomqtt.Client("127.0.0.1", c.nodes[node].port, username=user,
                          password=kw.pop("password", _USERS.get(user)),
                          identifier=kw.pop("identifier", "t-%s-%d" % (user, node)), **kw)


def _nats_port(node):
    # nats-server logs the (random) port of its NATS-protocol listener.
    for line in node.log_text().splitlines():
        if "Listening for client connections on" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("no client port in the log of %s" % node.name)


def _nats_protocol_login(port, user, password):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(4096)                                    # INFO
        s.sendall(b'CONNECT {"user":"%s","pass":"%s","verbose":true}\r\nPING\r\n'
                  % (user.encode(), password.encode()))
        return s.recv(4096).decode()


def test_on_the_cluster_a_site_reads_and_writes_only_its_own_topics_and_forges_nothing(secured):
    import aiomqtt
    from sim.nats import acl_rules

    async def scenario(c):
        async with _client(c, "platform") as plat, _client(c, "A", 1) as a, \
                _client(c, "B", 2) as b:
            await plat.subscribe("pc/#", qos=1)
            # (NATS refuses a filter wider than the permissions as a whole:
            # "pc/B/#" would give B nothing at all; Mosquitto filters per message.)
            for f in ("pc/B/confirm/#", "pc/B/cmd/#"):
                await b.subscribe(f, qos=1)
            for f in ("pc/A/cmd/#", "pc/A/confirm/#", "pc/B/#", "pc/+/bills/+", "pc/#", "#",
                      "$MQTT/sub/#"):
                await a.subscribe(f, qos=1)
            # B's bridge: a bill and an event (A must not read them).
            await b.publish("pc/B/bills/55031412782306", b"bill of B", qos=1)
            await b.publish("pc/B/events/bridge", b"secret of B", qos=1)
            # A forges: B's confirmation and command, a bill in B's name, its
            # own confirmation; then a message it may send (the control).
            for t in ("pc/B/confirm/55031412782306", "pc/B/cmd/55031412782306",
                      "pc/B/bills/55031412782306", "pc/A/confirm/55031412782305",
                      "pc/A/cmd/55031412782305"):
                await a.publish(t, b"forged by A", qos=1)
            await a.publish("pc/A/events/bridge", b"after the forgery", qos=1)
            # The platform confirms for both sites: each gets its own only.
            await plat.publish("pc/B/confirm/55031412782306", b"platform to B", qos=1)
            await plat.publish("pc/A/confirm/55031412782305", b"platform to A", qos=1)
            got_plat, got_a, got_b = [], [], []
            await take_until(plat, "pc/A/events/bridge", got_plat, 30)
            await take_until(b, "pc/B/confirm/55031412782306", got_b, 30)
            await take_until(a, "pc/A/confirm/55031412782305", got_a, 30)
            return got_plat, got_a, got_b

    async def refused(**kw):
        try:
            async with _client(c, **kw):
                return None
        except aiomqtt.MqttError as e:
            return e

    c = secured
    got_plat, got_a, got_b = run(scenario(c))
    assert run(refused(user="A", password="wrong")) is not None
    assert run(refused(user="C", password="x")) is not None
    # The site's credentials open no door beside MQTT (on the NATS
    # protocol, $MQTT.sub.> would show other sessions' deliveries).
    assert "Authorization Violation" in _nats_protocol_login(_nats_port(c.nodes[0]), "A",
                                                             _USERS["A"])
    assert ("pc/B/bills/55031412782306", "bill of B") in got_plat      # published, delivered
    assert ("pc/A/events/bridge", "after the forgery") in got_plat     # A does get through
    assert not [m for m in got_plat + got_b if m[1] == "forged by A"]
    assert got_a == [("pc/A/confirm/55031412782305", "platform to A")]
    assert ("pc/B/confirm/55031412782306", "platform to B") in got_b
    assert not [m for m in got_b if m[0].startswith("pc/A/")]
    # The rules are the ACL's, read from the shipped file.
    pub, sub = acl_rules(open(_ACL).read(), "A")
    assert "pc.A.bills.>" in pub and not [s for s in pub if "confirm" in s or "cmd" in s]
    assert sorted(sub) == ["pc.A.cmd", "pc.A.cmd.>", "pc.A.confirm", "pc.A.confirm.>"]


def test_a_site_bridge_and_the_platform_work_as_their_own_users_on_the_cluster(secured):
    # The permissions are enough for the product: the bridge logs in as its
    # site, the platform as `platform`; a bill goes out and is confirmed.
    async def scenario(c, tmp):
        cfg = fast_config(tmp, c.urls[0], site="A", tcp={"listen": "127.0.0.1:0", "ext": False},
                          mqtt={"url": list(c.urls), "username": "A", "password": _USERS["A"]})
        plat = P.Platform(",".join(c.urls), os.path.join(tmp, "platform.db"),
                          username="platform", password=_USERS["platform"])
        ready = asyncio.Event()
        ptask = asyncio.ensure_future(plat.run(ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            async with bridge_running(cfg) as b:
                pile = await RawPile.connect(b.tcp_port, login=PILE_A)
                bill = make_bill(PILE_A, 1)
                await pile.write(codec.encode("bill", bill, 1))
                end = asyncio.get_running_loop().time() + 60
                while not db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE confirmed_at "
                                "IS NOT NULL")[0][0]:
                    assert asyncio.get_running_loop().time() < end, "bill not confirmed"
                    await asyncio.sleep(0.05)
                assert plat.serials() == {bill["serial"]}
                await pile.close()
        finally:
            ptask.cancel()
            await asyncio.gather(ptask, return_exceptions=True)
            plat.db.close()

    with tempdir("nats-users") as tmp:
        run(scenario(secured, tmp))


def test_a_bridge_whose_subscriptions_the_broker_refuses_does_not_run_on_without_them(secured):
    # NATS answers a subscription it cannot make (no permission here; under
    # load, a JetStream consumer not created in time) with SUBACK 0x80. A
    # bridge that ran on would never see a confirmation: its bills would be
    # published for ever. It treats the refusal as a lost connection: the
    # next node, backoff, and it is never `connected` meanwhile.
    async def scenario(c, tmp):
        # Site A's bridge with site B's credentials: pc/A/cmd, pc/A/confirm refused.
        cfg = fast_config(tmp, c.urls[0], site="A",
                          mqtt={"url": list(c.urls), "username": "B", "password": _USERS["B"]})
        async with bridge_running(cfg, mqtt_up=False) as b:
            end = asyncio.get_running_loop().time() + 60
            while b.mqtt.failures < 3:
                assert asyncio.get_running_loop().time() < end, "no refusal seen"
                assert not b.mqtt.connected.is_set(), "ran on without its subscriptions"
                await asyncio.sleep(0.05)
            assert not b.mqtt.connected.is_set() and b.mqtt.failovers >= 2

    with tempdir("nats-suback") as tmp:
        run(scenario(secured, tmp))
