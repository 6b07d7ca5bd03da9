# Benchmark of the OCPP uplink (docs/benchmarks.md, "## OCPP uplink"):
#
#  1. stop -> CSMS TransactionEvent(Ended) latency on loopback, one bill at a
#     time: from a pile writing its bill (0x3B, the session's end) to the
#     CSMS's handler receiving the bill's Ended event (p50 / p99). The bill
#     is committed to SQLite (FULL) and its Ended queued (FULL) on the way.
#  2. transactions per second through the uplink: P piles send B bills each
#     back to back; from the first bill written to the last Ended at the
#     CSMS, each acknowledged and recorded in the store (one Started + one
#     Ended per bill: two awaited calls per transaction, in order per pile).
#
# The bridge runs as its own process (python -m host.bridge, OCPP only, no
# MQTT); the CSMS (tools/ocpp_csms.py, the ocpp library) and the scripted
# piles share this process.
#
#   python3 -m tools.bench_ocpp [--latency 300] [--piles 10] [--bills 100] [--version 2.0.1]
import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from sim.testkit import ScriptedPile, make_bill
from sim.links import TcpTransport
from protocol import fields as F
from tools.ocpp_csms import Csms

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pile_code(i):
    return "550314127%05d" % (82300 + i)


async def _bridge(tmp, csms, version):
    cfg = os.path.join(tmp, "bridge.toml")
    with open(cfg, "w") as f:
        f.write('site = "bench"\ndatabase = %s\nlog_level = "warning"\n'
                "[mqtt]\nenabled = false\n"
                '[tcp]\nlisten = "127.0.0.1:0"\next = false\n'
                "[piles]\nheartbeat_s = 60.0\ntime_sync_s = 0\n"
                "[ocpp]\ncsms_url = %s\nversion = %s\nretry_initial_s = 0.2\nretry_max_s = 2.0\n"
                "meter_interval_s = 3600.0\n"
                % (json.dumps(os.path.join(tmp, "bridge.db")), json.dumps(csms.url),
                   json.dumps(version)))
    log = open(os.path.join(tmp, "bridge.log"), "ab")
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "host.bridge", "-c", cfg,
                                                stdout=asyncio.subprocess.PIPE, stderr=log,
                                                cwd=_ROOT, env=env)
    log.close()
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    return proc, json.loads(line)["tcp_port"]


async def _piles(port, n):
    out = []
    for i in range(n):
        p = ScriptedPile(_pile_code(i), await TcpTransport.connect("127.0.0.1", port), ext=False)
        assert await p.login() == 0
        out.append(p)
    return out


def _bill(pile, n):
    # Distinct start times (a 1.6 CSMS knows a repeated start by them).
    return make_bill(pile, n, when=F.to_secs(2024, 5, 1) + n * 60)


async def bench(latency_n, piles_n, bills_n, version):
    tmp = tempfile.mkdtemp(prefix="pc-bench-ocpp-")
    csms = await Csms(version=version).start()
    proc, port = await _bridge(tmp, csms, version)
    try:
        piles = await _piles(port, piles_n)
        for p in piles:
            await csms.wait_for(lambda: csms.boots[p.code] >= 1, 30, "boot of %s" % p.code)
        # 1. latency, one at a time
        lat = []
        p = piles[0]
        for i in range(latency_n):
            bill = _bill(p.code, i)
            key = bill["serial"]
            t0 = time.monotonic()
            await p.send(0x3B, bill)
            if version == "1.6":
                before = sum(csms.ended.values())
                await csms.wait_for(lambda: sum(csms.ended.values()) > before, 10, "Ended")
                lat.append(max(csms.ended_at.values()) - t0)
            else:
                await csms.wait_for(lambda: key in csms.ended_at, 10, "Ended of %s" % key)
                lat.append(csms.ended_at[key] - t0)
        # 2. throughput, every pile sending back to back
        base = latency_n
        want = len(csms.ended) + piles_n * bills_n
        t0 = time.monotonic()

        async def send_all(p):
            for i in range(bills_n):
                await p.send(0x3B, _bill(p.code, base + i))
        await asyncio.gather(*[send_all(p) for p in piles])
        await csms.wait_for(lambda: len(csms.ended) >= want, 600, "every Ended")
        elapsed = max(csms.ended_at.values()) - t0
        lat.sort()
        res = {
            "version": version,
            "latency_bills": latency_n,
            "stop_to_ended_p50_ms": round(statistics.median(lat) * 1000, 2),
            "stop_to_ended_p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
            "stop_to_ended_max_ms": round(lat[-1] * 1000, 2),
            "piles": piles_n, "bills": piles_n * bills_n,
            "transactions_per_s": round(piles_n * bills_n / elapsed, 1),
            "csms_duplicated": len([n for n in csms.ended.values() if n > 1]),
            "csms_messages_received_again": len(csms.events) - len(csms.unique),
        }
        for p in piles:
            await p.close()
        return res
    finally:
        proc.terminate()
        await proc.wait()
        await csms.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_ocpp", description=__doc__)
    ap.add_argument("--latency", type=int, default=300, help="bills for the latency run")
    ap.add_argument("--piles", type=int, default=10)
    ap.add_argument("--bills", type=int, default=100, help="bills per pile for the throughput run")
    ap.add_argument("--version", choices=("2.0.1", "1.6"), default="2.0.1")
    a = ap.parse_args(argv)
    print(json.dumps(asyncio.run(bench(a.latency, a.piles, a.bills, a.version)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
