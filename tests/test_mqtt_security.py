"""MQTT lock-down against a real Mosquitto running the shipped configuration.

The broker runs host/mosquitto/site.conf and host/mosquitto/acl as
`pile-mqtt-site` installs them, with the CA, certificates and passwords that
tool made. Clients are aiomqtt over TLS. A denied subscription is still
acknowledged and a denied publish is dropped silently, so access control is
tested by what gets delivered, always beside a positive control that shows
the same path does deliver when it is allowed.
"""
import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile

import aiomqtt
import pytest

from tests import broker as brokers
from host import mqtt_site
from tools import mqtt_site as mqtt_site_cli

pytestmark = pytest.mark.skipif(
    not brokers.mosquitto_available() or shutil.which("openssl") is None
    or brokers.find_mosquitto_passwd() is None,
    reason="needs mosquitto, mosquitto_passwd and openssl (tools/setup.sh installs them)")

_BOUND = 15  # seconds: a bound against hanging, never a measured duration


def make_pki(root, sites):
    pki = mqtt_site.Pki(root)
    assert mqtt_site_cli.main(["init", "--dir", root, "--server-name", "localhost",
                           "--server-ip", "127.0.0.1"]) == 0
    for site in sites:
        assert mqtt_site_cli.main(["add-site", site, "--dir", root]) == 0
    return pki


def start_broker(pki):
    conf = mqtt_site.render_conf(pki.root, port="{tls_port}", bind="{host}")
    return brokers.Mosquitto(config=conf).start()


@pytest.fixture(scope="module")
def tmp():
    d = tempfile.mkdtemp(prefix="pc-mqttsec-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tmp):
    return make_pki(os.path.join(tmp, "pki"), ["A", "B"])


@pytest.fixture(scope="module")
def rogue(tmp):
    """Another CA with the same names in it: what an attacker could make."""
    return make_pki(os.path.join(tmp, "rogue"), ["A"])


@pytest.fixture(scope="module")
def broker(pki):
    b = start_broker(pki)
    yield b
    b.close()


def password(pki, user):
    with open(pki.client_files(user)["password"]) as f:
        return f.read().strip()


def tls_context(ca_file, cert_pki=None, user=None, tls12=False):
    ctx = ssl.create_default_context(cafile=ca_file)
    if tls12:
        # With TLS 1.3 the broker judges the client certificate after the
        # client has finished its handshake; paho then logs the alert but
        # aiomqtt only gives up at its timeout. Under TLS 1.2 the same check
        # fails inside the handshake, so the refusal arrives as an event.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if user is not None:
        files = cert_pki.client_files(user)
        ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def client(broker, pki, user, pw=None, ca_pki=None, cert_pki=None, cert_user=None,
           identifier=None, tls12=False):
    """An aiomqtt client for user: its own certificate and password unless
    told otherwise (pw="" sends no user name at all)."""
    if pw is None:
        pw = password(pki, user)
    ca = (ca_pki or pki).ca_crt
    ctx = tls_context(ca, cert_pki or pki, cert_user if cert_user is not None else user, tls12)
    return aiomqtt.Client(broker.host, broker.tls_port, username=user if pw != "" else None,
                          password=pw or None, tls_context=ctx, identifier=identifier,
                          timeout=_BOUND)


async def refused(make):
    """The MqttError raised while connecting the client make() returns
    (made inside the loop, as aiomqtt needs); fails the test if it connects."""
    try:
        async with make():
            pass
    except aiomqtt.MqttError as e:
        return e
    raise AssertionError("connection was accepted")


async def take_until(c, topic, into, bound=_BOUND):
    """Append (topic, payload) from c to into until a message on topic
    arrives; fails naming what came if none does within `bound` s."""
    async def run():
        async for m in c.messages:
            into.append((m.topic.value, m.payload.decode()))
            if m.topic.value == topic:
                return
    try:
        await asyncio.wait_for(run(), bound)
    except asyncio.TimeoutError:
        raise AssertionError("no %s within %g s; got %r" % (topic, bound, into)) from None


@contextlib.asynccontextmanager
async def platform_and_sites(broker, pki, *sites):
    """The platform's client, subscribed to pc/#, and one client per site
    user in `sites`: yields (platform, *site clients)."""
    async with contextlib.AsyncExitStack() as stack:
        plat = await stack.enter_async_context(client(broker, pki, "platform"))
        others = [await stack.enter_async_context(client(broker, pki, u)) for u in sites]
        await plat.subscribe("pc/#", qos=1)
        yield (plat,) + tuple(others)


async def taken_until(topic, *clients):
    """What each client received, in turn, up to its first message on
    `topic` (take_until): one list per client."""
    got = []
    for c in clients:
        got.append([])
        await take_until(c, topic, got[-1])
    return got


def run(coro):
    return asyncio.run(coro)


# --- the way in

def test_site_bridge_with_its_certificate_and_password_reaches_the_platform(broker, pki):
    async def scenario():
        async with platform_and_sites(broker, pki, "A") as (plat, a):
            await a.subscribe("pc/A/cmd/#", qos=1)
            await a.publish("pc/A/bridge", b"online", qos=1)
            from_a = []
            await take_until(plat, "pc/A/bridge", from_a)
            await plat.publish("pc/A/cmd/reboot", b"now", qos=1)
            to_a = []
            await take_until(a, "pc/A/cmd/reboot", to_a)
            return from_a, to_a

    from_a, to_a = run(scenario())
    assert from_a == [("pc/A/bridge", "online")]
    assert to_a == [("pc/A/cmd/reboot", "now")]


def test_client_without_credentials_is_refused(broker, pki):
    e = run(refused(lambda: client(broker, pki, "A", pw="")))  # valid certificate, no user name
    assert "Not authorized" in str(e)


def test_client_with_wrong_password_is_refused(broker, pki):
    e = run(refused(lambda: client(broker, pki, "A", pw=password(pki, "A")[:-1] + "?")))
    assert "Not authorized" in str(e)


def test_client_with_another_sites_password_is_refused(broker, pki):
    # B's password is right, but only for user B.
    e = run(refused(lambda: client(broker, pki, "A", pw=password(pki, "B"))))
    assert "Not authorized" in str(e)


def test_client_without_a_certificate_is_refused_even_with_the_password(broker, pki):
    ctx = tls_context(pki.ca_crt, tls12=True)  # trusts the server, shows no certificate
    start = os.path.getsize(broker.log_path)
    run(refused(lambda: aiomqtt.Client(broker.host, broker.tls_port, username="A",
                                       password=password(pki, "A"), tls_context=ctx,
                                       timeout=_BOUND)))
    assert "did not return a certificate" in broker.log_text(start)


# --- TLS trust

def test_broker_listens_on_the_tls_port_only(broker):
    opened = [line for line in broker.log_text().splitlines() if "listen socket on port" in line]
    assert opened and all(line.endswith("port %d." % broker.tls_port) for line in opened), opened


def test_client_trusting_another_ca_refuses_the_broker(broker, pki, rogue):
    e = run(refused(lambda: client(broker, pki, "A", ca_pki=rogue)))
    assert "certificate verify failed" in str(e)


def test_broker_with_a_certificate_from_another_ca_is_refused(tmp, pki, rogue):
    # An impostor broker on our address: the client trusts only our CA.
    impostor = start_broker(rogue)
    try:
        e = run(refused(lambda: client(impostor, pki, "A")))
    finally:
        impostor.close()
    assert "certificate verify failed" in str(e)


def test_client_certificate_from_another_ca_is_refused(broker, pki, rogue):
    start = os.path.getsize(broker.log_path)
    # right password, rogue certificate
    run(refused(lambda: client(broker, pki, "A", cert_pki=rogue, tls12=True)))
    assert "certificate verify failed" in broker.log_text(start)


# --- site isolation (the ACL)

def test_site_subscribing_to_another_sites_topics_receives_nothing(broker, pki):
    async def scenario():
        async with platform_and_sites(broker, pki, "A", "B") as (plat, a, b):
            for f in ("pc/B/#", "pc/+/status", "pc/#", "#", "pc/A/#"):
                await a.subscribe(f, qos=1)
            await b.publish("pc/B/events/bridge", b"secret of B", qos=1)
            # Control: sent after B's message, to a topic A may read. The
            # broker routes in order, so B's message would be ahead of it.
            await plat.publish("pc/A/cmd/site", b"control", qos=1)
            return await taken_until("pc/A/cmd/site", a, plat)

    got_a, got_plat = run(scenario())
    assert ("pc/B/events/bridge", "secret of B") in got_plat  # it was published and delivered
    assert got_a and all(t == "pc/A/cmd/site" for t, _ in got_a)  # A saw only its own


def test_site_publishing_into_another_site_is_dropped(broker, pki):
    async def scenario():
        async with platform_and_sites(broker, pki, "A", "B") as (plat, a, b):
            await b.subscribe("pc/B/#", qos=1)
            await a.publish("pc/B/cmd/stop", b"forged by A", qos=1)  # acknowledged, dropped
            await a.publish("pc/A/events/bridge", b"after the forgery", qos=1)
            await plat.publish("pc/B/cmd/site", b"control", qos=1)
            return await taken_until("pc/B/cmd/site", plat, b)

    got_plat, got_b = run(scenario())
    assert ("pc/A/events/bridge", "after the forgery") in got_plat  # A's publishes do get through
    assert not [m for m in got_plat + got_b if m[1] == "forged by A"]
    assert got_b == [("pc/B/cmd/site", "control")]


def test_shared_bill_subscription_gives_the_platform_every_site_and_a_site_only_its_own(
        broker, pki):
    # host/topics.py: platform instances share pc/+/bills/+ through $share.
    async def scenario():
        async with client(broker, pki, "platform") as plat, \
                client(broker, pki, "A") as a, client(broker, pki, "B") as b:
            await plat.subscribe("$share/platform/pc/+/bills/+", qos=1)
            await a.subscribe("$share/sneaky/pc/+/bills/+", qos=1)
            await a.subscribe("pc/A/cmd/#", qos=1)
            await b.publish("pc/B/bills/32010600213533", b"bill of B", qos=1)
            await a.publish("pc/A/bills/32010600213534", b"bill of A", qos=1)
            got_plat, got_a = [], []
            await take_until(plat, "pc/A/bills/32010600213534", got_plat)
            await plat.publish("pc/A/cmd/site", b"control", qos=1)   # after both bills
            await take_until(a, "pc/A/cmd/site", got_a)
            return got_plat, got_a

    got_plat, got_a = run(scenario())
    assert got_plat == [("pc/B/bills/32010600213533", "bill of B"),
                        ("pc/A/bills/32010600213534", "bill of A")]
    # A site reads no bills at all, not even its own: only what is addressed to it.
    assert got_a == [("pc/A/cmd/site", "control")]


def test_site_cannot_take_over_another_sites_session_by_client_id(broker, pki):
    async def scenario():
        async with client(broker, pki, "platform") as plat, \
                client(broker, pki, "B", identifier="B") as b:
            await b.subscribe("pc/B/#", qos=1)
            # Without use_username_as_clientid this would disconnect B.
            async with client(broker, pki, "A", identifier="B") as a:
                await a.publish("pc/A/hello", b"x", qos=1)
                await plat.publish("pc/B/cmd/site", b"still there", qos=1)
                got_b = []
                await take_until(b, "pc/B/cmd/site", got_b)
                return got_b

    assert run(scenario()) == [("pc/B/cmd/site", "still there")]


def test_removed_site_is_locked_out_after_reload(broker, pki):
    assert mqtt_site_cli.main(["add-site", "C", "--dir", pki.root]) == 0
    broker.reload()

    async def publish_as_c():
        async with client(broker, pki, "C") as c:
            await c.publish("pc/C/status", b"online", qos=1)

    run(publish_as_c())  # control: C gets in once its password is loaded
    assert mqtt_site_cli.main(["remove", "C", "--dir", pki.root]) == 0
    broker.reload()
    e = run(refused(lambda: client(broker, pki, "C")))
    assert "Not authorized" in str(e)


# --- the tool itself

def test_keys_are_private_and_the_ca_key_stays_apart(pki):
    for path in (pki.ca_key, pki.server_key, pki.client_files("A")["key"],
                 pki.client_files("A")["password"], pki.passwd):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    assert os.path.dirname(pki.ca_key) != pki.root  # DIR/ca/, moved offline after init
    for path in os.listdir(pki.root):
        assert not path.endswith(".key") or path == "server.key"


def test_signing_without_the_ca_key_says_where_it_is_expected(pki, tmp, capsys):
    missing = os.path.join(tmp, "offline", "ca.key")
    assert mqtt_site_cli.main(["add-site", "D", "--dir", pki.root, "--ca-key", missing]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CA key not found at " + missing in err


def test_site_ids_that_are_not_one_topic_level_are_refused(pki, capsys):
    for bad in ("a/b", "+", "#", "", "_x", "a b", "x" * 65):
        assert mqtt_site_cli.main(["add-site", bad, "--dir", pki.root]) == 2
    assert "becomes a topic level" in capsys.readouterr().err


def test_init_never_overwrites_a_ca(pki, capsys):
    assert mqtt_site_cli.main(["init", "--dir", pki.root, "--server-name", "x"]) == 2
    assert "already holds a CA" in capsys.readouterr().err


def test_a_site_user_can_neither_confirm_bills_nor_send_commands_even_on_its_own_site(broker, pki):
    # Issue 17: the ACL gave a site user read-write on its whole tree; a
    # forged "confirmed" made the bridge settle bills the platform never
    # got. A site's user writes only what a bridge says, reads only what is
    # addressed to it; confirmations and commands come from the platform.
    async def scenario():
        async with platform_and_sites(broker, pki, "A") as (plat, a):
            await a.subscribe("pc/A/#", qos=1)
            await a.publish("pc/A/confirm/55031412782305", b"forged confirmation", qos=1)
            await a.publish("pc/A/cmd/55031412782305", b"forged command", qos=1)
            await a.publish("pc/A/bills/55031412782305", b"a bill", qos=1)
            await plat.publish("pc/A/confirm/55031412782305", b"real confirmation", qos=1)
            return await taken_until("pc/A/confirm/55031412782305", a, plat)

    got_a, got_plat = run(scenario())
    assert ("pc/A/bills/55031412782305", "a bill") in got_plat       # what a bridge says goes
    everything = got_plat + got_a
    assert not [m for m in everything if m[1] in ("forged confirmation", "forged command")]
    # A reads what is addressed to it (the real confirmation), not its own bills.
    assert got_a == [("pc/A/confirm/55031412782305", "real confirmation")]
