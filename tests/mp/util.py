# Helpers for tests that run under both CPython (pytest) and MicroPython
# (tests/mp/run.py). Plain functions only: MicroPython has no pytest.
import os

try:
    import tempfile
except ImportError:  # MicroPython
    tempfile = None

_seq = 0


def tmpdir(tag="t"):
    """A fresh, unique, empty directory (callers remove it with rmtree)."""
    if tempfile:
        return tempfile.mkdtemp(prefix="pc-" + tag + "-")
    import binascii
    base = os.getenv("TMPDIR") if hasattr(os, "getenv") else None
    if hasattr(os, "urandom"):
        name = (base or "/tmp") + "/pc-mp-" + tag + "-" + binascii.hexlify(os.urandom(6)).decode()
        os.mkdir(name)
        return name
    # A board (the qemu lane) has no os.urandom: its filesystem is fresh at
    # each boot, so a counter is unique.
    global _seq
    while True:
        _seq += 1
        name = (base or "/tmp") + "/pc-mp-" + tag + "-%d" % _seq
        try:
            os.mkdir(name)
            return name
        except OSError:
            pass


class TempDir:
    """`with TempDir("tag") as d:` a fresh directory (tmpdir), removed with
    all it holds however the block ends. With `make`, the block gets
    (d, make(d)): the directory and what the test keeps in it."""

    def __init__(self, tag="t", make=None):
        self.path = tmpdir(tag)
        self.make = make

    def __enter__(self):
        if self.make is None:
            return self.path
        return self.path, self.make(self.path)

    def __exit__(self, *exc):
        rmtree(self.path)


class TickClock:
    """A tick source the test moves by hand (`clock.t += ms`)."""

    def __init__(self, t=1000):
        self.t = t

    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return a - b


def rmtree(path):
    try:
        entries = [e[0] for e in os.ilistdir(path)]
    except AttributeError:
        entries = os.listdir(path)
    except OSError:
        return
    for name in entries:
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    try:
        os.rmdir(path)
    except OSError:
        pass


def raises(exc, fn, *args, **kw):
    """Call fn and return the exception it raised; fail unless it is an exc."""
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s did not raise %s" % (getattr(fn, "__name__", fn), exc.__name__))
