# Benchmark of pile-bridge (docs/benchmarks.md, "## Bridge"):
#
#  1. durable bills per second relayed: scripted piles send bills (0x3B +
#     0xEB) over TCP to a bridge running as its own process; each bill is
#     committed to SQLite (synchronous=FULL) before its 0x40, published QoS 1,
#     confirmed by a platform consumer, and settled back on the pile (0xE4).
#     Side by side, in the same run: raw aiomqtt QoS 1 publishes of the same
#     JSON payloads (publish + PUBACK), and the ratio.
#  2. session stop -> platform confirmation latency, one bill at a time: from
#     the pile sending its bill to the platform's confirmation arriving back
#     at the pile as 0xE4 (p50 / p99), and to the platform holding the bill.
#  3. backlog drain after an outage over a pile link paced at 115200 baud
#     (8N1): a pile reconnects holding N journaled bills and sends them all
#     without waiting for answers (window N: the line's ceiling) or one at a
#     time waiting for each 0x40 and 0xEC (window 1: close to our firmware's
#     outbox, which waits for the 0x40 only); the drain rate as a fraction of
#     line rate.
#     And the bridge's own backlog (bills held in SQLite while the broker was
#     down) drained to the platform after the broker comes back.
#
#   python3 -m tools.bench_bridge [--bills 2000] [--piles 4] [--write]
import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile


from sim.brokers import Mosquitto
from host import cli
from sim import benchdoc
from sim.bench_bridge import (BAUD, bench_broker_backlog, bench_drain, bench_latency,
                              bench_throughput)


def report(r):
    t = r["throughput"]
    lat = r["latency"]
    d = r["drain"]
    bb = r["broker_backlog"]
    lines = [
        "## Bridge",
        "",
        "Rerun: `python3 -m tools.bench_bridge --write` (tools/bench_bridge.py). Mosquitto %s on "
        "loopback, the bridge as its own process (SQLite WAL, synchronous=FULL), scripted piles "
        "(sim/testkit.py) and a platform consumer in the bench process; %s, %d CPU(s)."
        % (r["mosquitto"], r["python"], r["cpus"]),
        "",
        "### Durable bills relayed",
        "",
        "%d bills from %d piles over TCP (0x3B + 0xEB each, at most %d unanswered per pile), "
        "each committed before its 0x40, published QoS 1 (%d-byte JSON), confirmed by the "
        "platform and settled on its pile (0xE4 back). Raw: the same payloads published by one "
        "aiomqtt client, QoS 1, every PUBACK awaited, in the same run."
        % (t["bills"], t["piles"], t["window"], t["payload_bytes"]),
        "",
        "| path | bills/s |",
        "|---|---|",
        "| pile -> SQLite -> 0x40 (custody) | %.0f |" % t["custody_per_s"],
        "| pile -> SQLite -> 0x40, no MQTT (custody alone: the broker URL unreachable) | %.0f |"
        % t["custody_alone_per_s"],
        "| pile -> SQLite -> MQTT QoS 1 -> platform -> confirmation -> 0xE4 on the pile | %.0f |"
        % t["relayed_per_s"],
        "| raw aiomqtt QoS 1 publish of the same payloads | %.0f |" % t["raw_per_s"],
        "| ratio relayed / raw (median of the per-run ratios) | %.2f |" % t["ratio"],
        "| ratio custody alone / raw (median of the per-run ratios) | %.2f |" % t["custody_ratio"],
        "",
        "Medians of %d runs, each run measuring the three paths back to back; relayed per "
        "run: %s; custody alone per run: %s; raw per run: %s; machine load (1-minute load "
        "average at each run's start, 2 cores shared with other work): %s. The relayed path does "
        "per bill what the raw one does (one QoS 1 publish of the same JSON) plus two "
        "frames in, three out and three back on the pile link, the bill and its fee split "
        "committed with fsync (commits grouped across piles and frames), the bookkeeping "
        "marks, the platform's confirmation "
        "round trip and the 0xE4 / 0xE3 exchange; bench, bridge and broker share the "
        "machine's CPUs." % (t["runs"], ", ".join(map(str, t["relayed_all"])),
                             ", ".join(map(str, t["custody_alone_all"])),
                             ", ".join(map(str, t["raw_all"])),
                             ", ".join("%.1f" % x for x in t["load_all"])),
        "",
        "### Session stop -> platform confirmation",
        "",
        "One bill at a time, %d samples: from the pile sending its bill (the session's end) "
        "to the platform holding it, and to the platform's confirmation arriving back on the "
        "pile as 0xE4 (commit, 0x40, publish, consumer, confirmation, commit, 0xE4)."
        % lat["samples"],
        "",
        "| until | p50 | p99 | max |",
        "|---|---|---|---|",
        "| platform has the bill | %.1f ms | %.1f ms | %.1f ms |"
        % (lat["platform"]["p50_ms"], lat["platform"]["p99_ms"], lat["platform"]["max_ms"]),
        "| confirmation back on the pile (0xE4) | %.1f ms | %.1f ms | %.1f ms |"
        % (lat["settled"]["p50_ms"], lat["settled"]["p99_ms"], lat["settled"]["max_ms"]),
        "",
        "### Backlog drain after an outage, pile link at %d baud" % BAUD,
        "",
        "A pile reconnects holding %d journaled bills; both directions paced at %d baud 8N1 "
        "(ptys ignore the baud rate, so the line rate is modelled: sim/links.PacedTransport). "
        "Drain time: from the first byte of the first bill to the last 0x40 / 0xEC back on the "
        "pile. Line fraction = upstream bytes on the wire during the drain (bills, fee splits and "
        "the pile's answers to the bridge: 0xE3 settled, 0x55, 0xE5) x 10 bits / %d / drain "
        "time; bill fraction counts only the 0x3B + 0xEB frames (%d bytes a bill). A pile that "
        "sends its journal back to back keeps the line full; one that waits for each answer "
        "loses the answers' transit and the bridge's commit per bill. Our firmware's outbox "
        "has window 1 (firmware/outbox.py): it sends a bill and its 0xEB, then waits for that "
        "bill's 0x40 (not the 0xEC) before the next, so the second row is the closer model of "
        "it; the first is the ceiling, a pile that does not wait."
        % (d["back_to_back"]["bills"], BAUD, BAUD,
           d["back_to_back"]["bill_bytes"] // d["back_to_back"]["bills"]),
        "",
        "| pile sends | bills | drain time | bills/s | bytes up | line fraction | bill fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, label in (("back_to_back", "all at once, no answer awaited (window %d)"
                         % d["back_to_back"]["bills"]),
                        ("stop_and_wait", "one at a time, waiting for each 0x40 and 0xEC "
                         "(window 1)")):
        x = d[mode]
        lines.append("| %s | %d | %.2f s | %.1f | %d | %.2f | %.2f |"
                     % (label, x["bills"], x["seconds"], x["bills_per_s"], x["bytes_up"],
                        x["line_fraction"], x["goodput_fraction"]))
    lines += [
        "",
        "The bridge's own backlog: %d bills taken into custody while the broker was down, "
        "drained to the platform (published, confirmed, settled) in %.2f s after it came back "
        "(%.0f bills/s)." % (bb["bills"], bb["seconds"], bb["bills_per_s"]),
        "",
    ]
    return "\n".join(lines)


async def _main(args):
    tmp = tempfile.mkdtemp(prefix="pc-bench-bridge-")
    # set_tcp_nodelay: the broker's own small packets are not held by Nagle
    # (docs/bridge.md recommends it for production too).
    broker = Mosquitto(verbose=False, extra_config="set_tcp_nodelay true")
    try:
        broker.start()
        import subprocess
        ver = subprocess.run([broker.binary, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
        r = {"mosquitto": ver.replace("mosquitto version ", ""),
             "python": "CPython %d.%d" % sys.version_info[:2], "cpus": os.cpu_count()}
        runs = []
        for i in range(args.repeat):
            print("running throughput %d/%d ..." % (i + 1, args.repeat), file=sys.stderr, flush=True)
            runs.append(await bench_throughput(broker, _sub(tmp, "t%d" % i), args.bills,
                                               args.piles, args.window))
        r["throughput"] = _median_run(runs)
        if args.throughput_only:
            return r
        for name, coro in (
                           ("latency", bench_latency(broker, _sub(tmp, "l"), args.samples)),
                           ("drain", bench_drain(broker, _sub(tmp, "d"), args.backlog)),
                           ("broker_backlog", bench_broker_backlog(broker, _sub(tmp, "b"),
                                                                   args.bills // 2))):
            print("running %s ..." % name, file=sys.stderr, flush=True)
            r[name] = await coro
        return r
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _median_run(runs):
    """Median of each rate over the runs; the ratio is the median of the
    per-run ratios (each run measures both sides back to back)."""
    out = dict(runs[0])
    for k in ("custody_per_s", "custody_alone_per_s", "relayed_per_s", "raw_per_s"):
        out[k] = statistics.median(r[k] for r in runs)
    out["ratio"] = statistics.median(r["relayed_per_s"] / r["raw_per_s"] for r in runs)
    out["custody_ratio"] = statistics.median(r["custody_alone_per_s"] / r["raw_per_s"] for r in runs)
    out["runs"] = len(runs)
    out["relayed_all"] = [round(r["relayed_per_s"]) for r in runs]
    out["raw_all"] = [round(r["raw_per_s"]) for r in runs]
    out["custody_alone_all"] = [round(r["custody_alone_per_s"]) for r in runs]
    out["load_all"] = [r["load"] for r in runs]
    return out


def _sub(tmp, name):
    p = os.path.join(tmp, name)
    os.mkdir(p)
    return p


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_bridge", description=__doc__)
    ap.add_argument("--bills", type=int, default=2000, help="bills in the throughput run")
    ap.add_argument("--piles", type=int, default=4)
    ap.add_argument("--window", type=int, default=16, help="unanswered bills per pile")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs (medians reported)")
    ap.add_argument("--samples", type=int, default=200, help="latency samples")
    ap.add_argument("--backlog", type=int, default=100, help="bills in the paced drain")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the throughput runs, printed as JSON (no --write)")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md (## Bridge)")
    args = ap.parse_args(argv)
    with cli.progress("bench_bridge", enabled=cli.progress_enabled(args.json)):
        r = asyncio.run(_main(args))
    if args.throughput_only:
        print(json.dumps(r["throughput"], indent=2))
        return 0
    text = report(r)
    print(json.dumps(r, indent=2) if args.json else text)
    if args.write:
        benchdoc.write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
