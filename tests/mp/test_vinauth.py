# VIN authorisation (firmware/vinauth.py), every row of both decision tables
# of shared/context/field-cases.md §3, decided alone and in a running
# session (GB/T DC: the VIN arrives after the start).
from firmware import session as S
from firmware.session import Gun
from sim.hardware import SimWorld
from firmware.tariff import Tariff
from firmware.vinauth import (ALLOW, CARD_FLEET, CARD_SITE_ADMIN, STOP_VIN_DENIED,
                              STOP_VIN_MISSING, VinPolicy)
from protocol import fields as F
from tests.mp.util import raises, TempDir

PILE = "55031412782305"
ADMIN = "00000000A0000001"      # site-admin card, department "site" (check per test)
FLEET = "00000000F0000001"      # fleet card bound to department "bus"
USER = "00000000C0000001"       # an ordinary card: no VIN rule
BUS_VIN = "LGBUS000000000001"   # in department "bus"
TAXI_VIN = "LTAXI000000000001"  # in department "taxi"
STRANGER = "LSTRANGER00000001"  # in no department
PLATE = "LGBUS000000000009"     # the nameplate on file for the fleet card


def policy(check):
    p = VinPolicy()
    p.set_vins([(BUS_VIN, "bus"), (TAXI_VIN, "taxi")])
    p.set_department("site", check)
    p.set_department("bus", False)  # a fleet card is checked whatever this says
    p.set_card(ADMIN, CARD_SITE_ADMIN, "site")
    p.set_card(FLEET, CARD_FLEET, "bus", nameplate=BUS_VIN)
    return p


def session(p, card, vin, vin_delay_ms=2000):
    """Start with `card`, the vehicle reporting `vin` (None: never) after
    vin_delay_ms; run 2 minutes. Returns (gun, bills)."""
    w = SimWorld(now=F.to_secs(2024, 3, 5, 10), pile_max_w=60000, capacity_wh=300000, soc=10,
                 vin=vin, vin_delay_ms=vin_delay_ms, meter_start=100000)
    bills = []
    g = Gun(PILE, "01", w.clock, w.meter, w.contactor, w.vehicle, Tariff.flat("0001", 80000, 40000),
            on_seal=lambda s, b: bills.append(b), vin_policy=p, vin_wait_ms=30000)
    assert g.remote_start(PILE + "01240305100000" + "0001", card=card, balance=100000) == (1, 0)
    w.run(g, 120000, until=lambda: g.state == S.FINISHED)
    return g, bills


def stopped_with(p, card, vin, code):
    g, bills = session(p, card, vin)
    assert len(bills) == 1, bills
    b = bills[0]
    assert b["stop_reason"] == code, hex(b["stop_reason"])
    assert b["vin"] == (vin or "")      # the VIN read is in the bill
    assert b["total_energy"] == b["meter_stop"] - b["meter_start"]
    return b


def kept_charging(p, card, vin):
    g, bills = session(p, card, vin)
    assert g.state == S.CHARGING and bills == []
    g.remote_stop()
    assert bills[0]["vin"] == (vin or "")
    return bills[0]


def decided(check, card, vin, want):
    """One row of a table: the policy (department check `check`) decides
    `want` for `card` and `vin` alone, and a session does as it says:
    stopped with that reason, or kept charging (ALLOW). Returns the bill."""
    assert policy(check).decide(card, vin) == want
    if want == ALLOW:
        return kept_charging(policy(check), card, vin)
    return stopped_with(policy(check), card, vin, want)


# --- table 1: site-admin card, department VIN check on / off -------------------

def test_site_admin_check_off_no_vin_allows():
    decided(False, ADMIN, None, ALLOW)


def test_site_admin_check_off_unknown_vin_allows():
    decided(False, ADMIN, STRANGER, ALLOW)


def test_site_admin_check_off_does_not_wait_for_a_vin():
    assert not policy(False).needs_vin(ADMIN)
    assert policy(True).needs_vin(ADMIN)


def test_site_admin_check_on_no_vin_read_stops():
    assert policy(True).decide(ADMIN, None) == STOP_VIN_MISSING
    g, bills = session(policy(True), ADMIN, None)
    b = bills[0]
    assert b["stop_reason"] == STOP_VIN_MISSING and b["vin"] == ""
    # it waited vin_wait_ms for the BMS, then stopped
    assert b["end_time"] - b["start_time"] == 30


def test_site_admin_check_on_vin_in_a_department_allows():
    p = policy(True)
    assert p.decide(ADMIN, BUS_VIN) == ALLOW and p.decide(ADMIN, TAXI_VIN) == ALLOW
    kept_charging(p, ADMIN, TAXI_VIN)


def test_site_admin_check_on_unknown_vin_stops():
    b = decided(True, ADMIN, STRANGER, STOP_VIN_DENIED)
    assert b["end_time"] - b["start_time"] <= 3  # stopped as soon as the VIN came


# --- table 2: fleet card bound to department D ("bus") -----------------------------

def test_fleet_card_no_vin_read_stops():
    decided(False, FLEET, None, STOP_VIN_MISSING)


def test_fleet_card_vin_of_another_department_stops():
    decided(False, FLEET, TAXI_VIN, STOP_VIN_DENIED)


def test_fleet_card_vin_of_its_department_allows():
    b = decided(False, FLEET, BUS_VIN, ALLOW)
    assert not b["vin_mismatch"] and b["nameplate_vin"] == BUS_VIN


def test_fleet_card_unknown_vin_stops():
    decided(True, FLEET, STRANGER, STOP_VIN_DENIED)


# --- beyond the tables ------------------------------------------------------------

def test_card_without_a_vin_rule_is_allowed_and_its_vin_still_billed():
    assert policy(True).decide(USER, None) == ALLOW
    b = decided(True, USER, STRANGER, ALLOW)
    assert b["vin"] == STRANGER and not b["vin_mismatch"] and b["nameplate_vin"] == ""


def test_vin_not_matching_the_nameplate_is_flagged_in_the_bill():
    # The bus whose BMS reported another VIN than its plate: visible, not dropped.
    p = policy(False)
    p.set_card(FLEET, CARD_FLEET, "bus", nameplate=PLATE)
    p.add_vin(PLATE, "bus")
    b = kept_charging(p, FLEET, BUS_VIN)
    assert b["vin"] == BUS_VIN and b["nameplate_vin"] == PLATE and b["vin_mismatch"] is True


def test_vin_mismatch_is_flagged_on_a_stopped_session_too():
    p = policy(True)
    p.set_card(FLEET, CARD_FLEET, "bus", nameplate=PLATE)
    b = stopped_with(p, FLEET, STRANGER, STOP_VIN_DENIED)
    assert b["vin_mismatch"] is True and b["nameplate_vin"] == PLATE


def test_vin_codes_are_in_the_abnormal_stop_range():
    for code in (STOP_VIN_DENIED, STOP_VIN_MISSING):
        assert 0x6A <= code <= 0x8F and not S.is_start_failure(code)


def test_policy_survives_a_reboot_offline():
    with TempDir("vin") as d:
        p = policy(True)
        p.set_card(FLEET, CARD_FLEET, "bus", nameplate=PLATE)
        p.save(d + "/vins.txt")
        q = VinPolicy()
        q.load_file(d + "/vins.txt")
        for card in (ADMIN, FLEET, USER):
            for vin in (None, BUS_VIN, TAXI_VIN, STRANGER):
                assert q.decide(card, vin) == p.decide(card, vin), (card, vin)
        assert q.nameplate(FLEET) == PLATE


def test_policy_input_is_checked():
    p = VinPolicy()
    raises(ValueError, p.add_vin, "SHORT", "bus")
    raises(ValueError, p.set_card, ADMIN, 7, "site")
    raises(ValueError, p.load, "x what\n")
    p.load("v lgbus000000000001 bus\nc f0000001 2 bus\n\n")
    assert p.decide("F0000001", BUS_VIN) == ALLOW and p.decide(FLEET, " lgbus000000000001 ") == ALLOW
