# The README's main job, end to end: broker, bridge (a child process),
# reference platform and six simulated piles on the real firmware.
import json

import pytest

from host.broker import amqtt_available, mosquitto_available
from tools import demo


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
