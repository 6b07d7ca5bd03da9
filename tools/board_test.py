"""The board lane: the dual-interpreter suites (tests/mp/test_*.py) inside
qemu, on an emulated Cortex-M3 (MPS2-AN385), from frozen bytecode.

    python3 tools/board_test.py                 # every suite, one fresh board each
    python3 tools/board_test.py test_codec -v   # some suites, every test named

tools/board.sh builds the test image (tests/board/manifest.py: the board's
modules, the simulated hardware and the suites, frozen) or reuses its cached
build. Each suite gets a freshly booted board with littlefs on a RAM block
device (tests/board/boardfs.py); the script is sent over the raw REPL and
the suite's closing "N passed, N failed" line is read back. A failed test,
a suite that crashes or never prints its closing line, or a board that does
not answer within the timeout fails the run (exit status 1).
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim import board as _board  # noqa: E402
from sim.board import _SUMMARY, CANARY, BoardError, build, run_suite  # noqa: E402

# The littlefs power-cut sample (tests/mp/lfscut.py, docs/board.md) runs
# as one more suite: every 16th cut point; tools/board_cutsweep.py runs all.


def suites():
    """Every tests/mp suite (the slowest first), then the power-cut sample."""
    return _board.suites() + ["lfscut"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="*", help="suite names (default: every tests/mp/test_*.py)")
    p.add_argument("-v", "--verbose", action="store_true", help="name every test that passes")
    p.add_argument("-j", "--jobs", type=int, default=2, help="boards at once (default 2)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per suite (default 600)")
    p.add_argument("--elf", help="a prebuilt test image (default: tools/board.sh builds it)")
    p.add_argument("--no-canary", action="store_true",
                   help="skip the self-check (a planted CRC bug that must fail test_codec)")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        elf = a.elf or build()
    except BoardError:
        return 1    # tools/board.sh said why, in one line
    names = a.suites or suites()
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        results = ex.map(lambda s: (s,) + run_suite(elf, s, a.verbose, a.timeout), names)
        for suite, ok, secs, text in results:
            summary = _SUMMARY.findall(text)
            line = ("%s passed, %s failed" % summary[-1]) if summary else "no result"
            print("-- %s on the board: %s (%.1f s)" % (suite, "ok" if ok else "FAILED", secs), line)
            if not ok or a.verbose:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
            if not ok:
                failed.append(suite)
            sys.stdout.flush()
    if not a.no_canary:
        ok, secs, text = run_suite(elf, CANARY[0], False, a.timeout, CANARY[1])
        m = _SUMMARY.findall(text)
        if ok or not m or int(m[-1][1]) == 0:
            print("-- canary: %s with a broken CRC did not fail its tests on the board: "
                  "the lane cannot be trusted" % CANARY[0])
            sys.stdout.write(text)
            failed.append("canary")
        else:
            print("-- canary: %s with a broken CRC fails on the board, as it must (%s passed, %s failed)"
                  % ((CANARY[0],) + m[-1]))
    print("board lane: %d suites, %d failed%s (%.0f s)" % (
        len(names), len(failed), (": " + " ".join(failed)) if failed else "", time.monotonic() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
