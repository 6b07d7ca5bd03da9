"""pile-chaos --inproc (sim/chaos_inproc.py, docs/chaos.md "In one process"):
the real firmware, bridge and platform in one process in simulated time,
under the in-process fault plan, lose, duplicate and misreconcile nothing;
its verdict fails when the bridge settles a bill the platform never got (the
socket harness's tests/test_chaos.py plants a forgetful journal);
socket-only faults are refused. And it cannot hang: the harness's commands
are no bridge's tasks (a bridge kill cancelled them, and the pile that
waited for one stopped for good: the run waited forever at 100 % CPU); a
pile loop that raises fails the run; a pile that never finishes stalls it,
named; a timer due within asyncio's clock resolution moves the simulated
clock to it (the other hang: an outbox waiting 1e-10 s forever, the clock
never moving); the simulated loop fails on a clock that stands still
(naming what keeps running) and on its wall-clock bound (naming what is
pending)."""
import asyncio
import json
import math
import os
import re
import subprocess
import sys

import pytest

from host import store as store_mod
from sim import chaos_fleet
from sim import chaos_inproc as inproc
from host.mqtt import wait_event
from sim.inproc import OWNER, SimLoop, SimStall, SimTime
from tools import chaos

VERDICT = ("lost", "duplicated", "unreconciled", "phantom", "mismatched", "unconfirmed")


def _run(capsys, *args):
    rc = chaos.main(["--inproc"] + list(args) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_a_thousand_sessions_in_one_process_under_every_fault_lose_nothing(capsys):
    rc, s = _run(capsys, "--piles", "40", "--sessions", "25", "--seed", "5", "--minutes", "2",
                 "--intensity", "2")
    assert {k: s[k] for k in VERDICT} == dict.fromkeys(VERDICT, 0), s.get("examples")
    assert not s["stalled"], s.get("stuck_piles")
    assert rc == 0 and s["recovered"] and s["tap_missed"] == 0 and s["mode"] == "inproc"
    assert s["sessions"] >= 1000 and s["bills"] == s["sessions"]
    # Every kind of fault really happened in this run, or it proved nothing.
    f = s["faults"]
    for k in ("bridge_kills", "broker_restarts", "platform_outages", "power_cuts_mid_session",
              "flash_cuts_torn_record", "corrupted_to_bridge", "corrupted_to_pile",
              "duplicated_to_bridge", "duplicated_to_pile", "reboots",
              "stops_after_session_ended", "platform_duplicate_deliveries"):
        assert f.get(k, 0) > 0, "no %s in this run: %s" % (k, f)
    assert f["bridge_starts"] == f["bridge_kills"] + 1
    assert s["executed_starts_by"].get("card", 0) > 0
    assert s["executed_starts_by"].get("platform", 0) > 0
    assert s["stop_reasons"].get("power_loss", 0) > 0
    assert s["sessions_per_s"] > 0


def test_the_verdict_fails_when_the_bridge_settles_a_bill_the_platform_never_got(capsys,
                                                                                  monkeypatch):
    # A bridge bug: its first bill is marked confirmed as it is committed, so
    # it is never published, and the settle rule sends the pile its 0xE4.
    add = store_mod._add_bill
    early = []

    def settles_at_once(db, pile, serial, frame, crc_swapped, now):
        kind, bill = add(db, pile, serial, frame, crc_swapped, now)
        if kind == "new" and not early:
            early.append(serial)
            store_mod._confirm(db, serial, 0, now)
        return kind, bill
    monkeypatch.setattr(store_mod, "_add_bill", settles_at_once)
    rc, s = _run(capsys, "--piles", "3", "--sessions", "3", "--seed", "3", "--faults", "none")
    # The pile let it go (settled), so nothing is left open: only the count finds it.
    assert rc == 1 and s["unconfirmed"] == 0 and s["unsettled_on_piles"] == 0
    assert s["lost"] == 1 and s["examples"]["lost"] == early


def test_socket_only_faults_are_refused_in_process(capsys):
    try:
        chaos.main(["--inproc", "--faults", "forge_bill"])
    except SystemExit as e:
        assert e.code == 2
    assert "needs the socket harness" in capsys.readouterr().err


def test_the_harness_commands_are_no_bridge_task(capsys, monkeypatch):
    # The bug of the 1,000-session hang: a pile woken by the bridge's bytes
    # ran its timers on in that bridge's context, so the start and stop
    # commands its driver sent were counted as the bridge's tasks and
    # cancelled by the bridge's next kill.
    owners = []
    submit = inproc.InprocChaos.submit

    def watched(self, coro):
        owners.append(OWNER.get())
        return submit(self, coro)
    monkeypatch.setattr(inproc.InprocChaos, "submit", watched)
    rc, s = _run(capsys, "--piles", "2", "--sessions", "3", "--seed", "3", "--faults", "none")
    assert rc == 0 and s["executed_starts_by"].get("platform", 0) > 0
    assert owners and owners == [None] * len(owners)


def _on_pile(monkeypatch, code, fn):
    """Driver.step of pile `code` replaced by fn(driver, step)."""
    step = chaos_fleet.Driver.step

    def planted(d):
        return fn(d, step) if d.u.code == code else step(d)
    monkeypatch.setattr(chaos_fleet.Driver, "step", planted)


def test_a_pile_loop_that_raises_fails_the_run_naming_the_pile(capsys, monkeypatch):
    def breaks(d, step):
        if len(d.u.flash.opened) >= 1:
            raise ValueError("planted")
        return step(d)
    _on_pile(monkeypatch, "55031400000001", breaks)
    with pytest.raises(RuntimeError, match="pile 55031400000001: its loop raised ValueError: "
                                           "planted"):
        _run(capsys, "--piles", "2", "--sessions", "3", "--seed", "3", "--faults", "none")


def test_a_pile_that_never_finishes_stalls_the_run_naming_it(capsys, monkeypatch):
    # Its driver never starts a session: after 2 simulated hours without a
    # new session the run ends, failed and stalled, naming the pile.
    _on_pile(monkeypatch, "55031400000001", lambda d, step: None)
    rc, s = _run(capsys, "--piles", "2", "--sessions", "2", "--seed", "3", "--faults", "none")
    assert rc == 1 and s["stalled"] and not s["recovered"]
    assert [p["pile"] for p in s["stuck_piles"]] == ["55031400000001"]
    assert s["stuck_piles"][0]["executed"] == 0 and s["stuck_piles"][0]["phase"] == "gap"


async def planted_busy_loop():
    await asyncio.sleep(60)
    while True:
        await asyncio.sleep(0)      # rescheduled at once, forever: the clock stands still


def test_the_sim_loop_names_a_task_that_keeps_the_clock_standing_still(capsys, monkeypatch):
    start_on = inproc.InprocFleet.start_on

    def with_a_busy_loop(fleet, loop):
        start_on(fleet, loop)
        asyncio.ensure_future(planted_busy_loop())
    monkeypatch.setattr(inproc.InprocFleet, "start_on", with_a_busy_loop)
    with pytest.raises(SimStall) as e:
        _run(capsys, "--piles", "2", "--sessions", "3", "--seed", "3", "--faults", "none")
    msg = str(e.value)
    assert "stood still" in msg and "for 50000 loop turns" in msg
    # What ran in the turns before the verdict: the planted task, where it loops, most.
    ran = msg.split("ran: ")[1].split("; pending: ")[0]
    assert ran.startswith("task planted_busy_loop at tests/test_chaos_inproc.py:%d in "
                          "planted_busy_loop (" % (planted_busy_loop.__code__.co_firstlineno + 3))


def test_a_timer_due_within_the_clock_resolution_moves_the_clock_to_it():
    # The hang of a 1,000-session run (seed 4): the bridge's outbox waited
    # for a deadline on SimTime.monotonic (1e6 + the loop's clock: a float
    # with a coarser last bit, 1.16e-10 s), found it one bit away, and
    # waited 1.16e-10 s; asyncio runs a timer due within its clock
    # resolution (1 ns) at once, and the clock, never moved to it, stood
    # still while the outbox waited again, forever.
    loop = SimLoop()
    clock = SimTime(loop, 1.7e9)

    async def outbox_like():
        await asyncio.sleep(4282.903244977177)      # where the run was
        now = clock.monotonic()
        due = math.nextafter(now, math.inf)
        waits = 0
        while clock.monotonic() < due:
            waits += 1
            await wait_event(asyncio.Event(), due - clock.monotonic())
        return waits, due - now
    try:
        assert loop.run_until_complete(outbox_like()) == (1, 2 ** -33)
    finally:
        loop.close()


def test_the_wall_clock_bound_fails_the_run_naming_the_pending_tasks():
    h = inproc.InprocChaos(2, 2, 3, faults=(), wall_limit_s=0)
    try:
        with pytest.raises(SimStall, match="outlasted its wall-clock bound of 0 s") as e:
            inproc.run(h)
    finally:
        h.close()
    pending = str(e.value).split("pending: ")[1]
    assert "Platform.run at " in pending and "MqttLink.run at " in pending
    assert "InprocChaos.run at sim/chaos_inproc.py:" in pending


def test_a_callback_that_never_returns_ends_the_process_with_its_stack():
    # No loop turn ends, so SimLoop's guard never looks: the last resort,
    # past the wall-clock bound (here 1 s, and 0 s more), dumps every
    # thread's stack on stderr and ends the process.
    code = "\n".join((
        "from sim import chaos_fleet, chaos_inproc as inproc",
        "inproc._LAST_RESORT_S = 0",
        "def planted_endless_step(d):",
        "    while True:",
        "        pass",
        "chaos_fleet.Driver.step = planted_endless_step",
        "inproc.run(inproc.InprocChaos(1, 1, 3, faults=(), wall_limit_s=1))"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 1
    assert re.search(r'File "<string>", line [45] in planted_endless_step', r.stderr), r.stderr
    assert 'sim/chaos_inproc.py", line' in r.stderr.split("planted_endless_step")[1]
