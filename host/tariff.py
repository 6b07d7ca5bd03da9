# The tariff model as the bridge holds it (config file, platform command,
# SQLite) and its YKC form (0x0A tariff model, 0x58 tariff set).
#
#   {"model": "0001",
#    "rates": {"sharp":  {"energy": 120000, "service": 40000},   # x10^5 yuan/kWh
#              "peak":   {...}, "flat": {...}, "valley": {...}},
#    "loss_ratio": 0,
#    "slots": "333333333333333322222222..."}   # 48 half-hours, 0 sharp .. 3 valley
#
# `slots` may also be a list of 48 ints. Prices are raw integers, as on the
# wire, or decimal strings in yuan/kWh ("1.20000"), read exactly.
from protocol import units
from protocol.fields import PERIODS

_U32 = 1 << 32


class TariffError(ValueError):
    pass


def parse(obj):
    """Validate a tariff (dict from JSON or TOML); returns the normal form.
    Raises TariffError naming the first problem."""
    if not isinstance(obj, dict):
        raise TariffError("tariff must be an object")
    model = obj.get("model")
    if isinstance(model, int) and not isinstance(model, bool):
        model = "%04d" % model
    if not isinstance(model, str) or len(model) != 4 or not model.isdigit():
        raise TariffError("tariff.model must be 4 digits, got %r" % (model,))
    rates = obj.get("rates")
    if not isinstance(rates, dict):
        raise TariffError("tariff.rates must be an object with sharp, peak, flat, valley")
    out_rates = {}
    for p in PERIODS:
        r = rates.get(p)
        if not isinstance(r, dict):
            raise TariffError("tariff.rates.%s missing (needs energy and service)" % p)
        pair = {}
        for k in ("energy", "service"):
            v = r.get(k)
            if isinstance(v, str):
                # "1.20000" yuan/kWh (decimal, exact to the wire's x10^5)
                try:
                    v = units.parse(v, 5, "tariff.rates.%s.%s (yuan/kWh)" % (p, k))
                except units.UnitError as e:
                    raise TariffError(str(e))
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _U32:
                raise TariffError("tariff.rates.%s.%s must be a decimal string in yuan/kWh "
                                  "(\"1.20000\") or an int 0..2^32-1 x10^5 yuan/kWh, got %r"
                                  % (p, k, v))
            pair[k] = v
        out_rates[p] = pair
    extra = set(rates) - set(PERIODS)
    if extra:
        raise TariffError("tariff.rates: unknown period(s) %s" % ", ".join(sorted(extra)))
    loss = obj.get("loss_ratio", 0)
    if not isinstance(loss, int) or isinstance(loss, bool) or not 0 <= loss <= 255:
        raise TariffError("tariff.loss_ratio must be an int 0..255")
    slots = obj.get("slots")
    if isinstance(slots, str):
        slots = [ord(c) - 48 for c in slots]
    if not isinstance(slots, list) or len(slots) != 48:
        raise TariffError("tariff.slots must be 48 half-hour entries")
    for s in slots:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 3:
            raise TariffError("tariff.slots entries must be 0..3 (sharp, peak, flat, valley)")
    return {"model": model, "rates": out_rates, "loss_ratio": loss,
            "slots": "".join(str(s) for s in slots)}


def frame_values(tariff, pile):
    """Field values for 0x0A tariff_model / 0x58 tariff_set."""
    v = {"pile": pile, "model": tariff["model"], "loss_ratio": tariff["loss_ratio"],
         "slots": "".join("0" + c for c in tariff["slots"])}
    for p in PERIODS:
        v[p + "_energy_price"] = tariff["rates"][p]["energy"]
        v[p + "_service_price"] = tariff["rates"][p]["service"]
    return v
