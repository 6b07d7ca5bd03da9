# pile-fuzz: seeded fuzzing of the three places where bytes from outside
# reach this project (docs/fuzzing.md):
#
#   reader         protocol.codec.FrameReader (and decode) fed random bytes and
#                  mutated frames, in random chunks
#   bridge-tcp     host.bridge as a child process, its YKC TCP port attacked by
#                  hostile clients while a well-behaved pile keeps charging
#   mqtt-commands  the same bridge's MQTT command handler fed malformed commands
#
#   python3 -m tools.fuzz reader --count 1000000 --seed 1 [--jobs 2]
#   python3 -m tools.fuzz bridge-tcp --count 20000 --seed 1
#   python3 -m tools.fuzz mqtt-commands --count 50000 --seed 1
#   python3 -m tools.fuzz reader --seed 1 --case 1234       # replay one input
#
# Every input is built from its own Random((seed << 32) | index), so a
# violation names its case and `--case` replays that one input alone (for the
# bridge targets: the input, not the interleaving with other clients).
# Each run prints the inputs tried, outcomes and errors by class, the
# violations and a verdict (--json for JSON); the exit status is 1 on any
# violation.
import argparse
import asyncio
import collections
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

from host.mqtt import Background
from protocol import codec
from protocol.crc import crc16
from protocol.errors import FrameError
from protocol.frames import each
from host import cli

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


# --- the bridge as a child process ----------------------------------------------------

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError("cannot write %r as TOML" % (v,))


def write_toml(path, cfg):
    """A TOML file for a config of scalars, lists and nested tables."""
    lines = []

    def table(prefix, d):
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in d.items() if isinstance(v, dict)]
        if prefix and (scalars or not subs):
            lines.append("\n[%s]" % prefix)
        for k, v in scalars:
            lines.append("%s = %s" % (json.dumps(k), _toml_value(v)))
        for k, v in subs:
            table((prefix + "." if prefix else "") + json.dumps(k), v)
    table("", cfg)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid):
    """User + system CPU seconds of a process (/proc/<pid>/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class BridgeChild:
    """host.bridge run as `python -m host.bridge --config FILE`, stopped by its pid."""

    def __init__(self, tmp, cfg):
        self.tmp = tmp
        self.cfg = cfg
        self.cfg_path = write_toml(os.path.join(tmp, "bridge.toml"), cfg)
        self.log_path = os.path.join(tmp, "bridge.log")
        self.proc = None
        self.pid = None
        self.tcp_port = None
        self.started_at = None

    async def start(self):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "host.bridge", "--config", self.cfg_path,
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                cwd=ROOT, env=env)
        self.pid = self.proc.pid
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            await self.proc.wait()
            raise RuntimeError("bridge exited before its ready line:\n" + self.log_tail())
        ready = json.loads(line)
        self.tcp_port = ready["tcp_port"]
        self.started_at = ready["started_at"]
        return self

    @property
    def alive(self):
        return self.proc is not None and self.proc.returncode is None and os.path.exists(
            "/proc/%d/stat" % self.pid) and _state(self.pid) != "Z"

    def rss_kb(self):
        return proc_rss_kb(self.pid)

    def cpu_s(self):
        return proc_cpu_s(self.pid)

    def fds(self):
        return proc_fds(self.pid)

    async def stop(self):
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except asyncio.TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            await self.proc.wait()

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def log_problems(self, limit=10):
        """Error lines and tracebacks in the bridge's log (none expected)."""
        out = []
        try:
            with open(self.log_path, "rb") as f:
                for raw in f:
                    line = raw.decode(errors="replace").rstrip()
                    if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                        out.append(line[:300])
                        if len(out) >= limit:
                            break
        except OSError:
            pass
        return out


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def bridge_config(tmp, broker, site, **over):
    cfg = {
        "site": site,
        "database": os.path.join(tmp, "bridge.db"),
        "log_level": "warning",
        "mqtt": {"url": "mqtt://%s:%d" % (broker.host, broker.port), "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.5, "keepalive": 10},
        "bills": {"retry_initial_s": 10.0, "retry_max_s": 30.0, "extra_wait_s": 0.5,
                  "settle_retry_s": 2.0},
        "piles": {"heartbeat_s": 2.0, "missed_heartbeats": 3, "command_timeout_s": 5.0,
                  "time_sync_s": 3600.0},
        # Every hostile client dials from 127.0.0.1, like the good pile: the
        # limits on connections without a login (tested in
        # tests/test_bridge_limits.py) are sized above the fuzz's own bursts.
        "tcp": {"listen": "127.0.0.1:0", "ext": True, "max_unauthenticated": 4096,
                "max_per_address": 4096},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


class RssWatch:
    """Samples the bridge's RSS (and that it lives) every `every` seconds."""

    def __init__(self, bridge, every=0.25):
        self.bridge = bridge
        self.every = every
        self.samples = []
        self.died = False
        self._task = None

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self):
        while True:
            if not self.bridge.alive:
                self.died = True
                return
            try:
                self.samples.append((time.monotonic(), self.bridge.rss_kb()))
            except OSError:
                self.died = True
                return
            await asyncio.sleep(self.every)

    async def stop(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def peak(self):
        return max((kb for _, kb in self.samples), default=0)

    def trend(self, points=10):
        """RSS (KB) at the end of each tenth of the run: flat = bounded."""
        n = len(self.samples)
        return [self.samples[min(n - 1, (k + 1) * n // points)][1] for k in range(points)] if n else []


class Platform(Background):
    """The platform's side of MQTT for the fuzz runs: confirms every bill it
    sees (as a platform would), notes bill serials per pile, and collects
    command results."""

    def __init__(self, host, port, site):
        import aiomqtt
        from host.topics import Topics
        self._aiomqtt = aiomqtt
        self.host, self.port = host, port
        self.topics = Topics(site)
        self.bills = collections.defaultdict(set)     # pile -> serials
        self.results = []                              # (target, doc)
        self.result_count = 0
        self.bridge_status = None                      # the latest retained pc.bridge/1 document
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.client = None
        self.errors = collections.Counter()
        self._task = None

    def _notify(self):
        self.changed.set()
        self.changed = asyncio.Event()

    async def _run(self):
        aiomqtt = self._aiomqtt
        base = self.topics.base
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="pc-fuzz-platform-%d" % os.getpid(),
                                          max_inflight_messages=200, max_queued_outgoing_messages=100000,
                                          socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as c:
                    c.pending_calls_threshold = 10 ** 9
                    self.client = c
                    await c.subscribe(base + "/bills/+", qos=1)
                    await c.subscribe(base + "/result/#", qos=1)
                    await c.subscribe(self.topics.bridge, qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        self._on_message(c, str(m.topic), bytes(m.payload))
            except aiomqtt.MqttError as e:
                self.client = None
                self.errors[type(e).__name__] += 1
                await asyncio.sleep(0.1)

    def _on_message(self, c, topic, payload):
        parts = topic.split("/")
        try:
            doc = json.loads(payload)
        except ValueError:
            self.errors["unparsable " + parts[2]] += 1
            return
        if parts[2] == "bills":
            self.bills[doc["pile"]].add(doc["serial"])
            asyncio.ensure_future(self._confirm(c, doc["pile"], doc["serial"], doc.get("content_hash")))
        elif parts[2] == "result":
            self.results.append(("/".join(parts[3:]), doc))
            self.result_count += 1
        elif topic == self.topics.bridge:
            self.bridge_status = doc
        self._notify()

    async def bridge_online(self, bridge, timeout=30):
        """Wait until `bridge` (a started BridgeChild) says it is online: it
        publishes that status once it has subscribed to commands. A command
        published before then is never delivered to it (its session does not
        exist yet): the mqtt-commands fuzz lost its first input that way
        about one run in four on a loaded machine."""
        ok = await self.wait_for(lambda: (self.bridge_status or {}).get("online") is True and
                                 self.bridge_status.get("started_at") == bridge.started_at, timeout)
        if not ok:
            raise RuntimeError("the bridge did not come online on MQTT within %g s (last status %r):\n%s"
                               % (timeout, self.bridge_status, bridge.log_tail()))

    async def _confirm(self, c, pile, serial, content_hash):
        try:
            await c.publish(self.topics.confirm(pile), json.dumps({"serial": serial, "result": 0,
                                                                   "hash": content_hash}), qos=1)
        except self._aiomqtt.MqttError:
            pass

    async def publish(self, topic, payload, qos=1):
        await self.client.publish(topic, payload, qos=qos)

    async def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        while True:
            ev = self.changed
            r = pred()
            if r:
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                return r
            try:
                await asyncio.wait_for(ev.wait(), left)
            except asyncio.TimeoutError:
                pass


def _raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _start_broker():
    from sim.brokers import Mosquitto
    return Mosquitto(verbose=False).start()


class SlowRelay:
    """A TCP relay in front of the broker that holds a client's first bytes
    (its MQTT CONNECT) for `delay_s`: a bridge that is slow to reach its
    broker, as on a loaded gateway. Binds port 0 itself."""

    def __init__(self, host, port, delay_s):
        self.host, self.port, self.delay_s = host, port, delay_s
        self.server = None
        self.tasks = set()

    async def start(self):
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_client(self, cr, cw):
        br, bw = await asyncio.open_connection(self.host, self.port)

        async def pump(r, w, delay):
            try:
                first = True
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    if first and delay:
                        await asyncio.sleep(delay)
                    first = False
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()
        for t in (pump(cr, bw, self.delay_s), pump(br, cw, 0)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self):
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- target: bridge-tcp ---------------------------------------------------------------

GOOD_PILE = "55031412782305"
HOSTILE_CODES = ["660000000000%02d" % k for k in range(64)]
_TCP_KINDS = (("random_bytes", 14), ("mutated_frames", 16), ("frames_before_login", 10),
              ("login_then_garbage", 14), ("valid_crc_random_bodies", 12), ("oversized_length", 8),
              ("slowloris", 5), ("abrupt_disconnect", 8), ("bill_for_another_pile", 4),
              ("many_connections", 4), ("idle_until_closed", 1), ("deaf_reader", 1))


def _abort(writer):
    """Drop a connection at once (RST, not FIN)."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class TcpFuzz:
    def __init__(self, seed, report, port, bridge_pid, slow_s=0.02, idle_limit_s=6.0):
        self.bridge_pid = bridge_pid
        self.seed = seed
        self.r = report
        self.port = port
        self.slow_s = slow_s
        self.idle_limit_s = idle_limit_s
        # How long a silent or deaf client may stay before it counts as never
        # closed. The bridge closes it after idle_limit_s; the margin is for a
        # loaded machine's scheduling (two test runs side by side), and a
        # check ends as soon as the socket goes, so a pass costs nothing.
        self.close_bound_s = idle_limit_s * 4 + 30
        self.pool = frame_pool(seed, per_type=8, specs=PILE_FRAMES, pile_codes=HOSTILE_CODES)
        self.bytes_sent = 0
        self.connections = 0
        self.slow = asyncio.Semaphore(8)    # slowloris / idle cases at once
        self.forged = set()                 # serials of bills naming the good pile, sent by others
        # Codes lent to one forger at a time: another login with the same
        # code would (rightly) close its link before the 0x40 comes.
        self.forge_s = 0.0                  # slowest 0x40 for a forged bill
        self.forgers = asyncio.Queue()
        for k in range(16):
            self.forgers.put_nowait("670000000000%02d" % k)

    def login_frame(self, rng, code=None):
        code = code or rng.choice(HOSTILE_CODES)
        return codec.encode("login", {"pile": code, "pile_type": 0, "guns": 1, "proto_version": 0x10,
                                      "sw_version": "FUZZ", "net_type": 0, "sim": "0" * 20,
                                      "carrier": 0}, seq=rng.getrandbits(16))

    async def _connect(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        self.connections += 1
        return r, w

    async def _send(self, w, data):
        w.write(data)
        self.bytes_sent += len(data)
        await w.drain()

    async def _drain_reads(self, r, seconds):
        """Read what the bridge sends for up to `seconds`; 'eof' if it closed."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "open"
            try:
                data = await asyncio.wait_for(r.read(65536), left)
            except asyncio.TimeoutError:
                return "open"
            except (ConnectionError, OSError):
                return "reset"
            if not data:
                return "eof"

    async def _close(self, rng, w):
        if rng.random() < 0.5:
            _abort(w)
        else:
            w.close()
            try:
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass

    SLOW = ("slowloris", "idle_until_closed", "deaf_reader")

    def is_slow(self, i):
        rng = case_rng(self.seed, i)
        kind = _TCP_KINDS[i][0] if i < len(_TCP_KINDS) else _pick(rng, _TCP_KINDS)
        return kind in self.SLOW

    async def run_case(self, i):
        rng = case_rng(self.seed, i)
        rng.case = i              # for violation records
        # The first cases take every kind once (a short run still tries them all).
        kind = _TCP_KINDS[i][0] if i < len(_TCP_KINDS) else _pick(rng, _TCP_KINDS)
        self.r.kinds[kind] += 1
        try:
            n, outcome = await getattr(self, "_" + kind)(rng)
        except (ConnectionError, OSError) as e:
            n, outcome = 1, "client_error:" + type(e).__name__
        self.r.inputs += n
        self.r.outcomes[outcome] += 1
        return kind

    # One method per kind: (inputs, outcome class).

    async def _random_bytes(self, rng):
        r, w = await self._connect()
        await self._send(w, garbage(rng, self.pool, 4000))
        st = await self._drain_reads(r, 0.01)
        await self._close(rng, w)
        return 1, "random_bytes:" + st

    async def _mutated_frames(self, rng):
        r, w = await self._connect()
        data = b"".join(mutate(rng, rng.choice(self.pool)[0], self.pool)
                        for _ in range(rng.randint(1, 12)))
        for c in chunks(rng, data):
            await self._send(w, c)
        st = await self._drain_reads(r, 0.01)
        await self._close(rng, w)
        return 1, "mutated_frames:" + st

    async def _frames_before_login(self, rng):
        r, w = await self._connect()
        frames = [p[0] for p in (rng.choice(self.pool) for _ in range(rng.randint(1, 10)))
                  if p[1] != 0x01]
        await self._send(w, b"".join(frames))
        st = await self._drain_reads(r, 0.01)
        await self._close(rng, w)
        return 1, "frames_before_login:" + st

    async def _login_then_garbage(self, rng):
        r, w = await self._connect()
        await self._send(w, self.login_frame(rng))
        tail = [garbage(rng, self.pool, 2000) if rng.random() < 0.5 else
                mutate(rng, rng.choice(self.pool)[0], self.pool) for _ in range(rng.randint(1, 8))]
        for t in tail:
            await self._send(w, t)
        if rng.random() < 0.3:   # then something well-formed: still answered?
            await self._send(w, rng.choice(self.pool)[0])
        st = await self._drain_reads(r, 0.02)
        await self._close(rng, w)
        return 1, "login_then_garbage:" + st

    async def _valid_crc_random_bodies(self, rng):
        r, w = await self._connect()
        if rng.random() < 0.6:
            await self._send(w, self.login_frame(rng))
        data = b"".join(valid_crc_frame(rng) for _ in range(rng.randint(1, 16)))
        await self._send(w, data)
        st = await self._drain_reads(r, 0.01)
        await self._close(rng, w)
        return 1, "valid_crc_random_bodies:" + st

    async def _oversized_length(self, rng):
        r, w = await self._connect()
        if rng.random() < 0.5:
            await self._send(w, self.login_frame(rng))
        ln = rng.choice((0xFF, 0xFE, 0, 1, 2, 3, rng.getrandbits(8)))
        body = bytes((codec.START, ln)) + rng.randbytes(rng.randint(0, 300))
        await self._send(w, body)
        if rng.random() < 0.5:   # and a good frame behind it
            await self._send(w, rng.choice(self.pool)[0])
        st = await self._drain_reads(r, 0.01)
        await self._close(rng, w)
        return 1, "oversized_length:" + st

    async def _slowloris(self, rng):
        # One byte every slow_s: a frame that takes seconds to arrive (or never ends).
        async with self.slow:
            r, w = await self._connect()
            data = self.login_frame(rng) if rng.random() < 0.5 else rng.choice(self.pool)[0]
            if rng.random() < 0.5:
                data = data[:rng.randint(1, len(data))]      # never finished
            for k in range(len(data)):
                await self._send(w, data[k:k + 1])
                await asyncio.sleep(self.slow_s)
            st = await self._drain_reads(r, 0.01)
            await self._close(rng, w)
        return 1, "slowloris:" + st

    async def _abrupt_disconnect(self, rng):
        r, w = await self._connect()
        if rng.random() < 0.5:
            await self._send(w, self.login_frame(rng))
        frame = rng.choice(self.pool)[0]
        await self._send(w, frame[:rng.randint(0, len(frame))])   # cut mid-frame
        _abort(w)
        return 1, "abrupt_disconnect:reset_sent"

    async def _bill_for_another_pile(self, rng):
        # A hostile pile logs in and sends a well-formed bill naming the good
        # pile: the bridge quarantines it (kept with an event, no 0x40:
        # decisions.md "Custody and ownership"), never files it under the
        # good pile.
        code = await self.forgers.get()
        try:
            return await self._forge(rng, code)
        finally:
            self.forgers.put_nowait(code)

    async def _forge(self, rng, code):
        from sim.testkit import make_bill
        r, w = await self._connect()
        await self._send(w, self.login_frame(rng, code))
        v = make_bill(GOOD_PILE, rng.randrange(10000), when=1 + rng.randrange(10 ** 8))
        v["serial"] = "9" * 16 + v["serial"][16:]     # never one of the good pile's serials
        await self._send(w, codec.encode("bill", v, seq=rng.getrandbits(16)))
        # A heartbeat behind it: the bridge handles a link's frames in order
        # and quarantines inline, so its reply comes after the verdict.
        await self._send(w, codec.encode("heartbeat", {"pile": code, "gun": "01", "gun_status": 0},
                                         seq=rng.getrandbits(16)))
        reader = codec.FrameReader()
        confirms = []
        answered = False
        t0 = time.monotonic()
        deadline = t0 + 30
        why = "no heartbeat reply in 30 s"
        while not answered and time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(r.read(4096), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            except (ConnectionError, OSError) as e:
                why = "link reset by the bridge (%s)" % type(e).__name__
                break
            if not data:
                why = "link closed by the bridge"
                break
            for f in reader.push(data):
                if isinstance(f, codec.Frame) and f.name == "bill_confirm" and f.fields["serial"] == v["serial"]:
                    confirms.append(f.fields["result"])
                elif isinstance(f, codec.Frame) and f.name == "heartbeat_reply":
                    answered = True
        took = time.monotonic() - t0
        self.forge_s = max(self.forge_s, took)
        await self._close(rng, w)
        if confirms or not answered:
            self.r.violation(rng.case, "bill_for_another_pile", "bill naming pile %s sent by pile %s got "
                             "0x40 results %r (want none: quarantined)%s after %.1f s"
                             % (GOOD_PILE, code, confirms, "" if answered else ": " + why, took))
        self.forged.add(v["serial"])
        return 1, "bill_for_another_pile:quarantined" if not confirms else "bill_for_another_pile:%r" % confirms

    async def _many_connections(self, rng):
        n = rng.randint(20, 150)

        async def one(k):
            try:
                r, w = await self._connect()
                if k % 3 == 0:
                    await self._send(w, self.login_frame(rng))
                await self._send(w, garbage(rng, self.pool, 200))
                if k % 2:
                    _abort(w)
                else:
                    await self._close(rng, w)
            except (ConnectionError, OSError):
                self.r.outcomes["many_connections:client_error"] += 1
        await asyncio.gather(*[one(k) for k in range(n)])
        return n, "many_connections:done"

    async def _idle_until_closed(self, rng):
        # A client that connects (maybe logs in) and goes silent: the bridge
        # closes it after piles.heartbeat_s x missed_heartbeats.
        async with self.slow:
            r, w = await self._connect()
            if rng.random() < 0.5:
                await self._send(w, self.login_frame(rng))
            st = await self._drain_reads(r, self.close_bound_s)
            if st == "open":
                self.r.violation(rng.case, "idle_until_closed", "a silent connection was still open "
                                 "after %.0f s" % self.close_bound_s)
            await self._close(rng, w)
        return 1, "idle_until_closed:" + st

    async def _deaf_reader(self, rng):
        # Logs in and asks for its tariff model (0x09 -> a 0x0A six times
        # longer) over and over without ever reading: the bridge's writes
        # back up until its link is stuck. Then silence: the bridge must let
        # go of the socket (silence limit + links._CLOSE_S), not hold it.
        async with self.slow:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                self.connections += 1
                code = rng.choice(HOSTILE_CODES)
                ask = codec.encode("tariff_request", {"pile": code})
                await loop.sock_sendall(sock, self.login_frame(rng, code))
                chunk = ask * 4096
                for _ in range(200):     # until the bridge stops taking them
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, chunk), 1.0)
                    except asyncio.TimeoutError:
                        break
                    self.bytes_sent += len(chunk)
                port = sock.getsockname()[1]
                wait = self.close_bound_s
                deadline = time.monotonic() + wait
                held = True
                while time.monotonic() < deadline:
                    held = holds_socket(self.bridge_pid, self.port, port)
                    if not held:
                        break
                    await asyncio.sleep(0.2)
            finally:
                sock.close()
            if held:
                self.r.violation(rng.case, "deaf_reader", "the bridge still held the socket of a client "
                                 "that never reads, %.0f s after it went silent" % wait)
        return 1, "deaf_reader:" + ("held" if held else "released")


def holds_socket(pid, local_port, remote_port):
    """True while process `pid` has a descriptor on the TCP connection
    local_port <-> remote_port (this host's network namespace)."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if (int(p[1].rsplit(":", 1)[1], 16) == local_port
                            and int(p[2].rsplit(":", 1)[1], 16) == remote_port):
                        inodes.add(p[9])
        except OSError:
            pass
    inodes.discard("0")       # an orphan: no process holds it any more
    if not inodes:
        return False
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


class GoodPile:
    """A well-behaved pile: logs in, heartbeats, sends realtime data and
    bills (with their 0xEB), reconnecting every few bills; every bill must
    get 0x40 result 0 and reach the platform."""

    def __init__(self, port, report, code=GOOD_PILE, bills_per_link=5, pause_s=0.1):
        self.port = port
        self.pause_s = pause_s
        self.r = report
        self.code = code
        self.bills_per_link = bills_per_link
        self.sent = []
        self.latency = []         # s from a bill's 0x3B to its 0x40 (and 0xEC)
        self.logins = 0
        self.stop = asyncio.Event()
        self._task = None
        self.dropped = 0

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def finish(self):
        self.stop.set()
        await self._task

    async def _run(self):
        from sim.testkit import ScriptedPile, TcpTransport, make_bill, make_extra
        n = 0
        base = 800000000
        while not self.stop.is_set():
            try:
                t = await TcpTransport.connect("127.0.0.1", self.port)
            except OSError as e:
                self.r.violation(None, "good_pile", "cannot connect to the bridge: %s" % e)
                await asyncio.sleep(0.5)
                continue
            p = ScriptedPile(self.code, t, ext=True, heartbeat_s=0.5, reply_timeout=20.0)
            try:
                if await p.login() != 0:
                    self.r.violation(None, "good_pile", "login refused")
                self.logins += 1
                for _ in range(self.bills_per_link):
                    if self.stop.is_set() and n:
                        break
                    await p.realtime(status=3, energy=n * 10, amount=n * 12)
                    v = make_bill(self.code, n, when=base + n * 61)
                    n += 1
                    t0 = time.monotonic()
                    result = await p.send_bill(v, make_extra(v))
                    self.latency.append(time.monotonic() - t0)
                    self.sent.append(v["serial"])
                    if result != 0:
                        self.r.violation(None, "good_pile", "bill %s got 0x40 result %d" % (v["serial"], result))
                    if not p.connected:
                        self.dropped += 1
                        self.r.violation(None, "good_pile", "the bridge dropped the good pile's link")
                        break
                    try:   # a pile charges between bills; the pause is the time between sessions
                        await asyncio.wait_for(self.stop.wait(), self.pause_s)
                    except asyncio.TimeoutError:
                        pass
            except asyncio.TimeoutError as e:
                self.r.violation(None, "good_pile", "no answer from the bridge: %s" % e)
            except (ConnectionError, OSError) as e:
                self.r.violation(None, "good_pile", "link error: %r" % e)
            finally:
                await p.close()


async def _fuzz_bridge_tcp(count, seed, case=None, workers=16, rss_limit_mb=64, slow_s=0.02,
                           keep=False):
    rep = Report("bridge-tcp", seed)
    _raise_nofile(8192)
    tmp = tempfile.mkdtemp(prefix="pc-fuzz-tcp-")
    broker = await asyncio.get_running_loop().run_in_executor(None, _start_broker)
    bridge = None
    try:
        cfg = bridge_config(tmp, broker, "fuzz", tariff=_GOOD_TARIFF)
        bridge = await BridgeChild(tmp, cfg).start()
        limit = cfg["piles"]["heartbeat_s"] * cfg["piles"]["missed_heartbeats"]
        async with Platform(broker.host, broker.port, "fuzz") as plat:
            good = GoodPile(bridge.tcp_port, rep).start()
            # Baseline: the good pile has logged in and had a bill taken.
            await plat.wait_for(lambda: plat.bills[GOOD_PILE], 30)
            base_rss = bridge.rss_kb()
            base_fds = bridge.fds()
            watch = RssWatch(bridge).start()
            fz = TcpFuzz(seed, rep, bridge.tcp_port, bridge.pid, slow_s=slow_s, idle_limit_s=limit)
            cases = [case] if case is not None else range(count)
            it = iter(cases)

            background = set()

            async def worker():
                # Cases that take seconds (slowloris, silent, deaf clients)
                # run beside the others, at most 8 at once.
                for i in it:
                    if watch.died:
                        return
                    if fz.is_slow(i):
                        while len(background) >= 64:
                            await asyncio.wait(list(background), return_when=asyncio.FIRST_COMPLETED)
                        t = asyncio.ensure_future(fz.run_case(i))
                        background.add(t)
                        t.add_done_callback(background.discard)
                    else:
                        await fz.run_case(i)
            await asyncio.gather(*[worker() for _ in range(max(1, min(workers, len(cases))))])
            if background:
                await asyncio.gather(*list(background))
            hostile_s = time.monotonic() - rep.t0
            await good.finish()
            if watch.died or not bridge.alive:
                rep.violation(None, "bridge", "the bridge process died (exit %s)" % bridge.proc.returncode)
            else:
                # Every good bill reaches the platform; no forged bill is filed
                # under the good pile.
                want = set(good.sent)
                got = await plat.wait_for(lambda: want <= plat.bills[GOOD_PILE], 60)
                if not got:
                    missing = sorted(want - plat.bills[GOOD_PILE])
                    rep.violation(None, "good_pile", "%d of %d bills never reached the platform: %s"
                                  % (len(missing), len(want), missing[:5]))
                forged = plat.bills[GOOD_PILE] & fz.forged
                if forged:
                    rep.violation(None, "bill_for_another_pile", "forged bills published under the "
                                  "good pile: %s" % sorted(forged)[:5])
                # Hostile links are all closed by now: the bridge lets go of
                # their sockets (within the silence limit).
                deadline = time.monotonic() + limit * 2 + 5
                while bridge.fds() > base_fds + 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                end_fds = bridge.fds()
                if end_fds > base_fds + 4:
                    rep.violation(None, "bridge", "%d file descriptors open after the run, %d before"
                                  % (end_fds, base_fds))
                rep.extra["fds"] = {"before": base_fds, "after": end_fds}
            await watch.stop()
            peak = watch.peak()
            end_rss = watch.samples[-1][1] if watch.samples else 0
            rep.extra["rss_kb"] = {"baseline": base_rss, "peak": peak, "end": end_rss,
                                   "limit_growth": rss_limit_mb * 1024, "trend": watch.trend()}
            if peak > base_rss + rss_limit_mb * 1024:
                rep.violation(None, "bridge", "RSS peaked at %d KB, %d KB over the %d KB baseline "
                              "(limit %d MB)" % (peak, peak - base_rss, base_rss, rss_limit_mb))
            for line in bridge.log_problems():
                rep.violation(None, "bridge_log", line)
            lat = sorted(good.latency) or [0.0]
            rep.extra["good_pile"] = {"bills": len(good.sent), "logins": good.logins,
                                      "on_platform": len(set(good.sent) & plat.bills[GOOD_PILE]),
                                      "bill_to_0x40_s": {"p50": round(lat[len(lat) // 2], 3),
                                                         "p99": round(lat[len(lat) * 99 // 100], 3),
                                                         "max": round(lat[-1], 3)},
                                      "forged_bill_0x40_max_s": round(fz.forge_s, 3)}
            rep.extra["hostile"] = {"connections": fz.connections, "bytes": fz.bytes_sent,
                                    "seconds": round(hostile_s, 1),
                                    "inputs_per_s": round(rep.inputs / max(1e-9, hostile_s))}
            rep.extra["hostile_piles_billed"] = sum(1 for k in plat.bills if k != GOOD_PILE)
    finally:
        if bridge is not None:
            await bridge.stop()
        broker.close()
        if keep:
            rep.extra["kept"] = tmp
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rep


def fuzz_bridge_tcp(count, seed, case=None, **kw):
    return asyncio.run(_fuzz_bridge_tcp(count, seed, case, **kw))


# --- target: mqtt-commands ------------------------------------------------------------

OFFLINE_PILE = "55031412789999"      # configured, never connected
UNKNOWN_PILE = "99999999999901"      # neither configured nor ever logged in
# Random bytes and mutated JSON go to targets where even a command that the
# mutation happened to make valid cannot succeed.
_NOWHERE = ("99999999999902", "not-a-pile", "\u2603", "")
_MAX_BYTES = 65536

_GOOD_TARIFF = {"model": "0001", "loss_ratio": 0, "slots": "3" * 16 + "2" * 32,
                "rates": {p: {"energy": 100000, "service": 20000}
                          for p in ("sharp", "peak", "flat", "valley")}}

# Arguments of each command that are wrong by the contract in host/commands.py
# (and docs/mqtt.md): the value is a sure defect whatever the rest is.
_BAD_SCALARS = [None, True, False, 1.5, -1, [], {}, "", "x", "12a", "\u0661\u0662", "\u00b2",
                " 1", "0x1", "1_0", "\ud800", 10 ** 40, "9" * 400, float("nan"), [1, 2], {"a": 1}]
_BAD = {
    "gun": [True, False, 1.5, -1, [], {}, "", "x", "1a", "001", "\u0661", "\u00b2", " 1", 10 ** 20,
            float("inf")],
    "serial": [True, 1.5, -1, [], {}, "x", "1" * 33, "\u0661" * 4, "12 34", "-1", 10 ** 40],
    "logical_card": [True, 1.5, -1, [], "x", "1" * 17, "\u0663", " 1"],
    "card": [1, True, [], "xyz", "1" * 17, "0x1F", " 1F", "1_F", "\u0661", "g"],
    "balance": [True, 1.5, -1, 2 ** 32, "1", [], {}, 10 ** 20],
    "targets": [1, "x", [], {"amount": -1}, {"energy": "1"}, {"minutes": 70000}, {"soc": 101},
                {"soc": True}, {"kwh": 1}, {"amount": 1.5}],
    "when": [1, True, "later", "", [], "NOW"],
    "tariff": [None, 1, "x", [], {}, {"model": "1"}, dict(_GOOD_TARIFF, model="12345"),
               dict(_GOOD_TARIFF, slots="3" * 47), dict(_GOOD_TARIFF, slots="4" * 48),
               dict(_GOOD_TARIFF, slots=[0] * 47 + [True]), dict(_GOOD_TARIFF, loss_ratio=256),
               dict(_GOOD_TARIFF, rates={"sharp": {"energy": 1, "service": 1}}),
               dict(_GOOD_TARIFF, rates=dict(_GOOD_TARIFF["rates"], deep={"energy": 1, "service": 1})),
               dict(_GOOD_TARIFF, rates=dict(_GOOD_TARIFF["rates"], peak={"energy": -1, "service": 1})),
               dict(_GOOD_TARIFF, rates=dict(_GOOD_TARIFF["rates"], flat={"energy": 2 ** 32, "service": 1})),
               dict(_GOOD_TARIFF, rates=[1, 2])],
    "ok": [],       # any value is read as a truth value: no sure defect
    "reason": [True, -1, 256, 1.5, "1"],
    "vins": [None, 1, "LSVAU2180N2183294", {}, ["SHORT"], ["LSVAU2180N218329\u00e9"], [1],
             ["LSVAU2180N2183294!"], [{"vin": "LSVAU2180N2183294", "department": -1}],
             [{"vin": "LSVAU2180N2183294", "x": 1}], ["L" * 18], [[]]],
    "version": [True, -1, 2 ** 32, 1.5, "1"],
}
_GOOD_ARGS = {
    "start": {"gun": "01", "logical_card": "1234", "card": "D14B0A54", "balance": 100000},
    "stop": {"gun": "01"},
    "reboot": {"when": "idle"},
    "tariff_set": {"tariff": _GOOD_TARIFF},
    "time_sync": {},
    "versions": {},
    "journal_status": {},
    "read_realtime": {"gun": "01"},
    "status": {},
    "authorize": {"gun": "01", "serial": "5503141278230501240501080000" + "0001", "ok": False},
    "vin_list": {"vins": ["LSVAU2180N2183294"], "version": 7},
}
_DEFECTS = (("bad_argument", 30), ("unknown_field", 8), ("no_id", 6), ("bad_id", 8),
            ("long_id", 3), ("no_cmd", 4), ("unknown_cmd", 6), ("not_an_object", 5),
            ("expired", 4), ("bad_expires", 3), ("deep_nesting", 5), ("huge", 2),
            ("unicode_keys", 3), ("duplicate_keys", 3), ("missing_required", 4))


def expected_id(v):
    """The id a result carries for a command whose "id" is v (commands.parse):
    a string as sent (cut at 128), an int as its decimal string; None else."""
    if isinstance(v, (str, int)):
        return str(v)[:128]
    return None


def _dumps(doc, rng):
    """JSON bytes of doc, non-ASCII as UTF-8 or as \\u escapes (both valid)."""
    if rng.random() < 0.5:
        try:
            return json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate: only the escaped form is valid UTF-8
            pass
    return json.dumps(doc).encode()


def _id_in(payload):
    m = re.search(rb'"id": ?"((?:mx-)?fz-[0-9]+-[0-9]+)"', payload)
    return m.group(1).decode() if m else None


class CommandCase:
    __slots__ = ("target", "payload", "rid", "predictable", "codes", "kind")

    def __init__(self, kind, target, payload, rid, predictable=True, codes=None):
        self.kind = kind
        self.target = target
        self.payload = payload
        self.rid = rid                  # the id its result must carry (None: unreadable)
        self.predictable = predictable  # False: mutated text, its id may or may not survive
        self.codes = codes              # acceptable result codes, None = any failure code


_FIRST_KINDS = ["random_bytes", "mutated_json", "unknown_pile", "offline_pile"] + [k for k, _ in _DEFECTS]


def make_command_case(seed, i):
    rng = case_rng(seed, i)
    r = rng.random()
    # The first cases take every kind once (a short run still tries them all).
    first = _FIRST_KINDS[i] if i < len(_FIRST_KINDS) else None
    if first is not None:
        r = {"random_bytes": 0.0, "mutated_json": 0.2, "unknown_pile": 0.3, "offline_pile": 0.34}.get(first, 0.5)
    uid = "fz-%d-%d" % (seed, i)
    if r < 0.12:        # random bytes
        return CommandCase("random_bytes", rng.choice(_NOWHERE), garbage(rng, [], 1500)
                           if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 2000)),
                           None, predictable=False)
    if r < 0.27:        # a well-formed command's text, mutated
        cmd = rng.choice(sorted(_GOOD_ARGS))
        text = bytearray(_dumps(dict(_GOOD_ARGS[cmd], id="mx-" + uid, cmd=cmd), rng))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            n = len(text)
            if op == 0 and n:
                text[rng.randrange(n)] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                del text[rng.randrange(n):]
            elif op == 2:
                j = rng.randint(0, n)
                text[j:j] = rng.choice([b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\\u",
                                        b"\x00", b"\xff", b"\xc3", rng.randbytes(3)])
            elif op == 3 and n:
                j = rng.randrange(n)
                del text[j:j + rng.randint(1, 6)]
            else:
                j = rng.randint(0, n)
                text[j:j] = text[:rng.randint(0, n)]
        return CommandCase("mutated_json", rng.choice(_NOWHERE), bytes(text), None, predictable=False)
    if r < 0.32:        # a well-formed command for a pile nobody knows
        cmd = rng.choice(sorted(set(_GOOD_ARGS) - {"tariff_set"}) + ["tariff_set"])
        return CommandCase("unknown_pile", UNKNOWN_PILE, _dumps(dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd), rng),
                           uid, codes={"unknown_pile"})
    if r < 0.36:        # needs the pile online; it is configured but offline
        cmd = rng.choice(["start", "stop", "reboot", "time_sync", "versions", "read_realtime",
                          "vin_list", "journal_status"])
        return CommandCase("offline_pile", OFFLINE_PILE, _dumps(dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd), rng),
                           uid, codes={"offline"})
    # A structured command with one sure defect, to any target (the good
    # pile online, the offline one, an unknown one, "site", not a pile).
    target = rng.choice([GOOD_PILE, GOOD_PILE, OFFLINE_PILE, UNKNOWN_PILE, "site", "x\u00e9"])
    cmd = rng.choice(sorted(_GOOD_ARGS))
    doc = dict(_GOOD_ARGS[cmd], id=uid, cmd=cmd)
    defect = first or _pick(rng, _DEFECTS)
    rid = uid
    codes = None
    if defect == "bad_argument":
        cands = [k for k in _BAD if _BAD[k] and (k in _GOOD_ARGS[cmd] or k in _ARGS_OF[cmd])]
        if not cands:
            defect = "unknown_field"
        else:
            k = rng.choice(cands)
            doc[k] = rng.choice(_BAD[k])
    if defect == "unknown_field":
        doc[rng.choice(["x", "GUN", "gun ", "targets2", "\u00fcber", "auth2", "Id"])] = rng.choice(_BAD_SCALARS)
        codes = {"bad_request"}
    elif defect == "no_id":
        del doc["id"]
        rid = None
        codes = {"bad_request"}
    elif defect == "bad_id":
        # Ints (and bools) are read as their decimal string and "" as "":
        # such ids repeat across cases, so these are counted, not matched.
        doc["id"] = rng.choice([None, 1.5, [], {}, [uid], {"id": uid}, "", True, -7, 10 ** 30])
        return CommandCase("bad_id", target, _dumps(doc, rng), None, predictable=False,
                           codes={"bad_request"})
    elif defect == "long_id":
        doc["id"] = uid + "-" + "\u00e9x" * rng.randint(64, 300)
        rid = doc["id"][:128]
        codes = {"bad_request"}
    elif defect == "no_cmd":
        del doc["cmd"]
        codes = {"unknown_command"}
    elif defect == "unknown_cmd":
        doc["cmd"] = rng.choice(["", "STOP", "stop ", "sto", "\u2603", "__init__", "start\x00", 1, [], None,
                                 {"cmd": "stop"}, "x" * 10000])
        codes = {"unknown_command"}
    elif defect == "not_an_object":
        doc = rng.choice([[doc], uid, 1, None, True, [], "\u2603"])
        rid = None
        codes = {"bad_request"}
    elif defect == "expired":
        doc["expires"] = rng.choice([0, 1, 1.5, time.time() - 3600, -1e300])
        codes = {"expired"}
    elif defect == "bad_expires":
        doc["expires"] = rng.choice(["tomorrow", [], {}, True, "1e10"])
        codes = {"bad_request"}
    elif defect == "deep_nesting":
        depth = rng.choice([50, 500, 1000, 3000, 20000])
        open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
        nest = open_ * depth + "1" + close * depth
        key = rng.choice(["x", "gun", "targets", "tariff", "vins"])
        text = _dumps(doc, rng)[:-1] + (', "%s": ' % key).encode() + nest.encode() + b"}"
        # Deep enough and the JSON parser gives up (id unreadable); shallower
        # and the command is refused for its field: counted, not matched.
        return CommandCase("deep_nesting", target, text, None, predictable=False,
                           codes={"bad_request", "too_large"})
    elif defect == "huge":
        doc["pad"] = "x" * (_MAX_BYTES + rng.randint(1, 200000))
        rid = None
        codes = {"too_large"}
    elif defect == "unicode_keys":
        doc[rng.choice(["\u00e9", "\u0000", "\ud83d\ude00", "\u202e", "g\u0075n\u0301"])] = 1
        codes = {"bad_request"}
    elif defect == "duplicate_keys":
        # The last copy wins in json.loads: a later, bad id or cmd.
        text = _dumps(doc, rng)[:-1]
        if rng.random() < 0.5:
            text += b', "cmd": 17}'
            codes = {"unknown_command"}
        else:
            text += b', "id": [1]}'
            rid = None
            codes = {"bad_request"}
        return CommandCase("duplicate_keys", target, text, rid, codes=codes)
    elif defect == "missing_required":
        if cmd == "authorize":
            del doc["serial"]
        elif cmd == "tariff_set":
            del doc["tariff"]
        elif cmd == "vin_list":
            del doc["vins"]
        else:
            doc["cmd"] = "authorize"
            doc = {k: v for k, v in doc.items() if k in ("id", "cmd", "gun")}
        codes = {"bad_request"}
    return CommandCase(defect, target, _dumps(doc, rng), rid, codes=codes)


# Arguments a command takes (host/commands.SPEC), for picking defects.
_ARGS_OF = {
    "start": {"gun", "serial", "logical_card", "card", "balance", "targets"},
    "stop": {"gun"}, "reboot": {"when"}, "tariff_set": {"tariff"}, "time_sync": set(),
    "versions": set(), "journal_status": set(), "read_realtime": {"gun"}, "status": set(),
    "authorize": {"gun", "serial", "logical_card", "balance", "ok", "reason"},
    "vin_list": {"vins", "version"},
}


async def _fuzz_mqtt_commands(count, seed, case=None, window=100, rss_limit_mb=64, keep=False,
                              bridge_mqtt_delay_s=0):
    from host.commands import CODES
    from sim.testkit import ScriptedPile, TcpTransport
    rep = Report("mqtt-commands", seed)
    tmp = tempfile.mkdtemp(prefix="pc-fuzz-mqtt-")
    broker = await asyncio.get_running_loop().run_in_executor(None, _start_broker)
    bridge = None
    pile = None
    relay = None
    try:
        cfg = bridge_config(tmp, broker, "fuzz", pile={OFFLINE_PILE: {"ext": True}},
                            mqtt={"max_command_bytes": _MAX_BYTES})
        if bridge_mqtt_delay_s:
            relay = await SlowRelay(broker.host, broker.port, bridge_mqtt_delay_s).start()
            cfg["mqtt"]["url"] = "mqtt://127.0.0.1:%d" % relay.listen_port
        cfg["piles"]["heartbeat_s"] = 30.0
        bridge = await BridgeChild(tmp, cfg).start()
        async with Platform(broker.host, broker.port, "fuzz") as plat:
            await plat.bridge_online(bridge)
            topics = plat.topics
            pile = ScriptedPile(GOOD_PILE, await TcpTransport.connect("127.0.0.1", bridge.tcp_port),
                                ext=True, heartbeat_s=5.0, reply_timeout=20.0)
            if await pile.login() != 0:
                rep.violation(None, "setup", "the good pile's login was refused")
            base_rss = bridge.rss_kb()
            watch = RssWatch(bridge).start()
            sent = 0
            expect = {}                       # (target, rid) -> (case, CommandCase)
            blind = collections.Counter()     # target -> messages whose id is unreadable/unknown
            blind_cases = collections.defaultdict(list)
            controls = {}                     # rid -> what a valid command must give
            ctl_n = 0

            async def control(target, cmd, **args):
                nonlocal ctl_n, sent
                ctl_n += 1
                rid = "ctl-%d-%d" % (seed, ctl_n)
                controls[rid] = (target, cmd)
                await plat.publish(topics.command(target), json.dumps(dict(args, id=rid, cmd=cmd)))
                sent += 1
                return rid

            cases = [case] if case is not None else range(count)
            for n, i in enumerate(cases):
                if watch.died:
                    break
                c = make_command_case(seed, i)
                rep.inputs += 1
                rep.kinds[c.kind] += 1
                if c.rid is not None and c.predictable:
                    if (c.target, c.rid) in expect:
                        rep.violation(i, c.kind, "fuzzer made id %r twice" % c.rid)
                    expect[(c.target, c.rid)] = (i, c)
                else:
                    blind[c.target] += 1
                    blind_cases[c.target].append((i, c))
                await plat.publish(topics.command(c.target), c.payload)
                sent += 1
                if n % 500 == 499:            # a valid command now and then still works
                    await control("site", "status")
                    await control(GOOD_PILE, "read_realtime", gun="01")
                if sent - plat.result_count > window:
                    await plat.wait_for(lambda: sent - plat.result_count <= window // 2, 30)
            # The barrier: valid commands sent after everything else.
            last = [await control("site", "status"), await control(GOOD_PILE, "status"),
                    await control(GOOD_PILE, "read_realtime", gun="01")]
            await plat.wait_for(lambda: plat.result_count >= sent and
                                {d.get("id") for _, d in plat.results} >= set(last), 60)
            fuzz_s = time.monotonic() - rep.t0
            # Judge every result.
            seen = collections.Counter()
            per_target_other = collections.Counter()
            for target, d in plat.results:
                rid = d.get("id")
                code = d.get("code")
                rep.outcomes[str(code)] += 1
                if rid in controls:
                    seen[rid] += 1
                    if d.get("ok") is not True:
                        rep.violation(None, "control", "valid %s for %s failed: %s %s"
                                      % (controls[rid][1], controls[rid][0], code, d.get("message")))
                    continue
                key = (target, rid)
                if key in expect:
                    seen[key] += 1
                    i, c = expect[key]
                    if c.codes is not None and code not in c.codes:
                        rep.violation(i, c.kind, "result code %r, want one of %s: %s"
                                      % (code, sorted(c.codes), d.get("message")), c.payload)
                else:
                    per_target_other[target] += 1
                    i, c = None, None
                if d.get("ok") is not False:
                    rep.violation(i, c.kind if c else "?", "result ok=%r for a bad command (%s)"
                                  % (d.get("ok"), d.get("message")), c.payload if c else None)
                if code not in CODES or code in ("ok", "error"):
                    rep.violation(i, c.kind if c else "?", "unclear result code %r: %s"
                                  % (code, d.get("message")), c.payload if c else None)
                if not isinstance(d.get("message"), str) or not d.get("message"):
                    rep.violation(i, c.kind if c else "?", "result without a message: %r" % d)
            for key, (i, c) in expect.items():
                if seen[key] != 1:
                    rep.violation(i, c.kind, "%d results for id %r on %r, want exactly 1"
                                  % (seen[key], key[1], key[0]), c.payload)
            for rid in controls:
                if seen[rid] != 1:
                    rep.violation(None, "control", "%d results for valid command %s, want 1"
                                  % (seen[rid], rid))
            for target in set(blind) | set(per_target_other):
                if blind[target] != per_target_other[target]:
                    # Name the likely culprits: messages whose id, still
                    # readable in their text, is on no result.
                    ids = {d.get("id") for t, d in plat.results if t == target}
                    suspects = [i for i, c in blind_cases[target]
                                if _id_in(c.payload) and _id_in(c.payload) not in ids]
                    rep.violation(None, "count", "target %r: %d messages without a predictable id, "
                                  "%d results not matched to one; no result for the ids of cases %s"
                                  % (target, blind[target], per_target_other[target], suspects[:10]))
            if not pile.connected:
                rep.violation(None, "good_pile", "the good pile was disconnected")
            await watch.stop()
            if watch.died or not bridge.alive:
                rep.violation(None, "bridge", "the bridge process died")
            peak = watch.peak()
            rep.extra["rss_kb"] = {"baseline": base_rss, "peak": peak, "limit_growth": rss_limit_mb * 1024}
            if peak > base_rss + rss_limit_mb * 1024:
                rep.violation(None, "bridge", "RSS peaked at %d KB, %d KB over the %d KB baseline"
                              % (peak, peak - base_rss, base_rss))
            for line in bridge.log_problems():
                rep.violation(None, "bridge_log", line)
            rep.extra["messages"] = {"sent": sent, "results": plat.result_count, "controls": len(controls),
                                     "seconds": round(fuzz_s, 1),
                                     "inputs_per_s": round(rep.inputs / max(1e-9, fuzz_s))}
    finally:
        if pile is not None:
            await pile.close()
        if bridge is not None:
            await bridge.stop()
        if relay is not None:
            await relay.close()
        broker.close()
        if keep:
            rep.extra["kept"] = tmp
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rep


def fuzz_mqtt_commands(count, seed, case=None, **kw):
    return asyncio.run(_fuzz_mqtt_commands(count, seed, case, **kw))


# --- CLI --------------------------------------------------------------------------------

def format_report(d):
    lines = ["pile-fuzz %s  seed %d: %d inputs in %.1f s  ->  %s"
             % (d["target"], d["seed"], d["inputs"], d["seconds"], d["verdict"])]
    lines.append("  inputs by kind:   " + ", ".join("%s %d" % kv for kv in d["kinds"].items()))
    lines.append("  outcomes:         " + ", ".join("%s %d" % kv for kv in d["outcomes"].items()))
    for k in ("inputs_per_s", "jobs", "rss_kb", "fds", "good_pile", "hostile", "hostile_piles_billed",
              "messages", "kept"):
        if k in d:
            lines.append("  %-17s %s" % (k + ":", json.dumps(d[k])))
    lines.append("  violations:       %d" % d["violation_count"])
    for v in d["violations"]:
        lines.append("    case %s [%s] %s" % (v["case"], v["kind"], v["what"]))
        if "input" in v:
            lines.append("      input (%d bytes): %s" % (v["input_bytes"], v["input"][:200]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="pile-fuzz", description="Seeded fuzzing of the frame reader, "
                                "the bridge's TCP pile port and its MQTT command handler "
                                "(docs/fuzzing.md). Exit status 1 on any violation.")
    p.add_argument("target", choices=TARGETS)
    p.add_argument("--count", type=int, default=10000, help="inputs to try (default 10000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--case", type=int, help="replay only the input with this index")
    p.add_argument("--jobs", type=int, default=1, help="reader: processes (default 1)")
    p.add_argument("--workers", type=int, default=16, help="bridge-tcp: hostile clients at once")
    p.add_argument("--rss-limit-mb", type=int, default=64,
                   help="bridge targets: allowed RSS growth over the baseline (default 64)")
    p.add_argument("--keep", action="store_true",
                   help="bridge targets: keep the temp dir (bridge log, database, config)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    cli.common(p, log_level="warning")
    a = p.parse_args(argv)
    cli.setup_logging(a)
    global PROGRESS
    with cli.progress("pile-fuzz " + a.target, total=1 if a.case is not None else a.count,
                      enabled=cli.progress_enabled(a.json)) as tick:
        PROGRESS = (lambda n: tick(n)) if cli.progress_enabled(a.json) else None
        try:
            if a.target == "reader":
                if a.case is not None:
                    rep = fuzz_reader(1, a.seed, first=a.case)
                else:
                    rep = fuzz_reader(a.count, a.seed, a.jobs)
            elif a.target == "bridge-tcp":
                rep = fuzz_bridge_tcp(a.count, a.seed, a.case, workers=a.workers,
                                      rss_limit_mb=a.rss_limit_mb, keep=a.keep)
            else:
                rep = fuzz_mqtt_commands(a.count, a.seed, a.case, rss_limit_mb=a.rss_limit_mb,
                                         keep=a.keep)
        finally:
            PROGRESS = None
    d = rep.as_dict()
    print(json.dumps(d, indent=1) if a.json else format_report(d))
    return 0 if d["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
