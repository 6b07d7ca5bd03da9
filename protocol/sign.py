# Every MAC both ends compute, on hashlib.sha256 (no `hmac` module on the
# MicroPython unix port): HMAC-SHA256 (RFC 2104), the signed-command envelope,
# the bill MAC and the firmware announcement MAC. Pure functions: the bridge
# signs with the very code the pile verifies with. The pile's own state (the
# replay counter on flash) is firmware/auth.py.
#
# Signed command envelope: extension frame `signed` (0xD2, S->P), body
#
#     offset size  field
#     0      4     counter   u32 little-endian, > the last accepted counter
#     4      32    mac       HMAC-SHA256, see command_mac()
#     36     1     code      inner frame type (0x34 remote_start, 0x92 reboot...)
#     37     n     body      inner frame body, exactly as it would travel bare
#
#   mac = HMAC-SHA256(K_cmd, pile(7 BCD bytes) | counter(u32 LE) | code(u8) | body)
#   K_cmd = HMAC-SHA256(K_pile, b"pc/cmd")
#
# A refusal goes back in frame `signed_reject` (0xD1, P->S): counter u32
# (the refused envelope's; 0 when the envelope was too short to carry one)
# and reason u8:
#
#     1 bad mac     the MAC does not match: forged, altered, or wrong key
#     2 replay      authentic, but counter <= highest accepted counter
#     3 malformed   envelope shorter than 37 bytes
#     4 store       the counter record cannot be read or written: the pile
#                   refuses every signed command rather than risk a replay
#     5 unsigned    a protected command (PROTECTED) arrived bare
#     6 no key      an envelope reached a pile without a command key
#
# Every MAC uses a key derived for its purpose (b"pc/cmd", b"pc/bill",
# b"pc/upgrade"): a bill body whose first bytes are the pile code (they are:
# the trade serial starts with it) must never double as a command MAC.
import hashlib
import struct

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from protocol.frames import TABLE

from protocol import const

_BLOCK = const(64)
MAC_LEN = const(32)
HEADER_LEN = const(37)   # counter 4 + mac 32 + code 1
COUNTER_MAX = const(0xFFFFFFFF)

CODE_SIGNED = const(0xD2)   # protocol/frames.py `signed`
CODE_REJECT = const(0xD1)   # protocol/frames.py `signed_reject`

R_BAD_MAC = "bad mac"
R_REPLAY = "replay"
R_MALFORMED = "malformed"
R_STORE = "store"
R_UNSIGNED = "unsigned"
R_NO_KEY = "no key"
# wire code = index (0 = accepted, never sent)
REASONS = (None, R_BAD_MAC, R_REPLAY, R_MALFORMED, R_STORE, R_UNSIGNED, R_NO_KEY)


def _signed_codes():
    """The codes of the signed commands ("!"), in table order."""
    out = []
    for t in TABLE:
        i = t.find(" ! ")
        while i >= 0:
            j = t.rfind("\n", 0, i) + 1
            c = int(t[j:j + 2], 16)
            if c not in out:      # a code with two layouts (0x92) is listed once
                out.append(c)
            i = t.find(" ! ", i + 3)
    return tuple(out)


# Frames that move money or power, marked "!" in the frame table: the pile
# acts on them only inside a valid envelope. 0x0A (tariff model reply) and
# 0x32 (start authorisation, carries the balance) set money figures just like
# 0x58 and 0x34; 0x42 (balance update) caps what a session may cost; 0xD4
# (5-class tariff) and 0xEE (VIN list: who may charge) too. fw_chunk (0xEA) is
# left out on purpose: the image is authenticated as a whole (upgrade_mac),
# and a per-chunk counter write would wear the flash.
PROTECTED = _signed_codes()
del _signed_codes              # run once: no need to keep it on the heap

PURPOSE_CMD = b"pc/cmd"
PURPOSE_BILL = b"pc/bill"
PURPOSE_UPGRADE = b"pc/upgrade"
PURPOSE_PILE = b"pc/pile"
PURPOSE_LOGIN = b"pc/login"


def reason_code(reason):
    """The u8 a reason string travels as (0 for None / accepted)."""
    return REASONS.index(reason)


def needs_auth(code):
    return code in PROTECTED


# --- HMAC-SHA256 -------------------------------------------------------------

def hmac_parts(key, parts):
    # RFC 2104: H((K ^ opad) | H((K ^ ipad) | msg)), K padded to the block.
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    for i in range(len(key)):
        pad[i] = key[i] ^ 0x36
    for i in range(len(key), _BLOCK):
        pad[i] = 0x36
    h = hashlib.sha256(pad)
    for p in parts:
        h.update(p)
    inner = h.digest()
    for i in range(_BLOCK):
        pad[i] ^= 0x36 ^ 0x5C   # ipad -> opad in place
    h = hashlib.sha256(pad)
    h.update(inner)
    return h.digest()


def hmac_sha256(key, msg):
    """HMAC-SHA256(key, msg) -> 32 bytes (RFC 2104 / RFC 4231)."""
    return hmac_parts(bytes(key), (msg,))


def derive(key, purpose):
    """A subkey for one purpose, so no MAC can be replayed as another kind."""
    return hmac_parts(bytes(key), (purpose,))


def pile_key(site_key, pile):
    """The per-pile command key the host derives from its site key; the pile
    stores only its own (provisioned at manufacturing)."""
    return hmac_parts(bytes(site_key), (PURPOSE_PILE, pile_bytes(pile)))


def equal(a, b):
    """Constant-time comparison (the length is not secret)."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def pile_bytes(pile):
    """The 7-byte BCD pile code, from its 14-digit string or as given."""
    if isinstance(pile, str):
        if len(pile) > 14 or not pile.isdigit():
            raise ValueError("pile code: up to 14 digits")
        # left zero-padded like the codec's "b" fields; BCD of digits is hex
        return binascii.unhexlify("0" * (14 - len(pile)) + pile)
    if len(pile) != 7:
        raise ValueError("pile code: 7 BCD bytes")
    return bytes(pile)


def as_bytes(v, n, name):
    """32-byte values arrive as bytes or as the hex strings codec "h" fields
    decode to; both are accepted."""
    if isinstance(v, str):
        v = binascii.unhexlify(v)
    if len(v) != n:
        raise ValueError("%s: %d bytes expected" % (name, n))
    return bytes(v)


def load_key(path):
    """A key file: 64 hex digits (a trailing newline allowed) or 32 raw bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.strip()
    if len(text) == 64:
        try:
            return binascii.unhexlify(text)
        except ValueError:
            pass
    if len(raw) == 32:
        return bytes(raw)
    raise ValueError("key file: 64 hex digits or 32 bytes")


# --- signed commands ---------------------------------------------------------

def command_mac(key, pile, counter, code, body):
    """The envelope's MAC. Pure: the bridge signs with it, the pile checks it."""
    return hmac_parts(derive(key, PURPOSE_CMD),
                       (pile_bytes(pile), struct.pack("<IB", counter, code), body))


def pack_envelope(counter, mac, code, body):
    """Body of a 0xD2 `signed` frame."""
    out = bytearray(HEADER_LEN + len(body))
    struct.pack_into("<I", out, 0, counter)
    out[4:36] = mac
    out[36] = code
    out[HEADER_LEN:] = body
    return bytes(out)


def seal(key, pile, counter, code, body):
    """Host side: the whole envelope for one inner frame."""
    return pack_envelope(counter, command_mac(key, pile, counter, code, body), code, body)


def unpack_envelope(env):
    """(counter, mac, code, body), or None if too short to be an envelope."""
    if len(env) < HEADER_LEN:
        return None
    mv = memoryview(env)
    return (struct.unpack_from("<I", env, 0)[0], bytes(mv[4:36]), env[36],
            bytes(mv[HEADER_LEN:]))


def open_signed(f, auth, pile):
    """The inner frame of a 0xD2 `signed` frame f, decoded as it would have
    been bare (same sequence, so its reply echoes the envelope's), or, when
    it is refused, (counter, reason code, inner code) for its signed_reject.
    auth: the receiver's check (firmware/auth.CommandAuth.verify), None for
    a receiver without a command key. protocol/router.py calls this."""
    env = f.body
    counter = 0
    if len(env) >= 4:
        counter = env[0] | env[1] << 8 | env[2] << 16 | env[3] << 24
    if auth is None:
        return counter, reason_code(R_NO_KEY), env[36] if len(env) > 36 else 0
    parts = unpack_envelope(env)
    if parts is None:
        return counter, reason_code(R_MALFORMED), 0
    counter, mac, code, body = parts
    inner = None
    if not code & 1 and code != CODE_SIGNED:    # a platform-to-pile frame, not nested
        from protocol import codec
        try:
            layout = codec.layout_for(code, len(body))
            inner = codec.Frame(code, layout.name, f.seq, 0, body, codec.decode_body(layout, body))
        except ValueError:   # FrameError (unknown type, bad length, bad field)
            pass
    if inner is None:
        # Checked before the MAC: a body we could not act on must not use up
        # a counter.
        return counter, reason_code(R_MALFORMED), code
    ok, reason = auth.verify(pile, counter, code, body, mac)
    if not ok:
        return counter, reason_code(reason), code
    return inner


# --- login proof -------------------------------------------------------------

def login_mac(key, pile, nonce):
    """A keyed pile's answer to the bridge's login challenge (0xD6 -> 0xD7):
    proves it holds K_pile without sending it; the nonce is fresh per login,
    so a recorded proof is worth nothing."""
    return hmac_parts(derive(bytes(key), PURPOSE_LOGIN), (pile_bytes(pile), bytes(nonce)))


# --- bills -------------------------------------------------------------------

def bill_mac(key, bill_body):
    """MAC of an encoded 0x3B body (either layout), sent beside the bill
    (0xEB bill_extra.mac) so the platform sees any change made on the way."""
    return hmac_parts(derive(bytes(key), PURPOSE_BILL), (bill_body,))


def verify_bill_mac(key, bill_body, mac):
    try:
        mac = as_bytes(mac, MAC_LEN, "mac")
    except ValueError:
        return False
    return equal(bill_mac(key, bill_body), mac)


# --- firmware announcements --------------------------------------------------

def upgrade_mac(key, version, size, sha256):
    """HMAC-SHA256 over u8 len(version) | version | u32 LE size | sha256,
    with the site's upgrade key (derived for this purpose). The host signs an
    announcement (fw_control begin) with it, the pile checks it."""
    v = version.encode()
    return hmac_parts(derive(key, PURPOSE_UPGRADE),
                      (bytes((len(v),)), v, struct.pack("<I", size), sha256))
