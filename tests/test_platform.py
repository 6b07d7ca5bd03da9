# The reference platform: stores each trade serial once, reconciles bills on
# their raw integers, confirms every copy.
import asyncio
import json

import aiomqtt
import pytest

from host.platform import Platform, reconcile


def bill_doc(serial="1" * 32, energies=(100, 200, 300, 400), price=100000):
    raw = {"serial": serial, "pile": "55031412782305", "meter_start": 1000,
           "meter_stop": 1000 + sum(energies), "total_energy": sum(energies),
           "stop_reason": 0x40, "extra": {}}
    amount = 0
    for p, e in zip(("sharp", "peak", "flat", "valley"), energies):
        a = e * price // 100000
        raw[p + "_energy"] = e
        raw[p + "_amount"] = a
        raw["extra"][p + "_energy_fee"] = a
        raw["extra"][p + "_service_fee"] = 0
        amount += a
    raw["total_amount"] = amount
    return {"serial": serial, "site": "s1", "pile": raw["pile"], "raw": raw}


def test_a_sound_bill_reconciles():
    assert reconcile(bill_doc()) == []


def test_period_sums_that_miss_the_total_are_named():
    d = bill_doc()
    d["raw"]["total_energy"] += 1
    probs = reconcile(d)
    assert any("period energy" in p for p in probs) and any("meter" in p for p in probs)
    d = bill_doc()
    d["raw"]["extra"]["peak_service_fee"] = 5
    assert any("peak fees" in p for p in reconcile(d))


def test_same_serial_is_stored_once():
    p = Platform()
    assert p.take_bill(bill_doc())[0] is True
    assert p.take_bill(bill_doc())[0] is False
    s = p.summary()
    assert s["bills"] == 1 and s["received_more_than_once"] == 1 and s["unreconciled"] == 0


def test_platform_confirms_every_copy_over_real_mosquitto(mosquitto):
    async def scenario():
        p = Platform("mqtt://%s:%d" % (mosquitto.host, mosquitto.port))
        ready = asyncio.Event()
        task = asyncio.create_task(p.run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        got = []
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
            await c.subscribe("pc/s1/confirm/+", qos=1)
            for _ in range(2):
                await c.publish("pc/s1/bills/55031412782305", json.dumps(bill_doc()), qos=1)
            async for m in c.messages:
                got.append(json.loads(m.payload))
                if len(got) == 2:
                    break
        task.cancel()
        return p, got
    p, got = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert got == [{"serial": "1" * 32, "result": 0}] * 2
    assert p.summary()["bills"] == 1
