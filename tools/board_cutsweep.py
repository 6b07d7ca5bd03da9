"""Power cuts on real littlefs at every block operation of a journal's life
(tests/mp/lfscut.py), on the emulated board or on the unix port.

    python3 tools/board_cutsweep.py                 # every cut point, on the board (qemu)
    python3 tools/board_cutsweep.py --step 16       # every 16th (the board lane's sample)
    python3 tools/board_cutsweep.py --twice         # and every cut of each next boot's recovery
    python3 tools/board_cutsweep.py --unix          # the same on the unix port's littlefs

Prints the sweep's line (block operations, cut points, recovered) and the
closing "N passed, N failed"; exit status 1 on any failure.
"""
import argparse
import os
import subprocess
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim.board import ROOT, Board, BoardError, build, verdict  # noqa: E402

CUT_SCRIPT = "from tests.mp import lfscut\nlfscut.main(%d, %d, %r, True)\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step", type=int, default=1, help="cut at every STEP-th block operation")
    p.add_argument("--offset", type=int, default=0, help="first cut point - 1")
    p.add_argument("--twice", action="store_true", help="also cut each next boot's recovery")
    p.add_argument("--unix", action="store_true", help="on the unix port, not qemu")
    p.add_argument("--timeout", type=int, default=7200)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    if a.unix:
        mp = shutil.which("micropython") or os.path.join(ROOT, ".venv", "bin", "micropython")
        cmd = [mp, "tests/mp/lfscut.py", str(a.step), str(a.offset)] + (["--twice"] if a.twice else [])
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout)
        out, err = r.stdout, r.stderr
    else:
        try:
            elf = build()
        except BoardError:
            return 1
        b = Board(elf)
        try:
            out, err = b.raw_exec(CUT_SCRIPT % (a.step, a.offset, a.twice), a.timeout)
        except BoardError as e:
            print("board:", e)
            return 1
        finally:
            b.close()
    ok, text = verdict(out, err)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    print("%s, %.0f s" % ("ok" if ok else "FAILED", time.monotonic() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
