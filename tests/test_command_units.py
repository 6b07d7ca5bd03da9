# Commands in decimal units (issue 19 item 4): "1.00" yuan and "0.5" kWh in
# the MQTT command schema and pile-platform --cmd, integers in protocol
# units only in the fields named so (balance_e2, amount_e4, energy_e4) and
# in the older bare-integer form docs/mqtt.md keeps; no silent gun default
# on a pile with more than one gun.
import json

import pytest

from host import commands as C
from host import platform as P
from host import tariff as T
from protocol import units
from tests.test_bridge_helpers import PILE_A, PILE_B, bridge_and_platform, connect_pile, in_tempdir


def _start(**kw):
    doc = {"id": "x", "cmd": "start", "gun": "01"}
    doc.update(kw)
    return C.parse(json.dumps(doc).encode(), 65536)[2]


def test_decimal_money_and_energy_are_read_exactly_in_each_fields_unit():
    a = _start(balance="1000.00", targets={"amount": "1.00", "energy": "0.5", "soc": 90})
    assert a["balance"] == 100000                     # 0x34: x10^2 yuan
    assert a["targets"]["amount"] == 10000            # 0xE2: x10^4 yuan
    assert a["targets"]["energy"] == 5000             # 0xE2: x10^4 kWh
    # the named integer forms and the older bare integers: protocol units
    a = _start(balance_e2=100000, targets={"amount_e4": 10000, "energy_e4": 5000})
    assert (a["balance"], a["targets"]["amount"], a["targets"]["energy"]) == (100000, 10000, 5000)
    a = _start(balance=100000, targets={"amount": 10000})
    assert (a["balance"], a["targets"]["amount"]) == (100000, 10000)


@pytest.mark.parametrize("kw, words", [
    ({"balance": 1.5}, "decimal string"),                          # a float is never money
    ({"balance": "1.001"}, "more than 2 decimal places"),          # finer than x10^2 yuan
    ({"targets": {"amount": "-1"}}, "not a decimal"),
    ({"targets": {"energy": "1e3"}}, "not a decimal"),
    ({"balance": "1.00", "balance_e2": 100}, "not both"),
    ({"targets": {"amount": "999999999"}}, "more than the frame holds"),
])
def test_bad_quantities_are_bad_requests_naming_the_field(kw, words):
    with pytest.raises(C.CommandError) as e:
        _start(**kw)
    assert e.value.code == "bad_request" and words in e.value.message


def test_tariff_prices_as_decimal_yuan_per_kwh():
    t = {"model": "0007", "loss_ratio": 0, "slots": "3" * 48,
         "rates": {p: {"energy": "1.20000", "service": "0.4"}
                   for p in ("sharp", "peak", "flat", "valley")}}
    r = T.parse(t)["rates"]["peak"]
    assert (r["energy"], r["service"]) == (120000, 40000)
    t["rates"]["peak"]["energy"] = "1.000001"
    with pytest.raises(T.TariffError, match="tariff.rates.peak.energy"):
        T.parse(t)


def test_units_round_trip():
    for n, places in ((0, 4), (1, 4), (10000, 4), (123456789, 2), (7, 0)):
        assert units.parse(units.text(n, places), places) == n


def test_cmd_words_take_decimals_json_objects_and_dotted_keys():
    kw = P.cmd_args(["gun=01", "balance=100.00", "targets.amount=1.00", "targets.soc=90"])
    assert kw == {"gun": "01", "balance": "100.00", "targets": {"amount": "1.00", "soc": 90}}
    kw = P.cmd_args(['targets={"energy": "0.5", "minutes": 30}', "card=D14B0A54"])
    assert kw == {"targets": {"energy": "0.5", "minutes": 30}, "card": "D14B0A54"}
    kw = P.cmd_args(['{"vins": ["LSVAU2180N2183294"], "version": 7}'])
    assert kw == {"vins": ["LSVAU2180N2183294"], "version": 7}
    assert P.cmd_args(["ok=false", "balance_e2=100"]) == {"ok": False, "balance_e2": 100}
    for bad in (["targets={bad"], ["soc"], ["targets.soc=ninety"], ["ok=maybe"]):
        with pytest.raises(P.UsageError):
            P.cmd_args(bad)
    # the whole line, as a shell passes it, reads as the schema wants it
    doc = {"id": "x", "cmd": "start"}
    doc.update(P.cmd_args(["gun=01", "balance=100.00", "targets.amount=1.00"]))
    a = C.parse(json.dumps(doc).encode(), 65536)[2]
    assert (a["balance"], a["targets"]["amount"]) == (10000, 10000)


def test_cmd_usage_error_is_exit_2(capsys):
    rc = P.main(["--cmd", "demo", PILE_A, "start", "targets={bad"])
    assert rc == 2 and "targets" in capsys.readouterr().err


def test_a_command_without_gun_is_refused_on_a_two_gun_pile_and_01_on_a_one_gun_pile(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto) as (cfg, b, plat):
            one = await connect_pile(PILE_A, b.tcp_port)
            two = await connect_pile(PILE_B, b.tcp_port, guns=2)
            r = await plat.command(PILE_B, {"id": "g1", "cmd": "stop"})
            assert (r["ok"], r["code"]) == (False, "bad_request")
            assert "gun is required" in r["message"] and "2 guns" in r["message"]
            assert not two.received("remote_stop")
            r = await plat.command(PILE_B, {"id": "g2", "cmd": "stop", "gun": "02"})
            assert r["ok"] and two.received("remote_stop")[-1].fields["gun"] == "02"
            r = await plat.command(PILE_A, {"id": "g3", "cmd": "stop"})
            assert r["ok"] and one.received("remote_stop")[-1].fields["gun"] == "01"
            r = await plat.command(PILE_A, {"id": "g4", "cmd": "start", "balance": "50.00",
                                            "targets": {"amount": "1.00"}})
            assert r["ok"] and r["serial"].startswith(PILE_A + "01")
            f = one.received("ext_start")[-1].fields
            assert (f["balance"], f["target_amount"]) == (5000, 10000)
    in_tempdir("gun", scenario)
