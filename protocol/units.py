# Decimal text <-> the protocol's integer units, exactly, without floats:
# "1.00" yuan at x10^4 is 10000, "0.5" kWh at x10^4 is 5000, "1000.00" yuan
# at the 0x34 balance's x10^2 is 100000. One home for the rule the MQTT
# command schema, pile-platform --cmd and the documents share
# (docs/CONVENTIONS.md: integers on the wire, decimals for people).
# MicroPython-clean (no re, no decimal module).


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
