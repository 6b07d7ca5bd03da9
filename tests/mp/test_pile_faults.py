# The pile's main loop never dies with power on (issue 17): fields past
# their range are clamped in reports, and a fault anywhere in poll() opens
# the contactor, seals the running session and goes on. A suite of its own
# so that test_pile's heap-capped run keeps its margin.
from firmware import session as S
from tests.mp.pilekit import Rig, serial
from tests.mp.util import rmtree, tmpdir


def _rig(**kw):
    return Rig(tmpdir("pilefault"), **kw)


def test_a_20000_yuan_balance_on_7_kw_reports_minutes_left_clamped_and_keeps_charging():
    # 20,000 yuan at 7 kW is over 100,000 minutes: past 0x13's 2-byte
    # minutes_left. The encoder refused it, poll() raised and the firmware
    # died with the contactor closed (issue 17). Now the field is clamped
    # to its largest value, named in the log, and the session goes on.
    r = _rig(power_w=7000)
    logs = []
    r.pile.log = logs.append
    try:
        r.online()
        r.start(serial(21), balance=2000000)      # 20,000.00 yuan (x100)
        r.run(60000)
        assert r.pile.gun.state == S.CHARGING and r.world.contactor.closed
        rt = [f.fields for f in r.platform.named("realtime") if f.fields["status"] == 3]
        assert rt and rt[-1]["minutes_left"] == 0xFFFF
        assert any("minutes_left" in str(m) for m in logs), logs
        r.stop()
        r.run(30000, lambda: r.platform.bills())
        assert len(r.platform.bills()) == 1
    finally:
        rmtree(r.root)


class _Boom(Exception):
    pass


def _fail_once(obj, name, armed, why):
    """obj.name raises _Boom on its next call, then behaves as before."""
    real = getattr(obj, name)

    def wrapper(*a):
        if armed[0]:
            armed[0] = False
            raise _Boom(why)
        return real(*a)
    setattr(obj, name, wrapper)


def test_an_exception_anywhere_in_the_loop_opens_the_contactor_seals_the_bill_and_goes_on():
    # The watchdog test: a fault injected at points of poll() while
    # charging (the meter, the link's send, the realtime report). The loop
    # never raises; the contactor is open at once; the session's bill is
    # sealed, sent and confirmed; the pile takes the next start.
    points = [(1, "meter"), (13, "send"), (27, "realtime"), (40, "meter"), (5, "realtime"), (33, "send")]
    for round_ in range(len(points)):
        after_s, where = points[round_]
        r = _rig()
        logs = []
        r.pile.log = logs.append
        try:
            r.online()
            r.start(serial(30 + round_))
            r.run(after_s * 1000)
            assert r.pile.gun.state == S.CHARGING
            armed = [True]
            if where == "meter":
                _fail_once(r.world.meter, "read_energy", armed, "meter driver bug")
            elif where == "send":
                _fail_once(r.pile.link, "send", armed, "link bug")
                r.pile.cadence.force()
            else:
                _fail_once(r.pile.gun, "realtime", armed, "report bug")
                r.pile.cadence.force()
            r.run(20000, lambda: not armed[0])
            assert not armed[0], where
            assert not r.world.contactor.closed, where
            r.run(60000, lambda: r.platform.bills())
            bills = r.platform.bills()
            assert len(bills) == 1 and bills[0].fields["serial"] == serial(30 + round_), where
            assert bills[0].fields["stop_reason"] == S.ABORT_FIRMWARE
            assert any("main loop" in str(m) for m in logs), logs
            r.start(serial(40 + round_))
            r.run(30000, lambda: r.pile.gun.state == S.CHARGING)
            assert r.pile.gun.state == S.CHARGING
        finally:
            rmtree(r.root)


# Where a seeded fault may strike: (what, method) on the running pile. Each
# is called while a session charges (the meter every sample, the link and
# the session every poll, the journal at each checkpoint, the outbox and
# the realtime report on their cadence).
_TARGETS = (("meter", "read_energy"), ("link", "send"), ("link", "poll"), ("gun", "tick"),
            ("gun", "realtime"), ("journal", "checkpoint"), ("outbox", "due"))


def _target(r, what):
    return {"meter": r.world.meter, "link": r.pile.link, "gun": r.pile.gun,
            "journal": r.pile.journal, "outbox": r.pile.outbox}[what]


def _fail_at(obj, name, nth, armed, why):
    """obj.name raises _Boom on its nth call from now, once."""
    real = getattr(obj, name)
    calls = [0]

    def wrapper(*a):
        if armed[0]:
            calls[0] += 1
            if calls[0] == nth:
                armed[0] = False
                raise _Boom(why)
        return real(*a)
    setattr(obj, name, wrapper)


def test_seeded_faults_at_random_points_of_the_loop_never_leave_the_contactor_closed():
    # The watchdog test at random points: 16 seeded rounds, each a fault in
    # one of _TARGETS at its 1st..6th call after a random 1..50 s of
    # charging. Whatever breaks, the loop goes on, the contactor opens, the
    # session's bill is sealed, sent and confirmed, the next start charges.
    seed = 20261207
    for round_ in range(16):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        what, name = _TARGETS[seed % len(_TARGETS)]
        nth = 1 + (seed >> 8) % 6
        after_s = 1 + (seed >> 12) % 50
        tag = "round %d: %s.%s call %d after %d s" % (round_, what, name, nth, after_s)
        r = _rig()
        r.pile.log = lambda m: None
        try:
            if not hasattr(_target(r, what), name):
                raise AssertionError("%s: no such method" % tag)
            r.online()
            r.start(serial(60 + round_))
            r.run(after_s * 1000)
            assert r.pile.gun.state == S.CHARGING, tag
            armed = [True]
            _fail_at(_target(r, what), name, nth, armed, tag)
            r.pile.cadence.force()
            r.run(120000, lambda: not armed[0])
            assert not armed[0], tag + ": never called"
            assert not r.world.contactor.closed, tag
            assert r.pile.loop_faults == 1, tag
            r.run(60000, lambda: r.platform.bills())
            bills = r.platform.bills()
            assert len(bills) == 1 and bills[0].fields["serial"] == serial(60 + round_), tag
            assert bills[0].fields["stop_reason"] == S.ABORT_FIRMWARE, tag
            r.start(serial(80 + round_))
            r.run(30000, lambda: r.pile.gun.state == S.CHARGING)
            assert r.pile.gun.state == S.CHARGING, tag
        finally:
            rmtree(r.root)
