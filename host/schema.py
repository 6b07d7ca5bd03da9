# JSON shapes the bridge publishes (docs/mqtt.md is the reference), built from
# decoded frames. Scaled values are exact decimal strings ("12.3400" kWh):
# no float ever touches a bill. The raw protocol integers travel beside them
# under "raw", and the pile's own frame in hex under "frame".
import binascii
import time

from host import fastcodec
from protocol import codec
from protocol import fields as F
from protocol import units
from protocol.frames import FRAMES
from protocol.reconcile import bill_problems, periods_of, undecodable

SCHEMA_BILL = "pc.bill/1"
SCHEMA_REALTIME = "pc.realtime/1"
SCHEMA_STATUS = "pc.status/1"
SCHEMA_EVENT = "pc.event/1"
SCHEMA_RESULT = "pc.result/1"

# From the one frame table, once (the codec looks names up by scanning its
# table, which suits a pile's heap, not a bridge's hot path): scales and
# units, field kinds, and each name's type code.
_SCALES = {}
_KINDS = {}
CODES = {}
for _c, _n, _d, _f in FRAMES:
    _SCALES[_n] = {f[0]: (f[3], f[4]) for f in _f if len(f) > 3}
    _KINDS[_n] = {f[0]: f[1] for f in _f}
    CODES[_n] = _c
del _c, _n, _d, _f


def encode(name, values, seq=0):
    """codec.encode by frame name, through the type code, on the host's fast
    path (host/fastcodec.py: the same bytes). Names that share a code
    (bill / bill5) are picked by their fields, as by name."""
    return fastcodec.encode(CODES[name] if name not in ("bill", "bill5") else name, values, seq)


def has_frame(name):
    return name in CODES


# 0x33 start refusal reasons: YKC V1.6 0..5; 0x0A and 0x0C ours (docs/protocol.md).
START_REFUSALS = {1: "pile number mismatch", 2: "gun already charging", 3: "fault",
                  4: "offline", 5: "not plugged in",
                  0x0A: "journal full of unconfirmed bills",
                  0x0C: "trade serial already used on this pile (a repeated start)"}


def start_refusal(code):
    return START_REFUSALS.get(code, "reason %d" % code)


TRADE_FLAGS = {1: "app", 2: "card", 4: "offline_card", 5: "vin"}
GUN_STATUS = {0: "offline", 1: "fault", 2: "idle", 3: "charging"}


def stop_reason(code):
    return {"code": code, "name": units.stop_name(code)}


def dec(value, scale):
    """Exact decimal string of an integer in units of 10^-scale."""
    if not scale:
        return str(value)
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(value), 10 ** scale)
    return "%s%d.%0*d" % (sign, q, scale, r)


def hexs(b):
    return binascii.hexlify(bytes(b)).decode().upper()


def utc_iso(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def local_secs(t=None):
    """The pile's wall clock unit: local seconds since 2000-01-01 00:00."""
    lt = time.localtime(time.time() if t is None else t)
    return F.to_secs(lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec)


def _offset(unit):
    # "C-50" -> 50, "X+3" -> -3, "kWh" -> 0 (protocol/frames.py: UNIT "X-N" / "X+N")
    for sign, mult in (("-", 1), ("+", -1)):
        i = unit.rfind(sign)
        if i > 0 and unit[i + 1:].isdigit():
            return mult * int(unit[i + 1:])
    return 0


def scaled_fields(name, fields):
    """A frame's fields with scaled values: decimal strings for scaled
    integers, ISO local time for CP56 times, temperatures without offset."""
    scales = _SCALES.get(name, {})
    kinds = _KINDS.get(name, {})
    out = {}
    for k, v in fields.items():
        kind = kinds.get(k)
        if kind == "t":
            out[k] = F.iso(v)
        elif kind == "v":
            out[k] = hexs(v)
        elif k in scales:
            scale, unit = scales[k]
            off = _offset(unit)
            if off:
                # "C-50": sent with a +50 offset; physical = raw - 50 (in 10^-scale)
                v = v - off * 10 ** scale
            out[k] = dec(v, scale) if scale else v
        else:
            out[k] = v
    return out


# --- bills ------------------------------------------------------------------------

# Whose pile a bill comes from, in every bill document and report: "ours"
# (our firmware, it speaks the extension frames: `ext`) or "third_party".
# Reports measure "0 unreconciled" on ours and count third-party bills by
# problem class (host/platform.py summarize, tools/chaos.py).
PILE_OURS = "ours"
PILE_THIRD_PARTY = "third_party"


def pile_kind(ext):
    return PILE_OURS if ext else PILE_THIRD_PARTY


def bill_json(site, bill, frame=None, extra_frame=None, ext=True):
    """The MQTT bill document for a store.Bill (see docs/mqtt.md). `ext`:
    the pile sends a 0xEB fee split (our firmware); a bill from such a pile
    without one yet is published with "complete": false."""
    if frame is None:
        try:
            # Read as the bridge reads the link: leniently (protocol/lenient.py).
            frame = fastcodec.decode(bill.frame, tolerant=True, lenient=True)
        except codec.FrameError as e:
            return undecodable_bill_json(site, bill, e, ext)
    f = frame.fields
    decode_problems = list(frame.problems or ())
    extra = None
    if extra_frame is None and bill.extra is not None:
        extra_frame = fastcodec.decode(bill.extra, tolerant=True)
    if extra_frame is not None:
        extra = extra_frame.fields
    periods = []
    energy_fee = service_fee = 0
    for p in periods_of(f):
        item = {
            "period": p,
            "price": dec(f[p + "_price"], 5),
            "energy": dec(f[p + "_energy"], 4),
            "loss": dec(f[p + "_loss"], 4),
            "amount": dec(f[p + "_amount"], 4),
            "energy_fee": None,
            "service_fee": None,
        }
        if extra is not None:
            ef = extra[p + "_energy_fee"]
            sf = extra[p + "_service_fee"]
            item["energy_fee"] = dec(ef, 4)
            item["service_fee"] = dec(sf, 4)
            energy_fee += ef
            service_fee += sf
        periods.append(item)
    # the field log's "bills that do not add up" (field-cases.md §4), after
    # whatever the lenient reading gave way on
    problems = bill_problems(decode_problems, f, extra)
    raw = dict(f)
    if extra is not None:
        raw["extra"] = dict(extra)
    doc = {
        "schema": SCHEMA_BILL,
        "site": site,
        "pile": f["pile"],
        "gun": f["gun"],
        "serial": f["serial"],
        "pile_seq": bill.pile_seq,
        "received_at": utc_iso(bill.received_at),
        "start_time": _iso(f["start_time"]),
        "end_time": _iso(f["end_time"]),
        "trade_time": _iso(f["trade_time"]),
        "periods": periods,
        "meter": {"start": dec(f["meter_start"], 4), "stop": dec(f["meter_stop"], 4)},
        "total_energy": dec(f["total_energy"], 4),
        "total_loss": dec(f["total_loss"], 4),
        "total_amount": dec(f["total_amount"], 4),
        "energy_fee": dec(energy_fee, 4) if extra is not None else None,
        "service_fee": dec(service_fee, 4) if extra is not None else None,
        "tariff_model": extra["model"] if extra is not None else None,
        "vin": f["vin"],
        "nameplate_vin": (extra["nameplate_vin"] or None) if extra is not None else None,
        "vin_mismatch": bool(extra["vin_mismatch"]) if extra is not None else None,
        "trade_flag": {"code": f["trade_flag"], "name": TRADE_FLAGS.get(f["trade_flag"], "other")},
        "stop_reason": stop_reason(f["stop_reason"]),
        "card": f["card"],
        "mac": extra["mac"] if extra is not None else None,
        "complete": extra is not None or not ext,
        "decoded": True,
        "pile_kind": pile_kind(ext),
        "frame_type": "0x%02X" % frame.code,
        "layout": frame.name,
        "decode_problems": decode_problems,
        "checks": {"ok": not problems, "problems": problems},
        "crc_swapped": bool(bill.crc_swapped),
        "frame": hexs(bill.frame),
        "content_hash": bill_hash(bill.frame),
        "extra_frame": hexs(bill.extra) if bill.extra is not None else None,
        # The pile's OCMF record and its verdict (docs/ocmf.md); null until
        # the signature (0xDB) came.
        "ocmf": ocmf_json(bill),
        "raw": raw,
    }
    return doc


OCMF_VERIFIED = "verified"    # host/ocmf_check.py: the verdicts


def ocmf_json(bill):
    """The bill document's `ocmf` member (docs/mqtt.md, docs/ocmf.md) for a
    store.Bill: null until its signature came."""
    if getattr(bill, "ocmf_verdict", None) is None:
        return None
    return {"record": bill.ocmf_record, "verdict": bill.ocmf_verdict,
            "verified": bill.ocmf_verdict == OCMF_VERIFIED, "public_key": bill.ocmf_key}


def _iso(secs):
    # A blank CP56 time reads as None (protocol/lenient.py "time_blank").
    return None if secs is None else F.iso(secs)


def bill_hash(frame):
    """The content hash a confirmation must name (docs/mqtt.md): SHA-256 of
    the bill's frame (0x3B, or whatever bill frame was kept) exactly as the
    bridge holds it, in hex. A confirmation proves the platform has that
    exact bill, not just its serial."""
    import hashlib
    return hashlib.sha256(bytes(frame)).hexdigest()


def undecodable_bill_json(site, bill, err, ext=True):
    """The MQTT document of a bill kept raw because it does not decode
    (docs/bridge.md "Custody"): its identity from the store, the frame as
    received, the decoder's error; every figure null, checks not ok. The
    platform keeps and confirms it like any bill, so the pile is released
    and the bytes are never lost."""
    body = bill.frame[6:-2]
    msg = undecodable(err)
    return {
        "schema": SCHEMA_BILL, "site": site, "pile": bill.pile,
        "gun": hexs(body[23:24]) if len(body) > 23 else None,
        "serial": bill.serial, "pile_seq": bill.pile_seq,
        "received_at": utc_iso(bill.received_at),
        "decoded": False, "error": str(err), "pile_kind": pile_kind(ext),
        "frame_type": "0x%02X" % bill.frame[5], "layout": None, "decode_problems": [],
        "start_time": None, "end_time": None, "trade_time": None, "periods": [],
        "meter": None, "total_energy": None, "total_loss": None, "total_amount": None,
        "energy_fee": None, "service_fee": None, "tariff_model": None, "vin": None,
        "nameplate_vin": None, "vin_mismatch": None, "trade_flag": None, "stop_reason": None,
        "card": None, "mac": None, "complete": True,
        "checks": {"ok": False, "problems": [msg]},
        "crc_swapped": bool(bill.crc_swapped),
        "frame": hexs(bill.frame),
        "content_hash": bill_hash(bill.frame),
        "extra_frame": hexs(bill.extra) if bill.extra is not None else None,
        "ocmf": None,
        "raw": None,
    }


# --- realtime, status, events, results ------------------------------------------------

def realtime_json(site, frame):
    f = frame.fields
    doc = {"schema": SCHEMA_REALTIME, "site": site, "pile": f["pile"], "gun": f["gun"],
           "ts": utc_iso(), "status": GUN_STATUS.get(f["status"], "unknown")}
    doc.update(scaled_fields(frame.name, f))
    doc["status"] = GUN_STATUS.get(f["status"], "unknown")
    doc["raw"] = dict(f)
    return doc


def event_json(site, pile, kind, message, **details):
    doc = {"schema": SCHEMA_EVENT, "site": site, "pile": pile, "type": kind,
           "ts": utc_iso(), "message": message}
    doc.update(details)
    return doc


def result_json(site, pile, req_id, cmd, ok, code, message, reply=None, **extra):
    doc = {"schema": SCHEMA_RESULT, "site": site, "pile": pile, "id": req_id, "cmd": cmd,
           "ok": ok, "code": code, "message": message, "ts": utc_iso()}
    if reply is not None:
        doc["reply"] = reply
    doc.update(extra)
    return doc
