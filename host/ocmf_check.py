# The bridge's half of OCMF-signed bills (issue 19 item 6, docs/ocmf.md):
# a pile's 0xDB signature, the bill it signs (rebuilt into the one canonical
# payload, protocol/ocmf.py, the same text the pile signed), the pile's
# registered key (pile.<code>.ocmf_key) and the verdict. Pure functions: the
# bridge stores the result beside the bill and publishes it.
from protocol import ocmf
from protocol import p256

from host import fastcodec

VERIFIED = "verified"
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


def document(bill):
    """The bill document's `ocmf` member (docs/mqtt.md) for a store.Bill:
    null until its signature came."""
    if getattr(bill, "ocmf_verdict", None) is None:
        return None
    return {"record": bill.ocmf_record, "verdict": bill.ocmf_verdict,
            "verified": bill.ocmf_verdict == VERIFIED, "public_key": bill.ocmf_key}
