# The state behind remote operations on the pile (field cases §1 and §5):
# the command key's check, the firmware updater, the VIN list the platform
# pushes, and the versions the pile reports. firmware/pile.py owns one
# Remote; protocol/router.py screens signed frames with its command-key check
# (self.auth), so the rest of the pile does not change whether a command
# arrived bare or signed. The frames themselves (0xD6, 0xE8, 0xEA, 0xEE) are
# handled in firmware/handlers.py.
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
from protocol import fields as F

from protocol import const

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


def valid_vin(vin):
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
        key = cfg.get("cmd_key")
        if key:
            from firmware import auth
            self.auth = auth.CommandAuth(key, auth.CounterStore(root + "/cmd.ctr", fs))
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
                elif w[0] == "v" and len(w) == 3 and valid_vin(w[1]):
                    pairs.append((w[1], int(w[2])))
                else:
                    raise ValueError(line)
            self.vins.set_vins(pairs)
        except (ValueError, UnicodeError) as e:
            self.pile.event("vin_list_unreadable", str(e))
            return
        self.vin_version = ver
        self._vin_pairs = pairs

    def save_vins(self, version, pairs):
        """Keep the VIN list `pairs` [(VIN, department)] as `version`: on
        flash first (one rename), then in force (0xEE, firmware/handlers.py)."""
        out = ["n %d\n" % version]
        for vin, d in pairs:
            out.append("v %s %d\n" % (vin, d))
        fsio.save_atomic(self.fs or fsio.OS, self._vin_path, "".join(out).encode())
        self.vins.set_vins(pairs)
        self.vin_version = version
        self._vin_pairs = pairs
