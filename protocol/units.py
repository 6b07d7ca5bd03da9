# Decimal text <-> the protocol's integer units, exactly, without floats:
# "1.00" yuan at x10^4 is 10000, "0.5" kWh at x10^4 is 5000, "1000.00" yuan
# at the 0x34 balance's x10^2 is 100000. One home for the rule the MQTT
# command schema, pile-platform --cmd and the documents share
# (docs/CONVENTIONS.md: integers on the wire, decimals for people). And how
# a bill's fields read for a person, the same on the pile's console and the
# host's (field_text, stop_text). MicroPython-clean (no re, no decimal module).
from protocol.fields import iso


class UnitError(ValueError):
    """A value that is not an exact decimal in the unit's resolution."""


def parse(text, places, what="value"):
    """Decimal string -> integer in units of 10^-places. Refuses floats,
    signs, exponents, blanks and digits finer than the unit resolves
    ("0.00001" yuan at x10^4: an error, never a silent rounding)."""
    if not isinstance(text, str):
        raise UnitError("%s: give a decimal string like \"1.00\", got %r" % (what, text))
    s = text.strip()
    whole, dot, frac = s.partition(".")
    if not whole and not frac:
        raise UnitError("%s: %r is not a decimal number like \"1.00\"" % (what, text))
    for part in (whole, frac):
        for c in part:
            if c not in "0123456789":
                raise UnitError("%s: %r is not a decimal number like \"1.00\"" % (what, text))
    if len(frac) > places:
        if frac[places:].strip("0"):
            raise UnitError("%s: %r has more than %d decimal places (the unit's resolution)"
                            % (what, text, places))
        frac = frac[:places]
    while len(frac) < places:
        frac += "0"
    return int(whole or "0") * 10 ** places + int(frac or "0")


def text(value, places):
    """Integer in units of 10^-places -> decimal string: (12345, 4) -> "1.2345"."""
    p = 10 ** places
    sign = "-" if value < 0 else ""
    value = -value if value < 0 else value
    if not places:
        return sign + str(value)
    return "%s%d.%0*d" % (sign, value // p, places, value % p)


# The bill's stop reasons (0x3B stop_reason, YKC V1.6 appendix 13.1) by the
# names the MQTT bill documents carry; the rest of a range gets its generic
# name (stop_name). host/dissect.py has the spec's long descriptions.
STOP_REASONS = {
    0x40: "remote_stop", 0x41: "soc_full", 0x42: "energy_target", 0x43: "amount_target",
    0x44: "time_target", 0x45: "manual_stop",
    0x4D: "start_failed_meter_comms", 0x4E: "start_failed_balance_too_low",
    0x6D: "meter_comms_lost", 0x6E: "balance_exhausted", 0x76: "no_current",
    0x83: "power_lost", 0x90: "unknown",
    # Ours, in V1.6's reserved 0x8A..0x8F (firmware/vinauth.py): a platform
    # that knows only the range still sees an abnormal stop.
    0x8A: "vin_not_authorised", 0x8B: "vin_missing",
}


def stop_class(code):
    """The range a stop reason is in (V1.6 appendix 13.1): "finished"
    (0x40..0x49), "start_failed" (0x4A..0x69), "abnormal_stop" (0x6A..0x8F),
    or None."""
    if 0x40 <= code <= 0x49:
        return "finished"
    if 0x4A <= code <= 0x69:
        return "start_failed"
    if 0x6A <= code <= 0x8F:
        return "abnormal_stop"
    return None


def stop_name(code):
    """0x43 -> "amount_target"; a code not named: its range's name
    (an unnamed "finished" one is "unknown")."""
    name = STOP_REASONS.get(code)
    if name is not None:
        return name
    c = stop_class(code)
    return c if c in ("start_failed", "abnormal_stop") else "unknown"


def stop_text(code):
    """0x43 -> "0x43 amount_target": the code as on the wire and its name
    ("-" where there is none)."""
    if not isinstance(code, int):
        return "-"
    return "0x%02X %s" % (code, stop_name(code))


def field_text(name, v, secs=False):
    """A bill or session field as a person reads it, by the field's name:
    times in ISO 8601 (with `secs`, the protocol's seconds beside it), prices
    in yuan/kWh, energies in kWh, amounts in yuan, the stop reason named.
    Documents keep the integers; this is for screens and consoles."""
    if not isinstance(v, int):
        return str(v)
    if name.endswith("_time") or name == "time":
        return "%s (%d)" % (iso(v), v) if secs else iso(v)
    if name.endswith("price"):
        return text(v, 5) + " yuan/kWh"
    if name.endswith("energy") or name.endswith("loss") or name.startswith("meter_"):
        return text(v, 4) + " kWh"
    if name.endswith("amount") or name.endswith("fee"):
        return text(v, 4) + " yuan"
    if name == "stop_reason":
        return stop_text(v)
    return str(v)
