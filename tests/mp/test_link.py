# The pile's link housekeeping: login, heartbeats, re-login after 3 misses.
from firmware.link import Link
from protocol import codec


class Clock:
    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t


class Wire:
    """One end of an in-memory serial line: what the pile writes is `out`."""

    def __init__(self):
        self.out = bytearray()
        self.inbox = bytearray()

    def write(self, b):
        self.out.extend(b)
        return len(b)

    def read(self, n):
        if not self.inbox:
            return None
        d = bytes(self.inbox[:n])
        self.inbox = self.inbox[n:]
        return d

    def frames(self):
        r = codec.FrameReader()
        got = r.push(bytes(self.out))
        self.out = bytearray()
        return got


LOGIN = {"pile": "55031412782305", "pile_type": 0, "guns": 1, "proto_version": 16,
         "sw_version": "pc0.1", "net_type": 1, "sim": "", "carrier": 4}


def make():
    clock = Clock()
    wire = Wire()
    seen = []
    events = []
    link = Link(wire, clock, LOGIN, seen.append, on_online=lambda: events.append("online"),
                on_offline=lambda: events.append("offline"))
    return clock, wire, link, seen, events


def test_pile_logs_in_and_retries_until_answered():
    clock, wire, link, seen, events = make()
    link.poll()
    assert [f.name for f in wire.frames()] == ["login"]
    clock.t += 5000
    link.poll()
    assert wire.frames() == []
    clock.t += 5000
    link.poll()
    assert [f.name for f in wire.frames()] == ["login"]
    wire.inbox.extend(codec.encode("login_reply", {"pile": LOGIN["pile"], "result": 0}))
    link.poll()
    assert link.online and events == ["online"]


def test_three_unanswered_heartbeats_mean_link_down_and_login_again():
    clock, wire, link, seen, events = make()
    link.poll()
    wire.inbox.extend(codec.encode("login_reply", {"pile": LOGIN["pile"], "result": 0}))
    link.poll()
    wire.frames()
    for i in range(3):
        clock.t += 10000
        link.poll()
        assert [f.name for f in wire.frames()] == ["heartbeat"]
    clock.t += 10000
    link.poll()
    assert not link.online and events == ["online", "offline"]
    link.poll()
    assert [f.name for f in wire.frames()] == ["login"]


def test_answered_heartbeats_keep_the_link_up():
    clock, wire, link, seen, events = make()
    link.poll()
    wire.inbox.extend(codec.encode("login_reply", {"pile": LOGIN["pile"], "result": 0}))
    link.poll()
    for i in range(10):
        clock.t += 10000
        link.poll()
        beat = wire.frames()[0]
        wire.inbox.extend(codec.encode("heartbeat_reply", {"pile": LOGIN["pile"], "gun": "01", "reply": 0},
                                       seq=beat.seq))
        link.poll()
    assert link.online


def test_commands_reach_the_handler_and_garbage_is_counted():
    clock, wire, link, seen, events = make()
    wire.inbox.extend(b"\x68\x05junk" + codec.encode("remote_stop", {"pile": LOGIN["pile"], "gun": "01"}))
    link.poll()
    assert [f.name for f in seen] == ["remote_stop"] and link.bad_frames >= 1


def test_reply_echoes_the_request_sequence():
    clock, wire, link, seen, events = make()
    req = codec.decode(codec.encode("remote_stop", {"pile": LOGIN["pile"], "gun": "01"}, seq=0xBEEF))
    link.reply(req, "remote_stop_reply", {"pile": LOGIN["pile"], "gun": "01", "result": 1, "reason": 0})
    assert wire.frames()[0].seq == 0xBEEF
