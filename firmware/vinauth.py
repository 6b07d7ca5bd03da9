# VIN authorisation on the pile (shared/context/field-cases.md §3): "only
# charge vehicles whose VIN is authorised" failed to stop an unauthorised bus.
#
# The platform pushes three lists; the pile keeps them (save/load) and decides
# alone, so the rule holds offline:
#   VIN -> department           (the fleet's vehicles)
#   department -> VIN check on/off
#   physical card -> (kind, department, nameplate VIN or "")
#
# Decision tables (decide(card, vin); vin None = "no VIN read"):
#
#   site-admin card (authorised for a whole site), its department's check:
#     check off                        -> allow (whatever the VIN)
#     check on, no VIN read            -> stop STOP_VIN_MISSING
#     check on, VIN in any department  -> allow
#     check on, VIN unknown            -> stop STOP_VIN_DENIED
#
#   fleet card bound to department D (always checked: the binding is the rule):
#     no VIN read                      -> stop STOP_VIN_MISSING
#     VIN in another department        -> stop STOP_VIN_DENIED
#     VIN in D                         -> allow
#     VIN unknown                      -> stop STOP_VIN_DENIED
#
#   any other card / app user: no VIN rule -> allow.
#
# GB/T DC piles learn the VIN from the BMS only after the start, so the
# session (firmware/session.py) starts, waits for the VIN (or a timeout that
# counts as "no VIN read") and stops a running session with the code above.
#
# Stop codes: YKC V1.6 has no "VIN not authorised" stop reason. We use two
# codes from the range the document reserves for further abnormal stops
# (0x8A..0x8F, "其他原因 预留"): a platform that only classifies by range still
# files the session as an abnormal stop, not a fault of the pile (0x6A "system
# lockout" would send a technician) and not a vehicle message (0x82 is the
# BMS's own refusal). Our bridge names them; docs say which is which.
#   0x8A STOP_VIN_DENIED   the VIN read is not authorised for this card
#   0x8B STOP_VIN_MISSING  the check is required and no VIN was read
#
# A VIN that differs from the nameplate VIN on file for the card is not a
# reason to stop by itself (the field case: a bus whose BMS reported another
# VIN than its plate): the session's bill carries the VIN read, the nameplate
# VIN and vin_mismatch=True, so the difference is visible, never dropped.
from firmware import fsio

from protocol import const

ALLOW = const(0)
STOP_VIN_DENIED = const(0x8A)
STOP_VIN_MISSING = const(0x8B)

CARD_SITE_ADMIN = const(1)
CARD_FLEET = const(2)


def norm_vin(vin):
    """Upper-case, stripped VIN, or None when there is none."""
    if not vin:
        return None
    v = vin.strip().upper()
    return v or None


def norm_card(card):
    """Physical card as 16 upper-case hex digits (left zero-padded)."""
    c = (card or "").strip().upper()
    return "0" * (16 - len(c)) + c


class VinPolicy:
    __slots__ = ("_vins", "_check", "_cards")

    def __init__(self):
        self._vins = {}
        self._check = {}
        self._cards = {}

    # --- what the platform pushes ------------------------------------------

    def set_vins(self, pairs):
        """Replace the VIN -> department list with `pairs` (vin, department)."""
        self._vins = {}
        for vin, dept in pairs:
            self.add_vin(vin, dept)

    def add_vin(self, vin, dept):
        v = norm_vin(vin)
        if v is None or len(v) != 17:
            raise ValueError("VIN %r is not 17 characters" % (vin,))
        self._vins[v] = str(dept)

    def set_department(self, dept, vin_check):
        self._check[str(dept)] = bool(vin_check)

    def set_card(self, card, kind, dept, nameplate=""):
        if kind != CARD_SITE_ADMIN and kind != CARD_FLEET:
            raise ValueError("card kind %r: 1 site-admin or 2 fleet" % (kind,))
        self._cards[norm_card(card)] = (kind, str(dept), norm_vin(nameplate) or "")

    def remove_card(self, card):
        self._cards.pop(norm_card(card), None)

    # --- questions the session asks ----------------------------------------

    def department_of(self, vin):
        v = norm_vin(vin)
        return self._vins.get(v) if v else None

    def nameplate(self, card):
        e = self._cards.get(norm_card(card))
        return e[2] if e else ""

    def needs_vin(self, card):
        """True when a start with this card must wait for the VIN."""
        e = self._cards.get(norm_card(card))
        if e is None:
            return False
        if e[0] == CARD_FLEET:
            return True
        return self._check.get(e[1], False)

    def decide(self, card, vin):
        """ALLOW (0) or the stop reason for a session started with `card`
        once the VIN is known (vin None: none was read)."""
        e = self._cards.get(norm_card(card))
        if e is None:
            return ALLOW
        kind, dept, _ = e
        if kind == CARD_SITE_ADMIN and not self._check.get(dept, False):
            return ALLOW
        v = norm_vin(vin)
        if v is None:
            return STOP_VIN_MISSING
        owner = self._vins.get(v)
        if owner is None:
            return STOP_VIN_DENIED
        if kind == CARD_SITE_ADMIN or owner == dept:
            return ALLOW
        return STOP_VIN_DENIED

    # --- persistence (works offline after a reboot) --------------------------
    # One record a line: "v VIN DEPT", "d DEPT 0|1", "c CARD KIND DEPT [PLATE]".

    def dump(self):
        out = []
        for v in self._vins:
            out.append("v %s %s\n" % (v, self._vins[v]))
        for d in self._check:
            out.append("d %s %d\n" % (d, 1 if self._check[d] else 0))
        for c in self._cards:
            k, d, plate = self._cards[c]
            out.append("c %s %d %s %s\n" % (c, k, d, plate) if plate else "c %s %d %s\n" % (c, k, d))
        return "".join(out)

    def load(self, text):
        vins = {}
        check = {}
        cards = {}
        n = 0
        for line in text.split("\n"):
            n += 1
            f = line.split()
            if not f:
                continue
            try:
                if f[0] == "v" and len(f) == 3 and len(f[1]) == 17:
                    vins[f[1].upper()] = f[2]
                elif f[0] == "d" and len(f) == 3:
                    check[f[1]] = f[2] == "1"
                elif f[0] == "c" and len(f) in (4, 5):
                    plate = f[4].upper() if len(f) == 5 else ""
                    cards[norm_card(f[1])] = (int(f[2]), f[3], plate)
                else:
                    raise ValueError
            except ValueError:
                raise ValueError("VIN list line %d: %r" % (n, line))
        self._vins = vins
        self._check = check
        self._cards = cards

    def save(self, path):
        """Write atomically: a temp file renamed over the old one."""
        fsio.save_atomic(fsio.OS, path, self.dump().encode())

    def load_file(self, path):
        with open(path) as f:
            self.load(f.read())
