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
    assert s["sessions"] == 8 and s["bills"] == 8 and s["confirmed"] == 8
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["unreconciled"] == 0
    assert float(s["worst_limit_overshoot_yuan"]) <= 0
    assert s["stop_reasons"].get("power_lost") == 1
    assert s["stop_reasons"].get("amount_target") == 1
    assert s["stop_reasons"].get("vin_not_authorised") == 1    # 0x8A by its name
    assert s["vin_refused_bills"] == 1            # pile 4: fleet card, foreign bus (0x8A)
    assert s["five_class_bills"] == 1             # pile 5: deep valley 05:46 .. sharp 07:35
    assert s["stop_reasons"].get("soc_full") == 1     # pile 7 gun 1: the BMS's SOC (0x41)

    # the story: each field case with its verdict, the limit case with its
    # target and result, each bill
    assert [c["case"] for c in s["cases"]] == [c[0] for c in CASES]
    assert all(c["pass"] for c in s["cases"]), s["cases"]
    lim = [c for c in s["cases"] if c["case"] == "amount_target"][0]
    assert "target 1.0000 yuan, result 0." in lim["result"] and "under by" in lim["result"]
    assert s["limit_cases"][0]["target_yuan"] == "1.0000"
    assert s["limit_cases"][0]["within_target"] is True
    # pile 7, a DC pile talking GB/T 27930 to a simulated BMS per gun: the
    # SOC target stops on the SOC the BMS reports, a BMS fault mid-charge
    # gives 0x7C with the bill sealed and confirmed on the pile
    soc = [c for c in s["cases"] if c["case"] == "bms_soc"][0]
    assert soc["gun"] == "01" and soc["result"].startswith("SOC 80 % at the BMS (target 80 %)")
    assert "(0x41)" in soc["result"], soc
    fault = [c for c in s["cases"] if c["case"] == "bms_fault"][0]
    assert fault["gun"] == "02" and "bms_battery_temp (0x7C)" in fault["result"], fault
    assert fault["result"].endswith(("confirmed on the pile", "settled on the pile")), fault
    assert {b["case"]: b["stop_code"] for b in s["bills_detail"]
            if b["case"] in ("bms_soc", "bms_fault")} == {"bms_soc": 0x41, "bms_fault": 0x7C}
    assert len(s["bills_detail"]) == 8
    assert {b["case"] for b in s["bills_detail"]} == {c[0] for c in CASES}
    assert all(b["reconciled"] and b["stop_reason"] for b in s["bills_detail"])

    # The table pile-demo prints without --json, from this same run's summary.
    rows = _table_rows(table(s))
    assert rows["sessions (executed starts)"] == "8"
    assert rows["bills at the platform"] == "8" and rows["confirmed"] == "8"
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
    assert text.count("PASS") == 8 and "FAIL" not in text and "overshoot" not in text.lower()


def test_a_failed_case_is_fail_in_the_table_and_exit_1():
    s = {"cases": [{"title": "charge to 1 yuan", "pass": False,
                    "result": "target 1.0000 yuan, result 1.2000 yuan (OVERSHOOT by 0.2000 yuan)"}],
         "sessions": 1, "bills": 1, "confirmed": 1, "lost": 0, "duplicated": 0,
         "unreconciled": 0, "worst_limit_overshoot_yuan": "0.2000", "refused_starts": 0,
         "vin_refused_bills": 0, "five_class_bills": 0, "energy_kwh": "1", "amount_yuan": "1.2",
         "stop_reasons": {}}
    text = table(s)
    assert "FAIL" in text and "0.2000 (overshoot)" in text


def _bms_verdicts(tmp_path, soc, fault_code, fault_kwh, journal_status, soc_code=0x41):
    """The two BMS cases' verdicts (Demo.cases) over made-up bills: the car
    on gun 1 at `soc` %, gun 2's bill stopped with `fault_code`."""
    import threading
    from types import SimpleNamespace as NS
    from sim.demo import Demo
    d = Demo(workdir=str(tmp_path), quiet=True)
    cars = [NS(worlds=[NS(bms=NS(soc=soc)), NS(bms=NS(soc=50))]) for _ in range(7)]
    d.fleet = NS(_lock=threading.Lock(), units=cars)
    d.codes = ["5503141279%04d" % (i + 1) for i in range(7)]
    d.serial_of = {"bms_soc": "S1", "bms_fault": "S2"}

    def bill(code, kwh):
        return {"stop_reason": {"name": "x", "code": code}, "total_energy": "%.4f" % kwh,
                "raw": {"stop_reason": code, "total_energy": int(kwh * 10000)},
                "checks": {"ok": True}}
    got = {"S1": bill(soc_code, 3.0), "S2": bill(fault_code, fault_kwh)}
    sealed = [{"serial": "S1", "journal_status": "settled"},
              {"serial": "S2", "journal_status": journal_status}]
    return dict((c["case"], c["pass"]) for c in d.cases(got, {"S1": 1, "S2": 1}, sealed)
                if c["case"] in ("bms_soc", "bms_fault"))


def test_the_bms_cases_fail_when_the_soc_is_ignored_or_the_fault_misread(tmp_path):
    assert _bms_verdicts(tmp_path, 80, 0x7C, 2.0, "settled") == {"bms_soc": True,
                                                                 "bms_fault": True}
    # the SOC target ignored: the car's BMS ends the charge full, with 0x41 too
    assert _bms_verdicts(tmp_path, 100, 0x7C, 2.0, "settled")["bms_soc"] is False
    assert _bms_verdicts(tmp_path, 80, 0x7C, 2.0, "settled", soc_code=0x40)["bms_soc"] is False
    # the BMS's over-temperature mapped to another reason, a start failure
    # (nothing flowed), a bill the platform never confirmed to the pile
    assert _bms_verdicts(tmp_path, 80, 0x81, 2.0, "settled")["bms_fault"] is False
    assert _bms_verdicts(tmp_path, 80, 0x7C, 0.0, "settled")["bms_fault"] is False
    assert _bms_verdicts(tmp_path, 80, 0x7C, 2.0, "pending")["bms_fault"] is False
