# The README's main job, end to end: broker, bridge (a child process),
# reference platform and six simulated piles on the real firmware.
import json

import pytest

from sim.brokers import amqtt_available, mosquitto_available
from sim.demo import CASES, table
from tools import demo


def _table_rows(text):
    # "label<spaces>value" lines of the demo's table(); labels may hold single spaces.
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

    # the story: each field case with its verdict, the limit case with its
    # target and result, each bill
    assert [c["case"] for c in s["cases"]] == [c[0] for c in CASES]
    assert all(c["pass"] for c in s["cases"]), s["cases"]
    lim = [c for c in s["cases"] if c["case"] == "amount_target"][0]
    assert "target 1.0000 yuan, result 0." in lim["result"] and "under by" in lim["result"]
    assert s["limit_cases"][0]["target_yuan"] == "1.0000"
    assert s["limit_cases"][0]["within_target"] is True
    assert len(s["bills_detail"]) == 6
    assert {b["case"] for b in s["bills_detail"]} == {c[0] for c in CASES}
    assert all(b["reconciled"] and b["stop_reason"] for b in s["bills_detail"])

    # The table pile-demo prints without --json, from this same run's summary.
    rows = _table_rows(table(s))
    assert rows["sessions (executed starts)"] == "6"
    assert rows["bills at the platform"] == "6" and rows["confirmed"] == "6"
    assert rows["lost"] == "0" and rows["duplicated"] == "0" and rows["unreconciled"] == "0"
    # an undershoot is never called an overshoot
    assert rows["limit: result - target (yuan)"] == (s["worst_limit_overshoot_yuan"]
                                                      + " (within the target)")
    assert rows["VIN refusals (0x8A bills)"] == "1"
    assert rows["bills over five classes"] == str(s["five_class_bills"])
    assert rows["energy (kWh)"] == str(s["energy_kwh"])
    reasons = [line for line in table(s).splitlines() if line.startswith("stop reasons: ")]
    assert len(reasons) == 1
    assert "power_lost 1" in reasons[0] and "amount_target 1" in reasons[0]
    text = table(s)
    assert text.count("PASS") == 6 and "FAIL" not in text and "overshoot" not in text.lower()


def test_a_failed_case_is_fail_in_the_table_and_exit_1():
    s = {"cases": [{"title": "charge to 1 yuan", "pass": False,
                    "result": "target 1.0000 yuan, result 1.2000 yuan (OVERSHOOT by 0.2000 yuan)"}],
         "sessions": 1, "bills": 1, "confirmed": 1, "lost": 0, "duplicated": 0,
         "unreconciled": 0, "worst_limit_overshoot_yuan": "0.2000", "refused_starts": 0,
         "vin_refused_bills": 0, "five_class_bills": 0, "energy_kwh": "1", "amount_yuan": "1.2",
         "stop_reasons": {}}
    text = table(s)
    assert "FAIL" in text and "0.2000 (overshoot)" in text
