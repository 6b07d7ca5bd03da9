# Commands from the platform (pc/<site>/cmd/<pile>), checked before anything
# reaches a pile, translated to YKC or extension frames, and answered with
# exactly one result (pc/<site>/result/<pile>). docs/mqtt.md lists them.
#
# A command is JSON: {"id": "<request id>", "cmd": "<name>", ...arguments}.
# Anything wrong with it (not JSON, wrong types, too big, unknown pile or
# command) gets a result with ok=false and a code saying why; nothing here
# raises into the MQTT loop.
import json
import time

from protocol import codec
from protocol import sign
from protocol import units

from host import tariff as T

MAX_ID = 128
MAX_VINS = 5000        # VINs in one vin_list command
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")

# code, meaning
CODES = {
    "ok": "done; `reply` holds the pile's answer",
    "bad_request": "malformed JSON, wrong types, missing or unknown fields",
    "too_large": "payload over mqtt.max_command_bytes",
    "unknown_command": "no such command",
    "unknown_pile": "the bridge has never seen this pile and it is not configured",
    "offline": "the pile is not logged in now",
    "timeout": "the pile did not answer in piles.command_timeout_s",
    "link_lost": "the link dropped while waiting for the answer",
    "refused": "the pile answered and said no (`reply` says why)",
    "unsupported": "this pile or protocol table cannot do it",
    "expired": "the command's `expires` time had passed when it arrived",
    "unauthenticated": "the site checks platform commands (keys.platform_key_file) and this one "
                       "has no `auth`, or its `auth` does not match its content, site and pile",
    "signed_reject": "the pile refused the signed (or unsigned) command: `reply.reason` says why "
                     "(bad mac, replay, malformed, store, unsigned, no key)",
    "busy": "the pile is already being upgraded, or stayed busy charging past upgrade.activate_wait_s",
    "rolled_back": "the new firmware never became healthy: the pile went back to the old one",
    "failed": "the upgrade did not end with the new version running",
    "duplicate": "this request id was taken before a bridge restart and its result was lost: "
                 "not executed again (a repeat whose result is known gets that result, "
                 "`duplicate: true`)",
    "error": "the bridge failed (see its log)",
}


class CommandError(Exception):
    def __init__(self, code, message, req_id=None, cmd=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.req_id = req_id
        self.cmd = cmd


def _int(args, name, lo, hi, default=None, required=False):
    v = args.get(name, default)
    if v is None:
        if required:
            raise CommandError("bad_request", "%s is required" % name)
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CommandError("bad_request", "%s must be an integer %d..%d, got %r" % (name, lo, hi, v))
    return v


def _digits(args, name, n, default=None, required=False):
    v = args.get(name, default)
    if v is None:
        if required:
            raise CommandError("bad_request", "%s is required" % name)
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    # isascii: str.isdigit() also takes other scripts' digits and superscripts,
    # which BCD cannot carry.
    if not isinstance(v, str) or not v.isdigit() or not v.isascii() or len(v) > n:
        raise CommandError("bad_request", "%s must be a string of at most %d digits, got %r"
                           % (name, n, v))
    return v.zfill(n)


def _hex(args, name, nbytes, default="0"):
    v = args.get(name, default)
    if not isinstance(v, str) or len(v) > 2 * nbytes:
        raise CommandError("bad_request", "%s must be a hex string of at most %d digits"
                           % (name, 2 * nbytes))
    # Hex digits only: int(v, 16) would also take "0x", "_", spaces and
    # non-ASCII digits, which the frame's hex field cannot carry.
    if any(c not in _HEXDIGITS for c in v):
        raise CommandError("bad_request", "%s must be hex, got %r" % (name, v))
    return v.upper().zfill(2 * nbytes)


def _gun(args):
    # No silent default here: the bridge fills in "01" for a one-gun pile
    # and refuses a command without `gun` to a pile with more
    # (Bridge._execute; docs/mqtt.md "Commands").
    return _digits(args, "gun", 2)


def _quantity(args, name, places, unit, hi=2**32 - 1, default=0):
    """A money or energy argument: `name` as a decimal string in `unit`
    ("1.00" yuan, "0.5" kWh), or `name_eN` as an integer in the protocol's
    x10^-N units (the only place an integer is read as protocol units).
    A bare integer in `name` is the older form, read in protocol units too
    (docs/mqtt.md "Changes to the documents"). Returns the protocol integer."""
    named = "%s_e%d" % (name, places)
    v, raw = args.get(name), args.get(named)
    if v is not None and raw is not None:
        raise CommandError("bad_request", "give %s or %s, not both" % (name, named))
    if raw is not None:
        return _int(args, named, 0, hi)
    if v is None:
        return default
    if isinstance(v, bool) or isinstance(v, float):
        raise CommandError("bad_request", "%s is a decimal string in %s like \"1.00\" (or %s, an "
                           "integer x10^-%d %s), got %r" % (name, unit, named, places, unit, v))
    if isinstance(v, int):
        return _int(args, name, 0, hi)          # the older form: protocol units
    try:
        n = units.parse(v, places, "%s (%s)" % (name, unit))
    except units.UnitError as e:
        raise CommandError("bad_request", str(e))
    if n > hi:
        raise CommandError("bad_request", "%s: %s %s is more than the frame holds (%s)"
                           % (name, v, unit, units.text(hi, places)))
    return n


# name -> (allowed argument names, needs the pile online)
SPEC = {
    "start": ({"gun", "serial", "logical_card", "card", "balance", "balance_e2", "targets"}, True),
    "stop": ({"gun"}, True),
    "reboot": ({"when"}, True),
    "tariff_set": ({"tariff"}, False),
    "time_sync": (set(), True),
    "versions": (set(), True),
    "journal_status": (set(), True),
    "read_realtime": ({"gun"}, True),
    "status": (set(), False),
    "authorize": ({"gun", "serial", "logical_card", "balance", "balance_e2", "ok", "reason",
                   "group"}, True),
    "parallel_start": ({"guns", "serials", "logical_card", "card", "balance", "balance_e2",
                        "group"}, True),
    "vin_list": ({"vins", "version"}, True),
    "upgrade": ({"image", "image_b64", "version", "activate"}, True),
}
_COMMON = {"id", "cmd", "expires", "auth"}   # `auth`: the command's MAC (command_auth)

# Signed platform commands (docs/mqtt.md "Signed commands"): with a platform
# key on the bridge every command carries
#     auth = hex HMAC-SHA256(derive(K_platform, "pc/platform-cmd"),
#                            site | "\n" | target | "\n" | canonical(doc))
# where canonical(doc) is the command without `auth` as JSON, keys sorted, no
# spaces, UTF-8; and `expires` (unix seconds) at most
# mqtt.command_max_life_s ahead. A changed id, target, argument or expires
# breaks the MAC; a replay within its life meets its id in the store (kept 7
# days), a later one is expired: the replay window is persisted.
PURPOSE_PLATFORM = b"pc/platform-cmd"


def canonical(doc):
    return json.dumps({k: v for k, v in doc.items() if k != "auth"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def command_auth(key, site, target, doc):
    """The `auth` of a command document for pc/<site>/cmd/<target>."""
    mac = sign.hmac_parts(sign.derive(bytes(key), PURPOSE_PLATFORM),
                          (site.encode("utf-8"), b"\n", target.encode("utf-8"), b"\n",
                           canonical(doc)))
    return mac.hex()


def sign_command(key, site, target, doc, life_s=300.0, now=None):
    """`doc` with `expires` (now + life_s unless it has one) and `auth`."""
    d = dict(doc)
    d.pop("auth", None)
    if d.get("expires") is None:
        d["expires"] = int((time.time() if now is None else now) + life_s)
    d["auth"] = command_auth(key, site, target, d)
    return d


def sign_confirmation(key, site, pile, doc):
    """A confirmation for pc/<site>/confirm/<pile> with its `auth` (the same
    MAC as a command's; a confirmation has no expiry: confirming a bill
    twice changes nothing)."""
    d = dict(doc)
    d.pop("auth", None)
    d["auth"] = command_auth(key, site, pile, d)
    return d


def auth_ok(key, site, target, doc):
    """True when doc's `auth` is the MAC of doc for pc/<site>/.../<target>."""
    a = doc.get("auth")
    return isinstance(a, str) and len(a) == 64 and sign.equal(
        a.lower().encode(), command_auth(key, site, target, doc).encode())


def _check_auth(doc, req_id, cmd, auth, now):
    key, site, target, max_life = auth
    a = doc.get("auth")
    if not auth_ok(key, site, target, doc):
        raise CommandError("unauthenticated", "no `auth`" if a is None else
                           "`auth` does not match the command, its site and its pile: "
                           "not executed", req_id, cmd)
    e = doc.get("expires")
    if not isinstance(e, (int, float)) or isinstance(e, bool):
        raise CommandError("bad_request", "a signed command needs `expires` (unix seconds)",
                           req_id, cmd)
    if e > now + max_life:
        raise CommandError("bad_request", "expires is %d s ahead; at most %d s (the replay window)"
                           % (e - now, max_life), req_id, cmd)


def parse(payload, max_bytes, auth=None):
    """Check a command payload. Returns (req_id, cmd, args) or raises
    CommandError (with the id when it could be read). auth: (key, site,
    target, max_life_s) when the site checks platform commands."""
    if len(payload) > max_bytes:
        raise CommandError("too_large", "command of %d bytes, at most %d" % (len(payload), max_bytes))
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError("bad_request", "not JSON: %s" % e)
    except RecursionError:
        # Nesting past the parser's recursion limit (~1000 levels).
        raise CommandError("bad_request", "not JSON: nested too deeply")
    if not isinstance(doc, dict):
        raise CommandError("bad_request", "a command is a JSON object")
    req_id = doc.get("id")
    if not isinstance(req_id, str) or not 0 < len(req_id) <= MAX_ID:
        raise CommandError("bad_request", "id must be a non-empty string of at most %d characters"
                           % MAX_ID, None if not isinstance(req_id, (str, int)) else str(req_id)[:MAX_ID])
    cmd = doc.get("cmd")
    if auth is not None:
        _check_auth(doc, req_id, cmd if isinstance(cmd, str) else None, auth, time.time())
    if not isinstance(cmd, str) or cmd not in SPEC:
        raise CommandError("unknown_command", "unknown command %r; known: %s"
                           % (cmd, ", ".join(sorted(SPEC))), req_id,
                           cmd if isinstance(cmd, str) else None)
    allowed, _ = SPEC[cmd]
    unknown = set(doc) - allowed - _COMMON
    if unknown:
        raise CommandError("bad_request", "%s: unknown field(s) %s"
                           % (cmd, ", ".join(sorted(map(str, unknown)))), req_id, cmd)
    expires = doc.get("expires")
    if expires is not None:
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            raise CommandError("bad_request", "expires must be unix seconds", req_id, cmd)
        if expires < time.time():
            raise CommandError("expired", "command expired at %s" % expires, req_id, cmd)
    try:
        args = _check_args(cmd, doc)
    except CommandError as e:
        e.req_id, e.cmd = req_id, cmd
        raise
    return req_id, cmd, args


def _check_args(cmd, d):
    if cmd == "start":
        a = {"gun": _gun(d), "serial": _digits(d, "serial", 32),
             "logical_card": _digits(d, "logical_card", 16, default="0"),
             "card": _hex(d, "card", 8),
             "balance": _quantity(d, "balance", 2, "yuan")}      # 0x34: x10^2 yuan
        t = d.get("targets")
        if t is not None:
            if not isinstance(t, dict):
                raise CommandError("bad_request", "targets must be an object")
            unknown = set(t) - {"amount", "amount_e4", "energy", "energy_e4", "minutes", "soc"}
            if unknown:
                raise CommandError("bad_request", "targets: unknown field(s) %s"
                                   % ", ".join(sorted(unknown)))
            a["targets"] = {
                "amount": _quantity(t, "amount", 4, "yuan"),     # 0xE2: x10^4 yuan
                "energy": _quantity(t, "energy", 4, "kWh"),      # 0xE2: x10^4 kWh
                "minutes": _int(t, "minutes", 0, 0xFFFF, default=0),
                "soc": _int(t, "soc", 0, 100, default=0),
            }
        return a
    if cmd in ("stop", "read_realtime"):
        return {"gun": _gun(d)}
    if cmd == "reboot":
        when = d.get("when", "now")
        if when not in ("now", "idle"):
            raise CommandError("bad_request", "when must be \"now\" or \"idle\"")
        return {"when": when}
    if cmd == "tariff_set":
        try:
            return {"tariff": T.parse(d.get("tariff"))}
        except T.TariffError as e:
            raise CommandError("bad_request", str(e))
    if cmd == "authorize":
        return {"gun": _gun(d), "serial": _digits(d, "serial", 32, required=True),
                "logical_card": _digits(d, "logical_card", 16, default="0"),
                "balance": _quantity(d, "balance", 2, "yuan"),
                "ok": bool(d.get("ok", True)), "reason": _int(d, "reason", 0, 255, default=0),
                "group": _digits(d, "group", 12)}     # an 0xA1's: answered by 0xA2
    if cmd == "parallel_start":
        return _parallel_args(d)
    if cmd == "vin_list":
        vins = d.get("vins")
        if not isinstance(vins, list) or len(vins) > MAX_VINS:
            raise CommandError("bad_request", "vins must be a list of at most %d entries" % MAX_VINS)
        out = []
        for v in vins:
            if isinstance(v, str):
                v = {"vin": v}
            if not isinstance(v, dict) or set(v) - {"vin", "department"}:
                raise CommandError("bad_request", "each vins entry is a VIN string or "
                                   "{\"vin\": ..., \"department\": n}")
            vin = v.get("vin")
            if not isinstance(vin, str) or len(vin) != 17 or not vin.isalnum() or not vin.isascii():
                raise CommandError("bad_request", "a VIN is 17 ASCII letters and digits, got %r" % (vin,))
            out.append({"vin": vin.upper(), "department": _int(v, "department", 0, 0xFFFF, default=0)})
        return {"vins": out, "version": _int(d, "version", 0, 2**32 - 1,
                                             default=int(time.time()) & 0xFFFFFFFF)}
    if cmd == "upgrade":
        return _upgrade_args(d)
    return {}


def _parallel_args(d):
    guns = d.get("guns", ["01", "02"])
    if not isinstance(guns, list) or len(guns) != 2:
        raise CommandError("bad_request", "guns must be a list of two guns, the main first "
                           "(default [\"01\", \"02\"])")
    guns = [_gun({"gun": g}) for g in guns]
    if guns[0] == guns[1]:
        raise CommandError("bad_request", "guns must be two different guns, got %s twice" % guns[0])
    serials = d.get("serials")
    if serials is not None:
        if not isinstance(serials, list) or len(serials) != 2:
            raise CommandError("bad_request", "serials must be a list of two trade serials, "
                               "one per gun")
        serials = [_digits({"serials": s}, "serials", 32, required=True) for s in serials]
        if serials[0] == serials[1]:
            raise CommandError("bad_request", "serials: each gun needs its own trade serial")
    return {"guns": guns, "serials": serials, "group": _digits(d, "group", 12),
            "logical_card": _digits(d, "logical_card", 16, default="0"),
            "card": _hex(d, "card", 8), "balance": _quantity(d, "balance", 2, "yuan")}


def auth_frame(pile, a):
    """(frame name, values, sequence) answering a pile's start request:
    0xA2 for an 0xA1 (the answer names its group), else 0x32 for a 0x31."""
    v = {"serial": a["serial"], "pile": pile.code, "gun": a["gun"],
         "logical_card": a["logical_card"], "balance": a["balance"],
         "ok": 1 if a["ok"] else 0, "reason": a["reason"]}
    if a.get("group") is not None:
        v["group"] = a["group"]
        return "parallel_auth", v, pile.parallel_requests.pop(a["gun"], None)
    return "start_auth", v, pile.start_requests.pop(a["gun"], None)


def _upgrade_args(d):
    import base64
    import binascii
    version = d.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 32 or not version.isascii() \
            or not version.isprintable():
        raise CommandError("bad_request", "version must be a printable ASCII string (at most 32; "
                           "it travels shortened to 8 characters by the wire rule)")
    image, inline = d.get("image"), d.get("image_b64")
    if (image is None) == (inline is None):
        raise CommandError("bad_request", "give exactly one of image (a file name in "
                           "upgrade.image_dir) and image_b64 (the image, base64)")
    a = {"version": version, "image": None, "image_b64": None}
    if image is not None:
        if not isinstance(image, str) or not image or "/" in image or "\\" in image \
                or image.startswith(".") or not image.isprintable():
            raise CommandError("bad_request", "image is a plain file name inside "
                               "upgrade.image_dir (no folders, not starting with '.')")
        a["image"] = image
    else:
        if not isinstance(inline, str):
            raise CommandError("bad_request", "image_b64 must be a base64 string")
        try:
            a["image_b64"] = base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError) as e:
            raise CommandError("bad_request", "image_b64 is not base64: %s" % e)
    act = d.get("activate", True)
    if not isinstance(act, bool):
        raise CommandError("bad_request", "activate must be true or false")
    a["activate"] = act
    return a


def local_stamp():
    """YYMMDDhhmmss, local time: the time part of trade serials and group ids."""
    return time.strftime("%y%m%d%H%M%S")


def new_serial(code, gun, n):
    """A trade serial the bridge makes: pile (14) + gun (2) + YYMMDDhhmmss +
    a counter (4)."""
    return "%s%s%s%04d" % (code, gun, local_stamp(), n)


def start_frame(pile, ext, a, serial):
    """(frame name, values) for a start: 0xE2 with targets on our firmware,
    the standard 0x34 otherwise."""
    v = {"serial": serial, "pile": pile, "gun": a["gun"], "logical_card": a["logical_card"],
         "card": a["card"], "balance": a["balance"]}
    t = a.get("targets")
    if t and any(t.values()):
        if not ext:
            raise CommandError("unsupported", "start targets need our firmware (pile has ext: false); "
                               "send the start without targets")
        v.update({"target_amount": t["amount"], "target_energy": t["energy"],
                  "target_minutes": t["minutes"], "target_soc": t["soc"], "flags": 0})
        return "ext_start", v
    return "remote_start", v


def has_frame(name):
    from host.schema import has_frame as _has
    return _has(name)


_SIGNED_BODY = 214      # what a 0xD2 envelope carries of the inner body


def vin_list_frames(vins, version, signed=False):
    """Values of the 0xEE frames carrying `vins` (records of vin +
    department), as many frames as the record field needs; every frame
    carries the list's version and its own record count. `signed`: each
    frame must fit a 0xD2 envelope (11 records instead of 12)."""
    if not has_frame("vin_list") or not hasattr(codec, "pack_records"):
        raise CommandError("unsupported", "the protocol table has no VIN-list frame")
    rec = codec.record_layout("vin_list", "records")
    per = codec.BY_NAME["vin_list"].sizes[-1] // rec.size
    if signed:
        head = codec.layout_named("vin_list").size   # version + count, records empty
        per = min(per, (_SIGNED_BODY - head) // rec.size)
    chunks = [vins[i:i + per] for i in range(0, len(vins), per)] or [[]]
    return [{"version": version, "count": len(c),
             "records": codec.pack_records("vin_list", "records", c)} for c in chunks]
