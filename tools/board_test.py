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
import atexit
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_HEAP = 524288          # bytes of MicroPython heap in the test image
FS_BLOCKS = 512             # 2 MB of littlefs (4 KB blocks)


class BoardError(Exception):
    pass


def build(manifest="tests/board/manifest.py", heap=TEST_HEAP):
    """The image's path, built (or found in the cache) by tools/board.sh."""
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "board.sh"), manifest, str(heap)],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise BoardError("tools/board.sh failed (exit %d)" % r.returncode)
    # A private copy: a build started meanwhile replaces the cached image.
    tmp = tempfile.mkdtemp(prefix="pc-board-")
    atexit.register(shutil.rmtree, tmp, True)
    elf = os.path.join(tmp, "firmware.elf")
    shutil.copy(r.stdout.strip().splitlines()[-1], elf)
    return elf


class Board:
    """One emulated board: qemu-system-arm with the UART on its stdio,
    stopped by its pid when done."""

    def __init__(self, elf, icount=None, extra=()):
        cmd = ["qemu-system-arm", "-machine", "mps2-an385", "-display", "none",
               "-monitor", "none", "-serial", "stdio", "-semihosting", "-kernel", elf]
        cmd += list(extra)
        if icount is not None:
            cmd[1:1] = ["-icount", "shift=%d" % icount]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        self._chunks = queue.Queue()
        self._buf = b""
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self):
        while True:
            b = self.proc.stdout.read(4096)
            self._chunks.put(b)
            if not b:
                return

    def expect(self, token, timeout):
        """Everything the board prints up to token (consumed); BoardError if
        it does not come within timeout seconds or qemu exits."""
        deadline = time.monotonic() + timeout
        while token not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BoardError("timeout after %d s waiting for %r; last output: %r"
                                 % (timeout, token, self._buf[-400:]))
            try:
                b = self._chunks.get(timeout=left)
            except queue.Empty:
                continue
            if not b:
                raise BoardError("qemu exited (status %s) waiting for %r; last output: %r"
                                 % (self.proc.poll(), token, self._buf[-400:]))
            self._buf += b
        i = self._buf.index(token)
        out, self._buf = self._buf[:i], self._buf[i + len(token):]
        return out

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def raw_exec(self, code, timeout):
        """Runs code with the raw REPL; returns (stdout, exception text)."""
        self.expect(b">>> ", 30)
        self.send(b"\r\x01")
        self.expect(b"raw REPL; CTRL-B to exit\r\n>", 30)
        self.send(code.encode() + b"\x04")
        self.expect(b"OK", 30)
        out = self.expect(b"\x04", timeout)
        err = self.expect(b"\x04", 30)
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


SUITE_SCRIPT = """\
import boardfs
boardfs.mount(%d)
%s
from tests.mp import run
run.main(%r)
"""

_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed\s*$", re.M)

# The lane checks itself on every run: test_codec with the CRC broken in
# RAM on the board must come out failed, or the lane is not able to fail.
CANARY = ("test_codec", "import protocol.crc\nprotocol.crc.crc16 = lambda data, crc=0xFFFF: 0")


def verdict(out, err):
    """(ok, text) from what the board printed: ok only with a closing line
    that has at least one pass, no failure and no exception after it."""
    m = _SUMMARY.findall(out)
    ok = bool(m) and not err.strip() and int(m[-1][1]) == 0 and int(m[-1][0]) > 0
    text = out + (("\nexception on the board:\n" + err) if err.strip() else "")
    if not m:
        text += "\nno closing 'N passed, N failed' line\n"
    return ok, text


# Power cuts on littlefs at block operations of a journal's life
# (tests/board/lfscut.py; docs/board.md): the lane runs every LFSCUT_STEP-th
# cut point, tools/board_cutsweep.py all of them.
CUT_SCRIPT = "import lfscut\nlfscut.main(%d, %d, %r, True)\n"
LFSCUT_STEP = 16


def run_suite(elf, suite, verbose=False, timeout=600, before=""):
    """(ok, seconds, text) for one suite on a fresh board; before is code
    run on the board first."""
    t0 = time.monotonic()
    b = Board(elf)
    try:
        args = [suite] + (["-v"] if verbose else [])
        if suite == "lfscut":
            code = CUT_SCRIPT % (LFSCUT_STEP, 0, False)
        else:
            code = SUITE_SCRIPT % (FS_BLOCKS, before, args)
        out, err = b.raw_exec(code, timeout)
    except BoardError as e:
        return False, time.monotonic() - t0, "board: %s\n" % e
    finally:
        b.close()
    ok, text = verdict(out, err)
    return ok, time.monotonic() - t0, text


# The slowest suites on the board (docs/board.md) start first, so that two
# boards at a time finish together.
SLOW_FIRST = ("test_upgrade", "test_journal", "test_session", "test_console", "test_pile", "test_remote")


def suites():
    d = os.path.join(ROOT, "tests", "mp")
    found = sorted(n[:-3] for n in os.listdir(d) if n.startswith("test_") and n.endswith(".py"))
    found.append("lfscut")
    return [n for n in SLOW_FIRST if n in found] + [n for n in found if n not in SLOW_FIRST]


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
