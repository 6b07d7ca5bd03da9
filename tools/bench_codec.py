"""Codec benchmark: every frame type decoded and encoded, per second.

    python3 -m tools.bench_codec [--seconds S] [--frame-seconds S]
                                 [--no-micropython] [--no-heap]

In one run, on the same frames, measured in turns (construct, shared codec,
fast path, again and again; the best turn of each kept, so that a burst of
load from elsewhere hits all three alike):

- the bill 0x3B of tests/mp/test_codec.py (the figure docs/benchmarks.md has
  tracked since the start): protocol.codec, construct (host/dissect
  FRAME.parse + FRAME.build) and the host's fast path (host/fastcodec.py);
- every layout of the frame table, with the values of
  tests/mp/bench_codec_mp.samples(): the same three, their ratios, and the
  same codec under the real `micropython` binary;
- the MicroPython heap figures: what importing protocol.codec retains (from
  .py, and from .mpy made by mpy-cross), and the smallest -X heapsize under
  which `tests/mp/run.py test_codec` passes.

Decode + encode = decode (CRC check, every field) then encode of the decoded
fields (every field, CRC), by type code. The fast path is checked to have
handled every frame itself (host/fastcodec.stats: no fallback to the shared
codec), and construct to rebuild each frame byte for byte. Prints Markdown
for the "## Codec" section of docs/benchmarks.md. Figures vary with the
machine and its load: compare ratios, and runs made on the same machine.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from host import cli
from host import fastcodec as X
from protocol import codec
from host import dissect as D
from sim.programs import find_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bill():
    sys.path.insert(0, ROOT)
    from tests.mp.test_codec import sample_bill
    return codec.encode(0x3B, sample_bill(), seq=0x0180)


def _once(fn, seconds, _clock=time.thread_time):
    """Calls per second of fn over about `seconds` of this thread's CPU time
    (on a shared machine, the time other processes get is not counted)."""
    n = 0
    t0 = _clock()
    end = t0 + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        t = _clock()
        if t >= end:
            return n / (t - t0)


def side_by_side(fns, seconds, turn=0.02):
    """Best calls/s of each fn over `seconds`, measured in turns of about
    `turn` s (fn 1, fn 2, ..., again): on a shared machine the best short
    turn is the one least disturbed, and each fn gets as many chances."""
    best = [0.0] * len(fns)
    turns = max(5, int(seconds / turn))
    for _ in range(turns):
        for k, fn in enumerate(fns):
            best[k] = max(best[k], _once(fn, seconds / turns))
    return best


def _key(raw):
    """The frame's type code, or its layout's name when the code picks another
    layout for its fields (bill156 has the names of the bill, which wins)."""
    f = codec.decode(raw)
    return raw[5] if codec.encode(raw[5], f.fields, f.seq) == raw else f.name


def _three(raw):
    code = _key(raw)

    def theirs():
        D.FRAME.build(D.FRAME.parse(raw))

    def shared():
        f = codec.decode(raw)
        codec.encode(code, f.fields, f.seq)

    def fast():
        f = X.decode(raw)
        X.encode(code, f.fields, f.seq)

    if D.FRAME.build(D.FRAME.parse(raw)) != raw:
        raise RuntimeError("construct does not rebuild %s" % raw.hex())
    f = X.decode(raw)
    if X.encode(code, f.fields, f.seq) != raw or codec.encode(code, f.fields, f.seq) != raw:
        raise RuntimeError("the codecs do not rebuild %s" % raw.hex())
    return theirs, shared, fast


def cpython_rates(seconds):
    """(codec, construct, fast) for the bill of tests/mp/test_codec.py."""
    theirs, shared, fast = _three(_bill())
    before = X.stats["fallback"]
    c, s, f = side_by_side((theirs, shared, fast), seconds)
    if X.stats["fallback"] != before:
        raise RuntimeError("the fast path passed the bill on to the shared codec")
    return s, c, f


def frame_rates(seconds):
    """Per layout: (name, code, bytes, construct, codec, fast) per second."""
    sys.path.insert(0, ROOT)
    from tests.mp.bench_codec_mp import samples
    rows = []
    for name, raw in samples():
        theirs, shared, fast = _three(raw)
        before = X.stats["fallback"]
        c, s, f = side_by_side((theirs, shared, fast), seconds)
        if X.stats["fallback"] != before:
            raise RuntimeError("the fast path passed %s on to the shared codec" % name)
        rows.append((name, raw[5], len(raw), c, s, f))
    return rows


def _micropython_bench(*args):
    """{name: rounds/s} from `micropython tests/mp/bench_codec_mp.py *args` (or None)."""
    mp = find_program("micropython")
    if not mp:
        return None
    r = subprocess.run([mp, os.path.join(ROOT, "tests", "mp", "bench_codec_mp.py")] + list(args),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    if r.returncode:
        raise RuntimeError("micropython bench failed: " + r.stderr.strip()[-300:])
    lines = [line.split(" decode+encode: ") for line in r.stdout.splitlines()]
    return dict((name, int(rest.split()[0])) for name, rest in lines)


def micropython_frame_rates(seconds):
    return _micropython_bench("all", str(seconds))


def micropython_rate(seconds):
    out = _micropython_bench(str(seconds))
    return None if out is None else out["bill"]


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
    p.add_argument("--seconds", type=float, default=3.0,
                   help="per codec for the bill (default 3)")
    p.add_argument("--frame-seconds", type=float, default=0.5,
                   help="per codec and frame type (default 0.5; 0: skip the per-frame table)")
    p.add_argument("--no-micropython", action="store_true", help="CPython figures only")
    p.add_argument("--no-heap", action="store_true", help="skip the heap figures")
    args = p.parse_args(argv)

    with cli.progress("bench_codec", total=5, enabled=cli.progress_enabled()) as tick:
        X.compile_all()
        tick(0, "CPython")
        ours, theirs, fast = cpython_rates(args.seconds)
        tick(1, "CPython per frame")
        rows = frame_rates(args.frame_seconds) if args.frame_seconds else []
        tick(1, "micropython")
        mp = None if args.no_micropython else micropython_rate(args.seconds)
        tick(1, "micropython per frame")
        mp_frames = None if args.no_micropython or not rows else \
            micropython_frame_rates(args.frame_seconds)
        tick(1, "heap")
        heap = None if args.no_heap or args.no_micropython else heap_figures()

    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    print("Machine: %s, %s %s, %d CPUs, load average at the end %s; fast path CRC: %s"
          % (platform.machine(), platform.python_implementation(), platform.python_version(),
             os.cpu_count() or 0, load, X.CRC_NAME))
    print()
    print("| bill 0x3B (166 bytes), decode + encode | per second | / construct |")
    print("|---|---|---|")
    print("| construct 2.10 (host/dissect FRAME.parse + build), CPython | %.0f | 1.0 x |" % theirs)
    print("| protocol.codec, CPython | %.0f | %.1f x |" % (ours, ours / theirs))
    print("| host fast path (host/fastcodec.py), CPython | %.0f | %.1f x |" % (fast, fast / theirs))
    if mp is not None:
        print("| protocol.codec, micropython (unix port) | %d | |" % mp)
    if rows:
        fr = sorted(r[5] / r[3] for r in rows)
        cr = sorted(r[4] / r[3] for r in rows)
        low = min(rows, key=lambda r: r[5] / r[3])
        print()
        under = [r[0] for r in rows if r[5] / r[3] < 20]
        print("Every layout (%d), decode + encode per second; ratios to construct. Fast path / "
              "construct: lowest %.1f x (%s), median %.1f x, 20 x or more for %d of %d%s; "
              "shared codec / construct: lowest %.1f x, median %.1f x."
              % (len(rows), fr[0], low[0], fr[len(fr) // 2], len(rows) - len(under), len(rows),
                 " (under: %s)" % ", ".join(under) if under else "", cr[0], cr[len(cr) // 2]))
        print()
        print("| frame | code | bytes | construct | protocol.codec | fast path | fast / construct "
              "| codec / construct | micropython codec |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, code, n, c, s_, f in rows:
            m = mp_frames.get(name) if mp_frames else None
            print("| %s | 0x%02X | %d | %.0f | %.0f | %.0f | %.1f x | %.1f x | %s |"
                  % (name, code, n, c, s_, f, f / c, s_ / c, "" if m is None else m))
    if heap:
        print()
        print("| MicroPython heap | KB |")
        print("|---|---|")
        print("| `import protocol.codec` retains, from .py | %.1f |" % (heap["retained_py"] / 1024))
        if "retained_mpy" in heap:
            print("| `import protocol.codec` retains, from .mpy (mpy-cross) | %.1f |"
                  % (heap["retained_mpy"] / 1024))
        for k in ("py", "mpy"):
            if "import_" + k in heap:
                print("| smallest heap to import protocol.codec, from .%s | %s |"
                      % (k, heap["import_" + k]))
        print("| smallest heap for `micropython tests/mp/run.py test_codec` | %s |"
              % heap["run_test_codec"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
