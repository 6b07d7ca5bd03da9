# The README's main job, end to end: broker, bridge (a child process),
# reference platform and six simulated piles on the real firmware.
import json

from tools import demo


def test_demo_loses_duplicates_and_misreconciles_nothing(capsys):
    rc = demo.main(["--json", "--speed", "240"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert s["sessions"] == 6 and s["bills"] == 6 and s["confirmed"] == 6
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["unreconciled"] == 0
    assert float(s["worst_limit_overshoot_yuan"]) <= 0
    assert s["stop_reasons"].get("power_lost") == 1
    assert s["stop_reasons"].get("amount_target") == 1
