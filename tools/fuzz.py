# pile-fuzz: seeded fuzzing of the three places where bytes from outside
# reach this project (docs/fuzzing.md):
#
#   reader         protocol.codec.FrameReader (and decode) fed random bytes and
#                  mutated frames, in random chunks
#   bridge-tcp     host.bridge as a child process, its YKC TCP port attacked by
#                  hostile clients while a well-behaved pile keeps charging
#   mqtt-commands  the same bridge's MQTT command handler fed malformed commands
#
#   python3 -m tools.fuzz reader --count 1000000 --seed 1 [--jobs 2]
#   python3 -m tools.fuzz bridge-tcp --count 20000 --seed 1
#   python3 -m tools.fuzz mqtt-commands --count 50000 --seed 1
#   python3 -m tools.fuzz reader --seed 1 --case 1234       # replay one input
#
# Every input is built from its own Random((seed << 32) | index), so a
# violation names its case and `--case` replays that one input alone (for the
# bridge targets: the input, not the interleaving with other clients).
# Each run prints the inputs tried, outcomes and errors by class, the
# violations and a verdict (--json for JSON); the exit status is 1 on any
#
# The library is sim/fuzz.py (generators, reader target), sim/fuzz_tcp.py and
# sim/fuzz_mqtt.py (bridge targets); this module is the command line.
import argparse
import json
import sys

from host import cli
from sim import fuzz as FZ
from sim.fuzz import TARGETS, fuzz_reader
from sim.fuzz_mqtt import fuzz_mqtt_commands
from sim.fuzz_tcp import fuzz_bridge_tcp


def format_report(d):
    lines = ["pile-fuzz %s  seed %d: %d inputs in %.1f s  ->  %s"
             % (d["target"], d["seed"], d["inputs"], d["seconds"], d["verdict"])]
    lines.append("  inputs by kind:   " + ", ".join("%s %d" % kv for kv in d["kinds"].items()))
    lines.append("  outcomes:         " + ", ".join("%s %d" % kv for kv in d["outcomes"].items()))
    for k in ("inputs_per_s", "jobs", "rss_kb", "fds", "good_pile", "hostile", "hostile_piles_billed",
              "messages", "kept"):
        if k in d:
            lines.append("  %-17s %s" % (k + ":", json.dumps(d[k])))
    lines.append("  violations:       %d" % d["violation_count"])
    for v in d["violations"]:
        lines.append("    case %s [%s] %s" % (v["case"], v["kind"], v["what"]))
        if "input" in v:
            lines.append("      input (%d bytes): %s" % (v["input_bytes"], v["input"][:200]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="pile-fuzz", description="Seeded fuzzing of the frame reader, "
                                "the bridge's TCP pile port and its MQTT command handler "
                                "(docs/fuzzing.md). Exit status 1 on any violation.")
    p.add_argument("target", choices=TARGETS)
    p.add_argument("--count", type=int, default=10000, help="inputs to try (default 10000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--case", type=int, help="replay only the input with this index")
    p.add_argument("--jobs", type=int, default=1, help="reader: processes (default 1)")
    p.add_argument("--workers", type=int, default=16, help="bridge-tcp: hostile clients at once")
    p.add_argument("--rss-limit-mb", type=int, default=64,
                   help="bridge targets: allowed RSS growth over the baseline (default 64)")
    p.add_argument("--keep", action="store_true",
                   help="bridge targets: keep the temp dir (bridge log, database, config)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    cli.common(p, log_level="warning")
    a = p.parse_args(argv)
    cli.setup_logging(a)
    with cli.progress("pile-fuzz " + a.target, total=1 if a.case is not None else a.count,
                      enabled=cli.progress_enabled(a.json)) as tick:
        FZ.PROGRESS = (lambda n: tick(n)) if cli.progress_enabled(a.json) else None
        try:
            if a.target == "reader":
                if a.case is not None:
                    rep = fuzz_reader(1, a.seed, first=a.case)
                else:
                    rep = fuzz_reader(a.count, a.seed, a.jobs)
            elif a.target == "bridge-tcp":
                rep = fuzz_bridge_tcp(a.count, a.seed, a.case, workers=a.workers,
                                      rss_limit_mb=a.rss_limit_mb, keep=a.keep)
            else:
                rep = fuzz_mqtt_commands(a.count, a.seed, a.case, rss_limit_mb=a.rss_limit_mb,
                                         keep=a.keep)
        finally:
            FZ.PROGRESS = None
    d = rep.as_dict()
    print(json.dumps(d, indent=1) if a.json else format_report(d))
    return 0 if d["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
