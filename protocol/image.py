# Firmware images as both ends see them: the image format, the fw_control
# operations and the fw_reply stage and result codes (the rule that fits a
# version into an 8-byte field is protocol/fields.wire_version). The bridge packs and announces an image
# (host/push.py); the pile stages, checks and installs it in its A/B slots
# (firmware/upgrade.py). The announcement MAC is protocol/sign.upgrade_mac.
#
# Image: b"PCFW" 0x01, then entries [u8 name length (1..255), name (ASCII,
# "/"-separated, relative), u32 LE data length, data], closed by a u8 0.
# A name may not be MANIFEST (the slot's own record) nor contain "." or ".."
# parts, backslashes, spaces or non-ASCII.
import struct

from protocol import const

MAGIC = b"PCFW\x01"
MANIFEST = "slot.json"

# fw_control.op (fw_reply.op echoes it; a chunk is answered with FW_STATUS)
FW_BEGIN = const(1)
FW_VERIFY = const(2)
FW_ACTIVATE = const(3)
FW_ABORT = const(4)
FW_STATUS = const(5)

# Stages; the wire code (fw_reply.stage) is the index in STAGES.
IDLE = "idle"
DOWNLOADING = "downloading"
VERIFIED = "verified"
INSTALLING = "installing"
INSTALLED = "installed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
STAGES = (IDLE, DOWNLOADING, VERIFIED, INSTALLING, INSTALLED, FAILED, ROLLED_BACK)

# Reasons; the wire code (fw_reply.result) is the index in REASONS.
R_BAD_MAC = "bad mac"            # announcement not signed with the upgrade key
R_BAD_SHA = "bad sha256"         # staged image differs from the announced hash
R_TOO_BIG = "too big"            # announced size 0 or over max_size
R_NO_SPACE = "no space"          # flash cannot hold the image and its slot
R_BUSY = "busy"                  # activate while the pile is not idle
R_PENDING = "pending"            # the last install is not proven healthy yet
R_STAGE = "stage"                # operation not valid in the current stage
R_INCOMPLETE = "incomplete"      # verify before every byte arrived
R_PAST_END = "past end"          # a chunk would run past the announced size
R_BAD_IMAGE = "bad image"        # the image does not parse (or unsafe names)
R_IO = "io"                      # a filesystem call failed
R_NOT_HEALTHY = "not healthy"    # rolled back: no mark_healthy() in time
R_BAD_REQUEST = "bad request"    # version / sha256 / mac malformed
R_STATE_LOST = "state lost"      # state.json unreadable, rebuilt from slots
R_DOWNGRADE = "downgrade"        # a validly signed image older than the one running
REASONS = (None, R_BAD_MAC, R_BAD_SHA, R_TOO_BIG, R_NO_SPACE, R_BUSY, R_PENDING,
           R_STAGE, R_INCOMPLETE, R_PAST_END, R_BAD_IMAGE, R_IO, R_NOT_HEALTHY,
           R_BAD_REQUEST, R_STATE_LOST, R_DOWNGRADE)


def version_key(v):
    """A version as a tuple of its numbers, for comparing: "209.04.00" and
    the wire's "209.4.0" are both (209, 4, 0); "pc0.1.0" is (0, 1, 0). None
    when it holds no digits (unknown). The one version rule: the bridge's
    minimum versions and the pile's downgrade refusal both use it."""
    if not isinstance(v, str):
        return None
    nums = []
    cur = -1
    for ch in v:
        if "0" <= ch <= "9":
            cur = (0 if cur < 0 else cur * 10) + ord(ch) - 48
        elif cur >= 0:
            nums.append(cur)
            cur = -1
    if cur >= 0:
        nums.append(cur)
    return tuple(nums) if nums else None


def older(version, than):
    """True when `version` is older than `than` by version_key (missing
    numbers count as 0: "2.0" is not older than "2")."""
    v = version_key(version)
    t = version_key(than)
    if v is None or t is None:
        return False
    n = len(v) if len(v) > len(t) else len(t)
    return v + (0,) * (n - len(v)) < t + (0,) * (n - len(t))
# fw_reply.result beyond REASONS: the pile's own
FW_NO_KEY = const(0x80)       # no upgrade_key: this pile takes no images
FW_NO_REBOOT = const(0x81)    # activate refused: the pile cannot reboot itself


def stage_code(stage):
    return STAGES.index(stage)


def reason_code(reason):
    return REASONS.index(reason)


class UpgradeError(Exception):
    """A refused image, begin or chunk; `reason` is one of REASONS."""

    @property
    def reason(self):
        return self.args[0]


def pack_image(files):
    """Image bytes from [(name, data), ...] (host and tests)."""
    out = bytearray(MAGIC)
    for name, data in files:
        check_name(name)
        n = name.encode()
        out.append(len(n))
        out.extend(n)
        out.extend(struct.pack("<I", len(data)))
        out.extend(data)
    out.append(0)
    return bytes(out)


def check_name(name):
    """Raises UpgradeError(bad image) for a name an image may not carry."""
    if not 0 < len(name) < 256 or name == MANIFEST:
        raise UpgradeError(R_BAD_IMAGE)
    for c in name:
        if not (" " < c <= "~") or c == "\\":
            raise UpgradeError(R_BAD_IMAGE)
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise UpgradeError(R_BAD_IMAGE)
