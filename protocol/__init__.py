# MicroPython's const() for every module of protocol/, firmware/ and the
# simulated hardware: `from protocol import const`. MicroPython folds
# `NAME = const(n)` when it compiles (by the name, wherever it came from);
# CPython calls this identity.
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x
