# The scripted platform end of a pile's YKC link, for the real firmware in
# the simulator (sim/scenario.py) and the dual-interpreter tests
# (tests/mp/pilekit.py): answers login, heartbeats and the tariff check;
# confirms (0x40) and settles (0xE4) every bill; acknowledges fee splits
# (0xEC); records every frame. MicroPython + CPython.
from protocol import codec
from protocol.router import on, route

# What the platform end does with each frame a pile sends: functions by frame
# code, run by protocol/router.py, which answers with the frame the table
# names and the request's sequence.
HANDLERS = {}


@on(HANDLERS, 0x01)             # login -> 0x02
def _login(p, f):
    if p.answer_login:
        return {"pile": f.fields["pile"], "result": 0}


@on(HANDLERS, 0x03)             # heartbeat -> 0x04
def _heartbeat(p, f):
    v = f.fields
    return {"pile": v["pile"], "gun": v["gun"], "reply": 0}


@on(HANDLERS, 0x05)             # tariff_check -> 0x06
def _tariff_check(p, f):
    v = f.fields
    return {"pile": v["pile"], "model": v["model"], "result": 0}


@on(HANDLERS, 0x3B)             # bill (4 or 5 periods) -> 0x40, then 0xE4
def _bill(p, f):
    if p.confirm:
        p.settle_next = f.fields["serial"] if p.settle else None
        return {"serial": f.fields["serial"], "result": 0}


@on(HANDLERS, 0xEB)             # bill_extra -> 0xEC
def _bill_extra(p, f):
    if p.ack_extra:
        return {"serial": f.fields["serial"], "result": 0}


class ScriptedPlatform:
    """confirm / settle: answer bills with 0x40 / 0xE4 (settle_result is the
    0xE4 result: 1 MAC refused, 2 unsigned, docs/platform.md). ack_extra:
    answer 0xEB with 0xEC (default: as confirm). answer_login: False leaves
    logins unanswered. strict: a line error (bad CRC, unknown frame) raises
    instead of being skipped. With a clock, outage_until (ticks) makes the
    platform read and answer nothing until then (`lost` counts the reads)."""

    def __init__(self, uart, confirm=True, settle=True, clock=None, ack_extra=None, strict=False):
        self.uart = uart
        self.clock = clock
        self.reader = codec.FrameReader()
        self.frames = []          # every frame received, in order
        self.confirm = confirm
        self.settle = settle
        self.settle_result = 0
        self.ack_extra = confirm if ack_extra is None else ack_extra
        self.answer_login = True
        self.strict = strict
        self.seq = 0x100
        self.settle_next = None   # a bill's serial to settle once its 0x40 is sent
        self.outage_until = None  # ticks
        self.lost = 0             # reads dropped by an outage

    def new_link(self, uart):
        """The pile rebooted: a fresh connection (its half-read frame is gone)."""
        self.uart = uart
        self.reader = codec.FrameReader()

    def in_outage(self):
        if self.outage_until is None:
            return False
        if self.clock.ticks_ms() >= self.outage_until:
            self.outage_until = None
            return False
        return True

    def send(self, name, values, seq=None):
        if self.in_outage():
            return False
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
        self.uart.write(codec.encode(name, values, seq))
        return True

    def pump(self):
        """Read what the pile sent, answer it; the new frames."""
        data = self.uart.read(4096)
        if not data:
            return []
        if self.in_outage():
            self.lost += 1
            return []
        out = []
        for f in self.reader.push(data):
            if not isinstance(f, codec.Frame):
                if self.strict:
                    raise AssertionError(f)
                continue
            self.frames.append(f)
            out.append(f)
            self._answer(f)
        return out

    def _answer(self, f):
        r = route(HANDLERS, self, f)
        if r is not None:
            self.send(r[0], r[1], r[2])
        if self.settle_next is not None:
            serial, self.settle_next = self.settle_next, None
            self.send("settled", {"serial": serial, "result": self.settle_result})

    def named(self, *names):
        return [f for f in self.frames if f.name in names]

    def bills(self):
        return self.named("bill", "bill5")
