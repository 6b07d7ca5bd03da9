# The emulated pile controller board for the board lane and the board
# benchmarks (docs/board.md): tools/board.sh builds the image; each Board is
# qemu-system-arm (MPS2-AN385) with the UART on its stdio; run_suite() runs a
# dual-interpreter suite on a fresh board and verdict() reads its result.
# The command line is tools/board_test.py.
import atexit
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time

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


def run_suite(elf, suite, verbose=False, timeout=600, before=""):
    """(ok, seconds, text) for one suite on a fresh board; before is code
    run on the board first."""
    t0 = time.monotonic()
    b = Board(elf)
    try:
        args = [suite] + (["-v"] if verbose else [])
        out, err = b.raw_exec(SUITE_SCRIPT % (FS_BLOCKS, before, args), timeout)
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
    return [n for n in SLOW_FIRST if n in found] + [n for n in found if n not in SLOW_FIRST]
