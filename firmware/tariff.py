# Time-of-use pricing: the YKC tariff model and a per-session accumulator,
# in integers only (docs/pricing.md has the rules and worked examples).
#
# Units (docs/CONVENTIONS.md): energy x10^4 kWh ("e4kwh"), prices x10^5
# yuan/kWh, money x10^4 yuan. A day is 48 half-hour slots; each slot names a
# price class: 0 sharp, 1 peak, 2 flat, 3 valley and, in the five-class
# variant, 4 deep (deep valley).
#
# The rules, in one place:
# - fee(e, p) is the ONLY rounding in pricing: money = e*p/10^5, half up.
# - Energy is attributed to the slot of the wall time at which the register
#   showed it: slot = (now % 86400) // 1800, across slot boundaries and midnight.
# - Money is computed per class on the class's cumulative energy, never per
#   sample, so the totals are sums of the class figures by construction.
# - A running session keeps the tariff it started with (a snapshot); a tariff
#   that arrives mid-session applies from the next session.
import struct

from protocol.fields import PERIODS5

from protocol import const

SHARP = const(0)
PEAK = const(1)
FLAT = const(2)
VALLEY = const(3)
DEEP = const(4)
CLASSES = PERIODS5                 # the class names (protocol/fields.py)
SLOTS = const(48)

_SLOT_SECS = const(1800)
_DAY_SECS = const(86400)
_U32 = 0xFFFFFFFF
_MAX_LOSS_RATIO = const(100)  # percent; YKC sends a u8 and asks for 0 today
# Packed snapshot: model u16, class count, loss ratio %, free flag, then per
# class (energy u32, service u32), then 48 slot bytes.
_HEAD = "<HBBB"
_HEAD_SIZE = const(5)


class TariffError(ValueError):
    """A tariff that cannot be used to bill (the message says which field)."""


def fee(e4kwh, price_e5):
    """Money (x10^4 yuan) for `e4kwh` (x10^4 kWh) at `price_e5` (x10^5 yuan/kWh).

    e*p is in x10^9 yuan, so money x10^4 = e*p / 10^5, rounded half up. This
    is the one rounding rule of every bill figure. Arguments are >= 0."""
    return (e4kwh * price_e5 + 50000) // 100000


def loss_energy(e4kwh, ratio):
    """Loss-adjusted energy ("计损电量") for a loss ratio in percent, half up.
    Ratio 0 (what the YKC platform requires today) gives `e4kwh` itself."""
    if not ratio:
        return e4kwh
    return e4kwh + (e4kwh * ratio + 50) // 100


def slot_of(now):
    """Half-hour slot 0..47 of wall time `now` (local seconds since 2000)."""
    return (now % _DAY_SECS) // _SLOT_SECS


def _u32(v, what):
    if not isinstance(v, int) or v < 0 or v > _U32:
        raise TariffError("%s: %r is not an unsigned 32-bit integer" % (what, v))
    return v


class Tariff:
    """One YKC tariff model; immutable once built (sessions hold a reference
    as their snapshot).

    model: 4-digit str ("0100"). prices: 4 or 5 (energy, service) pairs in
    x10^5 yuan/kWh, index = class (sharp, peak, flat, valley[, deep]); a class
    no slot uses may be None. slots: 48 class numbers. loss_ratio: percent.
    free: must be True for a class in use to have energy price 0 (a group
    price of 0 made a bus fleet charge for free in the field: zero is never
    taken as a default, only as a stated decision).
    """

    __slots__ = ("model", "energy", "service", "slots", "loss_ratio", "free", "n")

    def __init__(self, model, prices, slots, loss_ratio=0, free=False):
        if isinstance(model, int):
            model = "%04d" % model
        if not isinstance(model, str) or len(model) != 4 or not _digits(model):
            raise TariffError("model: %r is not a 4-digit number" % (model,))
        n = len(prices)
        if n != 4 and n != 5:
            raise TariffError("prices: %d classes given, 4 or 5 (with deep valley) expected" % n)
        if len(slots) != SLOTS:
            raise TariffError("slots: %d given, 48 half-hour slots expected" % len(slots))
        used = [False] * n
        for i in range(SLOTS):
            c = slots[i]
            if not isinstance(c, int) or c < 0 or c >= n:
                raise TariffError("slots[%d] (%s): class %r has no prices (classes 0..%d)"
                                  % (i, _hhmm(i), c, n - 1))
            used[c] = True
        energy = []
        service = []
        for c in range(n):
            p = prices[c]
            if p is None:
                if used[c]:
                    raise TariffError("%s: used by a slot but has no prices" % CLASSES[c])
                p = (0, 0)
            e = _u32(p[0], CLASSES[c] + " energy price")
            s = _u32(p[1], CLASSES[c] + " service price")
            if used[c] and e == 0 and not free:
                raise TariffError("%s: energy price 0 in a used class; pass free=True if "
                                  "charging is meant to be free" % CLASSES[c])
            energy.append(e)
            service.append(s)
        if not isinstance(loss_ratio, int) or loss_ratio < 0 or loss_ratio > _MAX_LOSS_RATIO:
            raise TariffError("loss_ratio: %r is not a percentage 0..100" % (loss_ratio,))
        self.model = model
        self.energy = tuple(energy)
        self.service = tuple(service)
        self.slots = bytes(slots)
        self.loss_ratio = loss_ratio
        self.free = bool(free)
        self.n = n

    @staticmethod
    def flat(model, energy_price, service_price, loss_ratio=0, free=False):
        """A "group price": one price all day (every slot in class flat)."""
        prices = [None, None, (energy_price, service_price), None]
        return Tariff(model, prices, [FLAT] * SLOTS, loss_ratio, free)

    @property
    def deep(self):
        return self.n == 5

    def class_at(self, now):
        return self.slots[slot_of(now)]

    def unit_price(self, c):
        """The bill's per-class "unit price": energy + service, x10^5 yuan/kWh."""
        return self.energy[c] + self.service[c]

    def __eq__(self, other):
        return (isinstance(other, Tariff) and self.model == other.model
                and self.energy == other.energy and self.service == other.service
                and self.slots == other.slots and self.loss_ratio == other.loss_ratio
                and self.free == other.free)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Tariff(%s, %d classes)" % (self.model, self.n)

    # --- wire (0x0A / 0x58 field dicts from protocol/) and snapshots ----------

    @staticmethod
    def from_frame(f, free=False):
        """From a decoded 0x0A / 0x58 body (field names of protocol/frames.py);
        a "deep_energy_price" / "deep_service_price" pair makes it 5-class."""
        prices = []
        for c in range(5):
            k = CLASSES[c]
            if c == DEEP and (k + "_energy_price") not in f:
                break
            prices.append((f[k + "_energy_price"], f[k + "_service_price"]))
        slots = f["slots"]
        if isinstance(slots, str):
            import binascii
            try:
                slots = binascii.unhexlify(slots)
            except ValueError:
                raise TariffError("slots: %r is not hex" % (slots,))
        return Tariff(f["model"], prices, slots, f.get("loss_ratio", 0), free)

    def to_frame(self):
        """Field dict for a 0x0A / 0x58 body (without "pile")."""
        import binascii
        f = {"model": self.model, "loss_ratio": self.loss_ratio,
             "slots": binascii.hexlify(self.slots).decode().upper()}
        for c in range(self.n):
            f[CLASSES[c] + "_energy_price"] = self.energy[c]
            f[CLASSES[c] + "_service_price"] = self.service[c]
        return f

    def packed_size(self):
        return _HEAD_SIZE + 8 * self.n + SLOTS

    def pack_into(self, buf, off):
        """Write the snapshot at buf[off:]; returns the offset after it."""
        struct.pack_into(_HEAD, buf, off, int(self.model), self.n, self.loss_ratio,
                         1 if self.free else 0)
        off += _HEAD_SIZE
        for c in range(self.n):
            struct.pack_into("<II", buf, off, self.energy[c], self.service[c])
            off += 8
        buf[off:off + SLOTS] = self.slots
        return off + SLOTS

    def pack(self):
        buf = bytearray(self.packed_size())
        self.pack_into(buf, 0)
        return bytes(buf)

    @staticmethod
    def unpack_from(buf, off=0):
        """(tariff, offset after it) from a pack_into() snapshot."""
        model, n, loss, free = struct.unpack_from(_HEAD, buf, off)
        if n != 4 and n != 5:
            raise TariffError("snapshot: %d classes" % n)
        off += _HEAD_SIZE
        prices = []
        for c in range(n):
            prices.append(struct.unpack_from("<II", buf, off))
            off += 8
        if len(buf) < off + SLOTS:
            raise TariffError("snapshot: truncated slots")
        slots = bytes(buf[off:off + SLOTS])
        return Tariff("%04d" % model, prices, slots, loss, free), off + SLOTS


def _digits(s):
    for ch in s:
        if ch < "0" or ch > "9":
            return False
    return True


def _hhmm(slot):
    return "%02d:%02d" % (slot // 2, 30 * (slot % 2))


class Accumulator:
    """Per-session energy by price class, priced with one tariff snapshot.

    add(delta, now) attributes a register increase to the class of the slot
    of `now`. Every money figure is derived from the class energies on demand,
    so nothing can drift: see bill_fields()."""

    __slots__ = ("tariff", "energy")

    def __init__(self, tariff, energy=None):
        self.tariff = tariff
        if energy is None:
            self.energy = [0] * tariff.n
        else:
            if len(energy) != tariff.n:
                raise TariffError("accumulator: %d class energies for a %d-class tariff"
                                  % (len(energy), tariff.n))
            self.energy = list(energy)

    def add(self, delta, now):
        if delta < 0:
            raise ValueError("energy delta %d < 0: a bill never goes backwards" % delta)
        self.energy[self.tariff.class_at(now)] += delta

    def total(self):
        t = 0
        for e in self.energy:
            t += e
        return t

    def loss(self, c):
        return loss_energy(self.energy[c], self.tariff.loss_ratio)

    def total_loss(self):
        t = 0
        for c in range(self.tariff.n):
            t += self.loss(c)
        return t

    def _class_amount(self, c, e):
        t = self.tariff
        l = loss_energy(e, t.loss_ratio)
        return fee(l, t.energy[c]) + fee(l, t.service[c])

    def fees(self, c):
        """(energy fee, service fee) of class c, x10^4 yuan."""
        t = self.tariff
        l = self.loss(c)
        return fee(l, t.energy[c]), fee(l, t.service[c])

    def amount(self):
        """Money so far, x10^4 yuan: the sum of the class amounts."""
        a = 0
        for c in range(self.tariff.n):
            a += self._class_amount(c, self.energy[c])
        return a

    def cost_of(self, delta, now):
        """Exact increase of amount() if `delta` e4kwh were added at `now`
        (for the predictive stop): the same per-class rounding as the bill."""
        c = self.tariff.class_at(now)
        e = self.energy[c]
        return self._class_amount(c, e + delta) - self._class_amount(c, e)

    def bill_fields(self, d):
        """Write the per-class and total bill figures into dict d (keys of
        firmware/session.py's bill) and return d. Totals are sums of the class
        figures; nothing is rounded twice."""
        t = self.tariff
        te = tl = ta = tef = tsf = 0
        for c in range(t.n):
            k = CLASSES[c]
            e = self.energy[c]
            l = loss_energy(e, t.loss_ratio)
            ef = fee(l, t.energy[c])
            sf = fee(l, t.service[c])
            d[k + "_price"] = t.energy[c] + t.service[c]
            d[k + "_energy"] = e
            d[k + "_loss"] = l
            d[k + "_amount"] = ef + sf
            d[k + "_energy_fee"] = ef
            d[k + "_service_fee"] = sf
            te += e
            tl += l
            ta += ef + sf
            tef += ef
            tsf += sf
        d["total_energy"] = te
        d["total_loss"] = tl
        d["total_amount"] = ta
        d["energy_fee"] = tef
        d["service_fee"] = tsf
        d["model"] = t.model
        return d
