# The in-process stand-ins of pile-chaos --inproc (sim/chaos_inproc.py,
# docs/chaos.md "In one process"): an asyncio loop in simulated time and the
# host modules' clock on it, the bridge's Store run on that loop instead of
# its writer thread, and an MQTT broker with an aiomqtt-shaped client module
# for host.mqtt and host.platform. The harness that wires the real firmware,
# bridge and platform onto them is sim/chaos_inproc.py.
import asyncio
import contextvars
import os
import selectors
import time as _time

from host.store import Store, StoreError, _BATCH, _resolve

OWNER = contextvars.ContextVar("pc_inproc_owner", default=None)

# --- simulated time ------------------------------------------------------------------

class _Jump:
    """The loop's selector: never waits, the clock jumps by the timeout."""

    def __init__(self, sel, loop):
        self._sel = sel
        self._loop = loop

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("chaos-inproc: nothing scheduled and nothing to wait for")
        if timeout > 0:
            self._loop.vt += timeout
        self._loop._reach_due()
        return self._sel.select(0)

    def __getattr__(self, name):
        return getattr(self._sel, name)


def _task_factory(loop, coro, context=None):
    t = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(OWNER) if context is not None else OWNER.get()
    if owner is not None:
        owner.add(t)
    return t


class _Owner:
    """The tasks of one simulated process (a bridge run), to kill it."""

    def __init__(self):
        self.tasks = set()

    def add(self, t):
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)


class SimStall(RuntimeError):
    """The simulated loop gave up: its clock stood still for too many turns
    (something reschedules itself at once, forever), or the run outlasted
    its wall-clock bound. The message names what kept running, or what was
    pending."""


_STILL_S = 0.001    # the clock "stands still" while it moves less than this
_ASYNCIO = os.path.dirname(asyncio.__file__)


def _where(coro):
    """Where a coroutine is suspended (or running): its chain of frames
    outside asyncio itself (the innermost three), "file:line in function"
    each; asyncio's innermost frame when there is no other."""
    frames = []
    inner = None
    seen = 0
    while coro is not None and seen < 50:
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if f is not None:
            inner = f
            if not f.f_code.co_filename.startswith(_ASYNCIO):
                frames.append(f)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    frames = frames[-3:] or ([inner] if inner is not None else [])
    if not frames:
        return "(done)"
    return " > ".join("%s:%d in %s" % (_path(f.f_code.co_filename), f.f_lineno, f.f_code.co_name)
                      for f in frames)


def _path(filename):
    rel = os.path.relpath(filename)
    return filename if rel.startswith("..") else rel


def describe_task(t):
    """A task as its coroutine, where it is suspended, and its name if it
    was given one."""
    coro = t.get_coro()
    name = t.get_name()
    return "task %s%s at %s" % ("" if name.startswith("Task-") else name + " ",
                                getattr(coro, "__qualname__", coro), _where(coro))


def describe_handle(h):
    """What a loop handle runs: the task it steps or wakes, or the function
    (its qualified name and where it is defined)."""
    cb = h._callback
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return describe_task(owner)
    fn = getattr(cb, "__func__", cb)
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or repr(cb)
    if code is None:
        return "callback %s" % name
    return "callback %s (%s:%d)" % (name, _path(code.co_filename), code.co_firstlineno)


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop in simulated time: when nothing is ready, its clock
    jumps to the next timer. Executor calls run inline (no threads: the
    clock must not move while one runs).

    Its guard: when the clock stands still (moves less than 1 ms) for
    `stall_turns` loop turns, or for `stall_wall_s` real seconds once past
    a tenth of them (from there it notes what runs), something reschedules
    itself at once, forever (on a real clock a busy loop, here a hang at
    100 % CPU): it raises SimStall naming the callbacks and tasks that ran
    meanwhile and the pending tasks. After `wall_limit_s` real seconds
    (None: no bound) it raises SimStall naming the pending tasks."""

    def __init__(self, stall_turns=50_000, stall_wall_s=60.0, wall_limit_s=None):
        asyncio.SelectorEventLoop.__init__(self, selectors.SelectSelector())
        self.vt = 0.0
        self._selector = _Jump(self._selector, self)
        self.set_task_factory(_task_factory)
        self.stall_turns = stall_turns
        self.stall_wall_s = stall_wall_s
        self._suspect = max(1, stall_turns // 10)
        self.stalled = None          # the SimStall raised, if one was
        self._turns = 0
        self.max_still = 0           # the most turns the clock stood still (a run's figure)
        self.arm(wall_limit_s)

    def arm(self, wall_limit_s):
        """(Re)start the guard: the wall-clock bound from now, the stall count from 0."""
        self.wall_limit_s = wall_limit_s
        self._wall_end = None if wall_limit_s is None else _time.monotonic() + wall_limit_s
        self._moved()

    def _moved(self):
        self._mark = self.vt         # where the clock was when it last moved 1 ms
        self._still = 0              # turns since
        self._seen = None            # what ran since it looked stuck
        self._still_since = None     # real time since it looked stuck

    def time(self):
        return self.vt

    def _reach_due(self):
        # asyncio runs every timer due within its clock resolution (1 ns) of
        # now, as reached. A real clock then moves on by itself; this one
        # must be moved to that time, or whoever waits for exactly that
        # moment (an outbox waiting 1e-10 s, its deadline computed on
        # SimTime.monotonic's coarser float) finds it not reached, waits
        # again as long, and the clock never moves: the hang of
        # docs/chaos.md "In one process".
        h = self._scheduled
        end = self.vt + self._clock_resolution
        top = self.vt
        todo = [0]
        while todo:
            i = todo.pop()
            if i < len(h) and h[i]._when < end:     # a heap: children only if this one is due
                if h[i]._when > top and not h[i]._cancelled:
                    top = h[i]._when
                todo.append(2 * i + 1)
                todo.append(2 * i + 2)
        self.vt = top

    def _run_once(self):
        if self._seen is not None:
            for h in self._ready:
                self._note(h)
            for h in self._scheduled:
                if h._when <= self.vt and not h._cancelled:
                    self._note(h)
        asyncio.SelectorEventLoop._run_once(self)
        self._turns += 1
        if self.vt - self._mark >= _STILL_S:
            self._moved()
        else:
            self._still += 1
            if self._still > self.max_still:
                self.max_still = self._still
            if self._still == self._suspect:
                self._seen = {}
                self._still_since = _time.monotonic()
            elif self._still > self._suspect and (
                    self._still >= self.stall_turns
                    or not self._still & 255
                    and _time.monotonic() - self._still_since > self.stall_wall_s):
                self._stall()
        if self._wall_end is not None and not self._turns & 1023 and \
                _time.monotonic() > self._wall_end:
            self._fail("chaos-inproc: the run outlasted its wall-clock bound of %d s at "
                       "simulated %.1f s; pending: %s"
                       % (self.wall_limit_s, self.vt, self._pending_tasks()))

    def _note(self, h):
        if not h._cancelled:
            d = describe_handle(h)
            self._seen[d] = self._seen.get(d, 0) + 1

    def _stall(self):
        seen = sorted(self._seen.items(), key=lambda kv: -kv[1])
        ran = "; ".join("%s (%d times)" % kv for kv in seen[:12])
        self._fail("chaos-inproc: the simulated clock stood still at %.3f s (moved less than "
                   "%g s) for %d loop turns, %.0f s of wall time (something reschedules itself "
                   "at once, forever); in its last %d turns ran: %s; pending: %s"
                   % (self.vt, _STILL_S, self._still, _time.monotonic() - self._still_since,
                      self._still - self._suspect, ran, self._pending_tasks()))

    def _pending_tasks(self):
        n = {}
        for t in asyncio.all_tasks(self):
            coro = t.get_coro()
            d = "%s at %s" % (getattr(coro, "__qualname__", coro), _where(coro))
            n[d] = n.get(d, 0) + 1
        return "; ".join("%d x %s" % (c, d) for d, c in sorted(n.items(), key=lambda kv: -kv[1])) \
            or "no task"

    def _fail(self, msg):
        self.stalled = SimStall(msg)
        self._wall_end = None
        self._moved()
        raise self.stalled

    def run_in_executor(self, executor, fn, *args):
        fut = self.create_future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut


class SimTime:
    """`time` for the host modules: wall and monotonic clocks on the loop's."""

    def __init__(self, loop, base):
        self._loop = loop
        self._base = base

    def time(self):
        return self._base + self._loop.vt

    def monotonic(self):
        return 1e6 + self._loop.vt

    def time_ns(self):
        return int(self.time() * 1e9)

    def localtime(self, secs=None):
        return _time.localtime(self.time() if secs is None else secs)

    def gmtime(self, secs=None):
        return _time.gmtime(self.time() if secs is None else secs)

    def strftime(self, fmt, t=None):
        return _time.strftime(fmt, self.localtime() if t is None else t)

    def __getattr__(self, name):
        return getattr(_time, name)


# --- the store, inline -----------------------------------------------------------------

class InlineStore(Store):
    """host.store.Store with its calls run on the loop instead of its
    writer thread: the same transactions (Store._run_batch), the calls
    that arrive in one loop turn committed together as the thread batches
    them. crash(): the process dies; what was not committed is gone."""

    def __init__(self, path):
        self._pending = []
        self._db = None
        self.dead = False
        Store.__init__(self, path)
        self._thread.join()

    def _serve(self):
        try:
            self._db = self._open_db()
        except Exception as e:
            self._open_error = e
        self._ready.set()

    def _submit(self, fn, *args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.dead:
            # The process is gone: whatever of it still runs (a task being
            # cancelled) gets nothing done.
            fut.set_exception(StoreError("the bridge process was killed"))
            return fut
        self._pending.append((fn, args, lambda r, e: _resolve(fut, r, e)))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self):
        batch, self._pending = self._pending, []
        if self.dead:
            return
        for i in range(0, len(batch), _BATCH):
            self._run_batch(self._db, batch[i:i + _BATCH])

    def call_sync(self, fn, *args):
        out = []
        self._run_batch(self._db, [(fn, args, lambda r, e: out.append((r, e)))])
        r, e = out[0]
        if e is not None:
            raise e
        return r

    def crash(self):
        self.dead = True
        self._pending = []
        self._close_db()

    def close(self):
        if not self.dead:
            self._flush()
        self._close_db()

    def _close_db(self):
        if self._db is not None:
            self._db.close()
            self._db = None
        self._unlock()


# --- the broker ---------------------------------------------------------------------------

class MqttError(Exception):
    pass


class _Will:
    def __init__(self, topic, payload=None, qos=0, retain=False):
        self.topic = topic


class _ProtocolVersion:
    V31 = 3
    V311 = 4
    V5 = 5


class _Msg:
    __slots__ = ("topic", "payload")

    def __init__(self, topic, payload):
        self.topic = topic
        self.payload = payload


_LOST = object()


def _matches(flt, topic):
    f = flt.split("/")
    t = topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class _Session:
    def __init__(self, persistent):
        self.persistent = persistent
        self.subs = []
        self.queue = []          # QoS 1 messages kept while the client is away
        self.client = None


class FakeBroker:
    """One MQTT broker with persistence, in the loop: QoS 1 delivery to
    every matching subscription, persistent sessions (clean_session false)
    keep their subscriptions and queue while away; restart() drops every
    connection (their message streams end in MqttError) and refuses
    connections until start(). p_dup: chance a message is delivered twice
    to a client whose id starts with dup_prefix (the platform)."""

    def __init__(self, rnd, p_dup=0.0, dup_prefix="pc-platform"):
        self.up = True
        self.rnd = rnd
        self.p_dup = p_dup
        self.dup_prefix = dup_prefix
        self.sessions = {}
        self.duplicated = 0
        self._route = {}         # topic -> [sessions]

    def connect(self, c):
        if not self.up:
            raise MqttError("[code:7] the broker is down")
        s = self.sessions.get(c.identifier)
        if s is not None and s.client is not None:
            self._drop(s.client)             # the same id again: the old one goes
        if s is None or not (s.persistent and not c.clean):
            s = self.sessions[c.identifier] = _Session(not c.clean)
            self._route = {}
        s.client = c
        c.session = s
        c.connected = True
        q, s.queue = s.queue, []
        for m in q:
            c.inbox.put_nowait(m)

    def disconnect(self, c):
        s = c.session
        if s is not None and s.client is c:
            s.client = None
            if not s.persistent:
                self.sessions.pop(c.identifier, None)
                self._route = {}
        c.connected = False

    def _drop(self, c):
        self.disconnect(c)
        c.inbox.put_nowait(_LOST)

    def subscribe(self, c, flt):
        if flt not in c.session.subs:
            c.session.subs.append(flt)
            self._route = {}

    def publish(self, topic, payload):
        subs = self._route.get(topic)
        if subs is None:
            subs = self._route[topic] = [s for s in self.sessions.values()
                                         if any(_matches(f, topic) for f in s.subs)]
        for s in subs:
            n = 1
            if self.p_dup and s.client is not None and \
                    s.client.identifier.startswith(self.dup_prefix) and self.rnd.random() < self.p_dup:
                n = 2
                self.duplicated += 1
            for _ in range(n):
                m = _Msg(topic, payload)
                if s.client is not None:
                    s.client.inbox.put_nowait(m)
                elif s.persistent:
                    s.queue.append(m)

    def kill_client(self, c):
        if c is not None and c.connected:
            self._drop(c)

    def restart(self):
        self.up = False
        for s in list(self.sessions.values()):
            if s.client is not None:
                self._drop(s.client)

    def start(self):
        self.up = True

    def close(self):
        pass


class _Client:
    """aiomqtt.Client's shape, on FakeBroker."""
    broker = None

    def __init__(self, hostname=None, port=1883, *, identifier=None, clean_session=None, **kw):
        self.identifier = identifier or "pc-anon-%d" % id(self)
        self.clean = clean_session is not False
        self.session = None
        self.connected = False
        self.inbox = asyncio.Queue()
        self.pending_calls_threshold = 0

    async def __aenter__(self):
        self.broker.connect(self)
        return self

    async def __aexit__(self, *exc):
        self.broker.disconnect(self)

    async def subscribe(self, topic, qos=0, **kw):
        if not self.connected:
            raise MqttError("not connected")
        self.broker.subscribe(self, topic)
        return [qos]

    async def publish(self, topic, payload=None, qos=0, retain=False, **kw):
        if not self.connected:
            raise MqttError("not connected")
        if isinstance(payload, str):
            payload = payload.encode()
        self.broker.publish(topic, payload)

    @property
    def messages(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        m = await self.inbox.get()
        if m is _LOST:
            raise MqttError("the connection to the broker was lost")
        return m


def fake_aiomqtt(broker):
    """A stand-in for the aiomqtt module, on `broker`."""
    import types
    mod = types.ModuleType("aiomqtt_inproc")
    client = type("Client", (_Client,), {"broker": broker})
    mod.Client = client
    mod.MqttError = MqttError
    mod.Will = _Will
    mod.ProtocolVersion = _ProtocolVersion
    return mod
