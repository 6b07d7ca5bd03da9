# Clock sanity on the pile (issue 17 item 6): a time sync (0x56) may step the
# clock by at most max_clock_step_s (a day), unless the clock is not valid
# yet (an RTC that lost power); the technician's console 'clock set' (PIN)
# brings back a clock that ran ahead. Both interpreters.
from protocol import fields as F
from tests.mp.pilekit import PILE, T0, Rig
from tests.mp.test_console import PIN, Term
from tests.mp.util import tmpdir

_YEAR = 365 * 86400


def _sync(r, t):
    r.platform.send("time_sync", {"pile": PILE, "time": t})
    n = len(r.platform.named("time_sync_reply"))
    r.run(5000, lambda: len(r.platform.named("time_sync_reply")) > n)
    return r.platform.named("time_sync_reply")[-1].fields["time"]


def test_a_time_sync_a_year_away_is_refused_a_small_step_is_taken():
    with Rig(tmpdir("clock"), cfg={"pin": PIN}) as r:
        r.online()
        before = r.pile.clock.now()
        got = _sync(r, before + _YEAR)
        assert abs(got - before) < 60                      # not moved
        assert [e for e in r.pile.events if e[1] == "clock_step_refused"]
        got = _sync(r, r.pile.clock.now() - _YEAR)
        assert abs(got - before) < 60
        got = _sync(r, r.pile.clock.now() + 3600)            # an hour: taken
        assert abs(got - (before + 3600)) < 60
        # The technician sets it anyway, after the PIN.
        t = Term(r)
        assert "locked" in t.ask("clock set 2027-06-01 08:00:00")
        t.ask("unlock " + PIN)
        assert "clock set to 2027-06-01T08:00:00" in t.ask("clock set 2027-06-01 08:00:00")
        assert r.pile.clock.now() - F.to_secs(2027, 6, 1, 8, 0, 0) < 5
        assert "usage" in t.ask("clock set tomorrow")


def test_a_clock_that_is_not_valid_yet_takes_any_sync():
    with Rig(tmpdir("clock0")) as r:
        r.pile.clock.set_now(3600)                          # 2000-01-01: the RTC lost power
        r.online()
        got = _sync(r, T0)
        assert abs(got - T0) < 60
