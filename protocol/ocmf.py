# OCMF (Open Charge Metering Format) records of our bills (issue 19 item 6):
# one canonical serialiser, the same on the pile (which signs the text) and
# on the host (which rebuilds the text from the bill it holds and puts the
# pile's signature beside it). The signed bytes are exactly the payload text,
# so it is written here field by field in a fixed order, never by a JSON
# library (key order and spacing differ between interpreters).
#
#   text = payload(bill, fw="PC-0.1")          the JSON text that is signed
#   rec = record(text, sig_der, pubkey_der)     "OCMF|<text>|<signature JSON>"
#
# A pile signature is not a calibrated meter's: the readings are the pile's
# meter start and stop as it reported them in the bill, signed by the
# pile's own key; OCMF says who vouches for them, and here it is the pile,
# not a certified meter. The records carry no VIN and no card id unless
# asked (ids=True).
try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from protocol import fields as F

SA = "ECDSA-secp256r1-SHA256"
OBIS_IMPORT = "1-b:1.8.0"     # active energy delivered to the vehicle


def _time(secs):
    # OCMF time: local time with its offset and a sync state; the bill's
    # times are the pile's local (China) time, synchronised by the platform.
    y, mo, d, h, mi, s = F.to_civil(secs)[:6]
    return "%04d-%02d-%02dT%02d:%02d:%02d,000+0800 S" % (y, mo, d, h, mi, s)


def _kwh(e4):
    return "%d.%04d" % (e4 // 10000, e4 % 10000)


def _str(v):
    # Our strings are digits, hex and version text: refuse anything that
    # would need escaping or break the record's "|" framing.
    v = str(v)
    for c in v:
        if c in "\"\\|" or ord(c) < 0x20 or ord(c) > 0x7E:
            raise ValueError("OCMF text field %r: character %r not allowed" % (v, c))
    return '"' + v + '"'


def payload(bill, fw="", model="pile-companion", ids=False):
    """The OCMF payload text of a sealed bill (the fields of the 0x3B as
    decoded: serial, pile, gun, start_time, end_time, meter_start,
    meter_stop; card and vin only with ids=True)."""
    pile = bill["pile"]
    serial = bill["serial"]
    parts = [
        '"FV":"1.0"',
        '"GI":"pile-companion"',
        '"GS":' + _str(pile),
        '"GV":' + _str(fw),
        # Pagination: the trade serial's counter (its last 4 digits) under
        # the transaction prefix; the serial itself is in the tariff text.
        '"PG":"T%d"' % (int(serial[-4:]) if serial[-4:].isdigit() else 0),
        '"MV":"pile-companion"',
        '"MM":' + _str(model),
        '"MS":' + _str(pile + "-" + bill.get("gun", "01")),
        '"MF":' + _str(fw),
        '"IS":' + ("true" if ids and bill.get("card") else "false"),
        '"IL":"NONE"',
        '"IF":[]',
        '"IT":' + ('"ISO14443"' if ids and bill.get("card") else '"NONE"'),
        '"ID":' + (_str(bill["card"]) if ids and bill.get("card") else '""'),
        '"TT":' + _str("serial " + serial),
    ]
    rd = []
    for tx, t, e in (("B", bill["start_time"], bill["meter_start"]),
                     ("E", bill["end_time"], bill["meter_stop"])):
        rd.append('{"TM":"%s","TX":"%s","RV":%s,"RI":"%s","RU":"kWh","RT":"DC","EF":"","ST":"G"}'
                  % (_time(t), tx, _kwh(e), OBIS_IMPORT))
    parts.append('"RD":[' + ",".join(rd) + "]")
    return "{" + ",".join(parts) + "}"


def record(text, sig_der):
    """The OCMF record: OCMF|payload|signature (the signature's data as DER hex)."""
    return "OCMF|" + text + '|{"SA":"' + SA + '","SD":"' + \
        binascii.hexlify(bytes(sig_der)).decode().upper() + '"}'
