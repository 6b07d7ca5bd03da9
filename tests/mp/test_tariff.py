# Time-of-use pricing (firmware/tariff.py), under CPython and MicroPython.
# Field cases: shared/context/field-cases.md §4 (bills that do not add up).
from firmware import tariff as T
from firmware.tariff import Accumulator, Tariff, TariffError, fee
from protocol import fields as F
from tests.mp.util import raises

DAY = F.to_secs(2024, 3, 5)  # a local midnight


def five_class():
    # sharp 10:00-12:00, peak 08:00-10:00 and 18:00-22:00, flat 12:00-18:00,
    # valley 22:00-24:00 and 06:00-08:00, deep 00:00-06:00.
    slots = [T.DEEP] * 12 + [T.VALLEY] * 4 + [T.PEAK] * 4 + [T.SHARP] * 4 + [T.FLAT] * 12 \
        + [T.PEAK] * 8 + [T.VALLEY] * 4
    prices = [(123457, 80003), (101111, 60007), (70001, 40009), (33333, 20001), (21111, 10003)]
    return Tariff("0105", prices, slots)


def check_adds_up(bill, n, meter_delta=None):
    te = tl = ta = tef = tsf = 0
    for c in range(n):
        k = T.CLASSES[c]
        assert bill[k + "_amount"] == bill[k + "_energy_fee"] + bill[k + "_service_fee"]
        te += bill[k + "_energy"]
        tl += bill[k + "_loss"]
        ta += bill[k + "_amount"]
        tef += bill[k + "_energy_fee"]
        tsf += bill[k + "_service_fee"]
    assert bill["total_energy"] == te
    assert bill["total_loss"] == tl
    assert bill["total_amount"] == ta == tef + tsf
    assert bill["energy_fee"] == tef and bill["service_fee"] == tsf
    if meter_delta is not None:
        assert te == meter_delta


def test_fee_rounds_half_up_in_one_place():
    assert fee(0, 123456) == 0
    assert fee(10000, 100000) == 10000          # 1 kWh at 1 yuan = 1 yuan
    assert fee(1, 50000) == 1                   # 0.5 -> 1 (half up)
    assert fee(1, 49999) == 0                   # 0.49999 -> 0
    assert fee(3, 50000) == 2                   # 1.5 -> 2
    assert fee(12345, 123457) == 15241          # 15240.76... -> 15241


def test_five_period_tariff_bill_adds_up():
    # The field report: a 5-period tariff whose 5th period was hidden, totals
    # off. Every class gets energy, at odd prices that force rounding.
    t = five_class()
    acc = Accumulator(t)
    now = DAY
    meter = 0
    for i in range(48 * 7):  # one day, a reading every ~4 min 17 s
        d = 100 * (1 + (i * 7) % 13)
        acc.add(d, now)
        meter += d
        now += 257
    bill = acc.bill_fields({})
    assert "deep_energy" in bill and bill["deep_energy"] > 0
    for k in T.CLASSES:
        assert bill[k + "_energy"] > 0, k
    check_adds_up(bill, 5, meter)
    assert bill["model"] == "0105"


def test_group_price_is_one_class_all_day():
    # A flat "group price" (the bus fleet's 0.40 service fee) is a model
    # whose 48 slots are all one class: its energy lands in flat, not lost.
    t = Tariff.flat("0007", 80000, 40000)
    acc = Accumulator(t)
    acc.add(123400, DAY + 3600)
    acc.add(5600, DAY + 23 * 3600 + 1799)
    bill = acc.bill_fields({})
    assert bill["flat_energy"] == 129000 == bill["total_energy"]
    assert bill["sharp_energy"] == bill["peak_energy"] == bill["valley_energy"] == 0
    assert bill["flat_price"] == 120000
    assert bill["flat_service_fee"] == 51600  # 12.9 kWh * 0.40
    check_adds_up(bill, 4)


def test_zero_group_price_is_refused_unless_declared_free():
    # Field case: a misconfigured group price of 0 made sessions free.
    e = raises(TariffError, Tariff.flat, "0008", 0, 0)
    assert "flat" in str(e) and "free" in str(e)
    t = Tariff.flat("0008", 0, 0, free=True)
    acc = Accumulator(t)
    acc.add(10000, DAY)
    assert acc.amount() == 0
    # A zero service fee is an ordinary tariff, a zero energy price is not.
    Tariff.flat("0009", 70000, 0)
    # Unused classes may be zero or absent.
    Tariff("0010", [(0, 0), None, (70000, 1), None], [T.FLAT] * 48)


def test_slot_class_without_prices_is_refused():
    e = raises(TariffError, Tariff, "0011", [(1, 1)] * 4, [T.DEEP] + [0] * 47)
    assert "slots[0]" in str(e) and "00:00" in str(e)
    e = raises(TariffError, Tariff, "0011", [None, (1, 1), (1, 1), (1, 1)], [0] * 48)
    assert "sharp" in str(e)
    raises(TariffError, Tariff, "11", [(1, 1)] * 4, [0] * 48)
    raises(TariffError, Tariff, "0011", [(1, 1)] * 3, [0] * 48)
    raises(TariffError, Tariff, "0011", [(1, 1)] * 4, [0] * 47)
    raises(TariffError, Tariff, "0011", [(1, -1)] * 4, [0] * 48)
    raises(TariffError, Tariff, "0011", [(1, 1)] * 4, [0] * 48, 101)


def test_energy_is_attributed_to_the_slot_of_consumption_across_midnight():
    t = five_class()
    acc = Accumulator(t)
    acc.add(100, DAY - 1)            # 23:59:59 -> valley
    acc.add(200, DAY)                # 00:00:00 -> deep
    acc.add(300, DAY + 10 * 3600 - 1)  # 09:59:59 -> peak
    acc.add(400, DAY + 10 * 3600)    # 10:00:00 -> sharp
    assert acc.energy == [400, 300, 0, 100, 200]
    assert T.slot_of(DAY - 1) == 47 and T.slot_of(DAY + 1800) == 1


def test_per_class_rounding_keeps_sums_exact_where_per_sample_rounding_drifts():
    # Pricing each 0.01 kWh sample separately and summing drifts from the
    # total priced once; pricing per class never does (docs/pricing.md).
    t = Tariff.flat("0012", 123457, 0)
    acc = Accumulator(t)
    per_sample = 0
    for i in range(1000):
        acc.add(100, DAY + i)
        per_sample += fee(100, 123457)
    assert acc.amount() == fee(100000, 123457) == 123457
    assert per_sample == 123000  # what per-sample rounding would bill
    check_adds_up(acc.bill_fields({}), 4, 100000)


def test_cost_of_is_the_exact_increase_of_the_bill():
    t = five_class()
    acc = Accumulator(t)
    now = DAY + 11 * 3600  # sharp
    acc.add(777, now)
    for d in (0, 1, 99, 100, 12345):
        before = acc.amount()
        c = acc.cost_of(d, now)
        probe = Accumulator(t, acc.energy)
        probe.add(d, now)
        assert probe.amount() - before == c


def test_loss_ratio_adjusts_loss_energy_and_money():
    t = Tariff.flat("0013", 100000, 0, loss_ratio=5)
    acc = Accumulator(t)
    acc.add(10000, DAY)
    bill = acc.bill_fields({})
    assert bill["flat_energy"] == 10000 and bill["flat_loss"] == 10500
    assert bill["flat_amount"] == 10500  # YKC: money on the loss-adjusted energy
    check_adds_up(bill, 4, 10000)


def test_tariff_snapshot_and_frame_round_trip():
    t = five_class()
    raw = t.pack()
    assert len(raw) == t.packed_size() == 5 + 40 + 48
    u, off = Tariff.unpack_from(b"xx" + raw, 2)
    assert u == t and off == 2 + len(raw)
    f = Tariff.flat("0100", 80000, 40000).to_frame()
    assert f["flat_energy_price"] == 80000 and len(f["slots"]) == 96
    assert Tariff.from_frame(f) == Tariff.flat("0100", 80000, 40000)
    f5 = t.to_frame()
    assert Tariff.from_frame(f5) == t
    free = Tariff.flat("0101", 0, 0, free=True)
    assert Tariff.unpack_from(free.pack())[0].free


def test_accumulator_refuses_negative_energy():
    acc = Accumulator(five_class())
    raises(ValueError, acc.add, -100, DAY)


# --- killers of cosmic-ray survivors (docs/testing.md, firmware/tariff.py) -------------

def test_loss_energy_rounds_half_up_at_exactly_one_half():
    # 1 e4kWh at 50 %: 0.5 of loss rounds up; at 49 % it does not.
    assert T.loss_energy(1, 50) == 2 and T.loss_energy(1, 49) == 1
    assert T.loss_energy(3, 50) == 5             # 1.5 -> 2
    assert T.loss_energy(12345, 0) == 12345


def test_a_tariff_built_without_a_loss_ratio_has_none():
    t = Tariff("0100", [(1, 1)] * 4, [0] * 48)
    assert t.loss_ratio == 0
    acc = Accumulator(t)
    acc.add(10000, DAY)
    assert acc.total_loss() == 10000 and acc.loss(0) == 10000


def test_total_loss_adds_every_class():
    t = five_class()
    acc = Accumulator(t, [100, 200, 300, 400, 500])
    assert acc.total_loss() == 1500
    t5 = Tariff("0105", [(1, 1)] * 5, [0] * 48, loss_ratio=10)
    assert Accumulator(t5, [100, 200, 300, 400, 500]).total_loss() == 1650


def test_an_integer_model_is_written_with_four_digits():
    assert Tariff(7, [(1, 1)] * 4, [0] * 48).model == "0007"
    assert repr(Tariff(7, [(1, 1)] * 4, [0] * 48)) == "Tariff(0007, 4 classes)"


def test_each_refusal_names_what_is_wrong():
    p4 = [(1, 1)] * 4
    e = raises(TariffError, Tariff, "0100", p4, [0] * 47)
    assert str(e) == "slots: 47 given, 48 half-hour slots expected"
    e = raises(TariffError, Tariff, "0100", p4, [0] * 47 + [4])
    assert str(e) == "slots[47] (23:30): class 4 has no prices (classes 0..3)"
    e = raises(TariffError, Tariff, "0100", p4, [0] * 3 + [-1] + [0] * 44)
    assert str(e) == "slots[3] (01:30): class -1 has no prices (classes 0..3)"
    e = raises(TariffError, Tariff, "0100", p4, [0] * 5 + [7] + [0] * 42)
    assert str(e) == "slots[5] (02:30): class 7 has no prices (classes 0..3)"
    for bad in (-1, 101, "5"):
        e = raises(TariffError, Tariff, "0100", p4, [0] * 48, loss_ratio=bad)
        assert str(e) == "loss_ratio: %r is not a percentage 0..100" % (bad,)
    f = Tariff.flat("0100", 1, 1).to_frame()
    f["slots"] = "zz" * 48
    e = raises(TariffError, Tariff.from_frame, f)
    assert str(e) == "slots: %r is not hex" % ("zz" * 48,)


def test_the_deep_valley_is_the_fifth_class_only():
    assert five_class().deep
    assert not Tariff.flat("0100", 1, 1).deep


def test_tariffs_are_equal_only_field_for_field():
    t = five_class()
    p = [(123457, 80003), (101111, 60007), (70001, 40009), (33333, 20001), (21111, 10003)]
    slots = list(t.slots)
    assert t == Tariff("0105", p, slots) and not (t != Tariff("0105", p, slots))
    assert t != Tariff("0106", p, slots) and t != Tariff("0104", p, slots)
    assert t != Tariff("0105", p, slots, loss_ratio=1)
    assert Tariff("0105", p, slots, loss_ratio=1) != t
    other = list(slots)
    other[0] = T.VALLEY
    assert t != Tariff("0105", p, other)
    assert t != "0105"


def test_a_four_class_frame_stops_at_the_valley():
    f = Tariff.flat("0100", 80000, 40000).to_frame()
    assert Tariff.from_frame(f).n == 4
    assert "deep_energy_price" not in f
    f["deep_service_price"] = 5                 # half a pair: still four classes
    assert Tariff.from_frame(f).n == 4


def test_a_snapshot_packs_to_its_end_and_refuses_what_is_not_one():
    t = five_class()
    buf = bytearray(3 + t.packed_size() + 4)
    assert t.pack_into(buf, 3) == 3 + t.packed_size()
    raw = t.pack()
    for n in (3, 6, 0):
        bad = bytearray(raw)
        bad[2] = n
        e = raises(TariffError, Tariff.unpack_from, bytes(bad))
        assert str(e) == "snapshot: %d classes" % n
    e = raises(TariffError, Tariff.unpack_from, raw[:-1])
    assert str(e) == "snapshot: truncated slots"
    assert Tariff.unpack_from(raw + b"\x00")[0] == t         # longer: the rest is not ours
    four = Tariff.flat("0100", 1, 1)
    assert Tariff.unpack_from(four.pack())[0] == four


def test_an_accumulator_refuses_energies_for_another_tariff():
    e = raises(TariffError, Accumulator, five_class(), [0, 0, 0, 0])
    assert str(e) == "accumulator: 4 class energies for a 5-class tariff"


def test_prices_are_unsigned_32_bit_integers_up_to_the_last_value():
    top = 0xFFFFFFFF
    t = Tariff("0100", [(top, top)] * 4, [0] * 48)
    assert t.energy[0] == top and t.unit_price(0) == 2 * top
    for bad in (top + 1, -1):
        e = raises(TariffError, Tariff, "0100", [(bad, 1)] * 4, [0] * 48)
        assert str(e) == "sharp energy price: %r is not an unsigned 32-bit integer" % (bad,)
    e = raises(TariffError, Tariff, "0100", [(1, top + 1)] * 4, [0] * 48)
    assert str(e) == "sharp service price: %r is not an unsigned 32-bit integer" % (top + 1,)


def test_the_unit_price_is_energy_plus_service():
    t = five_class()
    assert [t.unit_price(c) for c in range(5)] == [203460, 161118, 110010, 53334, 31114]


def test_a_model_is_exactly_four_digits():
    p4 = [(1, 1)] * 4
    for bad in ("010", "01000", "01a0", "0/00", ":100", "010:"):
        e = raises(TariffError, Tariff, bad, p4, [0] * 48)
        assert str(e) == "model: %r is not a 4-digit number" % (bad,)
    assert Tariff("0919", p4, [0] * 48).model == "0919"


def test_four_or_five_classes_and_48_slots_nothing_else():
    for n in (3, 6):
        e = raises(TariffError, Tariff, "0100", [(1, 1)] * n, [0] * 48)
        assert str(e) == "prices: %d classes given, 4 or 5 (with deep valley) expected" % n
    e = raises(TariffError, Tariff, "0100", [(1, 1)] * 4, [0] * 49)
    assert str(e) == "slots: 49 given, 48 half-hour slots expected"


def test_a_class_without_prices_is_refused_when_used_and_zero_when_not():
    e = raises(TariffError, Tariff, "0100", [None, (1, 1), (1, 1), (1, 1)], [0] * 48)
    assert str(e) == "sharp: used by a slot but has no prices"
    t = Tariff.flat("0100", 7, 3)
    assert t.energy == (0, 0, 7, 0) and t.service == (0, 0, 3, 0)
    e = raises(TariffError, Tariff, "0100", [(0, 5)] * 4, [1] * 48)
    assert str(e) == ("peak: energy price 0 in a used class; pass free=True if "
                      "charging is meant to be free")
    assert Tariff("0100", [(0, 5)] * 4, [1] * 48, free=True).free


def test_a_frame_without_a_loss_ratio_has_none():
    f = Tariff.flat("0100", 80000, 40000, loss_ratio=3).to_frame()
    assert Tariff.from_frame(f).loss_ratio == 3
    del f["loss_ratio"]
    assert Tariff.from_frame(f).loss_ratio == 0


def test_a_snapshot_writes_its_own_bytes_only():
    t = Tariff.flat("0101", 0, 0, free=True)
    raw = t.pack()
    assert raw[4] == 1 and raw[-48:] == t.slots
    buf = bytearray(b"\xAA" * 200)
    end = t.pack_into(buf, 100)
    assert len(buf) == 200 and end == 100 + len(raw)
    assert buf[100:end] == raw and buf[:100] == b"\xAA" * 100 and buf[end:] == b"\xAA" * (200 - end)
    u, off = Tariff.unpack_from(bytes(buf), 100)
    assert u == t and off == end


def test_energy_never_goes_backwards_by_even_one():
    acc = Accumulator(five_class())
    e = raises(ValueError, acc.add, -1, DAY)
    assert str(e) == "energy delta -1 < 0: a bill never goes backwards"
    acc.add(0, DAY)
    acc.add(7, DAY)
    assert acc.total() == 7 and Accumulator(five_class()).total() == 0
