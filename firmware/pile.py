# The pile application: one object that ties the link (protocol), the gun
# (charge control), the journal (bills on flash) and the outbox (retries).
#
# A bill's life on the pile:
#   sampled (Gun.tick) -> priced (tariff.Accumulator) -> sealed in the journal
#   (_on_seal: 0x3B body + 0xEB body, one record) -> framed and sent
#   (outbox.due) -> 0x40 from the host (journal CONFIRMED) -> 0xE4 from the
#   platform via the bridge (journal SETTLED: space may be reclaimed; or, with
#   a non-zero result, ILLEGAL: refused, kept until the console's 'release').
#
# Main loop on a board:   while True: pile.poll(); time.sleep_ms(pile.idle_ms())
# In the simulator the same poll() runs against sim/hardware.py (the simulated hardware).
#
# Frames from the platform: protocol/router.py screens signed frames and hands
# each to its function in firmware/handlers.py, whose return value is the
# reply. Remote operations (firmware upgrade over the link, the VIN list,
# versions on the wire, the command key) live in firmware/remote.py.
import os

from firmware import fsio
from firmware import session as S
from firmware.handlers import HANDLERS, unhandled
from firmware.journal import Journal, JournalFull, SerialTooOld
from firmware.link import Link
from firmware.ocmfsign import OcmfSigner
from firmware.outbox import Outbox
from firmware.realtime import Cadence
from firmware.remote import Remote
from firmware.ticks import diff_of
from firmware.tariff import Tariff, TariffError
from protocol import bill as B
from protocol import codec
from protocol import fields as F
from protocol.router import route

from protocol import const

FW_VERSION = "pc0.1.0"
_FAULT_RETRY_MS = const(100)    # poll() again this soon after a caught fault
_CLOCK_VALID = const(757382400) # 2024-01-01 00:00 in local seconds since 2000: before, any sync is taken
_MAX_GUNS = const(4)            # guns per pile (cfg "guns"): docs/guns.md

# The 0xE5 status has one state byte: a pile of several guns reports its
# busiest gun's (charging before stopping, authorising, finished, plugged,
# idle); each gun's own state travels in its heartbeat and 0x13.
_BUSY_ORDER = (S.IDLE, S.PLUGGED, S.FINISHED, S.AUTHORISING, S.STOPPING, S.CHARGING)

# Boot reasons (status reply, console): why this boot happened.
BOOT_POWER_ON = const(0)
BOOT_REBOOT_NOW = const(1)
BOOT_REBOOT_IDLE = const(2)
BOOT_ROLLBACK = const(3)        # a new firmware never became healthy: the old one runs
BOOT_UPGRADE = const(4)         # rebooted into a newly activated firmware
BOOT_NAMES = ("power-on", "reboot-now", "reboot-when-idle", "rollback", "upgrade")


class Pile:
    """cfg keys: pile (14 digits), gun ("01"), guns (1..4, default 1: with
    more than one, the guns are "01".."0N" and meter, contactor and vehicle
    are sequences with one part per gun; docs/guns.md), pile_type (0 DC / 1 AC),
    hmi_version, sw_version (the factory firmware version), period_ms,
    ckpt_energy / ckpt_ms (checkpoint bounds, e4kWh / ms: docs/journal.md),
    journal_bytes, mac_key (bytes or None: the bill MAC; default cmd_key); power
    sharing (with `outputs`, one power output per gun: firmware/sharing.py)
    power_w (the pile's rating, W), modules and module_w (its rectifier
    modules), gun_max_w (one gun's most, default power_w), prios (per gun);
    vin_policy
    (firmware.vinauth.VinPolicy or None), offline_cards; for remote
    operations cmd_key, upgrade_key, upgrade_boots, updater, vin_max
    (firmware/remote.py)."""

    def __init__(self, cfg, root, clock, uart, meter, contactor, vehicle, fs=None,
                 log=None, reboot=None, outputs=None):
        self.cfg = cfg
        self.root = root
        self.clock = clock
        self.pile = cfg["pile"]
        self.reboot_hook = reboot     # called to reset the board (sim: restart)
        self._log = log
        self.events = []              # recent events for the console (bounded)
        self._quiet_full = False      # status query asking Journal.can_start()
        # First: with an upgrade key this counts the boot of a new firmware
        # slot (or rolls it back) before anything else can fail.
        self.remote = Remote(self, cfg, root, fs, FW_VERSION)
        self.journal = Journal(root + "/journal", fs, cfg.get("journal_bytes", 65536),
                               on_event=self._journal_event)
        self.report = self.journal.recover()
        # Sessions cut by a power loss become bills (0x83) at their last checkpoint.
        self.recovered = self.journal.close_interrupted(self._rebuild)
        self.outbox = Outbox(self.journal, clock)
        self.boot_reason = self._boot_reason()
        tariff = self._load_tariff()
        n = cfg.get("guns", 1)
        if not isinstance(n, int) or n < 1 or n > _MAX_GUNS:
            raise ValueError("cfg guns: %r is not 1..%d" % (n, _MAX_GUNS))
        if n == 1:
            meter, contactor, vehicle = [meter], [contactor], [vehicle]
        elif len(meter) != n or len(contactor) != n or len(vehicle) != n:
            raise ValueError("cfg guns %d: one meter, contactor and vehicle per gun" % n)
        # One Gun (session state machine) per gun; every gun writes its own
        # sessions into the one journal, keyed by trade serial (docs/guns.md).
        self.guns = []
        for i in range(n):
            g = cfg.get("gun", "01") if n == 1 else "%02d" % (i + 1)
            self.guns.append(S.Gun(self.pile, g, clock, meter[i], contactor[i], vehicle[i], tariff,
                                   next_serial=self._serial_for(g), on_open=self._on_open,
                                   on_checkpoint=self._on_checkpoint, on_seal=self._on_seal,
                                   on_start_reply=self._late_reply_for(g),
                                   vin_policy=self.remote.vins, log=self.log,
                                   period_ms=cfg.get("period_ms", 1000),
                                   ckpt_energy=cfg.get("ckpt_energy", 1000),
                                   ckpt_ms=cfg.get("ckpt_ms", 60000),
                                   max_power_w=cfg.get("gun_max_w", cfg.get("power_w", 0))
                                   if outputs is not None else 0))
        self.gun = self.guns[0]       # gun 1 (the only one on a single-gun pile)
        # A vehicle that is a GB/T 27930 charger side (firmware/bms.py) is
        # polled every loop: its SOC, VIN and BCL feed the gun and sharing.
        self._bms = [g for g in self.guns if hasattr(g.vehicle, "stop_reason")]
        # Power sharing: with one power output per gun, every control tick
        # divides the pile's cap among the charging guns (docs/guns.md).
        self.sharing = None
        if outputs is not None:
            if len(outputs) != n or not cfg.get("power_w"):
                raise ValueError("power sharing: one output per gun and cfg power_w are needed")
            from firmware.sharing import Sharing   # only a sharing pile carries its code
            self.sharing = Sharing(self.guns, outputs, cfg["power_w"], cfg.get("modules", 0),
                                   cfg.get("module_w", 0), cfg.get("prios"), log=self.log)
            self._share_at = clock.ticks_ms()
        login = {"pile": self.pile, "pile_type": cfg.get("pile_type", 0), "guns": n,
                 "proto_version": 16, "sw_version": self.remote.board_version(),
                 "net_type": 3, "sim": "", "carrier": 4}
        self.link = Link(uart, clock, login, self._handle, on_online=self._online,
                         on_offline=self._offline, log=lambda *a: self.log(" ".join(a)),
                         beats=self._beats if n > 1 else None)
        self.groups = {}              # parallel charging: group id -> its guns, main first
        self._ended = []              # the last groups ended (an 0xA4 for one is refused)
        self.cadences = [Cadence(diff=diff_of(clock)) for _ in range(n)]
        self.cadence = self.cadences[0]
        self._clamped = []            # 0x13 fields last sent clamped (logged on change)
        self.loop_faults = 0          # faults caught by poll() since boot
        self._tariff_check = False
        self._reboot_when = 0         # 0 none, 1 now, 2 when idle
        self._reboot_reason = 0       # the boot reason the reboot will report
        self.send_log = None          # optional list: serials of bills sent (tests)
        self.console = None           # optional firmware.console.Console, polled by poll()
        # OCMF: the pile's P-256 key (made at first boot) signs each sealed
        # bill in steps between polls (firmware/ocmfsign.py, docs/ocmf.md).
        # cfg ocmf False: none; ocmf_entropy(n): the board's random source;
        # ocmf_ids: the card id in the signed record.
        self.ocmf = OcmfSigner(root, fs, cfg.get("ocmf_entropy"), self.remote.board_version(),
                               cfg.get("ocmf_ids", False), self.event) \
            if cfg.get("ocmf", True) else None
        if self.recovered:
            self.event("power_loss_bills", ",".join(self.recovered))
        if self.report.damaged:
            self.event("journal_damage", repr(self.report))
        if self.remote.rolled_back:
            self.event("firmware_rolled_back", self.remote.board_version())

    # --- logging and events --------------------------------------------------

    def log(self, msg):
        if self._log:
            self._log(self.pile + " " + msg)

    def event(self, kind, detail=""):
        self.events.append((self.clock.now(), kind, detail))
        if len(self.events) > 32:
            self.events.pop(0)
        self.log("event %s %s" % (kind, detail))

    def _journal_event(self, name, detail):
        if name == "full" and self._quiet_full:
            return
        self.event("journal_" + name, str(detail))

    # --- journal glue (the Gun's callbacks) ----------------------------------

    def _on_open(self, serial, header):
        try:
            r = self.journal.open_session(serial, header)
        except JournalFull as e:
            # the journal raised its "full" event (journal_full); the 0x33
            # says why and 0xE5 refusing_starts tells the bridge
            raise S.StartRefused(S.START_JOURNAL_FULL, str(e))
        except SerialTooOld as e:
            self.event("start_serial_used", str(e))
            raise S.StartRefused(S.START_SERIAL_USED, str(e))
        if r == "exists":
            self.event("start_serial_used", serial)
            raise S.StartRefused(S.START_SERIAL_USED, "trade serial %s already in the journal"
                                 % serial)

    def _on_checkpoint(self, serial, payload):
        # self.journal looked up at each call (tests/mp/test_pile_faults.py
        # replaces its methods on a running pile)
        self.journal.checkpoint(serial, payload)

    def _on_seal(self, serial, bill):
        payload = B.payload(bill, self._mac_key())
        r = self.journal.seal(serial, payload)
        if self.ocmf is not None:
            self.ocmf.queue(serial, B.split(payload)[0])
        self.log("bill %s %s: %d e4kWh, %d e4yuan, reason 0x%02X"
                 % (serial, r, bill["total_energy"], bill["total_amount"], bill["stop_reason"]))

    def _rebuild(self, serial, header, checkpoint):
        return B.payload(S.rebuild_bill(header, checkpoint), self._mac_key())

    def _mac_key(self):
        # The bill MAC's key is the pile's key: mac_key if set apart, else
        # cmd_key (a keyed pile's bridge checks the MAC before its 0x40).
        return self.cfg.get("mac_key") or self.cfg.get("cmd_key")

    def _serial_for(self, gun):
        return lambda: self._next_serial(gun)

    def _next_serial(self, gun="01"):
        # A pile-issued trade serial (card start authorised without one,
        # offline start): Journal.issue_serial skips serials the journal holds
        # or remembers and moves a stamp at or before its floor (a clock set
        # back) past it, so the start is never refused as SerialTooOld. The
        # gun's number is in the serial, and the counter is the journal's
        # one, so two guns never issue the same serial.
        return self.journal.issue_serial(self.pile, gun, self._stamp())

    def _stamp(self):
        # the clock as the number YYMMDDhhmmss
        y, mo, d, h, mi, s, _ = F.to_civil(self.clock.now())
        return ((((y % 100 * 100 + mo) * 100 + d) * 100 + h) * 100 + mi) * 100 + s

    def gun_named(self, gun):
        """The Gun numbered `gun` ("01".."04"), or None. A single-gun pile
        answers every number with its one gun, as it always has (the wire
        behaviour of piles that ignore the gun byte is kept)."""
        gs = self.guns
        if len(gs) == 1:
            return gs[0]
        for g in gs:
            if g.gun == gun:
                return g
        return None

    def _beats(self):
        # One heartbeat per gun (YKC 0x03 carries a gun and its status:
        # 0 normal, 1 fault).
        return [(g.gun, 1 if g.faults else 0) for g in self.guns]

    # --- persisted settings ----------------------------------------------------

    def _load_tariff(self):
        raw = fsio.read(fsio.OS, self.root + "/tariff.bin")
        if raw:
            try:
                return Tariff.unpack_from(raw)[0]
            except (TariffError, ValueError) as e:
                self.event("tariff_unreadable", str(e))
        return self.cfg.get("tariff")

    def set_tariff(self, tariff):
        fsio.save_atomic(fsio.OS, self.root + "/tariff.bin", tariff.pack())
        for g in self.guns:
            g.set_tariff(tariff)
        self.event("tariff", tariff.model)

    def _boot_reason(self):
        path = self.root + "/boot"
        raw = fsio.read(fsio.OS, path)
        if raw:
            try:
                os.remove(path)
            except OSError:
                pass
        if self.remote.rolled_back:
            return BOOT_ROLLBACK      # whatever reboot led here, this is the news
        return raw[0] if raw else BOOT_POWER_ON

    # --- link events -----------------------------------------------------------

    def _online(self):
        # YKC: after login, stored bills first, then the tariff model check.
        self.outbox.on_login()
        self._tariff_check = True
        for c in self.cadences:
            c.force()
        self.remote.on_login()        # logged in, journal recovered: firmware healthy
        if self.ocmf is not None:
            self.ocmf.on_login()

    def _offline(self):
        self.outbox.on_logout()

    def _handle(self, f):
        # protocol/router.py: envelopes opened, bare protected frames refused,
        # each frame to its firmware/handlers.py function, its reply sent.
        r = route(HANDLERS, self, f, unhandled, self.remote.auth, self.pile, Pile._signed_reject)
        if r is not None:
            self.link.send(r[0], r[1], r[2])

    def _signed_reject(self, code, counter, reason):
        self.event("signed_reject", "0x%02X counter %d reason %d" % (code, counter, reason))

    def _late_reply_for(self, gun):
        return lambda serial, result, reason: self._late_start_reply(serial, result, reason, gun)

    def _late_start_reply(self, serial, result, reason, gun="01"):
        self.link.send("remote_start_reply", {"serial": serial, "pile": self.pile,
                                              "gun": gun, "result": result,
                                              "reason": reason})

    # --- parallel charging (firmware/parallel.py, loaded when first used) ------

    def parallel_swiped(self, card, guns=("01", "02"), vin=None):
        """A card for one vehicle on two guns: 0xA1 for each (docs/guns.md)."""
        from firmware.parallel import swiped
        return swiped(self, card, guns, vin)

    # --- card swipe at the pile (0x31 / 0x32, offline list) ------------------

    def card_swiped(self, card, vin=None, gun=None):
        """A card (or a VIN start) at the pile. Online: ask the platform
        (0x31; its 0x32 starts or refuses). Offline: start at once with a
        pile-issued serial if the card is allowed offline (cfg
        "offline_cards": None = any card, a list = only those, [] = none).
        Returns what happened: "asked", "started", "refused", "busy".
        gun: the gun number swiped at ("01".., default gun 1)."""
        gun = self.gun if gun is None else self.gun_named(gun)
        if gun is None:
            return "refused"
        if self.link.online:
            fields = gun.request_start(card, vin)
            if fields is None:
                return "busy"
            self.link.send("start_request", fields)
            return "asked"
        allowed = self.cfg.get("offline_cards")
        if allowed is not None and card.upper() not in [c.upper() for c in allowed]:
            self.event("offline_card_refused", card)
            return "refused"
        res, why = gun.offline_start(card)   # a full journal: (0, START_JOURNAL_FULL)
        return "started" if res else "refused"

    def request_reboot(self, when, source="platform", reason=None):
        """Ask for a reboot: 1 now (a running session is billed first), 2 when
        idle. False (and an event) when it cannot be done. The 0x92 handler,
        the technician console and a firmware activation (reason
        BOOT_UPGRADE) all come here. `reason`: the boot reason reported
        after it (default: the `when`)."""
        if when not in (1, 2) or self.reboot_hook is None:
            self.event("reboot_refused", "%s when=%s hook=%s"
                       % (source, when, self.reboot_hook is not None))
            return False
        self._reboot_when = when
        self._reboot_reason = when if reason is None else reason
        self.event("reboot_requested", "%s %s" % (BOOT_NAMES[when], source))
        return True

    def idle(self):
        """No session running or being set up on any gun (a firmware may be
        activated)."""
        for g in self.guns:
            if g.state in (S.AUTHORISING, S.CHARGING, S.STOPPING):
                return False
        return True

    def _maybe_reboot(self):
        when = self._reboot_when
        if not when:
            return
        if not self.idle():
            if when == 2:
                return        # when idle: not while a session runs or is being set up
            # "now": end the sessions cleanly, their bills sealed before the
            # reset (a card start still waiting for its 0x32 is dropped:
            # nothing ran).
            for g in self.guns:
                if g.state == S.CHARGING:
                    g.remote_stop()
                else:
                    g.manual_stop()
        fsio.save_atomic(fsio.OS, self.root + "/boot", bytes((self._reboot_reason or when,)))
        self._reboot_when = 0
        self.log("rebooting (%s)" % BOOT_NAMES[when])
        self.reboot_hook()

    # --- the clock -------------------------------------------------------------

    def set_clock(self, t, source, force=False):
        """Set the wall clock to t (local seconds since 2000). A step of more
        than cfg max_clock_step_s (a day) is refused unless the clock is not
        valid yet (before 2024: a board whose RTC lost power) or `force` (the
        technician's console 'clock set'): a clock moved a year ahead and
        back made the journal refuse every later start. True if it was set."""
        if not hasattr(self.clock, "set_now"):
            return False
        now = self.clock.now()
        limit = self.cfg.get("max_clock_step_s", 86400)
        if not force and limit and now >= _CLOCK_VALID and (t - now > limit or now - t > limit):
            self.event("clock_step_refused", "%s %+d s" % (source, t - now))
            return False
        self.clock.set_now(t)
        return True

    # --- the loop --------------------------------------------------------------

    def poll(self):
        """Do everything that is due. Returns ms until something wants to run.
        Never raises: the firmware must not die with power on (_survive)."""
        try:
            return self._poll()
        except Exception as e:
            return self._survive(e)

    def _survive(self, e):
        # A fault anywhere in the loop (a driver, a handler, an encoder):
        # log it, open the contactor and seal the running session with the
        # last reading (Gun.abort), and go on with the next poll.
        self.loop_faults += 1
        try:
            self.log("fault in the main loop (%d): %s %s" % (self.loop_faults, type(e).__name__, e))
        except Exception:
            pass
        sealed = False
        for g in self.guns:
            try:
                sealed = g.abort(S.ABORT_FIRMWARE) or sealed
            except Exception:
                try:
                    g.contactor.open()
                except Exception:
                    pass
        try:
            self.event("loop_fault", type(e).__name__ + (" (session sealed)" if sealed else ""))
        except Exception:
            pass
        return _FAULT_RETRY_MS

    def set_site_cap(self, w):
        """The site's cap on this pile (W; 0 lifts it), applied at the next
        control tick. False on a pile without power sharing."""
        if self.sharing is None:
            return False
        self.sharing.set_site_cap(w)
        self.event("site_cap", str(w))
        return True

    def set_gun_cap(self, gun, w):
        """A cap on gun `gun` ("01".."04"; W, 0 lifts it), applied at the
        next control tick. False without power sharing or without that gun."""
        if self.sharing is None:
            return False
        for i in range(len(self.guns)):
            if self.guns[i].gun == gun:
                self.sharing.set_gun_cap(i, w)
                self.event("gun_cap", gun + " " + str(w))
                return True
        return False

    def _share(self):
        # The control tick: ms until the next one.
        sh = self.sharing
        t = self.clock.ticks_ms()
        left = sh.tick_ms - self.link._diff(t, self._share_at)
        if left <= 0:
            sh.tick()
            self._share_at = t
            left = sh.tick_ms
        return left

    def _bms_poll(self):
        # Each gun's BMS dialogue (docs/bms.md); a BMS stop or timeout ends
        # that gun's session with its YKC stop reason, the bill sealed.
        wait = 1000
        for g in self._bms:
            ch = g.vehicle
            w = ch.poll()
            if ch.reports:
                self._bms_reports(g, ch)
            if ch.stop_reason and g.state == S.CHARGING:
                self.event("bms_stop", "%s 0x%02X" % (g.gun, ch.stop_reason))
                g.abort(ch.stop_reason)
            if w < wait:
                wait = w
        return wait

    def _bms_reports(self, g, ch):
        # GB/T 27930 data up in YKC's BMS frames 0x15..0x25 under the gun's
        # trade serial (informational: sent while online, never stored)
        reps = ch.reports
        ch.reports = []
        if not self.link.online:
            return
        tr = g.trade
        serial = tr.h["serial"] if tr is not None else g.bill["serial"] if g.bill else "0" * 32
        for name, v in reps:
            v["serial"] = serial
            v["pile"] = self.pile
            v["gun"] = g.gun
            self.link.send(name, v)

    def _poll(self):
        self.link.poll()
        share = self._share() if self.sharing is not None else 1000
        if self._bms:
            b = self._bms_poll()
            if b < share:
                share = b
        wait = self.gun.tick()
        for g in self.guns:
            if g is not self.gun:
                w = g.tick()
                if w < wait:
                    wait = w
        if self.groups:
            from firmware.parallel import sync
            sync(self)
        if share < wait:
            wait = share
        if self.link.online:
            self._send_bills()
            # YKC: after login every stored bill goes first, each answered
            # (0x40) before the tariff check. Outbox idle: each was sent and
            # answered, or its answer_ms ran out (a platform that never
            # answers does not hold the tariff check back for ever).
            if self._tariff_check and self.outbox.idle():
                self._tariff_check = False
                t = self.gun.tariff
                self.link.send("tariff_check", {"pile": self.pile,
                                                "model": t.model if t else "0000"})
            self._realtime_due()
        self._maybe_reboot()
        if self.ocmf is not None and self.ocmf.poll(self.link):
            wait = 0                   # one signing step per poll: come back at once
        if self.console is not None:   # firmware/console.py, optional
            self.console.poll()
            return wait if wait < 50 else 50   # keystrokes echo promptly
        return wait if wait < 1000 else 1000

    def _send_bills(self):
        ob = self.outbox
        while True:
            d = ob.due()
            if d is None:
                break
            serial, payload = d
            bill, extra = B.split(payload)
            seq = self.link.send_raw(0x3B, bill)
            self.link.send_raw(0xEB, extra)
            ob.sent(serial)
            if self.ocmf is not None:
                self.ocmf.sent(serial, bill)
            if self.send_log is not None:
                self.send_log.append(serial)
            self.log("bill %s sent (seq %d)" % (serial, seq))
        # A confirmed bill whose fee split got no 0xEC: the 0xEB again, alone.
        while True:
            d = ob.extra_due()
            if d is None:
                return
            serial, payload = d
            self.link.send_raw(0xEB, B.split(payload)[1])
            ob.extra_sent(serial)
            self.log("bill %s: fee split sent again" % serial)

    def _realtime_due(self):
        gs = self.guns
        for i in range(len(gs)):
            self._realtime_gun(gs[i], self.cadences[i])

    def _realtime_gun(self, g, cadence):
        if cadence.poll(self.clock.ticks_ms(), g.status(), g.vehicle.plugged):
            d = g.realtime()
            # Measurements and estimates past a field's range (10,000 yuan
            # at 7 kW is ~85,000 minutes left, 0x13 has 2 bytes) are sent
            # clamped, said once per change, never refused.
            clamped = codec.fit("realtime", d)
            if clamped != self._clamped:
                self._clamped = clamped
                if clamped:
                    self.log("0x13: %s clamped to the field's range" % ", ".join(clamped))
            self.link.send("realtime", d)

    def _send_realtime(self, gun=None):
        # At once (0x12, a start): the next poll() reports (that gun's 0x13;
        # every gun's when no gun is named or it is not ours).
        gs = self.guns
        for i in range(len(gs)):
            if gun is None or gs[i] is gun:
                self.cadences[i].force()

    # --- status (0xE5, console) ---------------------------------------------------

    def status_fields(self):
        j = self.journal
        first = j.first("pending")   # counts, not lists: 10,000 bills may wait
        return {"pile": self.pile, "pending": j.count("pending"),
                "unsettled": j.count("confirmed"),
                "illegal": j.count("illegal"), "journal_used": j.bytes_used(),
                "journal_limit": self.cfg.get("journal_bytes", 65536),
                "oldest_pending": first or "", "state": self.busiest_state(),
                "boot_reason": self.boot_reason,
                "fw_version": self.remote.board_version(),
                "hmi_version": self.remote.hmi_version(),
                "refusing_starts": 1 if self.refusing_starts() else 0}

    def busiest_state(self):
        """The state 0xE5 reports: the only gun's, or the busiest gun's."""
        best = 0
        for g in self.guns:
            r = _BUSY_ORDER.index(g.state)
            if r > best:
                best = r
        return _BUSY_ORDER[best]

    def refusing_starts(self):
        """True while the journal is too full of unconfirmed bills to take
        one more session (Journal.can_start), so starts are refused. Asking
        raises no event: the journal raised its "full" one at the refusal."""
        self._quiet_full = True
        try:
            return not self.journal.can_start()
        finally:
            self._quiet_full = False
