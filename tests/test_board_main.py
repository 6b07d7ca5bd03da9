# firmware/main.py, the board entry point: compiles under MicroPython,
# importing it starts nothing (CPython and MicroPython), and build() wires a
# Pile from a `machine` module (a fake here: no board in CI) that logs in on
# the link UART and keeps the RTC as its wall clock.
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from sim.programs import find_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MP = find_program("micropython")
needs_mp = pytest.mark.skipif(MP is None, reason="micropython is not installed")

FAKE_MACHINE = '''
import sys
sys.path.insert(0, ROOT)
import firmware.main as M
from protocol import codec

class Pin:
    OUT = 1
    IN = 0
    def __init__(self, n, mode=0):
        self.n = n
        self.v = 0
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

class UART:
    made = {}
    def __init__(self, uid, **kw):
        self.kw = kw
        self.out = bytearray()
        UART.made[uid] = self
    def read(self, n):
        return None
    def write(self, b):
        self.out.extend(b)
        return len(b)

class RTC:
    def __init__(self):
        self.dt = (2026, 11, 24, 1, 10, 0, 0, 0)
    def datetime(self, t=None):
        if t is None:
            return self.dt
        self.dt = t

class Machine:
    Pin = Pin
    UART = UART
    RTC = RTC
    def reset(self):
        raise SystemExit("reset")

pile = M.build(Machine(), {"root": DATA})
M.run(pile, rounds=5)
names = [f.name for f in codec.FrameReader().push(bytes(UART.made[1].out))]
print("frames", names)
print("pile", pile.pile)
print("meter_uart", UART.made[2].kw["baudrate"], UART.made[2].kw["parity"])
t0 = pile.clock.now()
pile.clock.set_now(t0 + 86400 + 3661)
print("clock", pile.clock.now() - t0)
'''


@needs_mp
def test_main_compiles_under_micropython():
    r = subprocess.run([MP, "-X", "compile-only", "firmware/main.py"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_importing_main_on_cpython_starts_nothing():
    code = ("import sys; import firmware.main as M; "
            "assert 'machine' not in sys.modules; "
            "assert not any(m.startswith('firmware.pile') for m in sys.modules); "
            "print(M.CONFIG['pile'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "55031412782305"


def test_main_on_cpython_says_it_needs_a_board():
    r = subprocess.run([sys.executable, "firmware/main.py"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "runs on a board" in r.stderr


@needs_mp
def test_importing_main_on_micropython_starts_nothing():
    r = subprocess.run([MP, "-c", "import firmware.main; import sys; "
                        "print('machine' in sys.modules, 'firmware.pile' in sys.modules)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MICROPYPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False False"


@needs_mp
def test_board_pile_logs_in_on_the_link_uart_under_micropython():
    d = tempfile.mkdtemp(prefix="pc-boardmain-")
    try:
        script = os.path.join(d, "check.py")
        with open(script, "w") as f:
            f.write("ROOT = %r\nDATA = %r\n" % (ROOT, os.path.join(d, "data")) + FAKE_MACHINE)
        r = subprocess.run([MP, script], cwd=d, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        out = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
        assert out["frames"] == "['login']"
        assert out["pile"] == "55031412782305"
        assert out["meter_uart"] == "2400 0"          # DL/T 645: 2400 baud, even parity
        assert out["clock"] == str(86400 + 3661)       # 0x56 -> RTC -> now()
        assert os.path.isdir(os.path.join(d, "data"))  # the journal's folder
    finally:
        shutil.rmtree(d, ignore_errors=True)
