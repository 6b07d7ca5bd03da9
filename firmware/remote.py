# Remote operations on the pile (field cases §1 and §5): signed commands,
# firmware upgrade over the link, the VIN list the platform pushes, and the
# versions the pile reports. firmware/pile.py owns one Remote and sends every
# frame through screen() first; the rest of the pile does not change whether
# a command arrived bare or signed.
#
# cfg keys (all optional; without them the pile behaves as a plain YKC pile,
# as third-party platforms expect):
#   cmd_key        bytes: the pile's command key K_pile. Protected frames are
#                  then acted on only inside a valid 0xD2 `signed` envelope;
#                  the replay counter lives in <root>/cmd.ctr
#   upgrade_key    bytes: the site's upgrade key; enables 0xE8 / 0xEA with an
#                  Updater rooted at <root>/fw (A/B slots, rollback)
#   upgrade_boots  boots a new slot gets without becoming healthy (default 3)
#   updater        an Updater that already ran boot_select() (a board's
#                  main.py, see boot()); the pile then does not count the boot
#   vin_max        VINs the pile keeps from 0xEE (default _VIN_MAX)
# (mac_key, the bill MAC, is firmware/pile.py's bill_payload.)
#
# Protocol side: docs/protocol.md (Signed commands, Firmware upgrade, VIN
# list, Versions); keys and counters: docs/security.md; slots: docs/upgrade.md.
from firmware import fsio
from firmware.vinauth import VinPolicy, norm_vin
from protocol import codec
from protocol import fields as F

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

CODE_SIGNED = const(0xD2)

_VIN_MAX = const(500)         # a VIN costs ~100 bytes of heap on a board
_VIN_FILE = "/vinlist"


def boot(root, key, fs=None, limit=3, factory_version="0", hmi_version=None):
    """The Updater for this boot with its slot selected (the boot counted).
    On a board main.py calls this first, puts root/fw/<updater.booted> on
    sys.path, imports the app and hands the Updater over as cfg "updater".
    `rolled_back` is set on it when this very boot rolled a new slot back."""
    from firmware.upgrade import Updater
    up = Updater(root, key, fs=fs, limit=limit, factory_version=factory_version,
                 hmi_version=hmi_version)
    was = up.status()["pending"]
    up.boot_select()
    up.rolled_back = was and not up.status()["pending"]
    return up


def _valid_vin(vin):
    v = norm_vin(vin)
    if v is None or len(v) != 17:
        return None
    for ch in v:
        if not ("0" <= ch <= "9" or "A" <= ch <= "Z"):
            return None
    return v


class Remote:
    def __init__(self, pile, cfg, root, fs=None, factory_version="0"):
        self.pile = pile
        self.fs = fs
        self.auth = None
        self._protected = ()
        key = cfg.get("cmd_key")
        if key:
            from firmware import auth
            from protocol.sign import PROTECTED
            self.auth = auth.CommandAuth(key, auth.CounterStore(root + "/cmd.ctr", fs))
            self._protected = PROTECTED
        # the version a board runs before its first upgrade (no fw/state.json)
        self.factory_version = cfg.get("sw_version") or factory_version
        self.cfg = cfg   # hmi_version is read from it when asked: one source of truth
        self.hmi = cfg.get("hmi_version") or ""
        up = cfg.get("updater")
        if up is None and cfg.get("upgrade_key"):
            up = boot(root, cfg["upgrade_key"], fs, cfg.get("upgrade_boots", 3),
                      self.factory_version, self.hmi)
        self.updater = up
        self.rolled_back = bool(getattr(up, "rolled_back", False))
        self.vins = cfg.get("vin_policy") or VinPolicy()
        self.vin_max = cfg.get("vin_max", _VIN_MAX)
        self.vin_version = None
        self._vin_path = root + _VIN_FILE
        self._vin_pairs = []
        self._load_vins()

    def login_proof(self, pile, nonce_hex):
        """The 0xD7 mac (hex) for the bridge's login challenge, or None
        without a command key (an unkeyed pile does not answer)."""
        key = self.cfg.get("cmd_key")
        if not key:
            return None
        import binascii
        from protocol.sign import login_mac
        return binascii.hexlify(login_mac(key, pile, binascii.unhexlify(nonce_hex))).decode().upper()

    # --- versions ----------------------------------------------------------------

    def board_version(self):
        """The running board firmware, as it goes on the wire (8 bytes)."""
        up = self.updater
        if up is None:
            return F.wire_version(self.factory_version)
        v = up.versions()
        # booted != active only when the boot could not be counted (upgrade.py)
        ver = v["board"] if up.booted in (None, up.status()["active"]) else v["previous"]
        return F.wire_version(ver or self.factory_version)

    def hmi_version(self):
        """The screen firmware (cfg hmi_version, as the console may set it
        after boot), as it goes on the wire (8 bytes)."""
        return F.wire_version(self.cfg.get("hmi_version") or "")

    def on_login(self):
        """Logged in, journal recovered (Pile.__init__): a new slot is healthy."""
        up = self.updater
        if up is None or not up.status()["pending"]:
            return
        try:
            if up.mark_healthy():
                self.pile.event("firmware_healthy", self.board_version())
        except OSError as e:
            self.pile.event("firmware_healthy_io", str(e))

    # --- signed commands ---------------------------------------------------------

    def screen(self, f):
        """True when the frame was dealt with here: an envelope (opened and its
        inner frame dispatched, or refused), or a protected frame that arrived
        bare on a pile holding a command key (refused, never executed)."""
        c = f.code
        if c == CODE_SIGNED:
            self._signed(f)
            return True
        if c in self._protected:
            from protocol import sign
            self._reject(f, 0, sign.reason_code(sign.R_UNSIGNED), c)
            return True
        return False

    def _signed(self, f):
        env = f.body
        counter = 0
        if len(env) >= 4:
            counter = env[0] | env[1] << 8 | env[2] << 16 | env[3] << 24
        from protocol import sign
        if self.auth is None:
            self._reject(f, counter, sign.reason_code(sign.R_NO_KEY), env[36] if len(env) > 36 else 0)
            return
        parts = sign.unpack_envelope(env)
        malformed = sign.reason_code(sign.R_MALFORMED)
        if parts is None:
            self._reject(f, counter, malformed, 0)
            return
        counter, mac, code, body = parts
        inner = _inner(f, code, body)
        if inner is None:
            # Checked before the MAC: a body we could not act on must not
            # use up a counter.
            self._reject(f, counter, malformed, code)
            return
        ok, reason = self.auth.verify(self.pile.pile, counter, code, body, mac)
        if not ok:
            self._reject(f, counter, sign.reason_code(reason), code)
            return
        self.pile.log("signed 0x%02X counter %d" % (code, counter))
        self.pile.dispatch(inner)

    def _reject(self, f, counter, reason, code):
        self.pile.event("signed_reject", "0x%02X counter %d reason %d" % (code, counter, reason))
        self.pile.link.reply(f, "signed_reject", {"counter": counter, "reason": reason})

    # --- firmware upgrade (0xE8 / 0xEA) ----------------------------------------------

    def fw_control(self, f):
        from protocol import image as I
        v = f.fields
        op = v["op"]
        up = self.updater
        if up is None:
            self._fw_reply(f, op, I.FW_NO_KEY)
            return
        result = 0
        reason = None
        if op == I.FW_BEGIN:
            try:
                up.begin(v["version"], v["size"], v["sha256"], v["mac"])
            except I.UpgradeError as e:
                reason = e.reason
        elif op == I.FW_VERIFY:
            reason = up.verify()[1]
        elif op == I.FW_ACTIVATE:
            if self.pile.reboot_hook is None:
                result = I.FW_NO_REBOOT
            else:
                reason = up.activate(self.pile.idle())[1]
                if reason is None:
                    self.pile.event("firmware_installed", up.status()["version"])
                    self.pile.request_reboot(1, "upgrade", 4)   # pile.BOOT_UPGRADE
        elif op == I.FW_ABORT:
            reason = up.abort()[1]
        elif op == I.FW_STATUS:
            # the reason the current stage was reached with (0 none): why a
            # transfer failed, or "not healthy" after a rollback
            result = I.reason_code(up.status()["reason"])
        else:
            result = I.reason_code(I.R_BAD_REQUEST)
        if reason is not None:
            result = I.reason_code(reason)
            self.pile.event("firmware_refused", "op %d: %s" % (op, reason))
        self._fw_reply(f, op, result)

    def fw_chunk(self, f):
        from protocol import image as I
        up = self.updater
        if up is None:
            self._fw_reply(f, I.FW_STATUS, I.FW_NO_KEY)
            return
        v = f.fields
        result = 0
        if v["pile"] != self.pile.pile:
            result = I.reason_code(I.R_BAD_REQUEST)
        else:
            try:
                up.chunk(v["offset"], v["data"])
            except I.UpgradeError as e:
                result = I.reason_code(e.reason)
        self._fw_reply(f, I.FW_STATUS, result)

    def _fw_reply(self, f, op, result):
        stage = offset = 0
        up = self.updater
        if up is not None:
            from protocol.image import stage_code
            st = up.status()
            stage = stage_code(st["stage"])
            offset = st["offset"]
        self.pile.link.reply(f, "fw_reply", {"pile": self.pile.pile, "op": op & 0xFF,
                                             "result": result, "stage": stage, "offset": offset})

    # --- VIN list (0xEE) ----------------------------------------------------------------
    # <root>/vinlist holds "n VERSION" and one "v VIN DEPARTMENT" line per VIN:
    # the list and its version are committed by one rename (fsio.save_atomic),
    # so after a power cut they always belong together.

    def _load_vins(self):
        raw = fsio.read(self.fs or fsio.OS, self._vin_path)
        if not raw:
            return
        pairs = []
        ver = None
        try:
            for line in raw.decode().split("\n"):
                w = line.split()
                if not w:
                    continue
                if w[0] == "n" and len(w) == 2:
                    ver = int(w[1])
                elif w[0] == "v" and len(w) == 3 and _valid_vin(w[1]):
                    pairs.append((w[1], int(w[2])))
                else:
                    raise ValueError(line)
            self.vins.set_vins(pairs)
        except (ValueError, UnicodeError) as e:
            self.pile.event("vin_list_unreadable", str(e))
            return
        self.vin_version = ver
        self._vin_pairs = pairs

    def vin_list(self, f):
        v = f.fields
        ver = v["version"]
        result = 1
        pairs = self._vin_pairs
        try:
            recs = codec.unpack_records("vin_list", "records", v["records"])
            if len(recs) != v["count"]:
                raise ValueError("count %d, %d records" % (v["count"], len(recs)))
            # A new version replaces the list, the same version adds to it
            # (a list longer than one frame); a VIN listed twice keeps the
            # last department.
            new = [] if ver != self.vin_version else list(pairs)
            for r in recs:
                vin = _valid_vin(r["vin"])
                if vin is None:
                    raise ValueError("VIN %r" % (r["vin"],))
                for i in range(len(new)):
                    if new[i][0] == vin:
                        new.pop(i)
                        break
                new.append((vin, r["department"]))
            if len(new) > self.vin_max:
                raise ValueError("%d VINs, at most %d" % (len(new), self.vin_max))
            out = ["n %d\n" % ver]
            for vin, d in new:
                out.append("v %s %d\n" % (vin, d))
            fsio.save_atomic(self.fs or fsio.OS, self._vin_path, "".join(out).encode())
            self.vins.set_vins(new)
            self.vin_version = ver
            self._vin_pairs = pairs = new
            result = 0
            self.pile.event("vin_list", "version %d: %d VINs" % (ver, len(new)))
        except (ValueError, OSError) as e:
            self.pile.event("vin_list_refused", "version %d: %s" % (ver, e))
        self.pile.link.reply(f, "vin_list_reply", {"version": ver, "result": result,
                                                   "stored": len(pairs)})


def _inner(f, code, body):
    """The inner frame of an envelope as the codec would have decoded it bare
    (same sequence, so its reply echoes the envelope's), or None if it is not
    a platform-to-pile frame we can decode."""
    if code & 1 or code == CODE_SIGNED:
        return None
    try:
        layout = codec.layout_for(code, len(body))
        return codec.Frame(code, layout.name, f.seq, 0, body, codec.decode_body(layout, body))
    except ValueError:   # FrameError (unknown type, bad length, bad field)
        return None
