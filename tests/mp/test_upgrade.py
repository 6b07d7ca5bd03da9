# Firmware upgrade on the pile's filesystem: transfer that resumes, sha256
# and MAC checks, A/B slots, idle-only activation, boot counter, rollback,
# power cuts. A "reboot" is a new Updater on the same directory.
import hashlib
import json
import os

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from firmware import auth
from sim.flash import FlashSim, PowerCut as SimCut
from firmware.upgrade import Updater
from protocol import image as U
from protocol import sign
from protocol.image import UpgradeError
from tests.mp.util import TempDir

KEY = b"\x5a" * 32
CHUNK = 200          # fw_chunk carries at most 200 bytes


def files(version, n=3):
    """A small firmware: a few modules whose bytes depend on the version."""
    out = [("VERSION", version.encode())]
    for i in range(n):
        body = ("# %s module %d\n" % (version, i)) * (20 + 7 * i)
        out.append(("firmware/m%d.py" % i, body.encode()))
    return out


def image(version, n=3):
    return U.pack_image(files(version, n))


def announce(img, version, key=KEY):
    sha = hashlib.sha256(img).digest()
    return version, len(img), sha, sign.upgrade_mac(key, version, len(img), sha)


def send(up, img, start, stop=None, size=CHUNK):
    """Send img[start:stop] in chunks, as the bridge does; returns the offset."""
    stop = len(img) if stop is None else stop
    off = start
    while off < stop:
        off = up.chunk(off, img[off:min(off + size, stop)])
    return off


def boot(d, **kw):
    return Updater(d, KEY, **kw)


def installed(d, slot, version):
    """Every file of the version's image is in the slot, byte for byte."""
    for name, data in files(version):
        with open(d + "/fw/" + slot + "/" + name, "rb") as f:
            assert f.read() == data, (slot, name)
    return True


def download(up, version):
    img = image(version)
    assert up.begin(*announce(img, version)) == 0
    assert send(up, img, 0) == len(img)
    return img


def upgraded(d, version, idle=True):
    """A pile at `d` taken through download, verify, activate."""
    up = boot(d, factory_version="1.0")
    download(up, version)
    assert up.verify() == (True, None)
    assert up.activate(idle) == (True, None)
    return up


def test_happy_path_download_verify_activate_boot_healthy():
    with TempDir("up") as d:
        up = boot(d, factory_version="1.0", hmi_version="103")
        assert up.status()["stage"] == "idle"
        assert up.versions() == {"board": "1.0", "hmi": "103", "slot": "a", "previous": None}
        img = download(up, "2.0")
        st = up.status()
        assert (st["stage"], st["version"], st["offset"], st["size"]) == ("downloading", "2.0", len(img), len(img))
        assert up.verify() == (True, None)
        assert up.status()["stage"] == "verified"
        assert up.activate(True) == (True, None)
        st = up.status()
        assert (st["stage"], st["version"], st["active"], st["pending"]) == ("installed", "2.0", "b", True)
        assert installed(d, "b", "2.0")
        assert "stage.img" not in os.listdir(d + "/fw")
        up = boot(d, hmi_version="103")               # reboot into the new slot
        assert up.boot_select() == "b"
        assert up.status()["boots"] == 1
        assert up.mark_healthy()
        assert up.versions() == {"board": "2.0", "hmi": "103", "slot": "b", "previous": "1.0"}
        for _ in range(5):
            up = boot(d)
            assert up.boot_select() == "b"
        assert up.status()["stage"] == "installed" and not up.status()["pending"]


def test_resume_after_broken_link_at_several_offsets():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        ann = announce(img, "2.0")
        assert up.begin(*ann) == 0
        off = 0
        for cut in (1, 199, 200, 777, len(img) - 1):
            off = send(up, img, off, cut, 150)      # the link drops at `cut`
            assert off == cut
            assert up.begin(*ann) == cut           # same image announced again: resume
        assert send(up, img, off) == len(img)
        assert up.verify() == (True, None)


def test_resume_across_reboots_keeps_staged_bytes():
    with TempDir("up") as d:
        img = image("2.0")
        ann = announce(img, "2.0")
        up = boot(d)
        assert up.begin(*ann) == 0
        off = 0
        for cut in (5, 600, len(img) - 3):
            off = send(up, img, off, cut)
            up = boot(d)                            # power cut, reboot
            assert up.boot_select() == "a"
            st = up.status()
            assert (st["stage"], st["offset"], st["size"]) == ("downloading", cut, len(img))
            assert up.begin(*ann) == cut
        assert send(up, img, off) == len(img)
        assert up.verify() == (True, None)
        assert up.activate(True) == (True, None)


def test_wrong_offset_gets_the_expected_offset_back():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        up.begin(*announce(img, "2.0"))
        assert up.chunk(0, img[:100]) == 100
        assert up.chunk(0, img[:100]) == 100        # repeat (our reply was lost)
        assert up.chunk(300, img[300:400]) == 100   # gap
        assert up.chunk(100, b"") == 100
        assert up.chunk(100, img[100:300]) == 300
        e = None
        try:
            up.chunk(300, img[300:] + b"extra")
        except UpgradeError as x:
            e = x
        assert e is not None and e.reason == "past end"
        assert up.status()["offset"] == 300 and up.status()["stage"] == "downloading"


def test_new_image_announced_mid_transfer_restarts_from_zero():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        up.begin(*announce(img, "2.0"))
        send(up, img, 0, 400)
        img3 = image("3.0")
        assert up.begin(*announce(img3, "3.0")) == 0
        assert send(up, img3, 0) == len(img3)
        assert up.verify() == (True, None)
        assert up.activate(True) == (True, None)
        assert installed(d, "b", "3.0")


def test_wrong_sha256_fails_verification():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        wrong = hashlib.sha256(img + b"x").digest()     # signed, but not this image
        assert up.begin("2.0", len(img), wrong, sign.upgrade_mac(KEY, "2.0", len(img), wrong)) == 0
        send(up, img, 0)
        assert up.verify() == (False, "bad sha256")
        st = up.status()
        assert (st["stage"], st["reason"]) == ("failed", "bad sha256")
        assert up.activate(True) == (False, "stage")
        assert boot(d).boot_select() == "a"


def test_byte_changed_on_flash_after_download_fails_verification():
    with TempDir("up") as d:
        up = boot(d)
        img = download(up, "2.0")
        with open(d + "/fw/stage.img", "r+b") as f:
            f.seek(len(img) // 2)
            f.write(b"\xff")
        assert up.verify() == (False, "bad sha256")
        assert up.status()["stage"] == "failed"


def test_wrong_mac_fails_before_any_byte_is_staged():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        forged = announce(img, "2.0", b"\x00" * 32)
        e = None
        try:
            up.begin(*forged)
        except UpgradeError as x:
            e = x
        assert e is not None and e.reason == "bad mac"
        st = up.status()
        assert (st["stage"], st["reason"], st["offset"]) == ("failed", "bad mac", 0)
        e = None
        try:
            up.chunk(0, img[:100])
        except UpgradeError as x:
            e = x
        assert e.reason == "stage"
        assert "stage.img" not in os.listdir(d + "/fw")
        # a genuine announcement afterwards works
        assert up.begin(*announce(img, "2.0")) == 0


def test_a_validly_signed_older_image_is_refused_as_a_downgrade():
    # Issue 17: any image signed with the upgrade key was taken, an old one
    # with a known flaw too. Now older than the running version is refused
    # before a byte is staged; the same or a newer version is taken.
    with TempDir("up") as d:
        up = upgraded(d, "2.1")
        up = boot(d)
        up.boot_select()
        up.mark_healthy()
        assert up.running_version() == "2.1"
        for old in ("2.0", "1.9.9", "2.0.99"):
            img = image(old)
            e = None
            try:
                up.begin(*announce(img, old))
            except UpgradeError as x:
                e = x
            assert e is not None and e.reason == "downgrade", old
            assert up.status()["reason"] == "downgrade"
            assert "stage.img" not in os.listdir(d + "/fw")
        for ok in ("2.1", "2.1.0", "2.2"):
            assert up.begin(*announce(image(ok), ok)) == 0, ok
        assert U.older("2.0", "2.1") and not U.older("2.1.0", "2.1") and not U.older("x", "2.1")
        assert U.reason_code("downgrade") == 15


def test_mac_binds_version_and_size():
    img = image("2.0")
    v, n, sha, mac = announce(img, "2.0")
    assert sign.upgrade_mac(KEY, "2.1", n, sha) != mac
    assert sign.upgrade_mac(KEY, v, n + 1, sha) != mac
    with TempDir("up") as d:
        up = boot(d)
        try:
            up.begin("2.1", n, sha, mac)
            assert False, "relabelled image accepted"
        except UpgradeError as e:
            assert e.reason == "bad mac"
        assert up.begin(v, n, binascii.hexlify(sha).decode().upper(),
                        binascii.hexlify(mac).decode().upper()) == 0   # hex, as fw_control decodes


def test_malformed_announcements_refused_as_bad_request():
    with TempDir("up") as d:
        up = boot(d)
        v, n, sha, mac = announce(image("2.0"), "2.0")
        for args in (("", n, sha, mac), (v, -1, sha, mac), (v, 1 << 32, sha, mac),
                     (v, n, sha[:31], mac), (v, n, sha, "zz" * 32), (None, n, sha, mac)):
            try:
                up.begin(*args)
                assert False, args
            except UpgradeError as e:
                assert e.reason == "bad request", (args, e.reason)
        assert up.status()["stage"] == "idle"


def test_oversized_announcement_refused():
    with TempDir("up") as d:
        up = boot(d, max_size=1000)
        img = image("2.0", 8)
        try:
            up.begin(*announce(img, "2.0"))
            assert False, "too big accepted"
        except UpgradeError as e:
            assert e.reason == "too big"


def test_image_with_unsafe_path_fails_verification():
    with TempDir("up") as d:
        bad = bytearray(U.MAGIC)
        for name in (b"../boot.py",):
            bad.append(len(name))
            bad.extend(name)
            bad.extend(b"\x02\x00\x00\x00hi")
        bad.append(0)
        img = bytes(bad)
        up = boot(d)
        up.begin(*announce(img, "6.6"))
        send(up, img, 0)
        assert up.verify() == (False, "bad image")
        assert "boot.py" not in os.listdir(d)


def test_activate_refused_while_charging_then_done_when_idle():
    with TempDir("up") as d:
        up = boot(d)
        download(up, "2.0")
        assert up.verify() == (True, None)
        assert up.activate(False) == (False, "busy")
        st = up.status()
        assert (st["stage"], st["active"], st["pending"]) == ("verified", "a", False)
        assert boot(d).boot_select() == "a"
        up = boot(d)                                # still verified after a reboot
        assert up.activate(True) == (True, None)
        assert up.status()["active"] == "b"


def test_activate_before_verify_refused():
    with TempDir("up") as d:
        up = boot(d)
        img = image("2.0")
        up.begin(*announce(img, "2.0"))
        assert up.activate(True) == (False, "stage")
        send(up, img, 0, 100)
        assert up.verify() == (False, "incomplete")
        assert up.status()["stage"] == "downloading"


def test_new_slot_never_healthy_rolls_back_after_the_limit():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        for n in (1, 2, 3):
            up = boot(d)
            assert up.boot_select() == "b"
            assert up.status()["boots"] == n
        up = boot(d)
        assert up.boot_select() == "a"              # 4th boot: back to the old one
        st = up.status()
        assert (st["stage"], st["version"], st["reason"], st["pending"]) == \
            ("rolled_back", "2.0", "not healthy", False)
        assert up.versions()["board"] == "1.0"
        assert not up.mark_healthy()
        for _ in range(3):
            assert boot(d).boot_select() == "a"
        assert boot(d).status()["stage"] == "rolled_back"


def test_rollback_limit_is_configurable():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        assert boot(d, limit=1).boot_select() == "b"
        assert boot(d, limit=1).boot_select() == "a"


def test_healthy_slot_stays_and_old_one_is_next_target():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        up = boot(d)
        assert up.boot_select() == "b"
        assert up.mark_healthy()
        for _ in range(6):
            assert boot(d).boot_select() == "b"
        up = boot(d)
        download(up, "3.0")                         # next upgrade goes to slot a
        assert up.verify() == (True, None)
        assert up.activate(True) == (True, None)
        assert installed(d, "a", "3.0") and installed(d, "b", "2.0")
        assert up.versions()["previous"] == "2.0"


def test_new_upgrade_refused_until_the_last_one_is_healthy():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        up = boot(d)
        up.boot_select()
        img = image("3.0")
        try:
            up.begin(*announce(img, "3.0"))
            assert False, "begin accepted while pending"
        except UpgradeError as e:
            assert e.reason == "pending"
        up.mark_healthy()
        assert up.begin(*announce(img, "3.0")) == 0


def test_abort_drops_the_transfer():
    with TempDir("up") as d:
        up = boot(d, factory_version="1.0")
        img = image("2.0")
        up.begin(*announce(img, "2.0"))
        send(up, img, 0, 300)
        assert up.abort() == (True, None)
        st = up.status()
        assert (st["stage"], st["version"], st["offset"], st["size"]) == ("idle", "1.0", 0, 0)
        assert "stage.img" not in os.listdir(d + "/fw")
        assert boot(d).begin(*announce(img, "2.0")) == 0


def test_stage_and_reason_codes_are_stable():
    assert [U.stage_code(s) for s in ("idle", "downloading", "verified", "installing",
                                      "installed", "failed", "rolled_back")] == [0, 1, 2, 3, 4, 5, 6]
    assert U.reason_code(None) == 0 and U.reason_code("bad mac") == 1
    assert U.reason_code("bad sha256") == 2 and U.reason_code("not healthy") == 12


class FullFs:
    """The real filesystem, except that renames fail (flash full) after
    `ok` of them succeeded."""

    def __init__(self, ok=0):
        self.ok = ok

    def rename(self, a, b):
        if self.ok <= 0:
            raise OSError(28)
        self.ok -= 1
        auth.OS.rename(a, b)

    def __getattr__(self, name):
        return getattr(auth.OS, name)


def test_boot_that_cannot_be_counted_runs_the_proven_slot():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        up = Updater(d, KEY, fs=FullFs())
        assert up.boot_select() == "a"
        assert not up.mark_healthy()                 # slot b never ran
        up = boot(d)
        assert up.boot_select() == "b" and up.status()["boots"] == 1


def test_activation_whose_commit_cannot_be_written_reports_io_and_can_be_retried():
    with TempDir("up") as d:
        up = boot(d)
        download(up, "2.0")
        up.verify()
        up = Updater(d, KEY, fs=FullFs(3))           # state, manifest x2, then the commit fails
        assert up.activate(True) == (False, "io")
        assert up.status()["active"] == "a"
        with open(d + "/fw/b/slot.json") as f:
            assert json.loads(f.read())["complete"]   # it was the commit that failed
        up = boot(d)
        assert up.boot_select() == "a" and up.status()["stage"] == "verified"
        assert up.activate(True) == (True, None)
        assert boot(d).boot_select() == "b"


# --- power cuts ---------------------------------------------------------------

def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_torn_temp_state_beside_a_good_one_is_ignored():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        _write(d + "/fw/state.json.tmp", b'{"fmt": 1, "active": "a", "pend')
        up = boot(d)
        assert up.boot_select() == "b"
        assert up.status()["boots"] == 1
        assert "state.json.tmp" not in os.listdir(d + "/fw")


def test_state_rename_cut_short_is_completed():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        os.rename(d + "/fw/state.json", d + "/fw/state.json.tmp")   # FAT: deleted, not yet renamed
        up = boot(d)
        assert up.boot_select() == "b"
        assert "state.json" in os.listdir(d + "/fw")


def test_truncated_state_is_rebuilt_and_new_slot_put_on_probation():
    with TempDir("up") as d:
        upgraded(d, "2.0")
        with open(d + "/fw/state.json", "rb") as f:
            raw = f.read()
        _write(d + "/fw/state.json", raw[:len(raw) // 2])
        up = boot(d, factory_version="1.0")
        st = up.status()
        assert (st["active"], st["pending"], st["reason"]) == ("b", True, "state lost")
        for _ in range(3):
            assert boot(d).boot_select() == "b"
        assert boot(d).boot_select() == "a"          # it never came up: rolled back


def test_missing_state_on_a_factory_board_runs_slot_a():
    with TempDir("up") as d:
        up = boot(d, factory_version="1.0")
        assert up.boot_select() == "a"
        assert up.versions()["board"] == "1.0"
        _write(d + "/fw/state.json", b"\x00" * 40)      # erased flash page
        assert boot(d, factory_version="1.0").boot_select() == "a"


class PowerCut(Exception):
    pass


class _CutFile:
    def __init__(self, fs, f):
        self.fs = fs
        self.f = f

    def write(self, data):
        if self.fs.tick():
            self.f.write(bytes(data[:len(data) // 2]))   # a torn write
            raise PowerCut()
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


class CutFs:
    """The real filesystem until the n-th change, which is cut short (the
    power goes off): nothing after it happens."""

    def __init__(self, n):
        self.n = n

    def tick(self):
        self.n -= 1
        return self.n == 0

    def open(self, path, mode):
        if "r" in mode:
            return auth.OS.open(path, mode)
        if self.tick():
            raise PowerCut()
        return _CutFile(self, auth.OS.open(path, mode))

    def _op(name):
        def op(self, *a):
            if self.tick():
                raise PowerCut()
            return getattr(auth.OS, name)(*a)
        return op

    rename = _op("rename")
    remove = _op("remove")
    mkdir = _op("mkdir")
    rmdir = _op("rmdir")

    def __getattr__(self, name):
        return getattr(auth.OS, name)


def _cut_during(d, n, action):
    try:
        action(Updater(d, KEY, fs=CutFs(n)))
    except PowerCut:
        return True
    return False


def test_power_cut_at_every_write_of_an_activation_leaves_a_bootable_pile():
    n = 0
    while True:
        n += 1
        with TempDir("cut") as d:
            up = boot(d, factory_version="1.0")
            download(up, "2.0")
            up.verify()
            cut = _cut_during(d, n, lambda u: u.activate(True))
            up = boot(d, factory_version="1.0")
            slot = up.boot_select()
            if slot == "b":                          # the commit made it
                assert installed(d, "b", "2.0") and up.status()["pending"]
            else:
                assert cut and up.status()["stage"] == "verified", (n, up.status())
                assert up.activate(True) == (True, None)   # and it can simply be retried
                assert installed(d, "b", "2.0")
                assert boot(d).boot_select() == "b"
        if not cut:
            break
        assert n < 1000, "the activation never completed"
    assert n > 10


def test_power_cut_at_every_write_of_a_boot_count_keeps_the_rollback():
    n = 0
    while True:
        n += 1
        with TempDir("cut") as d:
            upgraded(d, "2.0")
            for _ in range(3):
                boot(d).boot_select()
            cut = _cut_during(d, n, lambda u: u.boot_select())   # the 4th boot is cut
            slots = [boot(d).boot_select() for _ in range(2)]
            assert slots == ["a", "a"], (n, slots)
            assert boot(d).status()["stage"] == "rolled_back"
        if not cut:
            break
        assert n < 1000, "the 4th boot never completed"
    assert n > 5, n                                  # each write of the 4th boot was cut once


# --- the same on the shared flash simulator (a flat fs: no folders) -------------

def clone(sim, cut_after=None):
    c = FlashSim(cut_after)
    for k in sim.files:
        c.files[k] = bytearray(sim.files[k])
    return c


TINY = U.pack_image([("main.py", b"print(2)\n"), ("lib/x.py", b"X = 1\n")])


def test_flashsim_power_cut_after_every_byte_and_rename_of_an_activation():
    base = FlashSim()
    up = Updater("/p", KEY, fs=base, factory_version="1.0")
    up.begin(*announce(TINY, "2.0"))
    send(up, TINY, 0)
    assert up.verify() == (True, None)
    k = 0
    while True:
        sim = clone(base, k)
        try:
            Updater("/p", KEY, fs=sim).activate(True)
            cut = False
        except SimCut:
            cut = True
        sim.reboot()
        up = Updater("/p", KEY, fs=sim)
        if up.boot_select() == "b":                  # committed
            assert up.status()["pending"] and "/p/fw/stage.img" not in sim.files
        else:                                        # not committed: still verified, retry works
            assert cut and up.status()["stage"] == "verified", (k, up.status())
            assert up.activate(True) == (True, None)
            assert Updater("/p", KEY, fs=sim).boot_select() == "b"
        assert sim.files["/p/fw/b/main.py"] == b"print(2)\n"
        assert sim.files["/p/fw/b/lib/x.py"] == b"X = 1\n"
        if not cut:
            break
        k += 1
        assert k < 100000, "the activation never completed"
    assert k > 200, k                                # every unit of the activation was cut once


def test_flashsim_power_cuts_during_transfer_resume_from_the_bytes_kept():
    img = image("2.0")
    ann = announce(img, "2.0")
    sim = FlashSim()
    Updater("/p", KEY, fs=sim).begin(*ann)
    torn = []
    for k in (37, 200, 1, 300):                      # units from each reboot
        sim.reboot(sim.units + k)
        up = Updater("/p", KEY, fs=sim)
        try:
            off = up.begin(*ann)
            send(up, img, off)
        except SimCut:
            torn.append(sim.partial)                 # a chunk cut mid-write
    sim.reboot()
    up = Updater("/p", KEY, fs=sim)
    send(up, img, up.begin(*ann))
    assert len(torn) == 4 and torn[0][0] == "/p/fw/stage.img" and torn[0][1] < torn[0][2]
    assert up.verify() == (True, None)
    assert up.activate(True) == (True, None)


def test_flashsim_rollback_and_slot_reuse_without_folders():
    sim = FlashSim()
    up = Updater("/p", KEY, fs=sim, factory_version="1.0")
    up.begin(*announce(TINY, "2.0"))
    send(up, TINY, 0)
    up.verify()
    up.activate(True)
    for _ in range(4):
        slot = Updater("/p", KEY, fs=sim).boot_select()
    assert slot == "a"
    up = Updater("/p", KEY, fs=sim)
    img = U.pack_image([("main.py", b"print(3)\n")])
    up.begin(*announce(img, "3.0"))
    send(up, img, 0)
    up.verify()
    assert up.activate(True) == (True, None)
    assert sim.files["/p/fw/b/main.py"] == b"print(3)\n"
    assert "/p/fw/b/lib/x.py" not in sim.files     # the old slot's files went first
