# The bill retry schedule's rules at their edges (firmware/outbox.py), under
# CPython with a real journal: the answer window's exact length, the window
# when more bills are in flight than it allows, clocks with and without their
# own ticks_diff (wrapping ticks), a resend of one bill's fee split not held
# back by another's pending bill. Killers of cosmic-ray survivors
# (docs/testing.md).
import os
import tempfile

from hypothesis import example, given, settings, strategies as st

from firmware.journal import Journal
from firmware.outbox import Outbox

_WRAP = 1 << 30


def serial(n):
    return "%014d" % 32010200000001 + "01" + "24010112%02d%02d" % (n // 60 % 60, n % 60) + "%04d" % n


def body(n):
    return bytes((n * 7 + i) & 0xFF for i in range(158))


class Clock:
    def __init__(self, t=1000):
        self.t = t

    def ticks_ms(self):
        return self.t


class WrappingClock(Clock):
    """A board's ticks: they wrap at 2**30 and only ticks_diff knows it."""

    def ticks_ms(self):
        return self.t % _WRAP

    def ticks_diff(self, a, b):
        d = (a - b) % _WRAP
        return d - _WRAP if d >= _WRAP // 2 else d


def journal(tmp_path, n):
    j = Journal(str(tmp_path / "bills.j"))
    for i in range(1, n + 1):
        assert j.open_session(serial(i), b"h") == "opened"
        assert j.seal(serial(i), body(i)) == "sealed"
    return j


def test_the_default_answer_window_is_exactly_ten_seconds(tmp_path):
    j = journal(tmp_path, 2)
    c = Clock()
    ob = Outbox(j, c)                      # window=1, answer_ms=10000
    ob.on_login()
    assert ob.due()[0] == serial(1)
    ob.sent(serial(1))
    c.t += 9999
    assert ob.due() is None                # still waiting for its answer
    c.t += 1
    assert ob.due()[0] == serial(2)        # 10 s without an answer: the next one goes


def test_more_bills_in_flight_than_the_window_hold_back_the_rest(tmp_path):
    j = journal(tmp_path, 3)
    c = Clock()
    ob = Outbox(j, c, window=1)
    ob.on_login()
    ob.sent(serial(1))                     # the pile sent two at once (sealed while online)
    ob.sent(serial(2))
    assert ob.due() is None
    assert not ob.idle()


def test_a_clock_without_ticks_diff_uses_plain_differences(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock(t=5000)
    ob = Outbox(j, c, first_ms=30000)
    ob.on_login()
    ob.sent(serial(1))
    assert ob.next_in(serial(1)) == 30000
    c.t += 12000
    assert ob.next_in(serial(1)) == 18000
    c.t += 18000
    assert ob.due() == (serial(1), body(1))


def test_backoff_across_the_tick_wrap_uses_the_clocks_own_ticks_diff(tmp_path):
    j = journal(tmp_path, 1)
    c = WrappingClock(t=_WRAP - 10000)
    ob = Outbox(j, c, first_ms=30000)
    ob.on_login()
    assert ob.due()[0] == serial(1)
    ob.sent(serial(1))
    c.t += 29999                           # past the wrap
    assert ob.due() is None
    assert ob.next_in(serial(1)) == 1
    c.t += 1
    assert ob.due() == (serial(1), body(1))


def test_next_in_is_none_for_a_serial_the_journal_does_not_hold(tmp_path):
    j = journal(tmp_path, 1)
    ob = Outbox(j, Clock())
    assert ob.next_in("9" * 32) is None
    assert j.confirm(serial(1)) == "ok"
    assert j.settle(serial(1)) == "ok"
    assert ob.next_in(serial(1)) is None


def test_a_confirmed_bill_before_any_login_waits_resettle_ms_from_tick_zero(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock(t=1000)
    ob = Outbox(j, c, resettle_ms=3600000)
    assert j.confirm(serial(1)) == "ok"
    assert ob.next_in(serial(1)) == 3600000 - 1000


def test_a_pending_bills_fee_split_does_not_hold_back_another_bills(tmp_path):
    j = journal(tmp_path, 2)
    c = Clock()
    ob = Outbox(j, c, window=2, answer_ms=1000)
    ob.on_login()
    ob.sent(serial(1))                     # 0x3B + 0xEB out, no 0x40 yet: stays pending
    ob.sent(serial(2))
    assert ob.confirmed(serial(2), 0) == "ok"   # 0x40 for the second, but no 0xEC
    c.t += 1000
    assert ob.extra_due() == (serial(2), body(2))


def test_a_confirmed_bill_offered_again_is_in_flight_and_waits_resettle_ms(tmp_path):
    j = journal(tmp_path, 2)
    assert j.confirm(serial(1)) == "ok"     # host-confirmed, platform not yet
    c = Clock()
    ob = Outbox(j, c, window=1, resettle_ms=3600000, first_ms=30000)
    ob.on_login()
    assert ob.due()[0] == serial(2)          # pending bills first
    ob.sent(serial(2))
    assert ob.confirmed(serial(2), 0) == "ok"
    c.t += 3600000
    assert ob.due() == (serial(1), body(1))  # offered again after an hour
    ob.sent(serial(1))
    assert ob.next_in(serial(1)) == 3600000  # not the pending backoff
    assert ob.due() is None                  # in flight: the window is full


def test_with_a_window_of_two_the_second_bill_goes_while_the_first_waits(tmp_path):
    j = journal(tmp_path, 3)
    c = Clock()
    ob = Outbox(j, c, window=2)
    ob.on_login()
    assert ob.due()[0] == serial(1)
    ob.sent(serial(1))
    assert ob.due()[0] == serial(2)
    ob.sent(serial(2))
    assert ob.due() is None


def test_a_fee_split_the_host_never_acknowledges_is_resent_six_times(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock()
    ob = Outbox(j, c, answer_ms=1000)
    ob.on_login()
    ob.sent(serial(1))
    assert ob.confirmed(serial(1), 0) == "ok"
    resends = 0
    for _ in range(200):
        c.t += 1000
        got = ob.extra_due()
        if got is not None:
            assert got == (serial(1), body(1))
            ob.extra_sent(serial(1))
            resends += 1
    assert resends == 6                      # docs/journal.md: 6 times at most


def test_after_logout_nothing_is_due(tmp_path):
    j = journal(tmp_path, 1)
    ob = Outbox(j, Clock())
    ob.on_login()
    assert ob.due()[0] == serial(1)
    ob.on_logout()
    assert ob.due() is None
    assert ob.extra_due() is None


def test_a_pending_bill_never_sent_is_due_now_even_long_after_login(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock()
    ob = Outbox(j, c)
    ob.on_login()
    c.t += 5000
    assert ob.next_in(serial(1)) == 0


def test_default_backoff_starts_at_exactly_30_s_and_caps_at_exactly_600_s(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock()
    ob = Outbox(j, c)
    ob.on_login()
    waits = []
    for _ in range(7):
        assert ob.due()[0] == serial(1)
        ob.sent(serial(1))
        waits.append(ob.next_in(serial(1)))
        c.t += waits[-1]
    assert waits == [30000, 60000, 120000, 240000, 480000, 600000, 600000]


def _extra_resend_times(tmp_path, step):
    tmp_path.mkdir()
    j = journal(tmp_path, 1)
    c = Clock(t=0)
    ob = Outbox(j, c, answer_ms=1000)
    ob.on_login()
    ob.sent(serial(1))
    assert ob.confirmed(serial(1), 0) == "ok"
    times = []
    for _ in range(200000 // step):
        c.t += step
        if ob.extra_due() is not None:
            ob.extra_sent(serial(1))
            times.append(c.t)
    return times


def test_fee_split_resends_back_off_doubling_from_answer_ms(tmp_path):
    assert _extra_resend_times(tmp_path / "a", 100) == [1000, 3000, 7000, 15000, 31000, 63000]
    # Steps that never land on a wait exactly: each wait is a lower bound.
    t = _extra_resend_times(tmp_path / "b", 700)
    assert len(t) == 6
    assert [b - a for a, b in zip([0] + t, t)] == [1400, 2100, 4200, 8400, 16100, 32200]


def test_an_exhausted_fee_split_does_not_hide_another_bills_due_one(tmp_path):
    j = journal(tmp_path, 2)
    c = Clock(t=0)
    ob = Outbox(j, c, window=2, answer_ms=1000)
    ob.on_login()
    ob.sent(serial(1))
    ob.sent(serial(2))                       # no 0x40 yet: pending, its 0xEB goes with it
    assert ob.confirmed(serial(1), 0) == "ok"
    resends = 0
    while resends < 6:                       # serial 1: its 6 resends
        c.t += 1000
        if ob.extra_due() is not None:
            ob.extra_sent(serial(1))
            resends += 1
    assert ob.confirmed(serial(2), 0) == "ok"
    c.t += 200000
    # serial 1 is given up now; serial 2's fee split is due all the same
    assert ob.extra_due() == (serial(2), body(2))


def test_sending_a_settled_or_illegal_bill_takes_no_place_in_the_window(tmp_path):
    j = journal(tmp_path, 3)
    c = Clock()
    ob = Outbox(j, c, window=1)
    ob.on_login()
    assert j.confirm(serial(1)) == "ok" and j.settle(serial(1)) == "ok"
    assert j.illegal(serial(2)) == "ok"
    ob.sent(serial(1))                       # gone out just before its 0xE4 came back
    ob.sent(serial(2))
    assert ob.due() == (serial(3), body(3))
    assert ob.extra_due() is None


def test_sending_a_serial_the_journal_no_longer_holds_changes_nothing(tmp_path):
    j = journal(tmp_path, 1)
    ob = Outbox(j, Clock(), window=1)
    ob.on_login()
    ob.sent("9" * 32)                        # compacted away meanwhile, say
    assert ob.due() == (serial(1), body(1))


def _damage(j, n):
    # Flip bytes of bill n's body on flash, behind the open journal's back.
    with open(j.path, "rb") as f:
        data = bytearray(f.read())
    i = data.find(body(n))
    assert i > 0
    for k in range(i + 10, i + 20):
        data[k] ^= 0x55
    with open(j.path, "wb") as f:
        f.write(data)


def test_a_bill_damaged_on_flash_does_not_hold_back_the_next_one(tmp_path):
    j = journal(tmp_path, 2)
    c = Clock()
    ob = Outbox(j, c, window=2, answer_ms=1000)
    ob.on_login()
    _damage(j, 1)
    assert j.bill(serial(1)) is None
    assert ob.due() == (serial(2), body(2))


def test_a_damaged_bills_fee_split_does_not_hold_back_another_bills(tmp_path):
    j = journal(tmp_path, 2)
    c = Clock()
    ob = Outbox(j, c, window=2, answer_ms=1000)
    ob.on_login()
    ob.sent(serial(1))
    ob.sent(serial(2))
    assert ob.confirmed(serial(1), 0) == "ok" and ob.confirmed(serial(2), 0) == "ok"
    _damage(j, 1)
    c.t += 1000
    assert ob.extra_due() == (serial(2), body(2))


# --- the quiet spell: due() skips the walk over the index while nothing can be due ---------

class _Uncached(Outbox):
    """The same rules with the quiet spell forgotten before every call."""

    def due(self):
        self._quiet = None
        return Outbox.due(self)


_STEP_MS = st.one_of(st.sampled_from((1, 999, 1000, 4999, 5000, 9999, 10000, 20000, 29999,
                                      30000, 60000, 600000, 3600000)),
                     st.integers(0, 4000000))
_OPS = st.lists(st.tuples(st.sampled_from("tttsddcCxSRlLw"), _STEP_MS), max_size=60)


@settings(max_examples=300, deadline=None)
# A 0x40 with an unknown result ends the answer wait of a bill whose resend
# wait (5 s) is shorter than it (10 s): due at 5 s, not at the end of a spell
# measured from the answer wait.
@example(ops=[("s", 0), ("d", 0), ("x", 0), ("t", 5000)], window=2, first_ms=5000,
         answer_ms=10000)
# A bill in flight when the spell began is due when its answer wait ends.
@example(ops=[("s", 0), ("d", 0), ("t", 10000)], window=2, first_ms=5000, answer_ms=10000)
@given(ops=_OPS, window=st.integers(1, 3), first_ms=st.sampled_from((5000, 30000)),
       answer_ms=st.sampled_from((10000, 40000)))
def test_the_quiet_spell_never_changes_what_is_due(ops, window, first_ms, answer_ms):
    """Two piles' outboxes, one remembering its quiet spell and one walking
    the index at every call, driven by the same steps on two journals: they
    offer the same bill (or none) at every step. Steps: t advance the clock,
    s seal a bill, d send what is due, c/C a 0x40 (received / illegal), x
    another result, S a settle, R a refusal, l login, L logout, w ask twice.
    Both start logged in."""
    with tempfile.TemporaryDirectory() as d:
        jj = [Journal(os.path.join(d, "a.j")), Journal(os.path.join(d, "b.j"))]
        cc = [Clock(), Clock()]
        obs = [cls(j, c, first_ms=first_ms, cap_ms=600000, resettle_ms=3600000,
                   window=window, answer_ms=answer_ms)
               for cls, j, c in ((Outbox, jj[0], cc[0]), (_Uncached, jj[1], cc[1]))]
        sealed = []
        for ob in obs:
            ob.on_login()
        for op, n in ops:
            if op == "t":
                for c in cc:
                    c.t += n
            elif op == "s":
                k = len(sealed) + 1
                for j in jj:
                    assert j.open_session(serial(k), b"h") == "opened"
                    assert j.seal(serial(k), body(k)) == "sealed"
                sealed.append(serial(k))
            elif op in "dw":
                got = [ob.due() for ob in obs]
                assert got[0] == got[1], (op, n)
                if op == "w":
                    assert [ob.due() for ob in obs] == got
                elif got[0] is not None:
                    for ob in obs:
                        ob.sent(got[0][0])
            elif sealed and op in "cCxSR":
                s = sealed[n % len(sealed)]
                if op in "cCx":
                    r = [ob.confirmed(s, {"c": 0, "C": 1, "x": 2}[op]) for ob in obs]
                elif op == "S":
                    r = [ob.settled(s) for ob in obs]
                else:
                    r = [ob.refused(s, 3) for ob in obs]
                assert r[0] == r[1]
            elif op == "l":
                for ob in obs:
                    ob.on_login()
            elif op == "L":
                for ob in obs:
                    ob.on_logout()
            assert obs[0].due() == obs[1].due()
            assert obs[0].idle() == obs[1].idle()


def test_a_quiet_outbox_offers_a_bill_sealed_meanwhile_at_once(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock()
    ob = Outbox(j, c, window=1, answer_ms=1000)
    ob.on_login()
    assert ob.due() == (serial(1), body(1))
    ob.sent(serial(1))
    c.t += 1000                            # the answer window ran out
    assert ob.due() is None                # waits first_ms: quiet from here
    assert j.open_session(serial(2), b"h") == "opened" and j.seal(serial(2), body(2)) == "sealed"
    assert ob.due() == (serial(2), body(2))


def test_a_quiet_outbox_offers_the_bill_again_when_its_wait_ends(tmp_path):
    j = journal(tmp_path, 1)
    c = Clock()
    ob = Outbox(j, c, window=1, answer_ms=1000, first_ms=30000)
    ob.on_login()
    ob.sent(serial(1))
    c.t += 1000
    assert ob.due() is None
    c.t += 28999
    assert ob.due() is None
    c.t += 1
    assert ob.due() == (serial(1), body(1))
