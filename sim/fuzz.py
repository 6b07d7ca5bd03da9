# pile-fuzz's library (docs/fuzzing.md): seeded inputs (case_rng), the report,
# the frame generators and mutators, and the reader target. The bridge
# targets are sim/fuzz_tcp.py and sim/fuzz_mqtt.py (their bridge child and
# platform: sim/bridge_child.py); the command line is tools/fuzz.py.
#
# Every input is built from its own Random((seed << 32) | index), so a
# violation names its case and `--case` replays that one input alone.
import collections
import os
import random
import time

from protocol import codec
from protocol.crc import crc16
from protocol.errors import FrameError
from protocol.frames import each


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("reader", "bridge-tcp", "mqtt-commands")
_MAX_VIOLATIONS = 20          # kept in the report (all are counted)
_HEX_CHARS = 1200             # of an input, in a violation record

FRAMES = list(each())
PILE_FRAMES = [f for f in FRAMES if f[0] & 1]      # odd codes: pile -> platform
_LAST_SECOND = 3155759999                          # 2099-12-31 23:59:59
_PRINTABLE = "".join(chr(c) for c in range(32, 127))


def case_rng(seed, i):
    return random.Random((seed << 32) | i)


# Progress: called with the number of new inputs as they are counted (the
# CLI's progress bar; None in tests and library use).
PROGRESS = None


class Report:
    """Counts and violations of one target's run."""

    def __init__(self, target, seed):
        self.target = target
        self.seed = seed
        self._inputs = 0
        self.kinds = collections.Counter()      # inputs by kind
        self.outcomes = collections.Counter()   # what came out, by class
        self.violations = []
        self.violation_count = 0
        self.extra = {}
        self.t0 = time.monotonic()

    @property
    def inputs(self):
        return self._inputs

    @inputs.setter
    def inputs(self, n):
        if PROGRESS is not None and n > self._inputs:
            PROGRESS(n - self._inputs)
        self._inputs = n

    def violation(self, case, kind, what, data=None):
        self.violation_count += 1
        if len(self.violations) < _MAX_VIOLATIONS:
            v = {"case": case, "kind": kind, "what": what}
            if data is not None:
                v["input"] = bytes(data[:_HEX_CHARS // 2]).hex() + ("..." if len(data) > _HEX_CHARS // 2 else "")
                v["input_bytes"] = len(data)
            self.violations.append(v)

    def merge(self, d):
        self.inputs += d["inputs"]
        self.kinds.update(d["kinds"])
        self.outcomes.update(d["outcomes"])
        self.violation_count += d["violation_count"]
        self.violations.extend(d["violations"][:max(0, _MAX_VIOLATIONS - len(self.violations))])

    def as_dict(self):
        d = {"target": self.target, "seed": self.seed, "inputs": self.inputs,
             "kinds": dict(sorted(self.kinds.items())),
             "outcomes": dict(sorted(self.outcomes.items())),
             "violation_count": self.violation_count, "violations": self.violations,
             "seconds": round(time.monotonic() - self.t0, 1),
             "verdict": "pass" if self.violation_count == 0 else "FAIL"}
        d.update(self.extra)
        return d


# --- frames with random values, for every frame type --------------------------------

def _value(rng, f):
    kind, size = f[1], f[2]
    if kind == "u":
        return rng.getrandbits(8 * size)
    if kind == "b":
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 2 * size)))
    if kind in "ar":
        return "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(0, size)))
    if kind == "h":
        return "".join(rng.choice("0123456789ABCDEF") for _ in range(rng.randint(0, 2 * size)))
    if kind == "t":
        return rng.randint(0, _LAST_SECOND)
    rec = sum(r[2] for r in f[5]) if len(f) > 5 else 1      # "v": whole records
    return rng.randbytes(rng.randint(0, size // rec) * rec)


def random_frame(rng, spec, pile=None):
    """A well-formed frame of type `spec` (an entry of FRAMES) with random
    values; `pile` (a code) replaces the pile code and the trade serial's
    leading pile digits."""
    code, name, _, fields = spec
    values = {f[0]: _value(rng, f) for f in fields}
    if pile is not None:
        if "pile" in values:
            values["pile"] = pile
        if "serial" in values:
            values["serial"] = (pile + "%018d" % rng.getrandbits(59))[:32]
    return codec.encode(name, values, seq=rng.getrandbits(16))


def frame_pool(seed, per_type=16, specs=None, pile_codes=None):
    """[(raw, code, seq, body)] of good frames: `per_type` of each type."""
    rng = random.Random(seed)
    out = []
    for spec in specs or FRAMES:
        for _ in range(per_type):
            raw = random_frame(rng, spec, rng.choice(pile_codes) if pile_codes else None)
            f = codec.decode(raw)
            out.append((raw, f.code, f.seq, f.body))
    return out


def valid_crc_frame(rng, code=None):
    """A frame whose envelope and CRC are right around a random body: for a
    random type (or `code`), either a layout's exact body size (so every
    field decoder runs on random bytes) or any size."""
    if code is None:
        code = rng.choice(FRAMES)[0] if rng.random() < 0.9 else rng.getrandbits(8)
    sizes = []
    if rng.random() < 0.7:
        try:
            sizes = [lay.size for lay in codec.layouts(code)]
        except FrameError:      # a code no frame uses
            pass
    n = rng.choice(sizes) if sizes else rng.randint(0, codec.MAX_BODY)
    enc = 0 if rng.random() < 0.9 else rng.getrandbits(8)
    return codec.wrap(code, rng.randbytes(n), rng.getrandbits(16), enc)


_LENGTHS = (0, 1, 2, 3, 4, 5, 0xFE, 0xFF)


def mutate(rng, frame, pool):
    """1..4 mutations of one frame: bit flips, truncation, insertion,
    deletion, duplication, splicing, false starts, odd length bytes, a
    swapped CRC."""
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        n = len(b)
        if op == 0 and n:                       # bit flip(s)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                     # truncate
            del b[rng.randrange(n):]
        elif op == 2:                           # insert random bytes
            i = rng.randint(0, n)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and n:                     # delete a slice
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 8)]
        elif op == 4:                           # duplicate all or part
            i = rng.randint(0, n)
            b[i:i] = b[:rng.randint(0, n)] if rng.random() < 0.5 else b
        elif op == 5 and n > 1:                 # odd length byte
            b[1] = rng.choice(_LENGTHS) if rng.random() < 0.7 else (b[1] + rng.choice((-1, 1))) & 0xFF
        elif op == 6 and n > 2:                 # swap the CRC bytes
            b[-1], b[-2] = b[-2], b[-1]
        elif op == 7:                           # splice: the head of another frame
            other = rng.choice(pool)[0]
            b[rng.randint(0, n):] = other[:rng.randint(0, len(other))]
        elif op == 8 and n:                     # a false start inside
            b[rng.randrange(n)] = codec.START
        elif op == 9 and n > 6:                 # another type code, CRC left as is
            b[5] = rng.getrandbits(8)
    return bytes(b)


def garbage(rng, pool, max_len=600):
    """Random bytes, biased towards what confuses a frame reader: false
    starts, plausible and extreme length bytes, pieces of real frames."""
    n = rng.randint(0, max_len) if rng.random() < 0.3 else rng.randint(0, 64)
    r = rng.random()
    if r < 0.5:
        return rng.randbytes(n)
    if r < 0.8 or not pool:
        alphabet = (codec.START, 0x00, 0xFF, 0x04, rng.getrandbits(8), rng.getrandbits(8))
        return bytes(rng.choice(alphabet) for _ in range(n))
    out = bytearray()
    while len(out) < n:
        out += mutate(rng, rng.choice(pool)[0], pool)
    return bytes(out[:n])


def chunks(rng, data):
    """data cut at random points (sometimes one byte at a time)."""
    n = len(data)
    r = rng.random()
    if r < 0.4 or n == 0:
        return [data]
    if r < 0.5 and n <= 400:
        return [data[i:i + 1] for i in range(n)]
    cuts = sorted(rng.randint(0, n) for _ in range(rng.randint(1, 12)))
    out = []
    last = 0
    for c in cuts:
        out.append(data[last:c])
        last = c
    out.append(data[last:])
    return out


# --- target: reader -------------------------------------------------------------------

_READER_KINDS = (("random", 20), ("mutated", 30), ("valid_crc", 20), ("garbage_then_good", 15),
                 ("clean", 7), ("oversized_length", 8), ("frames_in_noise", 15))
_FILLER = b"\x00" * codec.MAX_FRAME     # an idle line after the good frame


def _pick(rng, weighted):
    total = sum(w for _, w in weighted)
    x = rng.random() * total
    for k, w in weighted:
        x -= w
        if x < 0:
            return k
    return weighted[-1][0]


def _crc_span_covers(stream, pos, tolerant):
    """True when some CRC-valid frame starting before `pos` runs past it: a
    false start that passes its CRC (1 in 65536) legitimately takes the
    bytes of the frame behind it."""
    p = stream.find(b"\x68", max(0, pos - codec.MAX_FRAME), pos)
    while p != -1:
        if p + 1 < len(stream):
            ln = stream[p + 1]
            n = ln + 4
            if ln >= 4 and p + n > pos and p + n <= len(stream):
                got = stream[p + n - 2] | (stream[p + n - 1] << 8)
                want = crc16(stream[p + 2:p + n - 2])
                if got == want or (tolerant and got == ((want >> 8) | ((want & 0xFF) << 8))):
                    return True
        p = stream.find(b"\x68", p + 1, pos)
    return False


class ReaderFuzz:
    def __init__(self, seed, report):
        self.seed = seed
        self.r = report
        self.pool = frame_pool(seed)

    def feed(self, i, kind, reader, data, rng):
        """Push data in random chunks; check every push. Returns the items
        (None after a violation)."""
        out = []
        r = self.r
        for c in chunks(rng, data):
            try:
                got = reader.push(c)
            except Exception as e:
                r.violation(i, kind, "push raised %r" % e, data)
                return None
            if reader.pending() > codec.MAX_FRAME:
                r.violation(i, kind, "pending() %d > MAX_FRAME" % reader.pending(), data)
                return None
            for x in got:
                if not isinstance(x, (codec.Frame, FrameError)):
                    r.violation(i, kind, "push yielded %r" % (x,), data)
                    return None
                r.outcomes[type(x).__name__] += 1
            out.extend(got)
        return out

    def check_decode(self, i, kind, raw):
        try:
            f = codec.decode(raw, tolerant=bool(len(raw) & 1))
        except FrameError as e:
            self.r.outcomes["decode:" + type(e).__name__] += 1
            return
        except Exception as e:
            self.r.violation(i, kind, "decode raised %r" % e, raw)
            return
        if not isinstance(f, codec.Frame):
            self.r.violation(i, kind, "decode returned %r" % (f,), raw)
        else:
            self.r.outcomes["decode:Frame"] += 1

    def run_case(self, i):
        rng = case_rng(self.seed, i)
        kind = _pick(rng, _READER_KINDS)
        self.r.inputs += 1
        self.r.kinds[kind] += 1
        reader = codec.FrameReader(tolerant=rng.random() < 0.5)
        pool = self.pool
        good = None
        if kind == "random":
            data = garbage(rng, pool, 2000)
        elif kind == "mutated":
            parts = [mutate(rng, rng.choice(pool)[0], pool) for _ in range(rng.randint(1, 6))]
            for p in parts:
                self.check_decode(i, kind, p)
            data = b"".join(parts)
        elif kind == "valid_crc":
            parts = [valid_crc_frame(rng) for _ in range(rng.randint(1, 3))]
            for p in parts:
                self.check_decode(i, kind, p)
            data = b"".join(parts)
        elif kind == "garbage_then_good":
            good = rng.choice(pool)
            junk = garbage(rng, pool)
            data = junk + good[0] + _FILLER
            pos = len(junk)
        elif kind == "oversized_length":
            good = rng.choice(pool)
            filler = bytes(b for b in rng.randbytes(rng.randint(0, 40)) if b != codec.START)
            junk = bytes((codec.START, rng.choice((0xFF, 0xFE, 0xFD, rng.randint(4, 0xFF))))) + filler
            data = junk + good[0] + _FILLER
            pos = len(junk)
        elif kind == "frames_in_noise":
            # Intact frames with noise before, between and after them: every
            # one must come out, in order (a line that picks up noise between
            # bills must never lose a bill).
            picks, spans = [], []
            buf = bytearray()
            for _ in range(rng.randint(2, 6)):
                buf += garbage(rng, pool, 300)
                p = rng.choice(pool)
                picks.append(p)
                spans.append(len(buf))
                buf += p[0]
            buf += garbage(rng, pool, 300) + _FILLER
            data = bytes(buf)
        else:  # clean: good frames back to back, nothing else
            picks = [rng.choice(pool) for _ in range(rng.randint(1, 8))]
            data = b"".join(p[0] for p in picks)
        got = self.feed(i, kind, reader, data, rng)
        if got is None:
            return
        if kind == "clean":
            want = [(p[1], p[2], p[3]) for p in picks]
            seen = [(x.code, x.seq, x.body) if isinstance(x, codec.Frame) else type(x).__name__
                    for x in got]
            if seen != want or reader.pending():
                self.r.violation(i, kind, "clean stream of %d frames read as %r (pending %d)"
                                 % (len(want), seen[:10], reader.pending()), data)
        elif kind == "frames_in_noise":
            frames = [(x.code, x.seq, x.body) for x in got if isinstance(x, codec.Frame)]
            at = 0
            for p, pos in zip(picks, spans):
                try:
                    at = frames.index(p[1:], at) + 1
                except ValueError:
                    if _crc_span_covers(data, pos, reader.tolerant):
                        self.r.outcomes["good_frame_taken_by_crc_valid_false_start"] += 1
                    else:
                        self.r.violation(i, kind, "intact frame 0x%02X at byte %d of %d (noise around it) "
                                         "not recovered in order" % (p[1], pos, len(data)), data)
                        return
            self.r.outcomes["intact_frames_recovered"] += len(picks)
        elif good is not None:
            found = any(isinstance(x, codec.Frame) and (x.code, x.seq, x.body) == good[1:]
                        for x in got)
            if not found:
                if _crc_span_covers(data, pos, reader.tolerant):
                    self.r.outcomes["good_frame_taken_by_crc_valid_false_start"] += 1
                else:
                    self.r.violation(i, kind, "good frame 0x%02X after %d bytes of garbage not found"
                                     % (good[1], pos), data)


def _reader_range(seed, first, count):
    rep = Report("reader", seed)
    fz = ReaderFuzz(seed, rep)
    for i in range(first, first + count):
        fz.run_case(i)
    d = rep.as_dict()
    return {k: d[k] for k in ("inputs", "kinds", "outcomes", "violation_count", "violations")}


def fuzz_reader(count, seed, jobs=1, first=0):
    rep = Report("reader", seed)
    if jobs <= 1 or count < 1000:
        rep.merge(_reader_range(seed, first, count))
    else:
        import multiprocessing
        per = -(-count // jobs)
        ranges = [(seed, first + k * per, min(per, count - k * per)) for k in range(jobs)
                  if count - k * per > 0]
        with multiprocessing.get_context("fork").Pool(len(ranges)) as pool:
            for d in pool.starmap(_reader_range, ranges):
                rep.merge(d)
    rep.extra["jobs"] = jobs
    rep.extra["inputs_per_s"] = round(rep.inputs / max(1e-9, time.monotonic() - rep.t0))
    return rep
