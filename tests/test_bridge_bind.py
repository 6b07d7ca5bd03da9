# Unkeyed third-party piles bound by configuration (issue 17 item 2): a
# pile with no key cannot prove who it is, so its config may bind it to the
# links it uses (`bind`: addresses or networks of its TCP peer, serial
# ports). A login with its code on any other link is refused and raises
# `login_refused`; the status says how the bridge knows each link is its
# pile (`trust`: key, bound, none). Real bridge (in this process),
# Mosquitto, raw TCP piles from 127.0.0.1.
import pytest

from host import config as configmod
from protocol import codec
from tests.test_bridge_custody import RawPile
from tests.test_bridge_custody import _LOGIN
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, Platform, bridge_running, fast_config, in_tempdir, url_of)

PILE_C = "55031412782307"


def test_a_bound_pile_logs_in_only_on_its_links_and_the_status_says_how_it_is_trusted(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), pile={
            PILE_A: {"bind": ["10.9.9.9", "serial:/dev/ttyPILEA"]},   # never 127.0.0.1
            PILE_B: {"bind": ["127.0.0.0/8"]}})
        async with bridge_running(cfg) as b, Platform(url_of(mosquitto)) as plat:
            # An impostor with pile A's code on a link pile A is not bound to.
            imp = await RawPile.connect(b.tcp_port)
            await imp.write(codec.encode("login", dict(_LOGIN, pile=PILE_A), 1))
            await imp.wait(lambda: imp.named("login_reply"))
            assert imp.named("login_reply")[0].fields["result"] == 1
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "login_refused"])
            assert "bound to 10.9.9.9/32, serial:/dev/ttyPILEA" in ev[0]["message"]
            # ... and its link is closed: nothing of pile A's reaches it.
            await imp.wait(lambda: imp._task.done())
            assert len(imp.got) == 1
            # Pile B on a bound network, pile C with no binding and no key.
            pb = await RawPile.connect(b.tcp_port, login=PILE_B)
            pc = await RawPile.connect(b.tcp_port, login=PILE_C)

            def trust(code):
                doc = plat.status.get("pc/t1/pile/%s/status" % code)
                return doc and doc["online"] and doc["trust"]
            assert await plat.wait_for(lambda: trust(PILE_B)) == "bound"
            assert await plat.wait_for(lambda: trust(PILE_C)) == "none"
            await imp.close()
            await pb.close()
            await pc.close()
    in_tempdir("bind", scenario)


def test_bind_entries_are_checked_at_start_and_matched_by_address_and_port_name():
    with pytest.raises(configmod.ConfigError, match="neither an IP address"):
        configmod.load(None, {"site": "s", "pile": {PILE_A: {"bind": ["pile-a.example"]}}})
    with pytest.raises(configmod.ConfigError, match="a list"):
        configmod.load(None, {"site": "s", "pile": {PILE_A: {"bind": []}}})
    bind = configmod.parse_bind(["10.0.0.0/8", "2001:db8::/32", "serial:/dev/ttyUSB0"], "x")

    class Link:
        def __init__(self, name, ip=None):
            self.name, self.peer_ip = name, ip
    assert configmod.bind_allows(bind, Link("tcp:10.1.2.3:5000", "10.1.2.3"))
    assert configmod.bind_allows(bind, Link("tcp:[::ffff:10.1.2.3]:5000", "::ffff:10.1.2.3"))
    assert configmod.bind_allows(bind, Link("tcp:2001:db8::7:5000", "2001:db8::7"))
    assert not configmod.bind_allows(bind, Link("tcp:11.1.2.3:5000", "11.1.2.3"))
    assert configmod.bind_allows(bind, Link("serial:/dev/ttyUSB0"))
    assert not configmod.bind_allows(bind, Link("serial:/dev/ttyUSB1"))
    assert not configmod.bind_allows(bind, Link("tcp:?:0", "?"))
