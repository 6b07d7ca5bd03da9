# Safe firmware upgrade on the pile's own filesystem: chunked transfer that
# resumes, sha256 + HMAC check, A/B slots, activation only when idle, a boot
# counter and automatic rollback. docs/upgrade.md tells the whole story.
#
# Layout under `root` (the flash mount, or a test directory):
#   fw/state.json   the state record below, replaced by temp file + rename
#   fw/stage.img    the image being received (its size is the progress)
#   fw/a/ fw/b/     the two slots: unpacked image files + slot.json manifest
#                   {version, seq, sha256, files, complete}: written with
#                   complete false before the first file is unpacked (so an
#                   interrupted install can always be cleaned up, even on a
#                   flat fs), then complete true
#
# state.json (JSON object, "fmt": 1):
#   active, previous  "a" / "b" (previous None on a factory board)
#   pending           True from activation until mark_healthy()
#   boots             boots of the pending slot so far
#   seq               installs so far (slot.json carries it too)
#   versions          {"a": str|None, "b": str|None}
#   stage, version, reason   what status() reports
#   dl                the announced image {version, size, sha256, mac, slot}
#                     (hex strings) while downloading / verified / failed
#
# The image format, stages and reasons are protocol/image.py (shared with
# the bridge); the MAC covers the announcement (protocol/sign.upgrade_mac),
# the sha256 the image.
import hashlib
import json
import struct

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from firmware import fsio
from protocol import image as I
from protocol import sign

from protocol import const

_BUF = const(512)
_MAX_SIZE = const(1048576)   # refuse an announced image larger than this
_BOOT_LIMIT = const(3)       # boots a new slot gets before rollback
_FMT = const(1)
SLOTS = ("a", "b")


def _hex(b):
    return binascii.hexlify(b).decode()


class _Reader:
    """Reads the staged image once, hashing every byte it hands out."""

    def __init__(self, f, buf):
        self.f = f
        self.buf = buf
        self.mv = memoryview(buf)
        self.h = hashlib.sha256()
        self.n = 0

    def take(self, k):
        """Exactly k (<= len(buf)) bytes into buf; a memoryview of them."""
        got = 0
        while got < k:
            r = self.f.readinto(self.mv[got:k])
            if not r:
                self.h.update(self.mv[:got])   # the sha256 still covers every byte
                raise I.UpgradeError(I.R_BAD_IMAGE)
            got += r
        self.h.update(self.mv[:k])
        self.n += k
        return self.mv[:k]

    def copy(self, size, out):
        while size:
            k = _BUF if size > _BUF else size
            chunk = self.take(k)
            if out is not None:
                out.write(chunk)
            size -= k

    def rest(self):
        """Hash to the end; returns how many bytes were left."""
        left = 0
        while True:
            r = self.f.readinto(self.mv)
            if not r:
                return left
            self.h.update(self.mv[:r])
            left += r


class Updater:
    """The upgrade state machine for one pile.

    root: where `fw/` lives; key: the site's upgrade key (bytes);
    fs: an object with open(path, mode) and os-style rename, remove, mkdir,
    rmdir, listdir, stat (statvfs optional), default the real filesystem;
    limit: boots a new slot gets without mark_healthy() before rollback;
    factory_version: the version running when no state exists yet;
    hmi_version: the screen firmware version (a config value) for versions().
    """

    def __init__(self, root, key, fs=None, limit=_BOOT_LIMIT, factory_version="0",
                 hmi_version=None, max_size=_MAX_SIZE):
        root = root.rstrip("/")
        self.dir = root + "/fw"
        self.key = bytes(key)
        self.fs = fs or fsio.OS
        self.limit = limit
        self.factory_version = factory_version
        self.hmi_version = hmi_version
        self.max_size = max_size
        self._state_path = self.dir + "/state.json"
        self._stage_path = self.dir + "/stage.img"
        self._buf = bytearray(_BUF)
        self._parsed = None
        self.booted = None      # the slot boot_select() chose, on this instance
        _makedirs(self.fs, self.dir)
        self.st = self._load()
        self._recover()
        self._offset = self._staged_size()

    # --- state record -------------------------------------------------------

    def _valid(self, raw):
        try:
            st = json.loads(raw.decode())
            ok = (st["fmt"] == _FMT and st["active"] in SLOTS and st["stage"] in I.STAGES
                  and isinstance(st["versions"], dict) and st["boots"] >= 0)
        except (ValueError, KeyError, TypeError, UnicodeError):
            return False
        if ok:
            self._parsed = st
        return ok

    def _load(self):
        self._parsed = None
        if fsio.load_atomic(self.fs, self._state_path, self._valid) is not None:
            return self._parsed
        return self._rebuild()

    def _rebuild(self):
        """No valid record: a factory board, or a state lost to a flash fault.
        Each installed slot has its manifest; the newest install runs again on
        probation (pending), so it is rolled back if it does not come up."""
        st = {"fmt": _FMT, "active": "a", "previous": None, "pending": False, "boots": 0,
              "seq": 0, "versions": {"a": self.factory_version, "b": None},
              "stage": I.IDLE, "version": self.factory_version, "reason": None, "dl": None}
        best = None
        for s in SLOTS:
            m = self._manifest(s)
            if m is not None and m["complete"]:
                st["versions"][s] = m["version"]
                if best is None or m["seq"] > best[1]:
                    best = (s, m["seq"])
        if best is not None:
            other = "b" if best[0] == "a" else "a"
            st["active"] = best[0]
            st["previous"] = other
            st["pending"] = True
            st["seq"] = best[1]
            st["version"] = st["versions"][best[0]]
            st["reason"] = I.R_STATE_LOST
        return st

    def _manifest(self, slot):
        raw = fsio.read(self.fs, self.slot_path(slot) + "/" + I.MANIFEST)
        if raw is None:
            return None
        try:
            m = json.loads(raw.decode())
            m["version"] + ""
            m["seq"] + 0
            m["files"] + []
            m["complete"]
            return m
        except (ValueError, KeyError, TypeError, UnicodeError):
            return None

    def _save(self):
        fsio.save_atomic(self.fs, self._state_path, json.dumps(self.st).encode())

    def _set(self, stage, reason=None, version=None):
        self.st["stage"] = stage
        self.st["reason"] = reason
        if version is not None:
            self.st["version"] = version
        self._save()

    def _recover(self):
        st = self.st
        if st["stage"] == I.INSTALLING:
            # Power cut while unpacking: the active slot never changed, the
            # staged image is intact; activate() may simply run again.
            st["stage"] = I.VERIFIED
            try:
                self._save()
            except OSError:
                pass
        if st["dl"] is None and fsio.exists(self.fs, self._stage_path):
            fsio.try_remove(self.fs, self._stage_path)   # left by a cut after commit

    def _staged_size(self):
        if self.st["dl"] is None:
            return 0
        try:
            n = self.fs.stat(self._stage_path)[6]
        except OSError:
            return 0
        if n > self.st["dl"]["size"]:
            fsio.try_remove(self.fs, self._stage_path)
            return 0
        return n

    def _target(self):
        return "b" if self.st["active"] == "a" else "a"

    def slot_path(self, slot):
        return self.dir + "/" + slot

    # --- transfer -----------------------------------------------------------

    def begin(self, version, size, sha256, mac):
        """Announce an image; returns the offset to send from (0, or where an
        interrupted transfer of the same image stopped). Raises UpgradeError."""
        try:
            sha256 = sign.as_bytes(sha256, 32, "sha256")
            mac = sign.as_bytes(mac, 32, "mac")
            if not (0 < len(version.encode()) < 256 and 0 <= size <= 0xFFFFFFFF):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            raise I.UpgradeError(I.R_BAD_REQUEST)
        st = self.st
        if st["pending"]:
            raise I.UpgradeError(I.R_PENDING)
        if st["stage"] == I.INSTALLING:
            raise I.UpgradeError(I.R_STAGE)
        if not sign.equal(sign.upgrade_mac(self.key, version, size, sha256), mac):
            self._fail(I.R_BAD_MAC, version)
        if I.older(version, self.running_version()):
            # Signed, but older than what runs: an old image with a known
            # flaw must not be installable again (a bad release is fixed by
            # a newer version number, never by going back).
            self._fail(I.R_DOWNGRADE, version)
        if not 0 < size <= self.max_size:
            self._fail(I.R_TOO_BIG, version)
        dl = {"version": version, "size": size, "sha256": _hex(sha256), "mac": _hex(mac),
              "slot": self._target()}
        if st["dl"] == dl and st["stage"] in (I.DOWNLOADING, I.VERIFIED):
            return self._offset          # the same image again: resume
        try:
            self._discard()
            if not self._room(size):
                self._fail(I.R_NO_SPACE, version)
            st["dl"] = dl
            self._offset = 0
            self._set(I.DOWNLOADING, None, version)
        except OSError:
            raise I.UpgradeError(I.R_IO)
        return 0

    def chunk(self, offset, data):
        """Stage data at offset; returns the next offset expected. An offset
        other than that (a repeat, a gap) is ignored and gets the expected
        offset back, so the sender resumes from there."""
        st = self.st
        if st["stage"] == I.VERIFIED:
            return self._offset
        if st["stage"] != I.DOWNLOADING:
            raise I.UpgradeError(I.R_STAGE)
        if offset != self._offset or not data:
            return self._offset
        if offset + len(data) > st["dl"]["size"]:
            raise I.UpgradeError(I.R_PAST_END)
        try:
            f = self.fs.open(self._stage_path, "ab")
            try:
                f.write(data)
            finally:
                f.close()
        except OSError:
            self._offset = self._staged_size()
            raise I.UpgradeError(I.R_IO)
        self._offset += len(data)
        return self._offset

    def verify(self):
        """(True, None) when the staged image has the announced sha256, the
        announcement's MAC holds and the image parses; else the stage becomes
        failed and (False, reason). Before the last byte: (False, incomplete)."""
        st = self.st
        if st["stage"] == I.VERIFIED:
            return True, None
        if st["stage"] != I.DOWNLOADING:
            return False, I.R_STAGE
        dl = st["dl"]
        if self._offset != dl["size"]:
            return False, I.R_INCOMPLETE
        sha = binascii.unhexlify(dl["sha256"])
        if not sign.equal(sign.upgrade_mac(self.key, dl["version"], dl["size"], sha),
                          binascii.unhexlify(dl["mac"])):
            return self._failed(I.R_BAD_MAC)
        reason = self._walk(None, sha)
        if reason is not None:
            return self._failed(reason)
        try:
            self._set(I.VERIFIED)
        except OSError:
            st["stage"] = I.DOWNLOADING
            return False, I.R_IO
        return True, None

    def abort(self):
        """Drop a transfer (any stage before installing)."""
        if self.st["stage"] == I.INSTALLING:
            return False, I.R_STAGE
        try:
            self._discard()
            self.st["dl"] = None
            if self.st["stage"] in (I.DOWNLOADING, I.VERIFIED, I.FAILED):
                self._set(I.IDLE, None, self.running_version())
        except OSError:
            return False, I.R_IO
        return True, None

    # --- install, boot, rollback -------------------------------------------

    def activate(self, idle):
        """Install the verified image into the other slot and make it the one
        to boot (pending). Only when `idle` (no session running): otherwise
        (False, busy) and nothing changes. The caller reboots after (True, None)."""
        st = self.st
        if not idle:
            return False, I.R_BUSY
        if st["stage"] != I.VERIFIED:
            return False, I.R_STAGE
        dl = st["dl"]
        slot = dl["slot"]
        sha = binascii.unhexlify(dl["sha256"])
        seq = st["seq"] + 1
        path = self.slot_path(slot)
        try:
            self._set(I.INSTALLING)
            names = []
            reason = self._walk(None, sha, names)
            if reason is None:
                self._clear(slot)
                _makedirs(self.fs, path)
                self._manifest_write(slot, dl, seq, names, False)
                # Hashed again as it is unpacked: what lands in the slot is
                # exactly what was verified, even after weeks on flash.
                reason = self._walk(path, sha)
            if reason is None:
                self._manifest_write(slot, dl, seq, names, True)
        except OSError:
            reason = I.R_IO
        if reason is not None:
            return self._failed(reason)
        st["previous"] = st["active"]
        st["active"] = slot
        st["pending"] = True
        st["boots"] = 0
        st["seq"] = seq
        st["versions"][slot] = dl["version"]
        st["dl"] = None
        try:
            self._set(I.INSTALLED, None, dl["version"])   # the commit point
        except OSError:
            self.st = self._load()      # what flash says: the old slot, installing
            self._recover()
            return False, I.R_IO
        fsio.try_remove(self.fs, self._stage_path)
        self._offset = 0
        return True, None

    def boot_select(self):
        """Call once per boot, before running anything from a slot: returns
        the slot to run. A pending slot has its boot counted first; past the
        limit the previous slot runs and the stage says rolled_back."""
        st = self.st
        if not st["pending"]:
            self.booted = st["active"]
            return st["active"]
        st["boots"] += 1
        if st["boots"] > self.limit:
            bad = st["active"]
            st["active"] = st["previous"]
            st["previous"] = bad
            st["pending"] = False
            st["boots"] = 0
            st["stage"] = I.ROLLED_BACK
            st["reason"] = I.R_NOT_HEALTHY
            st["version"] = st["versions"][bad]
        try:
            self._save()
            self.booted = st["active"]
        except OSError:
            # A boot that cannot be counted could repeat forever: run the
            # proven slot instead (and mark_healthy() will not end the
            # probation of the slot that did not run).
            self.booted = st["previous"] if st["pending"] else st["active"]
        return self.booted

    def mark_healthy(self):
        """The app logged in and its journal recovered: the new slot stays.
        Returns True if this ended a probation. Use the instance that ran
        boot_select() (or one that did not run it at all)."""
        st = self.st
        if not st["pending"] or self.booted not in (None, st["active"]):
            return False
        st["pending"] = False
        st["boots"] = 0
        self._save()
        return True

    # --- reports ------------------------------------------------------------

    def running_version(self):
        return self.st["versions"][self.st["active"]]

    def status(self):
        st = self.st
        dl = st["dl"]
        return {"stage": st["stage"], "version": st["version"],
                "offset": self._offset if dl else 0, "size": dl["size"] if dl else 0,
                "reason": st["reason"], "active": st["active"], "pending": st["pending"],
                "boots": st["boots"]}

    def versions(self):
        st = self.st
        prev = st["previous"]
        return {"board": self.running_version(), "hmi": self.hmi_version,
                "slot": st["active"], "previous": st["versions"][prev] if prev else None}

    # --- helpers ------------------------------------------------------------

    def _fail(self, reason, version):
        # a refused announcement replaces whatever transfer was in progress
        self.st["dl"] = None
        self._failed(reason, version)
        raise I.UpgradeError(reason)

    def _failed(self, reason, version=None):
        self._discard()
        try:
            self._set(I.FAILED, reason, version)
        except OSError:
            pass
        return False, reason

    def _discard(self):
        fsio.try_remove(self.fs, self._stage_path)
        self._offset = 0

    def _room(self, size):
        try:
            v = self.fs.statvfs(self.dir)
        except (AttributeError, OSError):
            return True
        # the image, then its unpacked copy; the target slot's old files go first
        return v[1] * v[4] + _tree_size(self.fs, self.slot_path(self._target())) >= 2 * size

    def _manifest_write(self, slot, dl, seq, names, complete):
        fsio.save_atomic(self.fs, self.slot_path(slot) + "/" + I.MANIFEST, json.dumps(
            {"version": dl["version"], "seq": seq, "sha256": dl["sha256"], "files": names,
             "complete": complete}).encode())

    def _clear(self, slot):
        """Empty a slot: the files its manifest names (a flat fs lists no
        folders), then whatever listdir still shows."""
        path = self.slot_path(slot)
        m = self._manifest(slot)
        if m is not None:
            for n in m["files"]:
                fsio.try_remove(self.fs, path + "/" + n)
        fsio.try_remove(self.fs, path + "/" + I.MANIFEST)
        _rmtree(self.fs, path)

    def _walk(self, dest, sha, names=None):
        """Parse the staged image, writing its files under dest (None: check
        only) and listing their names in `names`. Returns None, or a reason
        (bad sha256 wins over bad image)."""
        try:
            f = self.fs.open(self._stage_path, "rb")
        except OSError:
            return I.R_IO
        r = _Reader(f, self._buf)
        reason = None
        try:
            try:
                if bytes(r.take(len(I.MAGIC))) != I.MAGIC:
                    raise I.UpgradeError(I.R_BAD_IMAGE)
                while True:
                    n = r.take(1)[0]
                    if n == 0:
                        break
                    name = bytes(r.take(n)).decode()
                    I.check_name(name)
                    if names is not None:
                        names.append(name)
                    size = struct.unpack("<I", bytes(r.take(4)))[0]
                    out = None
                    if dest is not None:
                        _makedirs(self.fs, dest + "/" + name, True)
                        out = self.fs.open(dest + "/" + name, "wb")
                    try:
                        r.copy(size, out)
                    finally:
                        if out is not None:
                            out.close()
                if r.rest():
                    raise I.UpgradeError(I.R_BAD_IMAGE)     # bytes after the end mark
            except I.UpgradeError as e:
                reason = e.reason
            except UnicodeError:
                reason = I.R_BAD_IMAGE
            r.rest()
        finally:
            f.close()
        if not sign.equal(r.h.digest(), sha):
            return I.R_BAD_SHA
        return reason


def _makedirs(fs, path, parent_only=False):
    mkdir = getattr(fs, "mkdir", None)
    if mkdir is None:
        return          # a flat fs (FlashSim): folders are implied by names
    parts = path.split("/")
    if parent_only:
        parts = parts[:-1]
    cur = ""
    for i, p in enumerate(parts):
        cur = p if i == 0 else cur + "/" + p
        if not p:
            continue
        try:
            mkdir(cur)
        except OSError:
            pass


def _is_dir(fs, path):
    try:
        return fs.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _rmtree(fs, path):
    try:
        names = fs.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        if _is_dir(fs, p):
            _rmtree(fs, p)
        else:
            fs.remove(p)
    rmdir = getattr(fs, "rmdir", None)
    if rmdir is not None:
        rmdir(path)


def _tree_size(fs, path):
    total = 0
    try:
        names = fs.listdir(path)
    except OSError:
        return 0
    for n in names:
        p = path + "/" + n
        if _is_dir(fs, p):
            total += _tree_size(fs, p)
        else:
            try:
                total += fs.stat(p)[6]
            except OSError:
                pass
    return total
