# The one reconciliation (protocol/reconcile.py): a bill whose figures obey
# docs/pricing.md has no problem, any single figure changed is named by its
# class, and the bridge and the platform name the same problems for the same
# bill (field-cases.md §4: reports whose totals were not their periods' sum).
import types

from hypothesis import given, settings, strategies as st

from host import platform as P
from host import schema
from sim.testkit import make_bill, make_extra
from protocol import codec
from protocol import reconcile as R
from protocol.bill import payload, split
from protocol.fields import PERIODS, PERIODS5

PILE = "55031412782305"


@st.composite
def sound_bills(draw):
    """(0x3B fields, 0xEB fields) that add up: loss-adjusted energy at a
    loss ratio, each period's amount its energy fee + service fee."""
    periods = PERIODS5 if draw(st.booleans()) else PERIODS
    ratio = draw(st.integers(0, 100))
    start = draw(st.integers(0, 3000000000))
    meter = draw(st.integers(1, 10 ** 9))
    b = {"start_time": start, "end_time": start + draw(st.integers(0, 10 ** 6)),
         "meter_start": meter, "total_energy": 0, "total_loss": 0, "total_amount": 0}
    x = {}
    for p in periods:
        e = draw(st.integers(0, 10 ** 7))
        ef = draw(st.integers(0, 10 ** 7))
        sf = draw(st.integers(0, 10 ** 7))
        b[p + "_energy"] = e
        b[p + "_loss"] = e + (e * ratio + 50) // 100
        b[p + "_amount"] = ef + sf
        x[p + "_energy_fee"] = ef
        x[p + "_service_fee"] = sf
        b["total_energy"] += e
        b["total_loss"] += b[p + "_loss"]
        b["total_amount"] += ef + sf
    b["meter_stop"] = meter + b["total_energy"]
    return b, x


def classes(bill, extra=None):
    return R.problem_classes(R.reconcile(bill, extra))


@given(sound_bills())
def test_a_bill_that_follows_the_pricing_rules_has_no_problem(bx):
    b, x = bx
    assert R.reconcile(b, x) == []
    assert R.reconcile(b) == []


@settings(max_examples=300)
@given(sound_bills(), st.integers(1, 10 ** 6), st.sampled_from(("total_energy", "total_loss",
       "total_amount", "meter_start", "meter_stop", "period_energy", "period_loss",
       "period_amount", "fee", "end_time")), st.data())
def test_one_figure_changed_is_named_by_its_class(bx, d, what, data):
    b, x = bx
    periods = PERIODS5 if "deep_energy" in b else PERIODS
    p = data.draw(st.sampled_from(periods))
    if what == "total_energy":
        b["total_energy"] += d
        c = classes(b, x)
        assert c[-1] == R.METER_MISMATCH and c[0] in (R.ENERGY_MISMATCH, R.SEGMENTS_MISSING)
        assert len(c) == 2
    elif what == "total_loss":
        b["total_loss"] += d
        assert classes(b, x) == [R.LOSS_MISMATCH]
    elif what == "total_amount":
        b["total_amount"] += d
        assert classes(b, x) == [R.AMOUNT_MISMATCH]
    elif what in ("meter_start", "meter_stop"):
        b[what] += d
        assert classes(b, x) == [R.METER_MISMATCH]
    elif what == "period_energy":
        b[p + "_energy"] += d
        assert classes(b, x) == [R.ENERGY_MISMATCH]
    elif what == "period_loss":
        b[p + "_loss"] += d
        assert classes(b, x) == [R.LOSS_MISMATCH]
    elif what == "period_amount":
        b[p + "_amount"] += d
        assert classes(b, x) == [R.AMOUNT_MISMATCH, R.FEE_MISMATCH]
        assert classes(b) == [R.AMOUNT_MISMATCH]         # no fee split: nothing to compare
    elif what == "fee":
        x[p + "_service_fee"] += d
        assert classes(b, x) == [R.FEE_MISMATCH]
        assert any(p + " fees" in s for s in R.reconcile(b, x))
    else:
        b["end_time"] = b["start_time"] - d
        assert classes(b, x) == [R.END_BEFORE_START]


@given(sound_bills())
def test_every_problem_is_one_of_the_named_classes(bx):
    b, x = bx
    b["total_energy"] += 1
    b["sharp_amount"] += 1
    b["start_time"] = None
    del b["valley_loss"]
    x["deep_service_fee"] = x.get("deep_service_fee", 0) + 1
    c = classes(b, x)
    assert set(c) <= set(R.CLASSES)
    assert R.TIME_MISSING in c and R.FIELD_MISSING in c and R.FEE_MISMATCH in c


def test_the_fields_total_without_segments_bill_is_segments_missing_not_a_mere_mismatch():
    b = make_bill(PILE, 1)
    for p in PERIODS:
        b[p + "_energy"] = 0
        b[p + "_loss"] = 0
    assert classes(b) == [R.SEGMENTS_MISSING]


def test_a_pile_without_meter_readings_is_meter_absent():
    b = make_bill(PILE, 1)
    b["meter_start"] = b["meter_stop"] = 0
    assert classes(b) == [R.METER_ABSENT]
    b["total_energy"] = 0
    for p in PERIODS:
        b[p + "_energy"] = b[p + "_loss"] = 0
    assert R.METER_ABSENT not in classes(b)        # an empty session: 0 -> 0 is right


def test_loss_energy_that_does_not_add_up_is_a_problem_for_every_caller():
    # The three old copies disagreed: only the bridge summed loss energy.
    b = make_bill(PILE, 1)
    b["peak_loss"] += 7
    assert classes(b) == [R.LOSS_MISMATCH]


def test_fees_in_a_period_the_bill_does_not_have_do_not_add_up():
    b = make_bill(PILE, 1)
    x = make_extra(b)
    x["deep_energy_fee"] = 5
    assert classes(b, x) == [R.FEE_MISMATCH]


# --- bridge and platform ----------------------------------------------------------

def _five(b):
    b = dict(b)
    for k in ("price", "energy", "loss", "amount"):
        b["deep_" + k] = 0
    return b


def _corpus():
    """(name, 0x3B fields, 0xEB fields or None): sound bills and one of
    every problem the bridge can receive in an encodable frame."""
    def bill(**kw):
        b = make_bill(PILE, len(out) + 1)
        for k, v in kw.items():
            b[k] = v(b) if callable(v) else v
        return b
    out = []
    out.append(("sound", bill(), None))
    b = bill()
    out.append(("sound with fees", b, make_extra(b)))
    b = _five(bill())
    b["deep_energy"] = 100
    b["deep_loss"] = 100
    b["total_energy"] += 100
    b["total_loss"] += 100
    b["meter_stop"] += 100
    out.append(("sound, five periods", b, None))
    out.append(("no segments", bill(sharp_energy=0, peak_energy=0, flat_energy=0, valley_energy=0),
                None))
    out.append(("energy", bill(total_energy=lambda b: b["total_energy"] + 1), None))
    out.append(("loss", bill(total_loss=lambda b: b["total_loss"] + 3), None))
    out.append(("amount", bill(total_amount=lambda b: b["total_amount"] - 1), None))
    out.append(("meter", bill(meter_stop=lambda b: b["meter_stop"] + 100), None))
    out.append(("meter absent", bill(meter_start=0, meter_stop=0), None))
    out.append(("end before start", bill(end_time=lambda b: b["start_time"] - 60), None))
    b = bill()
    x = make_extra(b)
    x["flat_service_fee"] += 1
    out.append(("fees", b, x))
    return out


def _bridge_doc(b, x):
    bill = types.SimpleNamespace(frame=codec.encode(0x3B, b, 7), pile_seq=1,
                                 extra=codec.encode(0xEB, x, 8) if x is not None else None,
                                 received_at=1700000000.0, crc_swapped=False)
    return schema.bill_json("s1", bill, ext=x is not None)


def test_bridge_and_platform_name_the_same_problems_for_every_bill_of_the_corpus():
    seen = set()
    for name, b, x in _corpus():
        doc = _bridge_doc(b, x)
        bridge = doc["checks"]["problems"]
        assert bridge == P.reconcile(doc), name
        assert doc["checks"]["ok"] == (not bridge)
        assert (not bridge) == name.startswith("sound"), (name, bridge)
        seen.update(R.problem_classes(bridge))
    assert seen >= {R.SEGMENTS_MISSING, R.ENERGY_MISMATCH, R.LOSS_MISMATCH, R.AMOUNT_MISMATCH,
                    R.METER_MISMATCH, R.METER_ABSENT, R.END_BEFORE_START, R.FEE_MISMATCH}


def test_the_firmware_payload_reconciles_the_same_on_both_ends():
    b = make_bill(PILE, 1)
    b.update(make_extra(b))
    body, extra = split(payload(b, bytes(32)))
    f = codec.decode(codec.wrap(0x3B, body, 1)).fields
    x = codec.decode(codec.wrap(0xEB, extra, 2)).fields
    assert R.reconcile(f, x) == [] == R.reconcile(b, b)


def test_each_problem_says_exactly_what_does_not_add_up():
    # Exact messages, one bad figure at a time (the class and the figures a
    # reader needs), and the fee-split totals check: cosmic-ray survivors of
    # protocol/reconcile.py (docs/testing.md).
    v = make_bill("55031412782305", 1)
    x = make_extra(v)
    E, A = v["total_energy"], v["total_amount"]
    assert R.reconcile(v, x) == []

    def one(**ch):
        return R.reconcile(dict(v, **ch))
    assert one(sharp_energy=v["sharp_energy"] + 1) == [
        "energy_mismatch: sum of period energy %d != total_energy %d" % (E + 1, E)]
    assert one(**{p + "_energy": 0 for p in PERIODS}) == [
        "segments_missing: no period energy, total_energy %d" % E]
    assert one(sharp_loss=5) == ["loss_mismatch: sum of period loss 5 != total_loss 0"]
    assert one(peak_amount=v["peak_amount"] + 2) == [
        "amount_mismatch: sum of period amount %d != total_amount %d" % (A + 2, A)]
    assert one(meter_start=0, meter_stop=0) == [
        "meter_absent: meter_start and meter_stop 0, total_energy %d" % E]
    assert one(meter_stop=v["meter_stop"] + 3) == [
        "meter_mismatch: meter_stop - meter_start %d != total_energy %d" % (E + 3, E)]
    assert one(start_time=None) == ["time_missing: start_time"]
    assert one(end_time=None) == ["time_missing: end_time"]
    assert one(end_time=v["start_time"] - 1) == [
        "end_before_start: end_time %d < start_time %d" % (v["start_time"] - 1, v["start_time"])]
    assert one(end_time=v["start_time"]) == []                     # equal is in order
    assert one(total_energy="12") == ["field_missing: total_energy"]
    assert one(total_loss=True) == ["field_missing: total_loss"]
    assert one(flat_amount=None) == ["field_missing: flat_amount"]
    assert one(meter_start="0") == ["field_missing: meter_start"]
    assert one(start_time="noon") == ["field_missing: start_time"]
    # The fee split, per period and in total.
    bad = dict(x, sharp_energy_fee=x["sharp_energy_fee"] + 1)
    assert R.reconcile(v, bad) == ["fee_mismatch: sharp fees %d + %d != sharp_amount %d"
                                   % (x["sharp_energy_fee"] + 1, x["sharp_service_fee"], v["sharp_amount"])]
    assert R.reconcile(v, dict(x, peak_service_fee="1")) == [
        "field_missing: peak_energy_fee / peak_service_fee"]
    ef = sum(x[p + "_energy_fee"] for p in PERIODS)
    sf = sum(x[p + "_service_fee"] for p in PERIODS)
    assert ef + sf == A and ef and sf
    assert R.reconcile(v, dict(x, energy_fee=ef, service_fee=sf)) == []
    assert R.reconcile(v, dict(x, energy_fee=ef + 1, service_fee=sf)) == [
        "fee_mismatch: energy_fee %d + service_fee %d != total_amount %d" % (ef + 1, sf, A)]
    assert R.reconcile(v, dict(x, energy_fee=ef, service_fee=sf - 2)) == [
        "fee_mismatch: energy_fee %d + service_fee %d != total_amount %d" % (ef, sf - 2, A)]
    assert R.reconcile(v, dict(x, energy_fee=ef, service_fee=None)) == []   # no totals given
    assert R.problem_classes(["a: x", "b: y", "a: z", "c"]) == ["a", "b", "c"]


def test_meter_and_segment_edges_and_every_fee_problem_named():
    # Cosmic-ray run 2 survivors of protocol/reconcile.py (docs/testing.md).
    v = make_bill("55031412782305", 2)
    E = v["total_energy"]
    zeros = {p + "_energy": 0 for p in PERIODS}
    # A meter start small enough that stop % start differs from stop - start.
    assert R.reconcile(dict(v, meter_start=100, meter_stop=100 + E + 3)) == [
        "meter_mismatch: meter_stop - meter_start %d != total_energy %d" % (E + 3, E)]
    # One of the two readings 0 is a mismatch, not an absent meter.
    assert R.reconcile(dict(v, meter_start=5, meter_stop=0)) == [
        "meter_mismatch: meter_stop - meter_start -5 != total_energy %d" % E]
    assert R.reconcile(dict(v, meter_start=0, meter_stop=E + 7)) == [
        "meter_mismatch: meter_stop - meter_start %d != total_energy %d" % (E + 7, E)]
    # The smallest total with no period energy is still segments_missing.
    got = R.reconcile(dict(v, total_energy=1, **zeros))
    assert "segments_missing: no period energy, total_energy 1" in got
    # A malformed fee in one period does not hide a wrong fee in a later one.
    x = make_extra(v)
    bad = dict(x, sharp_energy_fee="1", flat_service_fee=x["flat_service_fee"] + 1)
    assert R.reconcile(v, bad) == [
        "field_missing: sharp_energy_fee / sharp_service_fee",
        "fee_mismatch: flat fees %d + %d != flat_amount %d"
        % (x["flat_energy_fee"], x["flat_service_fee"] + 1, v["flat_amount"])]
