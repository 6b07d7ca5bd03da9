# The bill as both ends hold it: the payload the pile seals and sends (the
# 0x3B body then our 0xEB fee split with its MAC), the very bytes the
# platform checks the MAC on. The period names are protocol/fields.py's; the
# reconciliation that checks a bill's sums is protocol/reconcile.py.
try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from protocol import codec
from protocol.fields import PERIODS5

_EXTRA = codec.layout_named("bill_extra")
_ZERO_MAC = "0" * 64


def payload(bill, mac_key=None):
    """A sealed bill's bytes: 0x3B body then 0xEB body. With a key,
    bill_extra.mac = sign.bill_mac(key, 0x3B body): HMAC-SHA256 under
    HMAC-SHA256(key, b"pc/bill") of the body bytes exactly as sent (either
    layout); docs/protocol.md "Bill MAC" tells the platform how to check it."""
    body = codec.encode(0x3B, bill)[6:-2]
    x = {"serial": bill["serial"], "model": bill.get("model", "0000"),
         "vin_mismatch": 1 if bill.get("vin_mismatch") else 0,
         "nameplate_vin": bill.get("nameplate_vin", ""), "mac": _ZERO_MAC}
    for p in PERIODS5:
        x[p + "_energy_fee"] = bill.get(p + "_energy_fee", 0)
        x[p + "_service_fee"] = bill.get(p + "_service_fee", 0)
    if mac_key:
        from protocol.sign import bill_mac
        x["mac"] = binascii.hexlify(bill_mac(mac_key, body)).decode().upper()
    return body + codec.encode_body(_EXTRA, x)


def split(payload):
    """(0x3B body, 0xEB body) of a sealed bill's bytes."""
    n = len(payload) - _EXTRA.size
    return payload[:n], payload[n:]
