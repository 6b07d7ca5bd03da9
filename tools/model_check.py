"""Run spin on the custody model (model/custody.pml), in a temp folder.

    python -m tools.model_check                 # every check of the small configuration
    python -m tools.model_check --large         # the larger configuration (docs/model.md)
    python -m tools.model_check --bugs          # each seeded bug must give a trail
    python -m tools.model_check --json

A check is: spin -a with its -D flags, gcc, pan (a safety run for
assertions and invalid end states, or an LTL claim with -a), all in a
fresh mkdtemp folder (spin writes pan.c and the trail in its cwd). pan's
memory is capped (-DMEMLIM) and each run has a timeout: the machine is
shared.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "model", "custody.pml")
MEMLIM_MB = 1024

# name: (-D flags, kind, ltl claim). kind "safety": assertions + invalid
# end states (-DSAFETY -DNOCLAIM); "ltl": pan -a -N claim.
SMALL = [
    ("safety", ["-DNB=2", "-DMAXFAULT=1"], "safety", None),
    ("settles", ["-DNB=2", "-DMAXFAULT=1", "-DLIVE"], "ltl", "settles"),
    ("turns", ["-DNB=2", "-DJCAP=2", "-DMAXFAULT=1", "-DMUTE"], "ltl", "turns"),
]
LARGE = [
    ("safety", ["-DNB=2", "-DMAXFAULT=2"], "safety", None),
    ("settles", ["-DNB=2", "-DMAXFAULT=2", "-DLIVE", "-DMAXLOSS=2"], "ltl", "settles"),
    ("turns", ["-DNB=3", "-DJCAP=3", "-DMAXFAULT=1", "-DMUTE"], "ltl", "turns"),
]
# seeded bug: (flags, kind, claim); each must give a counterexample trail
BUGS = [
    ("BUG_EVICT_ON_ACK", ["-DNB=1", "-DMAXFAULT=1"], "safety", None),
    ("BUG_ACK_FIRST", ["-DNB=2", "-DJCAP=1", "-DMAXFAULT=1"], "safety", None),
    ("BUG_SERIAL_ONLY", ["-DNB=1", "-DMAXFAULT=1"], "safety", None),
    ("BUG_RAM_DEDUP", ["-DNB=1", "-DMAXFAULT=2"], "safety", None),
    ("BUG_ANY_SENDER", ["-DNB=1", "-DMAXFAULT=1"], "safety", None),
    ("BUG_OLDEST", ["-DNB=2", "-DJCAP=2", "-DMAXFAULT=1", "-DMUTE"], "ltl", "turns"),
]


class SpinMissing(RuntimeError):
    pass


def tools_present():
    return shutil.which("spin") is not None and shutil.which("gcc") is not None


def _num(pattern, text, cast=int):
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else None


def run(flags, kind="safety", claim=None, timeout=300, memlim=MEMLIM_MB, model=MODEL,
        keep=None, opt="-O2"):
    """One check; returns a dict: errors, states, depth, seconds (pan's own
    elapsed time), trail (the trail's first steps when errors), output."""
    if not tools_present():
        raise SpinMissing("spin and gcc are needed (bash tools/setup.sh installs them)")
    d = tempfile.mkdtemp(prefix="custody-model-")
    try:
        shutil.copy(model, os.path.join(d, "custody.pml"))
        t0 = time.monotonic()
        subprocess.run(["spin", "-a"] + flags + ["custody.pml"], cwd=d, check=True,
                       capture_output=True, text=True, timeout=timeout)
        cflags = [opt, "-DMEMLIM=%d" % memlim] + flags
        if kind == "safety":
            cflags += ["-DSAFETY", "-DNOCLAIM"]
        subprocess.run(["gcc"] + cflags + ["-o", "pan", "pan.c"], cwd=d, check=True,
                       capture_output=True, text=True, timeout=timeout)
        args = ["./pan", "-m100000"]
        if kind == "ltl":
            args += ["-a", "-N", claim]
        p = subprocess.run(args, cwd=d, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - t0
        out = p.stdout + p.stderr
        res = {
            "errors": _num(r"errors: (\d+)", out),
            "states": _num(r"(\d+) states, stored", out),
            "transitions": _num(r"(\d+) transitions", out),
            "depth": _num(r"depth reached (\d+)", out),
            "seconds": _num(r"pan: elapsed time ([0-9.e+-]+) seconds", out, float),
            "wall_seconds": round(wall, 2),
            "memory_mb": _num(r"([0-9.]+)\s+total actual memory usage", out, float),
            "complete": "MEMLIM" not in out and "max search depth too small" not in out,
            "trail": None,
            "failed": None,
            "cycle": False,
            "output": out,
        }
        trail = os.path.join(d, "custody.pml.trail")
        if os.path.exists(trail):
            t = subprocess.run(["spin", "-t", "-p", "-g"] + flags + ["custody.pml"], cwd=d,
                               capture_output=True, text=True, timeout=timeout)
            res["trail"] = t.stdout
            m = re.search(r"text of failed assertion: (.*)", t.stdout)
            res["failed"] = m.group(1).strip() if m else None
            res["cycle"] = "START OF CYCLE" in t.stdout
        if keep:
            shutil.copytree(d, keep, dirs_exist_ok=True)
        return res
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.model_check", description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true", help="the larger configuration")
    ap.add_argument("--bugs", action="store_true", help="the seeded bugs (each must fail)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    if args.bugs:
        checks = [(n, f + ["-D" + n], k, c, True) for n, f, k, c in BUGS]
    else:
        checks = [(n, f, k, c, False) for n, f, k, c in (LARGE if args.large else SMALL)]
    bad = 0
    for name, flags, kind, claim, must_fail in checks:
        r = run(flags, kind, claim, timeout=3600 if args.large else 300)
        ok = (r["errors"] or 0) > 0 if must_fail else (r["errors"] == 0 and r["complete"])
        bad += not ok
        row = {k: r[k] for k in ("errors", "states", "transitions", "depth", "seconds",
                                 "wall_seconds", "memory_mb", "complete")}
        row.update(name=name, flags=" ".join(flags), kind=kind + (" " + claim if claim else ""),
                   ok=ok)
        rows.append(row)
        if not args.json:
            print("%-18s %-40s %-14s errors %s  states %s  depth %s  %ss  %s MB  %s"
                  % (name, row["flags"], row["kind"], row["errors"], row["states"], row["depth"],
                     row["seconds"], row["memory_mb"], "ok" if ok else "FAILED"), flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
