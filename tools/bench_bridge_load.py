# Benchmark: the bridge holding many TCP piles (docs/benchmarks.md,
# "## Bridge load").
#
# N lightweight scripted YKC piles in this one asyncio process (one
# asyncio.Protocol each, no per-pile task beyond a timer loop) dial in to
# host.bridge running as its own process, log in, then send a heartbeat
# (0x03) every 10 s and a realtime frame (0x13, charging) every 15 s, phases
# spread evenly; they answer the bridge's time sync (0x56) as a pile does.
# Over a steady window after every pile is in and one full realtime period
# has passed, it measures the bridge process's CPU (utime + stime from
# /proc/<pid>/stat), its RSS (VmRSS, sampled every second), and the realtime
# messages per second it relays to MQTT (counted by a subscriber on
# pc/<site>/pile/+/realtime). Run for 1000 piles and, beside it, 100.
#
#   python3 -m tools.bench_bridge_load [--piles 1000] [--compare 100] [--window 60] [--write]
import argparse
import asyncio
import json
import os
import sys

from host import cli
from sim import benchdoc
from sim.bench_load import HEARTBEAT_S, REALTIME_S, raise_nofile, run_load


def _machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d cores (%s), CPython %s" % (os.cpu_count() or 0, cpu, sys.version.split()[0])


def format_section(runs, window_s, command):
    a, b = runs[0], runs[-1]
    rows = [
        ("piles logged in", "logged_in", "%d"),
        ("bridge CPU, % of one core", "bridge_cpu_pct", "%.2f"),
        ("bridge CPU per pile frame (ms)", "bridge_cpu_ms_per_frame", "%.3f"),
        ("bridge RSS (MB)", "rss_mb", "%.1f"),
        ("RSS per pile over the idle bridge (KB)", "rss_per_pile_kb", "%.1f"),
        ("realtime relayed to MQTT (msg/s)", "realtime_relayed_per_s", "%.2f"),
        ("realtime sent by the piles (msg/s)", "realtime_sent_per_s", "%.2f"),
        ("heartbeats answered (/s)", "heartbeat_replies_per_s", "%.2f"),
        ("login of all piles (s)", "login_s", "%.2f"),
        ("bridge CPU for the logins (s)", "login_cpu_s", "%.2f"),
        ("bridge file descriptors", "fds", "%d"),
        ("bills (session stops) sent in the window", "bills_sent", "%d"),
        ("stop -> ack (0x3B sent -> 0x40 back), p50 (ms)", "stop_ack_p50_ms", "%.1f"),
        ("stop -> ack, p99 (ms)", "stop_ack_p99_ms", "%.1f"),
        ("stop -> ack, max (ms)", "stop_ack_max_ms", "%.1f"),
        ("links lost / frame errors", None, None),
    ]
    out = ["## Bridge load", "",
           "Rerun: `%s` (tools/bench_bridge_load.py). %s." % (command, _machine()), "",
           "Scripted YKC piles (one asyncio process, one protocol object each) dial in to "
           "`host.bridge` running as its own process (log level warning, third-party piles: "
           "`tcp.ext = false`), log in, then send a heartbeat (0x03) every %g s and a realtime "
           "frame (0x13, charging) every %g s, phases spread evenly, and answer the bridge's "
           "time sync. After every pile is in and one realtime period has passed, a %g s window "
           "measures the bridge process's CPU (utime + stime, /proc/<pid>/stat), its peak RSS "
           "(VmRSS, sampled every second) and the realtime messages a subscriber on "
           "`pc/<site>/pile/+/realtime` receives (QoS 0). The bench process and Mosquitto run on "
           "the same machine (their CPU in the last rows)."
           % (HEARTBEAT_S, REALTIME_S, window_s), ""]
    out.append("| | %d piles | %d piles | ratio |" % (a["piles"], b["piles"]))
    out.append("|---|---|---|---|")
    for label, key, fmt in rows:
        if key is None:
            out.append("| %s | %d / %d | %d / %d | |" % (label, a["links_lost"], a["frame_errors"],
                                                        b["links_lost"], b["frame_errors"]))
            continue
        if a[key] is None or b[key] is None:     # no bill in a short window
            out.append("| %s | %s | %s | |" % (label, a[key], b[key]))
            continue
        ratio = "%.1fx" % (b[key] / a[key]) if a[key] else ""
        out.append("| %s | %s | %s | %s |" % (label, fmt % a[key], fmt % b[key], ratio))
    out.append("| bench process CPU, %% of one core | %.1f | %.1f | |" % (a["bench_cpu_pct"], b["bench_cpu_pct"]))
    out.append("| Mosquitto CPU, %% of one core | %.1f | %.1f | |" % (a["broker_cpu_pct"], b["broker_cpu_pct"]))
    out.append("")
    out.append("Expected realtime rate: piles / %g s (%.2f and %.2f msg/s). Idle bridge RSS (before any "
               "pile): %.1f MB." % (REALTIME_S, a["realtime_expected_per_s"], b["realtime_expected_per_s"],
                                    b["rss_idle_mb"]))
    return "\n".join(out) + "\n"


async def _main(args):
    from sim.brokers import Mosquitto
    sizes = sorted({args.compare, args.piles}) if args.compare else [args.piles]
    # This process's piles, and the bridge's (it inherits the limit): each
    # process holds one socket a pile.
    raise_nofile(max(sizes) + 512)
    broker = Mosquitto(verbose=False)
    await asyncio.get_running_loop().run_in_executor(None, broker.start)
    runs = []
    try:
        for n in sizes:
            r = await run_load(broker, n, args.window, args.seed)
            print(json.dumps(r), flush=True)
            runs.append(r)
    finally:
        broker.close()
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description="The bridge holding N TCP piles: CPU, RSS, realtime relay rate "
                                "(docs/benchmarks.md, Bridge load).")
    p.add_argument("--piles", type=int, default=1000)
    p.add_argument("--compare", type=int, default=100, help="a second, smaller run for the ratio (0: none)")
    p.add_argument("--window", type=float, default=60.0, help="steady measuring window, s (default 60)")
    p.add_argument("--seed", type=int, default=1, help="pile phases")
    p.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    a = p.parse_args(argv)
    with cli.progress("bench_bridge_load", enabled=cli.progress_enabled(getattr(a, "json", False))):
        runs = asyncio.run(_main(a))
    if len(runs) > 1:
        cmd = "python3 -m tools.bench_bridge_load --piles %d --compare %d --window %g --write" % (
            a.piles, a.compare, a.window)
        return benchdoc.show(format_section(runs, a.window, cmd), a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
