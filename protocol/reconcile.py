# The one reconciliation: does a bill add up? Called by the bridge (each
# bill it stores and publishes), the reference platform (each bill it takes)
# and the simulator (each bill a scenario makes), so all three name the same
# problems for the same bill. Plain integers on the raw protocol fields;
# runs on MicroPython too.
#
# The rules are docs/pricing.md's, which YKC V1.6's bill layout implies:
#   Σ period energy == total_energy == meter_stop - meter_start
#   Σ period loss   == total_loss     (the loss-adjusted energy 计损电量 is
#                                      priced per period and summed like the
#                                      energy; at loss ratio 0 it equals it)
#   Σ period amount == total_amount
#   per period, energy fee + service fee == amount (when the 0xEB fee split
#   is there; a period the bill does not have carries no fee)
#   start_time and end_time present, end_time >= start_time
#
# reconcile() returns a list of problems, each "CLASS: detail", empty when
# the bill adds up. CLASS is one of CLASSES; problem_classes() lists them.
from protocol.fields import PERIODS, PERIODS5

SEGMENTS_MISSING = "segments_missing"   # total energy > 0, no period has any
ENERGY_MISMATCH = "energy_mismatch"     # Σ period energy != total_energy
LOSS_MISMATCH = "loss_mismatch"         # Σ period loss != total_loss
AMOUNT_MISMATCH = "amount_mismatch"     # Σ period amount != total_amount
FEE_MISMATCH = "fee_mismatch"           # energy fee + service fee != amount
METER_ABSENT = "meter_absent"           # both meter readings 0, energy billed
METER_MISMATCH = "meter_mismatch"       # meter_stop - meter_start != total_energy
TIME_MISSING = "time_missing"           # start or end time absent (None)
END_BEFORE_START = "end_before_start"   # end_time < start_time
FIELD_MISSING = "field_missing"         # a figure the checks need is absent or not an int
UNDECODABLE = "undecodable"             # the bill frame does not decode: kept raw, no figures
CLASSES = (SEGMENTS_MISSING, ENERGY_MISMATCH, LOSS_MISMATCH, AMOUNT_MISMATCH, FEE_MISMATCH,
           METER_ABSENT, METER_MISMATCH, TIME_MISSING, END_BEFORE_START, FIELD_MISSING, UNDECODABLE)
# A bill read leniently (protocol/lenient.py) also carries that reading's
# problems, first: not_bcd, time_blank, ascii_escaped, extra_bytes.


def periods_of(fields):
    """The periods of a bill's fields: 5 with deep valley, else 4."""
    return PERIODS5 if "deep_energy" in fields else PERIODS


def _int(d, key, out):
    v = d.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    out.append("%s: %s" % (FIELD_MISSING, key))
    return None


def _sum(bill, periods, what, out):
    """Σ of a period figure, or None when one of them is missing."""
    s = 0
    for p in periods:
        v = _int(bill, p + "_" + what, out)
        if v is None:
            return None
        s += v
    return s


def reconcile(bill, extra=None):
    """Problems of a bill (list of "class: detail" strings, empty when it
    adds up). bill: the 0x3B fields (either layout); extra: the 0xEB fields
    (the per-period energy / service fee split) or None when there is none.
    A dict that also holds "energy_fee" and "service_fee" totals (the
    firmware's own bill) has those checked against total_amount too."""
    out = []
    periods = periods_of(bill)
    total = _int(bill, "total_energy", out)
    energy = _sum(bill, periods, "energy", out)
    if total is not None and energy is not None and energy != total:
        if energy == 0 and total > 0:
            out.append("%s: no period energy, total_energy %d" % (SEGMENTS_MISSING, total))
        else:
            out.append("%s: sum of period energy %d != total_energy %d"
                       % (ENERGY_MISMATCH, energy, total))
    for what, key, cls in (("loss", "total_loss", LOSS_MISMATCH),
                           ("amount", "total_amount", AMOUNT_MISMATCH)):
        t = _int(bill, key, out)
        s = _sum(bill, periods, what, out)
        if t is not None and s is not None and s != t:
            out.append("%s: sum of period %s %d != %s %d" % (cls, what, s, key, t))
    start = _int(bill, "meter_start", out)
    stop = _int(bill, "meter_stop", out)
    if start is not None and stop is not None and total is not None:
        if start == 0 and stop == 0 and total != 0:
            out.append("%s: meter_start and meter_stop 0, total_energy %d" % (METER_ABSENT, total))
        elif stop - start != total:
            out.append("%s: meter_stop - meter_start %d != total_energy %d"
                       % (METER_MISMATCH, stop - start, total))
    times = []
    for key in ("start_time", "end_time"):
        v = bill.get(key)
        if v is None:
            out.append("%s: %s" % (TIME_MISSING, key))
        else:
            times.append(_int(bill, key, out))
    if len(times) == 2 and None not in times and times[1] < times[0]:
        out.append("%s: end_time %d < start_time %d" % (END_BEFORE_START, times[1], times[0]))
    if extra is not None:
        _fees(bill, extra, periods, out)
    return out


def _fees(bill, extra, periods, out):
    for p in PERIODS5:
        ef = extra.get(p + "_energy_fee", 0)
        sf = extra.get(p + "_service_fee", 0)
        if not (isinstance(ef, int) and isinstance(sf, int)):
            out.append("%s: %s_energy_fee / %s_service_fee" % (FIELD_MISSING, p, p))
            continue
        if p in periods:
            amount = bill.get(p + "_amount")
            if isinstance(amount, int) and ef + sf != amount:
                out.append("%s: %s fees %d + %d != %s_amount %d"
                           % (FEE_MISMATCH, p, ef, sf, p, amount))
        elif ef or sf:
            out.append("%s: %s fees %d + %d in a bill without %s"
                       % (FEE_MISMATCH, p, ef, sf, p))
    ef = extra.get("energy_fee")
    sf = extra.get("service_fee")
    total = bill.get("total_amount")
    if isinstance(ef, int) and isinstance(sf, int) and isinstance(total, int) and ef + sf != total:
        out.append("%s: energy_fee %d + service_fee %d != total_amount %d"
                   % (FEE_MISMATCH, ef, sf, total))


def undecodable(error):
    """The one problem of a bill kept raw because it does not decode."""
    return "%s: %s" % (UNDECODABLE, error)


def bill_problems(decode_problems, bill, extra=None):
    """Everything wrong with a bill, as the bridge publishes it and the
    platform stores it: its lenient reading's problems, then reconcile()'s."""
    return list(decode_problems or ()) + reconcile(bill, extra)


def problem_classes(problems):
    """The classes of reconcile()'s problems, in order, each once."""
    out = []
    for p in problems:
        c = p.split(":", 1)[0]
        if c not in out:
            out.append(c)
    return out
