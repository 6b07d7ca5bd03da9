# The bridge's half of OCMF-signed bills (issue 19 item 6, docs/ocmf.md):
# a pile's 0xDB signature, the bill it signs (rebuilt into the one canonical
# payload, protocol/ocmf.py, the same text the pile signed), the pile's
# registered key (pile.<code>.ocmf_key) and the verdict: check() is pure;
# on_pile_key() and on_bill_sig() are the Bridge's methods of the same names
# (host/bridge.py binds them; kept here, beside the rules they apply).

from protocol import ocmf
from protocol import p256

from host import fastcodec
from host import schema


VERIFIED = schema.OCMF_VERIFIED
BAD_SIGNATURE = "bad_signature"       # does not verify with the registered key
UNREGISTERED_KEY = "unregistered_key"  # no key registered for the pile: not checked
NO_BILL = "no_bill"                    # its bill is not held (yet)
VERDICTS = (VERIFIED, BAD_SIGNATURE, UNREGISTERED_KEY, NO_BILL)


def spki_hex(point):
    """A 65-byte point as the site config and OCMF name keys: DER
    SubjectPublicKeyInfo, upper-case hex."""
    return p256.spki_der(point).hex().upper()


def check(sig_fields, bill_frame, key_point):
    """(record, verdict) for one 0xDB's fields against the bill frame the
    bridge holds (bytes, or None) and the registered point (or None).
    record: "OCMF|<payload>|<signature>", None when the bill is not held or
    does not decode."""
    if bill_frame is None:
        return None, NO_BILL
    try:
        bill = fastcodec.decode(bytes(bill_frame), tolerant=True).fields
        text = ocmf.payload(bill, fw=sig_fields["fw"], ids=bool(sig_fields["flags"] & 1))
    except Exception:                      # a bill read leniently, or text OCMF refuses
        return None, NO_BILL
    r = int(sig_fields["r"], 16)
    s = int(sig_fields["s"], 16)
    record = ocmf.record(text, p256.der_signature(r, s))
    if key_point is None:
        return record, UNREGISTERED_KEY
    return record, VERIFIED if p256.verify(key_point, text.encode(), r, s) else BAD_SIGNATURE


# --- the Bridge's handlers (host/bridge.py binds them as methods) ------------------

def on_pile_key(self, pile, f):
    """Bridge.on_pile_key (self: the Bridge)."""
    # 0xD9 after login: the key the pile signs with. Compared with the
    # registered one; any difference is for a person to look at (the
    # bills are kept and relayed all the same, marked by their verdict).
    got = bytes.fromhex(f.fields["key"])
    self.ocmf_announced[pile.code] = got
    reg = self.ocmf_key(pile.code)
    try:
        shown = spki_hex(got)
    except ValueError:
        shown = f.fields["key"]
    if reg is None:
        self.event(pile.code, "ocmf_key_unregistered",
                   "pile %s signs its bills with a key the site config does not register: "
                   "its signatures are not checked; register it as pile.%s.ocmf_key after "
                   "comparing it with the pile's console ('key')" % (pile.code, pile.code),
                   key=shown)
    elif reg != got:
        self.event(pile.code, "ocmf_key_mismatch",
                   "pile %s announces a signing key other than the one registered: its bills' "
                   "signatures will not verify (a replaced controller, or not this pile)"
                   % pile.code, key=shown, registered=spki_hex(reg))

async def on_bill_sig(self, conn, f):
    """Bridge.on_bill_sig (self: the Bridge)."""
    pile = conn.pile
    v = f.fields
    serial = v["serial"]
    raw = self._raw(f)
    bill = await self.store.bill(serial)
    frame = bill.frame if bill is not None and bill.pile == pile.code else None
    key = self.ocmf_key(pile.code)
    record, verdict = check(v, frame, key)
    kind, b = await self._completion(conn, pile, serial, self.store.add_sig(
        pile.code, serial, raw, record, spki_hex(key) if key else None, verdict),
        "OCMF signature (0xDB)", "bill_sig", raw)
    if kind in (None, "conflict", "same"):
        return
    self.stats["ocmf_" + verdict] = self.stats.get("ocmf_" + verdict, 0) + 1
    if verdict == BAD_SIGNATURE:
        self.event(pile.code, "ocmf_bad_signature",
                   "bill %s: its OCMF signature does not verify with the pile's registered key; "
                   "the bill is kept and relayed as it is" % serial, serial=serial, record=record)
    if b is None:
        return
    if b.confirmed_at is None:
        # Published without it (after bills.sig_wait_s): again now, signed.
        self.outbox.kick(pile.code, republish=b.id if b.published_at is not None else None)
    else:
        # The platform already took the bill: the record comes as an event.
        self.event(pile.code, "ocmf_record", "bill %s's OCMF record came after the platform "
                   "confirmed the bill" % serial, serial=serial,
                   ocmf=schema.ocmf_json(b))
