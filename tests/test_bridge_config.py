# pile-bridge's configuration: the shipped example file, flags over it, and
# clear errors for what is wrong.
import json
import os

import pytest

from host import bridge as bridgemod
from host import config as C

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "host", "bridge.example.toml")


def test_the_example_config_loads_with_every_section():
    cfg = C.load(EXAMPLE)
    assert cfg.site == "site-1"
    assert cfg["mqtt"]["client_id"] == "pc-bridge-site-1"
    assert C.parse_mqtt_url(cfg["mqtt"]["url"])[:3] == (True, "broker.example.net", 8883)
    assert cfg["serial"] == [{"url": "/dev/ttyUSB0", "baudrate": 115200, "ext": True}]
    assert cfg["tariff"]["model"] == "0001" and len(cfg["tariff"]["slots"]) == 48
    assert cfg.pile_ext("55031412782305", link_ext=False) is True    # per pile wins
    assert cfg.pile_ext("55031412782399", link_ext=False) is False   # then the link
    assert cfg.pile_ext("55031412782399") is True                    # then the default


def test_flags_override_the_file():
    cfg, args = C.from_args(["-c", EXAMPLE, "--site", "s9", "--mqtt", "mqtt://u:p%40ss@10.0.0.2",
                             "--tcp", "127.0.0.1:9000", "--serial", "socket://10.0.0.3:4001,ext=false",
                             "--allow", "55031412782305", "--heartbeat", "5", "--db", "/tmp/x.db"])
    assert cfg.site == "s9" and cfg["database"] == "/tmp/x.db"
    assert C.parse_mqtt_url(cfg["mqtt"]["url"]) == (False, "10.0.0.2", 1883, "u", "p@ss")
    assert cfg["serial"] == [{"url": "socket://10.0.0.3:4001", "baudrate": 115200, "ext": False}]
    assert cfg["tcp"]["listen"] == "127.0.0.1:9000" and cfg["piles"]["heartbeat_s"] == 5
    assert cfg.allowed("55031412782305") and not cfg.allowed("55031412782306")


def test_mqtt_credentials_keys_win_over_the_url_and_the_file_over_the_environment(monkeypatch):
    from tests.test_bridge_helpers import tempdir
    with tempdir("cred") as d:
        pw = os.path.join(d, "pw")
        with open(pw, "w") as f:
            f.write("from-file\n")
        cfg = C.load(None, {"site": "s", "mqtt": {"url": "mqtt://u:p@h"}})
        assert C.mqtt_credentials(cfg) == ("u", "p")
        cfg = C.load(None, {"site": "s", "mqtt": {"url": "mqtt://u@h", "username": "k",
                                                   "password_file": pw}})
        assert C.mqtt_credentials(cfg) == ("k", "from-file")
        monkeypatch.setenv("PILE_BRIDGE_MQTT_PASSWORD", "from-env")
        cfg = C.load(None, {"site": "s", "mqtt": {"url": "mqtt://u@h"}})
        assert C.mqtt_credentials(cfg) == ("u", "from-env")


def test_print_config_hides_the_password(capsys):
    assert bridgemod.main(["--site", "x", "--mqtt", "mqtt://u:secret@h", "--print-config"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text)
    assert out["site"] == "x" and "secret" not in text


@pytest.mark.parametrize("over, msg", [
    ({}, "site"),
    ({"site": "a/b"}, "site"),
    ({"site": "s", "mqtt": {"nope": 1}}, "unknown config key mqtt.nope"),
    ({"site": "s", "allow": ["123"]}, "14 digits"),
    ({"site": "s", "mqtt": {"url": "http://x"}}, "mqtt://"),
    ({"site": "s", "tariff": {"model": "0001"}}, "tariff"),
    ({"site": "s", "serial": [{"baud": 9600}]}, "url"),
    ({"site": "s", "tcp": {"listen": "nohost:port"}}, "HOST:PORT"),
])
def test_config_errors_name_the_problem(over, msg):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, over)
    assert msg in str(e.value)


def test_a_bad_config_exits_with_status_2(capsys):
    assert bridgemod.main(["--site", "bad site"]) == 2
    assert "site" in capsys.readouterr().err


def test_pruning_forgets_only_old_settled_bills():
    import asyncio
    from host.store import Store
    from sim.testkit import make_bill
    from protocol import codec
    from tests.test_bridge_helpers import tempdir

    async def scenario(path):
        s = Store(path)
        try:
            bills = [make_bill("55031412782305", i) for i in range(3)]
            for b in bills:
                await s.add_bill(b["pile"], b["serial"], codec.encode("bill", b), now=1000.0)
            await s.confirm(bills[0]["serial"], now=1000.0)
            await s.mark_settled(bills[0]["serial"], now=1000.0)
            await s.confirm(bills[1]["serial"], now=1000.0)        # confirmed, not settled
            assert await s.prune(100, now=2000.0) == 1
            assert await s.bill(bills[0]["serial"]) is None
            assert await s.bill(bills[1]["serial"]) is not None
            assert [b.serial for b in await s.open_bills(bills[2]["pile"], 10)] == [bills[2]["serial"]]
        finally:
            s.close()
    with tempdir("prune") as d:
        asyncio.run(scenario(d + "/b.db"))


def test_pile_seq_keeps_counting_after_pruning():
    import asyncio
    from host.store import Store
    from sim.testkit import make_bill
    from protocol import codec
    from tests.test_bridge_helpers import tempdir

    async def scenario(path):
        s = Store(path)
        try:
            b1, b2, b3 = [make_bill("55031412782305", i) for i in range(3)]
            for b in (b1, b2):
                _, row = await s.add_bill(b["pile"], b["serial"], codec.encode("bill", b), now=1000.0)
                await s.confirm(b["serial"], now=1000.0)
                await s.mark_settled(b["serial"], now=1000.0)
            assert row.pile_seq == 2
            assert await s.prune(100, now=2000.0) == 2
            _, row = await s.add_bill(b3["pile"], b3["serial"], codec.encode("bill", b3))
            assert row.pile_seq == 3
        finally:
            s.close()
    with tempdir("seq") as d:
        asyncio.run(scenario(d + "/b.db"))


# --- keys and minimum versions (issue 8) ----------------------------------------------------

def _key(d, name, key, mode=0o600):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(key.hex() + "\n")
    os.chmod(path, mode)
    return path


def test_a_key_file_readable_by_others_is_refused_with_the_fix_in_the_message():
    from tests.test_bridge_helpers import tempdir
    with tempdir("keys") as d:
        path = _key(d, "a.key", bytes(32), mode=0o644)
        with pytest.raises(C.ConfigError, match="chmod 600"):
            C.load(None, {"site": "s", "pile": {"55031412782305": {"cmd_key_file": path}}})
        os.chmod(path, 0o600)
        C.load(None, {"site": "s", "pile": {"55031412782305": {"cmd_key_file": path}}})
        with open(path, "w") as f:
            f.write("not a key\n")
        with pytest.raises(C.ConfigError, match="64 hex digits"):
            C.load(None, {"site": "s", "keys": {"upgrade_key_file": path}})


def test_pile_keys_come_from_the_pile_table_then_the_keys_folder_then_the_site_key():
    from protocol import sign
    from tests.test_bridge_helpers import tempdir
    own, in_dir, site = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
    with tempdir("keys") as d:
        kd = os.path.join(d, "keys")
        os.mkdir(kd)
        _key(kd, "55031412782306.key", in_dir)
        cfg = C.load(None, {"site": "s", "keys": {"dir": kd,
                                                  "site_key_file": _key(d, "site.key", site)},
                            "pile": {"55031412782305": {"cmd_key_file": _key(d, "a.key", own)},
                                     "55031412782308": {"signed": False}}})
        ring = C.KeyRing(cfg)
        assert ring.cmd_key("55031412782305") == own
        assert ring.cmd_key("55031412782306") == in_dir
        assert ring.cmd_key("55031412782307") == sign.pile_key(site, "55031412782307")
        assert ring.cmd_key("55031412782308") is None        # a third-party pile, bare commands
        assert ring.upgrade_key() is None
        assert own.hex() not in C.dump(cfg) and site.hex() not in C.dump(cfg)   # paths only
        # without any key source every pile gets its commands bare
        assert C.KeyRing(C.load(None, {"site": "s"})).cmd_key("55031412782305") is None


def test_minimum_versions_compare_numbers_per_model_not_strings():
    assert C.version_key("209.04.00") == C.version_key("209.4.0") == (209, 4, 0)
    assert C.below("209.3.12", "209.04.00") and not C.below("209.10.0", "209.9")
    assert not C.below("209.4.0", "209.04.00") and C.below("pc0.1.0", "1")
    assert C.below("unknown", "1") and not C.below("anything", None)
    cfg = C.load(None, {"site": "s", "versions": {"min_board": {"*": "209.04.00", "ac": "3.1",
                                                                "ACME-60": "5"},
                                                  "min_hmi": {"*": "103"}},
                        "pile": {"55031412782305": {"model": "ACME-60"}}})
    assert cfg.min_versions("55031412782305") == {"board": "5", "hmi": "103"}
    assert cfg.min_versions("55031412782306", {"pile_type": 1}) == {"board": "3.1", "hmi": "103"}
    assert cfg.min_versions("55031412782306", {"pile_type": 0})["board"] == "209.04.00"
    with pytest.raises(C.ConfigError, match="versions.min_board.ac"):
        C.load(None, {"site": "s", "versions": {"min_board": {"ac": "new"}}})


def test_the_signed_command_counter_is_stored_and_only_goes_up():
    from host.store import Store
    from tests.test_bridge_helpers import tempdir
    with tempdir("ctr") as d:
        s = Store(os.path.join(d, "b.db"))
        try:
            from host import store as st
            assert s.call_sync(st._next_counter, "p", 500, 0.0) == 500      # the time floor
            assert s.call_sync(st._next_counter, "p", 10, 0.0) == 501       # clock went back
            assert s.call_sync(st._next_counter, "p", 900, 0.0) == 900
        finally:
            s.close()
        s = Store(os.path.join(d, "b.db"))
        try:
            assert s.call_sync(st._last_counter, "p") == 900
            assert s.call_sync(st._next_counter, "p", 1, 0.0) == 901
        finally:
            s.close()
