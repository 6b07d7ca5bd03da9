# The README's main job, end to end: broker, bridge (a child process),
# reference platform and six simulated piles on the real firmware.
import json

import pytest

from host.broker import amqtt_available, mosquitto_available
from tools import demo


def _table_rows(text):
    # "label<spaces>value" lines of demo.table(); labels may hold single spaces.
    rows = {}
    for line in text.splitlines():
        label, sep, value = line.rpartition("  ")
        if sep and label.strip():
            rows[label.strip()] = value.strip()
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_loses_duplicates_and_misreconciles_nothing(capsys, broker):
    if not {"mosquitto": mosquitto_available, "amqtt": amqtt_available}[broker]():
        pytest.skip("%s is not installed" % broker)
    rc = demo.main(["--json", "--speed", "240", "--broker", broker])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert s["sessions"] == 6 and s["bills"] == 6 and s["confirmed"] == 6
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["unreconciled"] == 0
    assert float(s["worst_limit_overshoot_yuan"]) <= 0
    assert s["stop_reasons"].get("power_lost") == 1
    assert s["stop_reasons"].get("amount_target") == 1
    assert s["stop_reasons"].get("vin_not_authorised") == 1    # 0x8A by its name
    assert s["vin_refused_bills"] == 1            # pile 4: fleet card, foreign bus (0x8A)
    assert s["five_class_bills"] == 1             # pile 5: deep valley 05:46 .. sharp 07:35

    # The table pile-demo prints without --json, from this same run's summary.
    rows = _table_rows(demo.table(s))
    assert rows["sessions (executed starts)"] == "6"
    assert rows["bills at the platform"] == "6" and rows["confirmed"] == "6"
    assert rows["lost"] == "0" and rows["duplicated"] == "0" and rows["unreconciled"] == "0"
    assert rows["worst limit overshoot (yuan)"] == s["worst_limit_overshoot_yuan"]
    assert rows["VIN refusals (0x8A bills)"] == "1"
    assert rows["bills over five classes"] == str(s["five_class_bills"])
    assert rows["energy (kWh)"] == str(s["energy_kwh"])
    reasons = [line for line in demo.table(s).splitlines() if line.startswith("stop reasons: ")]
    assert len(reasons) == 1
    assert "power_lost 1" in reasons[0] and "amount_target 1" in reasons[0]
