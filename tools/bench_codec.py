"""Codec benchmark: the bill 0x3B, decoded and encoded, per second.

    python3 -m tools.bench_codec [--seconds S] [--no-micropython] [--no-heap]

In one run: protocol.codec (decode + encode) and construct (tools/dissect
FRAME.parse + FRAME.build) on the same frame under CPython, with their ratio;
the same codec under the real `micropython` binary (tests/mp/bench_codec_mp.py);
and the MicroPython heap figures: what importing protocol.codec retains (from
.py, and from .mpy made by mpy-cross), and the smallest -X heapsize under
which `tests/mp/run.py test_codec` passes. Prints Markdown for the "## Codec"
section of docs/benchmarks.md. Figures vary with the machine and its load:
compare runs made on the same machine.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from host import cli
from protocol import codec
from tools import dissect as D
from tools.programs import find_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bill():
    sys.path.insert(0, ROOT)
    from tests.mp.test_codec import sample_bill
    return codec.encode(0x3B, sample_bill(), seq=0x0180)


def _rate(fn, seconds):
    """Best of three runs of `seconds`/3 each: calls per second."""
    best = 0.0
    for _ in range(3):
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds / 3
        while True:
            for _ in range(20):
                fn()
            n += 20
            t = time.perf_counter()
            if t >= end:
                break
        best = max(best, n / (t - t0))
    return best


def cpython_rates(seconds):
    raw = _bill()

    def ours():
        f = codec.decode(raw)
        codec.encode(0x3B, f.fields, f.seq)

    def theirs():
        c = D.FRAME.parse(raw)
        D.FRAME.build(c)

    assert D.FRAME.build(D.FRAME.parse(raw)) == raw
    return _rate(ours, seconds), _rate(theirs, seconds)


def micropython_rate(seconds):
    mp = find_program("micropython")
    if not mp:
        return None
    r = subprocess.run([mp, os.path.join(ROOT, "tests", "mp", "bench_codec_mp.py"),
                        str(seconds)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if r.returncode:
        raise RuntimeError("micropython bench failed: " + r.stderr.strip()[-300:])
    return int(r.stdout.split(":")[1].split()[0])


_PROBE = """
import gc, sys
sys.path.insert(0, %r)
gc.collect()
a = gc.mem_alloc()
import protocol.codec
gc.collect()
print(gc.mem_alloc() - a)
"""


def _retained(mp, path):
    with tempfile.TemporaryDirectory(prefix="pc-bench-") as d:
        probe = os.path.join(d, "probe.py")
        with open(probe, "w") as fh:
            fh.write(_PROBE % path)
        r = subprocess.run([mp, probe], capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(r.stderr.strip()[-300:])
        return int(r.stdout.strip())


def _mpy_tree(d):
    """protocol/*.py compiled by mpy-cross into d/protocol/*.mpy (or None)."""
    cross = find_program("mpy-cross")
    if not cross:
        return None
    os.mkdir(os.path.join(d, "protocol"))
    src = os.path.join(ROOT, "protocol")
    for name in sorted(os.listdir(src)):
        if name.endswith(".py"):
            # -march=host: crc_viper.py holds native code for this machine
            subprocess.run([cross, "-march=host", "-o",
                            os.path.join(d, "protocol", name[:-3] + ".mpy"),
                            os.path.join(src, name)], check=True, timeout=60)
    return d


def _min_heap(mp, args, cwd, lo=8, hi=512):
    """Smallest -X heapsize (in K) under which `micropython args` exits 0."""
    def ok(k):
        return subprocess.run([mp, "-X", "heapsize=%dK" % k] + args, cwd=cwd,
                              capture_output=True, timeout=300).returncode == 0
    if not ok(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def heap_figures():
    mp = find_program("micropython")
    if not mp:
        return None
    out = {"retained_py": _retained(mp, ROOT)}
    with tempfile.TemporaryDirectory(prefix="pc-mpy-") as d:
        if _mpy_tree(d):
            out["retained_mpy"] = _retained(mp, d)
        with open(os.path.join(d, "imp.py"), "w") as fh:
            fh.write("import sys\nsys.path.insert(0, sys.argv[1])\nimport protocol.codec\n")
        out["import_py"] = _min_heap(mp, [os.path.join(d, "imp.py"), ROOT], ROOT)
        if "retained_mpy" in out:
            out["import_mpy"] = _min_heap(mp, [os.path.join(d, "imp.py"), d], ROOT)
    out["run_test_codec"] = _min_heap(mp, ["tests/mp/run.py", "test_codec"], ROOT)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_codec", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    p.add_argument("--no-micropython", action="store_true", help="CPython figures only")
    p.add_argument("--no-heap", action="store_true", help="skip the heap figures")
    args = p.parse_args(argv)

    with cli.progress("bench_codec", total=3, enabled=cli.progress_enabled()) as tick:
        tick(0, "CPython")
        ours, theirs = cpython_rates(args.seconds)
        tick(1, "micropython")
        mp = None if args.no_micropython else micropython_rate(args.seconds)
        tick(1, "heap")
        heap = None if args.no_heap or args.no_micropython else heap_figures()

    print("Machine: %s, %s %s, %d CPUs" % (platform.machine(), platform.python_implementation(),
                                           platform.python_version(), os.cpu_count() or 0))
    print()
    print("| bill 0x3B (166 bytes), decode + encode | per second |")
    print("|---|---|")
    print("| protocol.codec, CPython | %.0f |" % ours)
    print("| construct 2.10 (tools/dissect FRAME.parse + build), CPython | %.0f |" % theirs)
    print("| ratio codec / construct | %.1f x |" % (ours / theirs))
    if mp is not None:
        print("| protocol.codec, micropython (unix port) | %d |" % mp)
    if heap:
        print()
        print("| MicroPython heap | KB |")
        print("|---|---|")
        print("| `import protocol.codec` retains, from .py | %.1f |" % (heap["retained_py"] / 1024))
        if "retained_mpy" in heap:
            print("| `import protocol.codec` retains, from .mpy (mpy-cross) | %.1f |"
                  % (heap["retained_mpy"] / 1024))
        print("| smallest heap to import protocol.codec, from .py | %s |" % heap["import_py"])
        if "import_mpy" in heap:
            print("| smallest heap to import protocol.codec, from .mpy | %s |"
                  % heap["import_mpy"])
        print("| smallest heap for `micropython tests/mp/run.py test_codec` | %s |"
              % heap["run_test_codec"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
