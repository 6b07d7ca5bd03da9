# Remote operations end to end (issue 8, field cases §1 and §5): signed
# commands, firmware upgrade over the link with a broken transfer and a
# rollback, the 5-class tariff, the VIN list, the bill MAC. The real pile
# firmware on simulated hardware against a scripted platform (pilekit).
import hashlib

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from firmware import session as S
from firmware.tariff import fee
from firmware.vinauth import CARD_FLEET, STOP_VIN_DENIED, VinPolicy
from protocol import codec
from protocol import image as U
from protocol import sign
from protocol.fields import wire_version
from tests.mp.pilekit import PILE, Rig, serial
from tests.mp.util import tmpdir

CMD_KEY = bytes(range(32))
UP_KEY = bytes(range(32, 64))
BILL_KEY = bytes(range(64, 96))
OLD = "209.04.00"          # the factory version: 9 characters, "209.4.0" on the wire
NEW = "209.5.0"
VIN_A = "LSVAU2180N2183294"
VIN_B = "LFV2A21K6C3012345"
VIN_C = "LGBH52E02DY123456"


class RemoteRig(Rig):
    """A Rig whose platform keeps refusing to answer logins across the pile's
    reboots once told to (a new firmware that never gets online)."""

    def boot(self):
        old = getattr(self, "platform", None)
        answer = old.answer_login if old is not None else True
        Rig.boot(self)
        self.platform.answer_login = answer


def _rig(**cfg):
    return RemoteRig(tmpdir("remote"), cfg=cfg)


class Signer:
    """The platform's signing side (what the bridge does with sign.seal)."""

    def __init__(self, rig, key=CMD_KEY):
        self.rig = rig
        self.key = key
        self.counter = 0

    def envelope(self, name, values, counter=None, key=None):
        if counter is None:
            self.counter += 1
            counter = self.counter
        layout = codec.layout_named(name)
        body = bytes(codec.encode_body(layout, values))
        return sign.seal(key or self.key, PILE, counter, layout.code, body)

    def send_raw(self, env):
        p = self.rig.platform
        p.seq += 1
        p.uart.write(codec.wrap(0xD2, env, p.seq))
        return p.seq

    def send(self, name, values, counter=None, key=None):
        return self.send_raw(self.envelope(name, values, counter, key))


def _start_values(n, balance=100000):
    return {"serial": serial(n), "pile": PILE, "gun": "01", "logical_card": "1000000573",
            "card": "D14B0A54", "balance": balance}


def _stop_values():
    return {"pile": PILE, "gun": "01"}


def _wait(r, name, n, ms=5000):
    """Run until the platform holds n frames called `name`; the last one."""
    r.run(ms, lambda: len(r.platform.named(name)) >= n)
    got = r.platform.named(name)
    assert len(got) >= n, (name, len(got), n)
    return got[n - 1]


def _rejects(r):
    return [(f.fields["counter"], f.fields["reason"]) for f in r.platform.named("signed_reject")]


# --- signed commands ------------------------------------------------------------------

def test_signed_start_is_executed_and_answered_with_the_envelope_sequence():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        s = Signer(r)
        seq = s.send("remote_start", _start_values(1))
        rep = _wait(r, "remote_start_reply", 1)
        assert rep.fields["result"] == 1 and rep.seq == seq
        r.run(30000)
        assert r.pile.gun.state == S.CHARGING
        seq = s.send("remote_stop", _stop_values())
        rep = _wait(r, "remote_stop_reply", 1)
        assert rep.fields["result"] == 1 and rep.seq == seq
        r.run(30000)
        assert [f.fields["serial"] for f in r.platform.bills()] == [serial(1)]
        assert _rejects(r) == []


def test_forged_mac_is_rejected_reported_and_starts_nothing():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        s = Signer(r)
        seq = s.send("remote_start", _start_values(2), counter=7, key=bytes(32))   # wrong key
        rej = _wait(r, "signed_reject", 1)
        assert (rej.fields["counter"], rej.fields["reason"]) == (7, 1) and rej.seq == seq
        # the same command with one byte of the body changed after signing
        env = bytearray(s.envelope("remote_start", _start_values(2), counter=8))
        env[-1] ^= 1
        s.send_raw(bytes(env))
        _wait(r, "signed_reject", 2)
        r.run(30000)
        assert _rejects(r) == [(7, 1), (8, 1)]
        assert r.platform.named("remote_start_reply") == []
        assert r.pile.gun.state != S.CHARGING and not r.world.contactor.closed
        assert len([e for e in r.pile.events if e[1] == "signed_reject"]) == 2
        # a forged command never moves the counter: 7 is still fresh
        s.send("remote_start", _start_values(2), counter=7)
        assert _wait(r, "remote_start_reply", 1).fields["result"] == 1


def test_replayed_envelope_is_rejected_and_not_executed_twice():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        s = Signer(r)
        stop = s.envelope("remote_stop", _stop_values(), counter=20)
        s.send("remote_start", _start_values(3), counter=10)
        _wait(r, "remote_start_reply", 1)
        r.run(20000)
        s.send_raw(stop)
        _wait(r, "remote_stop_reply", 1)
        r.run(20000)
        s.send("remote_start", _start_values(4), counter=30)
        r.run(20000)
        assert r.pile.gun.state == S.CHARGING
        s.send_raw(stop)                                            # the old stop, recorded
        s.send("remote_start", _start_values(5), counter=25)       # older than the last
        r.run(20000)
        assert _rejects(r) == [(20, 2), (25, 2)]
        assert r.pile.gun.state == S.CHARGING                       # the replay stopped nothing
        assert len(r.platform.named("remote_stop_reply")) == 1


def test_unsigned_protected_commands_are_refused_when_the_pile_has_a_key():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        r.start(serial(6))                                          # bare 0x34
        r.platform.send("reboot", {"pile": PILE, "when": 1})
        r.platform.send("vin_list", {"version": 1, "count": 0, "records": b""})
        t = r.pile.gun.tariff.to_frame()
        t["pile"] = PILE
        t["deep_energy_price"] = t["deep_service_price"] = 10000
        r.platform.send("tariff5_set", t)
        r.platform.send("status_query", {"pile": PILE})             # not protected
        r.run(20000)
        assert _rejects(r) == [(0, 5)] * 4
        assert r.pile.gun.state != S.CHARGING and r.reboots == 0
        assert r.platform.named("remote_start_reply") == []
        assert r.platform.named("vin_list_reply") == [] and r.platform.named("tariff_set_reply") == []
        assert len(r.platform.named("status_reply")) == 1


def test_pile_without_a_key_takes_bare_commands_and_refuses_envelopes():
    with _rig() as r:
        r.online()
        s = Signer(r)
        s.send("remote_start", _start_values(7), counter=3)
        assert _wait(r, "signed_reject", 1).fields["reason"] == 6
        r.start(serial(7))
        assert _wait(r, "remote_start_reply", 1).fields["result"] == 1


def test_counter_survives_a_reboot_so_a_replay_after_it_is_still_rejected():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        s = Signer(r)
        s.send("remote_start", _start_values(8), counter=100)
        _wait(r, "remote_start_reply", 1)
        r.run(20000)
        stop = s.envelope("remote_stop", _stop_values(), counter=101)
        s.send_raw(stop)
        _wait(r, "remote_stop_reply", 1)
        r.run(20000)
        r.boot()                                                    # power cut
        r.online()
        s.send_raw(stop)
        s.send("remote_start", _start_values(9), counter=101)
        r.run(10000)
        assert _rejects(r) == [(101, 2), (101, 2)]
        s.send("remote_start", _start_values(9), counter=102)
        assert _wait(r, "remote_start_reply", 2).fields["result"] == 1


# --- firmware upgrade over the link ----------------------------------------------------

def _image(tag=b"new"):
    return U.pack_image([("main.py", b"# main " + tag + b"\n" * 300),
                         ("firmware/pile.py", b"# pile " + tag + b"x" * 900),
                         ("firmware/extra.py", bytes(range(256)) * 3)])


class Pusher:
    """The sender of an image: begin, chunks from the offset the pile
    reports, verify, activate; each step waits for its fw_reply."""

    def __init__(self, rig, signer, image, version=NEW):
        self.r = rig
        self.s = signer
        self.image = image
        self.version = version
        self.sha = hashlib.sha256(image).digest()
        self.offset = 0

    def _next(self):
        return len(self.r.platform.named("fw_reply")) + 1

    def control(self, op, begin=False):
        n = self._next()
        v = {"pile": PILE, "op": op, "version": "", "size": 0, "sha256": "", "mac": ""}
        if begin:
            mac = sign.upgrade_mac(UP_KEY, self.version, len(self.image), self.sha)
            v.update({"version": self.version, "size": len(self.image),
                      "sha256": _hex(self.sha), "mac": _hex(mac)})
        self.s.send("fw_control", v)
        f = _wait(self.r, "fw_reply", n).fields
        assert f["op"] == op
        self.offset = f["offset"]
        return f

    def chunk(self, offset=None, size=200):
        n = self._next()
        off = self.offset if offset is None else offset
        self.r.platform.send("fw_chunk", {"pile": PILE, "offset": off,
                                          "data": self.image[off:off + size]})
        f = _wait(self.r, "fw_reply", n).fields
        assert f["op"] == 5
        self.offset = f["offset"]
        return f

    def send_until(self, limit):
        while self.offset < limit:
            f = self.chunk()
            assert f["result"] == 0 and f["stage"] == 1, f


def _hex(b):
    return binascii.hexlify(b).decode().upper()


def _upgrade_rig():
    return _rig(cmd_key=CMD_KEY, upgrade_key=UP_KEY, sw_version=OLD, mac_key=BILL_KEY)


def _logins(r):
    return [f.fields["sw_version"] for f in r.platform.named("login")]


def _status(r):
    n = len(r.platform.named("status_reply")) + 1
    r.platform.send("status_query", {"pile": PILE})
    return _wait(r, "status_reply", n).fields


def test_upgrade_over_the_link_resumes_after_a_reboot_and_runs_the_new_version():
    with _upgrade_rig() as r:
        r.online()
        assert _logins(r)[-1] == "209.4.0"           # "209.04.00" shortened by the rule
        s = Signer(r)
        s.send("remote_start", _start_values(11))    # a bill from before the upgrade
        r.run(60000)
        s.send("remote_stop", _stop_values())
        r.run(30000)
        assert r.pile.journal.status(serial(11)) == "settled"
        image = _image()
        p = Pusher(r, s, image)
        f = p.control(1, begin=True)
        assert (f["result"], f["stage"], f["offset"]) == (0, 1, 0)
        p.send_until(len(image) // 2)
        staged = p.offset
        r.boot()                                     # the link breaks: the pile reboots
        r.online()
        # the sender lost track and repeats an old chunk: nothing is appended,
        # the reply says where the pile stands
        assert p.chunk(offset=0)["offset"] == staged
        f = p.control(1, begin=True)                 # or it announces the image again
        assert (f["result"], f["stage"], f["offset"]) == (0, 1, staged)
        p.send_until(len(image))
        assert p.offset == len(image)
        f = p.control(2)
        assert (f["result"], f["stage"]) == (0, 2)
        f = p.control(3)
        assert (f["result"], f["stage"]) == (0, 4)
        r.run(5000, lambda: r.reboots == 1)
        assert r.reboots == 1 and r.pile.boot_reason == 4
        r.online()
        assert _logins(r)[-1] == "209.5.0"
        st = _status(r)
        assert (st["fw_version"], st["hmi_version"], st["boot_reason"]) == ("209.5.0", "103", 4)
        # the technician console shows what the pile reports, not the factory version
        from firmware.console import Console
        from sim.loopuart import LoopUart
        v = Console(r.pile, LoopUart.pair()[0]).cmd_versions([])[0]
        assert (v["fw"], v["hmi"]) == ("209.5.0", "103")
        up = r.pile.remote.updater
        assert up.status()["pending"] is False and up.versions()["previous"] == OLD
        with open(up.slot_path(up.status()["active"]) + "/firmware/extra.py", "rb") as fh:
            assert fh.read() == bytes(range(256)) * 3
        f = p.control(5)
        assert (f["result"], f["stage"]) == (0, 4)
        # the journal and its bills went through the upgrade untouched
        assert r.pile.journal.status(serial(11)) == "settled"
        assert [b.fields["serial"] for b in r.platform.bills()] == [serial(11)]
        assert _rejects(r) == []


def test_activate_is_refused_while_charging_and_done_once_idle():
    with _upgrade_rig() as r:
        r.online()
        s = Signer(r)
        image = _image()
        p = Pusher(r, s, image)
        p.control(1, begin=True)
        p.send_until(len(image))
        assert p.control(2)["stage"] == 2
        s.send("remote_start", _start_values(12))
        r.run(30000)
        assert r.pile.gun.state == S.CHARGING
        f = p.control(3)
        assert (f["result"], f["stage"]) == (5, 2)   # busy; still verified
        r.run(30000)
        assert r.reboots == 0 and r.pile.gun.state == S.CHARGING
        assert r.pile.remote.board_version() == "209.4.0"
        s.send("remote_stop", _stop_values())
        r.run(30000)
        f = p.control(3)
        assert (f["result"], f["stage"]) == (0, 4)
        r.run(5000, lambda: r.reboots == 1)
        r.online()
        assert _logins(r)[-1] == NEW
        assert [b.fields["serial"] for b in r.platform.bills()] == [serial(12)]


def test_new_firmware_that_never_gets_healthy_is_rolled_back_and_the_boot_says_so():
    with _upgrade_rig() as r:
        r.online()
        s = Signer(r)
        image = _image(b"broken")
        p = Pusher(r, s, image)
        p.control(1, begin=True)
        p.send_until(len(image))
        p.control(2)
        r.platform.answer_login = False              # the new version never gets online
        assert p.control(3)["result"] == 0
        r.run(5000, lambda: r.reboots == 1)
        assert r.pile.boot_reason == 4 and r.pile.remote.board_version() == NEW
        for boot in (2, 3):                          # the watchdog resets it, again and again
            r.run(40000)
            assert not r.pile.link.online
            r.boot()
            assert r.pile.remote.board_version() == NEW, boot
        r.run(40000)
        r.boot()                                     # boot 4 > limit 3: the old slot again
        assert r.pile.boot_reason == 3
        assert r.pile.remote.board_version() == "209.4.0"
        assert [e for e in r.pile.events if e[1] == "firmware_rolled_back"]
        r.platform.answer_login = True
        r.online()
        assert _logins(r)[-1] == "209.4.0"
        assert _status(r)["boot_reason"] == 3
        f = p.control(5)
        assert (f["result"], f["stage"]) == (12, 6)  # not healthy, rolled back


def test_wire_versions_fit_eight_bytes_by_one_rule():
    assert wire_version("209.04.00") == "209.4.0"
    assert wire_version("pc0.1.0") == "pc0.1.0"
    assert wire_version("103") == "103"
    assert wire_version("2024.010.0001") == "2024101"      # "2024.10.1" is 9
    assert wire_version("12.345.678") == "12345678"
    assert wire_version("V1.2.3-beta.4") == "V123-bet"
    assert wire_version("") == ""
    for v in ("209.04.00", "2024.010.0001", "V1.2.3-beta.4", "x" * 30):
        assert len(wire_version(v)) <= 8


# --- tariff, VIN list, bill MAC -------------------------------------------------------------

def _tariff5(model="0201"):
    # 10:00-10:30 deep valley, 10:30-11:00 valley, the rest of the day flat
    slots = bytearray(48)
    for i in range(48):
        slots[i] = 4 if i == 20 else 3 if i == 21 else 2
    v = {"pile": PILE, "model": model, "loss_ratio": 0, "slots": _hex(bytes(slots))}
    prices = ((120000, 40000), (100000, 40000), (70000, 40000), (30000, 20000), (15000, 10000))
    for c, name in enumerate(("sharp", "peak", "flat", "valley", "deep")):
        v[name + "_energy_price"] = prices[c][0]
        v[name + "_service_price"] = prices[c][1]
    return v


def test_five_class_tariff_via_d4_gives_a_five_period_bill_that_reconciles():
    with _rig(cmd_key=CMD_KEY) as r:
        r.online()
        s = Signer(r)
        t = _tariff5()
        s.send("tariff5_set", t)
        assert _wait(r, "tariff_set_reply", 1).fields["result"] == 1
        assert r.pile.gun.tariff.deep and r.pile.gun.tariff.model == "0201"
        s.send("remote_start", _start_values(13))
        r.run(45 * 60000, lambda: r.pile.clock.now() % 86400 >= 10 * 3600 + 2400)   # 10:40
        s.send("remote_stop", _stop_values())
        r.run(30000)
        bills = r.platform.bills()
        assert len(bills) == 1
        b = bills[0]
        assert b.name == "bill5" and len(b.body) + 4 == 0xB2
        v = b.fields
        assert v["deep_energy"] > 0 and v["valley_energy"] > 0
        periods = ("sharp", "peak", "flat", "valley", "deep")
        assert v["total_energy"] == sum([v[p + "_energy"] for p in periods])
        assert v["total_energy"] == v["meter_stop"] - v["meter_start"]
        assert v["total_amount"] == sum([v[p + "_amount"] for p in periods])
        x = r.platform.named("bill_extra")[0].fields
        for p in periods:
            ef = fee(v[p + "_loss"], t[p + "_energy_price"])
            sf = fee(v[p + "_loss"], t[p + "_service_price"])
            assert (x[p + "_energy_fee"], x[p + "_service_fee"]) == (ef, sf), p
            assert v[p + "_amount"] == ef + sf, p
            assert v[p + "_price"] == t[p + "_energy_price"] + t[p + "_service_price"], p
        # the tariff survives a reboot (it is on flash)
        r.boot()
        assert r.pile.gun.tariff.deep and r.pile.gun.tariff.model == "0201"


def _fleet_policy():
    pol = VinPolicy()
    pol.set_card("D14B0A54", CARD_FLEET, "7")   # the card pilekit starts with
    return pol


def _vin_frame(version, pairs):
    recs = [{"vin": v, "department": d} for v, d in pairs]
    return {"version": version, "count": len(recs),
            "records": codec.pack_records("vin_list", "records", recs)}


def test_vin_list_push_then_fleet_starts_are_refused_or_allowed_per_the_table():
    with RemoteRig(tmpdir("remote"), vin=VIN_C, cfg={"vin_policy": _fleet_policy()}) as r:
        r.online()
        # one list (version 3) in two frames: they accumulate
        r.platform.send("vin_list", _vin_frame(3, [(VIN_A, 7), (VIN_B, 8)]))
        f = _wait(r, "vin_list_reply", 1).fields
        assert (f["version"], f["result"], f["stored"]) == (3, 0, 2)
        r.platform.send("vin_list", _vin_frame(3, [(VIN_C, 7)]))
        f = _wait(r, "vin_list_reply", 2).fields
        assert (f["version"], f["result"], f["stored"]) == (3, 0, 3)
        # a frame whose count disagrees with its records is refused whole
        bad = _vin_frame(3, [(VIN_A, 9)])
        bad["count"] = 2
        r.platform.send("vin_list", bad)
        f = _wait(r, "vin_list_reply", 3).fields
        assert (f["result"], f["stored"]) == (1, 3)
        # persisted: a fresh policy (cards provisioned, no VINs) after a reboot
        r.cfg["vin_policy"] = _fleet_policy()
        r.boot()
        assert r.pile.remote.vins.department_of(VIN_C) == "7"
        r.online()
        # VIN_C is in the card's department 7: allowed
        r.start(serial(14))
        r.run(60000)
        assert r.pile.gun.state == S.CHARGING
        r.stop()
        r.run(30000)
        # VIN_B belongs to department 8: refused by the pile, a bill all the same
        r.world.vehicle._vin = VIN_B                 # another bus at the gun
        r.start(serial(15))
        r.run(60000, lambda: r.pile.gun.state == S.FINISHED)
        r.run(30000)
        bills = dict((b.fields["serial"], b.fields) for b in r.platform.bills())
        assert bills[serial(14)]["stop_reason"] == 0x40 and bills[serial(14)]["vin"] == VIN_C
        assert bills[serial(15)]["stop_reason"] == STOP_VIN_DENIED
        # a new version replaces the list
        r.platform.send("vin_list", _vin_frame(4, [(VIN_B, 7)]))
        f = _wait(r, "vin_list_reply", 4).fields
        assert (f["version"], f["result"], f["stored"]) == (4, 0, 1)
        assert r.pile.remote.vins.department_of(VIN_C) is None


def test_bill_mac_lets_the_platform_detect_a_changed_bill():
    with _rig(mac_key=BILL_KEY) as r:
        r.online()
        r.charge(serial(16), 60000, 30000)
        bill = r.platform.bills()[0]
        mac = r.platform.named("bill_extra")[0].fields["mac"]
        assert mac != "0" * 64
        assert sign.verify_bill_mac(BILL_KEY, bill.body, mac)
        forged = bytearray(bill.body)
        forged[-20] ^= 1
        assert not sign.verify_bill_mac(BILL_KEY, bytes(forged), mac)
        assert not sign.verify_bill_mac(bytes(32), bill.body, mac)
