# Bill 0x3B decode + encode rate of protocol.codec, for the real `micropython`
# binary (also runs on CPython). Not a test: tools/bench_codec.py runs it and
# docs/benchmarks.md records the figures.
#
#   micropython tests/mp/bench_codec_mp.py [seconds]
#
# Prints one line: "bill decode+encode: N per s (M rounds in T ms)".
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _HERE + "/../.." not in sys.path:
    sys.path.insert(0, _HERE + "/../..")

import time  # noqa: E402

from protocol import codec  # noqa: E402
from tests.mp.test_codec import sample_bill  # noqa: E402

try:
    _ticks = time.ticks_ms
    _diff = time.ticks_diff
except AttributeError:  # CPython
    def _ticks():
        return int(time.monotonic() * 1000)

    def _diff(a, b):
        return a - b


def main(argv):
    secs = float(argv[0]) if argv else 2.0
    raw = codec.encode(0x3B, sample_bill(), seq=0x0180)
    n = 0
    t0 = _ticks()
    while True:
        for _ in range(50):
            f = codec.decode(raw)
            codec.encode(0x3B, f.fields, f.seq)
        n += 50
        dt = _diff(_ticks(), t0)
        if dt >= secs * 1000:
            break
    print("bill decode+encode: %d per s (%d rounds in %d ms)" % (n * 1000 // dt, n, dt))


main(sys.argv[1:])
