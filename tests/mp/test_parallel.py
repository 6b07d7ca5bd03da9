# Dual-gun parallel charging (YKC V1.6 0xA4 / 0xA3; docs/guns.md): one
# vehicle on two guns of one pile. Each gun takes its own 0xA4 (same group,
# its own trade serial) and answers 0xA3 with its role; power sharing splits
# the group's demand between its guns; a stop of either gun stops both; each
# gun seals and reconciles its own bill; a power cut ends both.
from firmware import session as S
from protocol.reconcile import reconcile
from tests.mp.pilekit import PILE, Rig, serial
from tests.mp.util import tmpdir

GROUP = "260001000042"


def _rig(guns=2, power_w=100000, cfg=None):
    c = {"power_w": power_w, "gun_max_w": 50000}
    c.update(cfg or {})
    return Rig(tmpdir("par"), guns=guns, power_w=power_w, cfg=c, sharing=True)


def _a4(r, s, gun, group=GROUP):
    n = len(r.platform.named("parallel_start_reply"))
    r.platform.send("parallel_start", {"serial": s, "pile": PILE, "gun": gun,
                                       "logical_card": "1000000573", "card": "D14B0A54",
                                       "balance": 100000, "group": group})
    r.run(1000, lambda: len(r.platform.named("parallel_start_reply")) > n)
    v = r.platform.named("parallel_start_reply")[n].fields
    assert v["serial"] == s and v["gun"] == gun and v["group"] == group
    return v["result"], v["reason"], v["role"]


def _bills(r, started):
    """started: {serial: gun}. Exactly one bill per executed start, on its
    gun, the same on every resend, reconciling; no other bill."""
    seen = {}
    for f in r.platform.bills():
        v = f.fields
        assert v["serial"] in started, "bill %s for no executed start" % v["serial"]
        assert seen.get(v["serial"], v) == v, "bill %s resent different" % v["serial"]
        seen[v["serial"]] = v
        assert v["gun"] == started[v["serial"]]
    extras = {}
    for f in r.platform.named("bill_extra"):
        extras[f.fields["serial"]] = f.fields
    for s in started:
        assert s in seen, "executed start %s has no bill" % s
        assert reconcile(seen[s], extras.get(s)) == [], s
    return seen


def _pair(r, a, b):
    r.online()
    assert _a4(r, a, "01") == (1, 0, 1)
    assert _a4(r, b, "02") == (1, 0, 2)
    g1, g2 = r.pile.guns[0], r.pile.guns[1]
    assert g1.state == S.CHARGING and g2.state == S.CHARGING
    assert g1.group == GROUP and g2.group == GROUP and (g1.role, g2.role) == (1, 2)
    return g1, g2


def test_a4_on_two_guns_answers_main_then_auxiliary_and_a_stop_of_either_stops_both():
    for stopped in ("01", "02"):
        with _rig() as r:
            a, b = serial(1, "01"), serial(2, "02")
            g1, g2 = _pair(r, a, b)
            r.run(61337)
            r.stop(stopped)
            r.run(1000, lambda: g1.state != S.CHARGING and g2.state != S.CHARGING)
            assert g1.state == S.FINISHED and g2.state == S.FINISHED
            assert g1.group is None and g2.group is None and not r.pile.groups
            r.stop("01" if stopped == "02" else "02")    # the other gun: not charging
            r.run(30000)
            bills = _bills(r, {a: "01", b: "02"})
            assert bills[a]["stop_reason"] == 0x40 and bills[b]["stop_reason"] == 0x40
            assert bills[a]["total_energy"] > 0 and bills[b]["total_energy"] > 0
            assert r.platform.named("remote_stop_reply")[-1].fields["reason"] == S.STOPR_NOT_CHARGING


def test_a_fault_or_unplug_on_the_main_gun_stops_the_auxiliary_with_its_reason():
    with _rig() as r:
        a, b = serial(3, "01"), serial(4, "02")
        g1, g2 = _pair(r, a, b)
        r.run(23417)
        r.worlds[0].vehicle.plugged = False        # the vehicle's plug on gun 1 drops
        r.run(5000, lambda: g2.state != S.CHARGING)
        assert g1.state != S.CHARGING and g2.state != S.CHARGING
        r.run(30000)
        bills = _bills(r, {a: "01", b: "02"})
        assert bills[a]["stop_reason"] == bills[b]["stop_reason"] == S.ABORT_PILOT


def test_power_sharing_splits_the_group_demand_between_its_guns_never_over_the_cap():
    with _rig() as r:
        r.worlds[0].vehicle.max_power = 40000      # the vehicle's BCL, on the main gun
        g1, g2 = _pair(r, serial(5, "01"), serial(6, "02"))
        sh = r.pile.sharing
        r.run(5000)
        assert sh.share == [20000, 20000], sh.share
        r.worlds[0].vehicle.max_power = 250000     # more than the cap: capped, split
        sh.set_site_cap(60000)
        top = 0
        for _ in range(50):
            r.run(200)
            assert sum(sh.share) <= 60000
            d = r.worlds[0].vehicle.power + r.worlds[1].vehicle.power
            assert d <= 60000
            top = max(top, d)
        assert sh.share == [30000, 30000], sh.share


def test_refusals_busy_faulted_unplugged_and_inconsistent_groups_execute_nothing():
    with _rig(guns=3) as r:
        r.online()
        g1, g2, g3 = r.pile.guns
        r.start(serial(7, "01"), gun="01")          # gun 1 busy with its own session
        r.run(3000)
        assert _a4(r, serial(8, "01"), "01") == (0, S.START_BUSY, 0)
        g3.faults = S.FAULT_CONTACTOR
        assert _a4(r, serial(9, "03"), "03") == (0, S.START_FAULT, 0)
        g3.faults = 0
        r.worlds[2].vehicle.plugged = False
        r.run(300)
        assert _a4(r, serial(10, "03"), "03") == (0, S.START_NOT_PLUGGED, 0)
        r.worlds[2].vehicle.plugged = True
        r.run(300)
        assert _a4(r, serial(11, "05"), "05") == (0, S.START_FAULT, 0)   # no such gun
        assert not r.pile.groups and g3.state != S.CHARGING and g2.state != S.CHARGING
        # a group full: its third gun refused
        assert _a4(r, serial(12, "02"), "02") == (1, 0, 1)
        assert _a4(r, serial(12, "02"), "02") == (1, 0, 1)   # the same 0xA4 again
        assert _a4(r, serial(13, "03"), "03") == (1, 0, 2)
        r.stop("01")
        r.run(1000)
        assert _a4(r, serial(14, "01"), "01") == (0, S.START_GROUP, 0)
        # a group that ended: its late auxiliary refused
        r.stop("02")
        r.run(1000)
        assert g2.state == S.FINISHED and g3.state == S.FINISHED
        assert _a4(r, serial(15, "03"), "03") == (0, S.START_GROUP, 0)
        # a group whose main is gone (another group): refused too
        assert _a4(r, serial(16, "01"), "01", "260001000043") == (1, 0, 1)
        r.stop("01")
        r.run(1000)
        assert _a4(r, serial(17, "02"), "02", "260001000043") == (0, S.START_GROUP, 0)
        r.run(30000)
        _bills(r, {serial(7, "01"): "01", serial(12, "02"): "02", serial(13, "03"): "03",
                   serial(16, "01"): "01"})


def test_a_power_cut_mid_group_ends_both_guns_one_bill_each():
    with _rig() as r:
        a, b = serial(18, "01"), serial(19, "02")
        _pair(r, a, b)
        r.run(97123)
        r.power_cut()
        assert sorted(r.pile.recovered) == sorted([a, b])
        assert not r.pile.groups
        r.online()
        r.run(30000)
        bills = _bills(r, {a: "01", b: "02"})
        assert bills[a]["stop_reason"] == bills[b]["stop_reason"] == S.ABORT_POWER_LOSS
        assert bills[a]["total_energy"] > 0 and bills[b]["total_energy"] > 0
        # after the cut each gun is free for a new group
        c, d = serial(20, "01"), serial(21, "02")
        assert _a4(r, c, "01", "260001000044") == (1, 0, 1)
        assert _a4(r, d, "02", "260001000044") == (1, 0, 2)
        r.run(12345)
        r.power_cut()
        r.online()
        r.run(30000)
        _bills(r, {a: "01", b: "02", c: "01", d: "02"})


def test_a_power_cut_between_the_two_a4_bills_the_main_alone():
    with _rig() as r:
        r.online()
        a = serial(22, "01")
        assert _a4(r, a, "01") == (1, 0, 1)
        r.run(7777)
        r.power_cut()
        r.online()
        r.run(30000)
        bills = _bills(r, {a: "01"})
        assert bills[a]["stop_reason"] == S.ABORT_POWER_LOSS


def _a2(r, s, gun, group, ok=1, reason=0):
    r.platform.send("parallel_auth", {"serial": s, "pile": PILE, "gun": gun,
                                      "logical_card": "1000000573", "balance": 100000,
                                      "ok": ok, "reason": reason, "group": group})
    r.run(300)


def test_a_card_for_two_guns_asks_with_0xa1_and_each_0xa2_starts_its_gun_in_the_group():
    with _rig() as r:
        r.online()
        g1, g2 = r.pile.guns
        assert r.pile.parallel_swiped("D14B0A54") == "asked"
        r.run(300)
        reqs = [f.fields for f in r.platform.named("parallel_request")]
        assert [(q["gun"], q["role"]) for q in reqs] == [("01", 1), ("02", 2)]
        grp = reqs[0]["group"]
        assert reqs[1]["group"] == grp and reqs[0]["card"].endswith("D14B0A54")
        assert g1.state == S.AUTHORISING and g2.state == S.AUTHORISING
        a, b = serial(23, "01"), serial(24, "02")
        _a2(r, a, "01", grp)
        _a2(r, b, "02", grp)
        assert (g1.state, g2.state) == (S.CHARGING, S.CHARGING)
        assert (g1.group, g1.role, g2.group, g2.role) == (grp, 1, grp, 2)
        r.run(45678)
        g2.manual_stop()                            # the stop button at gun 2
        r.run(1000)
        assert g1.state == S.FINISHED
        r.run(30000)
        bills = _bills(r, {a: "01", b: "02"})
        assert bills[a]["stop_reason"] == bills[b]["stop_reason"] == S.STOP_MANUAL
        assert bills[a]["trade_flag"] == bills[b]["trade_flag"] == S.TRADE_CARD
        # refused by the platform: nothing starts, nothing is billed; an
        # 0xA2 for a group that ended is refused by the pile
        assert r.pile.parallel_swiped("D14B0A54") == "asked"
        r.run(300)
        grp2 = r.platform.named("parallel_request")[-1].fields["group"]
        _a2(r, serial(25, "01"), "01", grp2, ok=0, reason=1)
        _a2(r, serial(26, "02"), "02", grp)
        assert g1.state == S.PLUGGED and g2.state == S.PLUGGED and not r.pile.groups
        assert g2.refusal == S.START_GROUP
        assert r.pile.parallel_swiped("D14B0A54", guns=("01", "01")) == "refused"
        r.run(30000)
        _bills(r, {a: "01", b: "02"})
