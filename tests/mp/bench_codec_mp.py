# Decode + encode rate of protocol.codec, for the real `micropython` binary
# (also runs on CPython). Not a test: tools/bench_codec.py runs it and
# docs/benchmarks.md records the figures.
#
#   micropython tests/mp/bench_codec_mp.py [seconds]          the bill 0x3B
#   micropython tests/mp/bench_codec_mp.py all [seconds]      every frame type
#
# Prints one line per frame: "NAME decode+encode: N per s (M rounds in T ms)"
# ("bill" for the first form; "all" keeps the best of 10 turns per frame). The frames are those of samples() below, the
# same that tools/bench_codec.py times under CPython.
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _HERE + "/../.." not in sys.path:
    sys.path.insert(0, _HERE + "/../..")

import time  # noqa: E402

from protocol import codec  # noqa: E402
from protocol import layout as L  # noqa: E402

try:
    _ticks = time.ticks_ms
    _diff = time.ticks_diff
except AttributeError:  # CPython
    def _ticks():
        return int(time.monotonic() * 1000)

    def _diff(a, b):
        return a - b

_DIGITS = "5503141278230501201806191026239212345678"
_HEX = "D14B0A54C3F2E1A0B9C8D7E6F5041322"
_TEXT = "LSVAU2180N2183294-V1.2.3/path/on/server/image.bin"


def sample_values(layout, seed=1):
    """Plain values for every field of `layout`: full-length BCD and hex, a
    short printable text, a 2023 time, two records in a record field."""
    out = {}
    for i in range(len(layout.names)):
        name = layout.names[i]
        k = chr(layout.kinds[i])
        n = layout.sizes[i]
        if k == "u":
            out[name] = (seed * 7919 + i * 104729) % (1 << (8 * n))
        elif k == "b":
            out[name] = (_DIGITS * 8)[i % 10:i % 10 + 2 * n]
        elif k == "h":
            out[name] = (_HEX * 8)[i % 16:i % 16 + 2 * n]
        elif k == "a" or k == "r":
            out[name] = _TEXT[i % 8:i % 8 + min(n, 17)]
        elif k == "t":
            out[name] = 730000000 + seed * 3600 + i * 61
        else:  # "v": two records when the field declares them, else 32 bytes
            try:
                rec = codec.record_layout(layout.name, name)
            except codec.FieldError:
                rec = None
            if rec is None:
                out[name] = bytes([(seed + j) & 0xFF for j in range(min(32, n))])
            else:
                out[name] = codec.pack_records(layout.name, name,
                                               [sample_values(rec, seed), sample_values(rec, seed + 1)])
    return out


def samples():
    """(name, frame bytes) for every layout of the frame table, in table order."""
    out = []
    for k in range(len(L._POS)):
        name = L._line(k)[1]
        layout = L.layout_named(name)
        out.append((name, codec.encode(name, sample_values(layout), seq=0x0180)))
    return out


def rate(raw, secs, turns=1):
    # decode, then encode the fields by type code (as tools/bench_codec.py),
    # or by name when the code picks another layout for them (bill156);
    # the best of `turns` turns of secs/turns each (on a shared machine the
    # least disturbed one)
    f = codec.decode(raw)
    code = raw[5] if codec.encode(raw[5], f.fields, f.seq) == raw else f.name
    best = (0, 0, 1)
    for _ in range(turns):
        n = 0
        t0 = _ticks()
        while True:
            for _ in range(10):
                f = codec.decode(raw)
                codec.encode(code, f.fields, f.seq)
            n += 10
            dt = _diff(_ticks(), t0)
            if dt >= secs * 1000 // turns:
                break
        if n * 1000 // dt > best[0]:
            best = (n * 1000 // dt, n, dt)
    return best


def main(argv):
    if argv and argv[0] == "all":
        secs = float(argv[1]) if len(argv) > 1 else 0.3
        for name, raw in samples():
            r, n, dt = rate(raw, secs, 10)
            print("%s decode+encode: %d per s (%d rounds in %d ms)" % (name, r, n, dt))
        return
    from tests.mp.test_codec import sample_bill
    secs = float(argv[0]) if argv else 2.0
    raw = codec.encode(0x3B, sample_bill(), seq=0x0180)
    r, n, dt = rate(raw, secs)
    print("bill decode+encode: %d per s (%d rounds in %d ms)" % (r, n, dt))


if __name__ == "__main__":
    main(sys.argv[1:])
