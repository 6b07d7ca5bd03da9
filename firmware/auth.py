# The pile's side of signed commands: the replay counter on flash and the
# check of each envelope against it. The envelope, the MACs and the list of
# protected frames are shared with the bridge: protocol/sign.py.
import struct

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from protocol import sign


class CounterStore:
    """The highest accepted counter, in an 8-byte file: u32 LE counter and
    its CRC-32. Written to `path + ".tmp"` then renamed over `path`, so a
    power cut leaves the old record or the new one, never half of one."""

    def __init__(self, path, fs=None):
        self.path = path
        self.fs = fs or OS

    def load(self):
        """The stored counter, 0 for a fresh pile, None if unreadable."""
        raw = load_atomic(self.fs, self.path, _counter_ok)
        if raw is not None:
            return struct.unpack_from("<I", raw, 0)[0]
        if exists(self.fs, self.path):
            return None     # a record we cannot read: fail closed
        # No record, at most a torn .tmp of the first save: nothing was ever
        # committed (a cut rename leaves a whole .tmp, which load_atomic takes).
        _try_remove(self.fs, self.path + ".tmp")
        return 0

    def save(self, counter):
        rec = bytearray(8)
        struct.pack_into("<I", rec, 0, counter)
        struct.pack_into("<I", rec, 4, binascii.crc32(bytes(rec[:4])) & 0xFFFFFFFF)
        save_atomic(self.fs, self.path, rec)


def _counter_ok(raw):
    return len(raw) == 8 and struct.unpack_from("<I", raw, 4)[0] == binascii.crc32(raw[:4]) & 0xFFFFFFFF


class CommandAuth:
    """Checks signed commands for one pile.

    store: a CounterStore (or a path for one); None only for sign-only use on
    the host. The counter is written before verify() says ok, so the command
    runs only once its counter is on flash: a reboot cannot reopen a replay.
    """

    def __init__(self, key, store=None):
        self.key = bytes(key)
        self._k = sign.derive(self.key, sign.PURPOSE_CMD)
        if isinstance(store, str):
            store = CounterStore(store)
        self.store = store
        self.last = None
        if store is not None:
            try:
                self.last = store.load()
            except OSError:
                self.last = None
        self.rejected = 0

    def sign(self, pile, counter, code, body):
        return sign.hmac_parts(self._k, (sign.pile_bytes(pile), struct.pack("<IB", counter, code), body))

    def verify(self, pile, counter, code, body, mac):
        """(True, None) once the counter is persisted, else (False, reason)."""
        reason = self._check(pile, counter, code, body, mac)
        if reason is not None:
            self.rejected += 1
            return False, reason
        return True, None

    def _check(self, pile, counter, code, body, mac):
        if not 0 <= counter <= sign.COUNTER_MAX or len(mac) != sign.MAC_LEN:
            return sign.R_MALFORMED
        if not sign.equal(self.sign(pile, counter, code, body), mac):
            return sign.R_BAD_MAC
        if self.last is None and self.store is not None:
            try:  # the record may have been unreadable at start only
                self.last = self.store.load()
            except OSError:
                pass
        if self.last is None:
            return sign.R_STORE
        if counter <= self.last:
            return sign.R_REPLAY
        try:
            self.store.save(counter)
        except OSError:
            return sign.R_STORE
        self.last = counter
        return None

    def open(self, pile, envelope):
        """Check a 0xD2 body: (ok, reason, counter, code, inner_body)."""
        parts = sign.unpack_envelope(envelope)
        if parts is None:
            self.rejected += 1
            return False, sign.R_MALFORMED, 0, None, None
        counter, mac, code, body = parts
        ok, reason = self.verify(pile, counter, code, body, mac)
        return ok, reason, counter, code, body


# Atomic records on flash: firmware/fsio.py (shared with upgrade, pile, console).
from firmware.fsio import OS, RealFS, exists, load_atomic, save_atomic  # noqa: E402,F401
from firmware.fsio import read as _read, try_remove as _try_remove  # noqa: E402,F401
