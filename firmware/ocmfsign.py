# The pile's OCMF signer (issue 19 item 6, docs/ocmf.md): its P-256 key pair,
# made at first boot and kept on its flash (the private scalar never leaves
# the pile), and the signatures of its sealed bills, made after the seal in
# steps of one point operation, one step per main-loop poll, so that signing
# never delays control.
#
#   s = OcmfSigner(root, fs, entropy, fw)     loads or makes the key
#   s.queue(serial, body)                      a sealed bill (its 0x3B body) to sign
#   s.sent(serial, body)                       the bill went out: its signature follows it
#                                              (once per login; after a reconnect, again)
#   s.poll(link)                               one step; sends 0xD9 / 0xDB when due;
#                                              True while there is work (poll again soon)
#
# The key record (root/ocmf.key, replaced atomically): "PK1" | d (32) |
# point (65, or nothing until it is computed) | first 4 bytes of SHA-256 of
# what precedes. The point is computed in steps too (first boot only), then
# written beside d so that later boots cost nothing.
#
# Signatures are RFC 6979 (deterministic): a signature lost with the link or
# a reboot is made again, the same, when the bill is sent after the next
# login. None is kept on flash.
import hashlib

from firmware import fsio
from protocol import codec
from protocol import ocmf
from protocol import p256

from protocol import const

_MAGIC = b"PK1"
_MAX_JOBS = const(8)        # bills waiting for a signature; more are signed when resent
_MAX_DONE = const(8)        # signatures kept in RAM for a resend of their bill
FLAG_IDS = const(1)         # bill_sig.flags bit 0: the card id is in the payload


def _check(b):
    return hashlib.sha256(b).digest()[:4]


def _valid(raw):
    return len(raw) in (39, 104) and raw[:3] == _MAGIC and _check(raw[:-4]) == raw[-4:]


def _entropy_default(n):
    try:
        import os
    except ImportError:  # pragma: no cover
        import uos as os
    u = getattr(os, "urandom", None)
    return u(n) if u is not None else None


def hexs(b):
    return "".join(["%02X" % x for x in b])


class OcmfSigner:
    """root: the pile's flash folder; fs: firmware.fsio-like (None: the real
    one); entropy(n): n random bytes, or None where the board has no source
    (no key is made: bills go unsigned, an event says so); fw: the firmware
    version in the payload; ids: card id in the payload; event(kind, detail)."""

    def __init__(self, root, fs=None, entropy=None, fw="", ids=False, event=None):
        self.fs = fs or fsio.OS
        self.path = root + "/ocmf.key"
        self.fw = fw[:8]          # bill_sig.fw is 8 characters: the signed text holds the same
        self.ids = bool(ids)
        self._event = event
        self.pub = None           # 65-byte point once known
        self._d = None
        self._jobs = []           # [(serial, 0x3B body)] to sign, oldest first
        self._done = []           # [(serial, values of bill_sig)] made, newest last
        self._sent = []           # serials sent on this login (their signatures are due)
        self._due = []            # bill_sig values to send
        self._key_due = False     # 0xD9 after this login
        self._gen = None          # the step-wise work in progress
        self._out = [None]
        self._what = None         # None, "key" or the serial being signed
        self.steps = 0            # steps run since boot (tests, bench)
        raw = fsio.load_atomic(self.fs, self.path, _valid)
        if raw is not None:
            self._d = int.from_bytes(raw[3:35], "big")
            if len(raw) == 104:
                self.pub = bytes(raw[35:100])
        else:
            e = (entropy or _entropy_default)(32)
            if e is None or len(e) != 32:
                self._say("ocmf_no_key", "no entropy source: bills are not signed")
                return
            self._d = p256.keygen(e)
            self._save()          # d on flash before anything is derived from it
            self._say("ocmf_key_made", "a new P-256 key pair (first boot)")
        if self.pub is None:
            self._gen = p256._mul_steps(self._d, p256.GX, p256.GY, self._out)
            self._what = "key"

    def _say(self, kind, detail):
        if self._event is not None:
            self._event(kind, detail)

    def _save(self):
        body = _MAGIC + self._d.to_bytes(32, "big") + (self.pub or b"")
        fsio.save_atomic(self.fs, self.path, body + _check(body))

    def spki_hex(self):
        """The public key as OCMF and the site config name it: DER
        SubjectPublicKeyInfo, hex (None until the key exists)."""
        return hexs(p256.spki_der(self.pub)) if self.pub is not None else None

    # --- the pile's hooks -------------------------------------------------------

    def on_login(self):
        self._sent = []
        self._due = []
        self._key_due = True

    def queue(self, serial, body):
        """Sign this sealed bill (its 0x3B body) when the key and the loop allow."""
        if self._d is None or serial == self._what:
            return
        for s, _ in self._jobs:
            if s == serial:
                return
        for s, _ in self._done:
            if s == serial:
                return
        if len(self._jobs) >= _MAX_JOBS:
            return                # signed when it is sent again
        self._jobs.append((serial, bytes(body)))

    def sent(self, serial, body):
        """The bill went out on this login: its signature follows it (now,
        if made; else once made)."""
        if self._d is None or serial in self._sent:
            return                # once per login: a resend within it does not repeat it
        self._sent.append(serial)
        if len(self._sent) > _MAX_JOBS + _MAX_DONE:
            self._sent.pop(0)
        for s, v in self._done:
            if s == serial:
                self._due.append(v)
                return
        self.queue(serial, body)

    def busy(self):
        return self._gen is not None or bool(self._jobs)

    def poll(self, link):
        """One step of work, then what is due on the link. True while work
        is left (the loop should poll again at once)."""
        try:
            if self._gen is None and self._jobs and self.pub is not None:
                self._begin(*self._jobs.pop(0))
            if self._gen is not None:
                self.steps += 1
                try:
                    next(self._gen)
                except StopIteration:
                    self._finish()
        except Exception as e:
            # A bill that does not decode, a key record that cannot be
            # written: that bill goes unsigned (or the key is tried again at
            # the next boot); never a fault of the control loop.
            self._gen = None
            self._say("ocmf_error", "%s: %s %s" % (self._what, type(e).__name__, e))
            self._what = None
        if link.online:
            try:
                if self._key_due and self.pub is not None:
                    self._key_due = False
                    link.send("pile_key", {"pile": link.login["pile"], "key": hexs(self.pub)})
                while self._due:
                    link.send("bill_sig", self._due.pop(0))
            except Exception as e:
                # Not sent (goes again after the next login): never a fault of the loop.
                self._say("ocmf_error", "send: %s %s" % (type(e).__name__, e))
        return self.busy()

    def _begin(self, serial, body):
        bill = codec.decode_body(codec.layout_for(0x3B, len(body)), body)
        text = ocmf.payload(bill, fw=self.fw, ids=self.ids)
        self._out[0] = None
        self._gen = p256.sign_steps(self._d, text.encode(), self._out)
        self._what = serial

    def _finish(self):
        self._gen = None
        what = self._what
        self._what = None
        if what == "key":
            x, y = self._out[0]
            self.pub = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
            self._save()
            return
        r, s = self._out[0]
        v = {"serial": what, "fw": self.fw, "flags": FLAG_IDS if self.ids else 0,
             "r": hexs(r.to_bytes(32, "big")), "s": hexs(s.to_bytes(32, "big"))}
        self._done.append((what, v))
        if len(self._done) > _MAX_DONE:
            self._done.pop(0)
        if what in self._sent:
            self._due.append(v)
