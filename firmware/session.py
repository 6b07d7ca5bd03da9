# The charge session state machine for one gun: starts, limits enforced on
# the pile at meter speed, idempotent stops, and exactly one bill per
# executed start (shared/context/field-cases.md §1-§4).
#
# States:  IDLE -> PLUGGED -> AUTHORISING -> CHARGING -> STOPPING -> FINISHED
#          (FINISHED -> IDLE on unplug; a new start is accepted in FINISHED
#          while the vehicle is still plugged).
#
# Hardware is injected (docs/CONVENTIONS.md): clock, meter, contactor, vehicle.
# The journal is injected as callbacks, so this module never imports it:
#   on_open(serial, header_bytes)        an executed start, before anything
#                                        can fail (encode_header)
#   on_checkpoint(serial, payload_bytes) progress, at least every ckpt_energy
#                                        e4kwh (0.1 kWh) and every ckpt_ms (60 s),
#                                        and when the VIN arrives (encode_checkpoint)
#   on_seal(serial, bill)                the sealed bill (dict below), once
#   on_start_reply(serial, result, reason) a late 0x33: the vehicle was plugged
#                                        within 60 s of a 0x34 answered "not plugged"
# After a power cut the journal hands back (header, last checkpoint):
# rebuild_bill() turns them into the bill with stop reason 0x83.
#
# Main loop: `d = gun.tick(); clock.sleep_ms(d)`; tick() samples the meter
# when due (period_ms, default 1 s) and returns the ms until it wants to run
# again; commands (remote_start, remote_stop, ...) may come in between.
# Every interval is a wrap-safe tick difference from the tick it started at
# (firmware/ticks.py): a board's ticks wrap every ~12.4 days, mid-session too.
#
# Predictive stop: the bill comes from the 0.01 kWh register (legal for
# trade); control keeps an upper bound U on the true register value,
# integrating measured power between register reads. At each sample the pile
# predicts the register it would bill if it stopped at the next sample
# (U + predicted power x (delay + stop_lag_ms), floored to the register) and
# stops now if that bill would cross a target: amount (0x43), balance (0x6E)
# or energy (0x42). So the billed figure never exceeds the target, and falls
# short of it by at most one sample period's energy (at the predicted power)
# plus the register's resolution (docs/benchmarks.md, "Charge control").
# A time target schedules the sample exactly at the deadline.
#
# The sealed bill (dict; the names of frame 0x3B in protocol/frames.py, plus
# the fee split and VIN facts the bridge sends in extension frame 0xEB):
#   serial        32-digit str, the trade serial (the bill's identity)
#   pile          14-digit str;  gun  2-digit str ("01")
#   start_time, end_time, trade_time   int local seconds since 2000-01-01
#   for c in sharp, peak, flat, valley (and deep when the tariff has 5 classes):
#     c_price        x10^5 yuan/kWh, energy price + service price
#     c_energy       x10^4 kWh, register energy attributed to the class
#     c_loss         x10^4 kWh, loss-adjusted energy (== c_energy at ratio 0)
#     c_amount       x10^4 yuan == c_energy_fee + c_service_fee
#     c_energy_fee, c_service_fee   x10^4 yuan
#   meter_start, meter_stop   x10^4 kWh register readings
#   total_energy  == sum of c_energy == meter_stop - meter_start
#   total_loss    == sum of c_loss
#   total_amount  == sum of c_amount == energy_fee + service_fee
#   energy_fee, service_fee   sums of the class fees
#   vin           17-char VIN read from the vehicle, or ""
#   nameplate_vin VIN on file for the card, or "";  vin_mismatch  bool
#   trade_flag    1 app, 2 card, 4 offline card, 5 VIN
#   stop_reason   int, YKC code (constants below)
#   card          16 upper-case hex digits, physical card
#   model         tariff model number (4-digit str) the bill was priced with
import struct

from firmware.errors import MeterError
from firmware.tariff import Accumulator, Tariff, slot_of
from firmware.ticks import diff_of
from firmware.vinauth import norm_card, norm_vin
from firmware.vinauth import STOP_VIN_DENIED, STOP_VIN_MISSING  # noqa: F401 (re-exported)
from protocol import fields as F

from protocol import const

# --- states ----------------------------------------------------------------
IDLE = const(0)
PLUGGED = const(1)
AUTHORISING = const(2)
CHARGING = const(3)
STOPPING = const(4)
FINISHED = const(5)
STATE_NAMES = ("idle", "plugged", "authorising", "charging", "stopping", "finished")

# --- stop reasons (0x3B stop_reason, YKC V1.6 appendix) ----------------------
STOP_REMOTE = const(0x40)       # app / platform stop (0x36)
STOP_SOC = const(0x41)          # SOC full, or the SOC target reached
STOP_ENERGY = const(0x42)       # energy target
STOP_AMOUNT = const(0x43)       # amount target
STOP_TIME = const(0x44)         # time target
STOP_MANUAL = const(0x45)       # stop button at the pile
FAIL_CONTROL = const(0x4A)      # start failures 0x4A..0x69: bill with zero energy
FAIL_PILOT = const(0x4B)
FAIL_METER = const(0x4D)
FAIL_BALANCE = const(0x4E)
FAIL_CLOSE = const(0x56)        # contactor did not close ("合闸失败")
ABORT_PILOT = const(0x6B)       # gun unplugged while charging ("导引断开")
ABORT_METER = const(0x6D)       # meter stopped answering
ABORT_BALANCE = const(0x6E)     # balance exhausted
ABORT_NO_CURRENT = const(0x76)  # contactor closed, no current
ABORT_POWER_LOSS = const(0x83)  # pile lost power (rebuild_bill)
# 0x8A / 0x8B: VIN not authorised / no VIN read (ours; see firmware/vinauth.py)
STOP_UNKNOWN = const(0x90)
ABORT_FIRMWARE = const(0x90)    # the main loop caught a fault: the document's "unknown" reason

# --- replies -------------------------------------------------------------------
# 0x33 (remote start reply) reasons
START_NONE = const(0)
START_WRONG_PILE = const(1)
START_BUSY = const(2)
START_FAULT = const(3)
START_OFFLINE = const(4)
START_NOT_PLUGGED = const(5)
# Ours, beyond V1.6's 0..5, with the meaning 0x32 gives 0x0A ("unsettled
# record on the pile"): the journal is full of unconfirmed bills, so no new
# session can be recorded; starts are refused until bills are confirmed.
START_JOURNAL_FULL = const(0x0A)
# Ours: the trade serial was used on this pile already, or is stamped no
# later than the newest serial the journal forgot (docs/journal.md): a
# repeated start, refused so that no serial ever gets a second bill.
START_SERIAL_USED = const(0x0C)
# Ours (0xA3, parallel charging): the 0xA4's group does not fit the pile's
# groups (its first gun no longer charging, the group ended, or full).
START_GROUP = const(0x0D)
# 0x35 (remote stop reply) reasons
STOPR_NONE = const(0)
STOPR_UNKNOWN_PILE = const(1)
STOPR_NOT_CHARGING = const(2)
STOPR_OTHER = const(3)

# --- trade flags, realtime status and fault bits (0x13) --------------------------
TRADE_APP = const(1)
TRADE_CARD = const(2)
TRADE_OFFLINE_CARD = const(4)
TRADE_VIN = const(5)

RT_OFFLINE = const(0)
RT_FAULT = const(1)
RT_IDLE = const(2)
RT_CHARGING = const(3)
FAULT_METER = const(0x0040)      # bit 7 "电度表通信中断"
FAULT_CONTACTOR = const(0x0800)  # bit 12 "高压接触器故障"

_WMS_PER_E4 = const(360000)      # W*ms in 0.1 Wh
_STEP = const(100)               # register resolution, e4kwh (0.01 kWh)
_NO_CURRENT_W = const(50)
_UNKNOWN_PMAX_W = const(400000)  # neither rating nor BMS limit known: assume a lot
_ZERO_SERIAL = "0" * 32

_HDR_VER = const(1)
_CKP_VER = const(1)
# header: ver, serial BCD16, pile BCD7, gun, start_time, trade_time, trade_flag,
# card 8, meter_start u64, nameplate VIN 17, then the tariff snapshot.
_HDR = "<B16s7sBIIB8sQ17s"
_HDR_SIZE = const(67)
# checkpoint: ver, serial BCD16, time, meter u64, VIN 17, class count, then
# one u32 per class.
_CKP = "<B16sIQ17sB"
_CKP_SIZE = const(47)


class StartRefused(Exception):
    """Raised by on_open to refuse a start with a stated 0x33 reason
    (nothing executed, nothing billed): e.g. START_JOURNAL_FULL."""

    def __init__(self, reason, msg=""):
        super().__init__(msg)
        self.reason = reason


def is_start_failure(reason):
    return 0x4A <= reason <= 0x69


def _digits(s, n, what):
    if not isinstance(s, str) or len(s) != n:
        raise ValueError("%s: %r is not %d digits" % (what, s, n))
    for ch in s:
        if ch < "0" or ch > "9":
            raise ValueError("%s: %r is not %d digits" % (what, s, n))
    return s


def _cdiv(a, b):
    return -((-a) // b)


def make_serial(pile, gun, now, counter):
    """A pile-issued trade serial: pile(14) gun(2) YYMMDDhhmmss counter(4)."""
    y, mo, d, h, mi, s, _ = F.to_civil(now)
    return "%s%s%02d%02d%02d%02d%02d%02d%04d" % (pile, gun, y % 100, mo, d, h, mi, s,
                                                 counter % 10000)


# --- journal payloads ------------------------------------------------------------

def encode_header(h):
    """Bytes for on_open: everything needed to rebuild the bill (h is the
    trade's header dict: serial, pile, gun, start_time, trade_time, trade_flag,
    card, meter_start, nameplate_vin, tariff)."""
    t = h["tariff"]
    buf = bytearray(_HDR_SIZE + t.packed_size())
    struct.pack_into(_HDR, buf, 0, _HDR_VER, b"", b"", int(h["gun"]), h["start_time"],
                     h["trade_time"], h["trade_flag"], b"", h["meter_start"], b"")
    F.bcd_encode(buf, 1, 16, h["serial"], "serial")
    F.bcd_encode(buf, 17, 7, h["pile"], "pile")
    F.hex_encode(buf, 34, 8, h["card"], "card")
    F.ascii_encode(buf, 50, 17, h["nameplate_vin"], "nameplate_vin")
    t.pack_into(buf, _HDR_SIZE)
    return bytes(buf)


def decode_header(b):
    if len(b) < _HDR_SIZE or b[0] != _HDR_VER:
        raise ValueError("session header: bad version or length")
    v = struct.unpack_from(_HDR, b, 0)
    tariff, _ = Tariff.unpack_from(b, _HDR_SIZE)
    return {"serial": F.bcd_decode(b, 1, 16), "pile": F.bcd_decode(b, 17, 7),
            "gun": "%02d" % v[3], "start_time": v[4], "trade_time": v[5], "trade_flag": v[6],
            "card": F.hex_decode(b, 34, 8), "meter_start": v[8],
            "nameplate_vin": F.ascii_decode(b, 50, 17), "tariff": tariff}


def encode_checkpoint(serial, now, meter, energies, vin):
    """Bytes for on_checkpoint: the register at `now` and the class energies
    it was split into (sum(energies) == meter - meter_start)."""
    n = len(energies)
    buf = bytearray(_CKP_SIZE + 4 * n)
    struct.pack_into(_CKP, buf, 0, _CKP_VER, b"", now, meter, b"", n)
    F.bcd_encode(buf, 1, 16, serial, "serial")
    F.ascii_encode(buf, 29, 17, vin or "", "vin")
    for i in range(n):
        struct.pack_into("<I", buf, _CKP_SIZE + 4 * i, energies[i])
    return bytes(buf)


def decode_checkpoint(b):
    if len(b) < _CKP_SIZE or b[0] != _CKP_VER:
        raise ValueError("session checkpoint: bad version or length")
    v = struct.unpack_from(_CKP, b, 0)
    n = v[5]
    if len(b) < _CKP_SIZE + 4 * n:
        raise ValueError("session checkpoint: truncated")
    e = []
    for i in range(n):
        e.append(struct.unpack_from("<I", b, _CKP_SIZE + 4 * i)[0])
    return {"serial": F.bcd_decode(b, 1, 16), "time": v[2], "meter": v[3],
            "vin": F.ascii_decode(b, 29, 17), "energies": e}


def _bill(h, energies, meter_stop, end_time, vin, reason):
    """The one bill builder (live seal and power-cut rebuild)."""
    acc = Accumulator(h["tariff"], energies)
    if acc.total() != meter_stop - h["meter_start"]:
        raise ValueError("bill %s: class energies %d != meter %d - %d"
                         % (h["serial"], acc.total(), meter_stop, h["meter_start"]))
    vin = vin or ""
    plate = h["nameplate_vin"]
    b = {"serial": h["serial"], "pile": h["pile"], "gun": h["gun"],
         "start_time": h["start_time"], "end_time": end_time,
         "meter_start": h["meter_start"], "meter_stop": meter_stop, "vin": vin,
         "trade_flag": h["trade_flag"], "trade_time": h["trade_time"], "stop_reason": reason,
         "card": h["card"], "nameplate_vin": plate,
         "vin_mismatch": bool(plate and vin and plate != vin)}
    return acc.bill_fields(b)


def rebuild_bill(header, checkpoint=None):
    """The bill of a session cut by a power loss: priced from the header's
    tariff snapshot at the last checkpoint (or, with none, zero energy at the
    start), stop reason 0x83. Energy after the last checkpoint is not billed
    (at most ckpt_energy / ckpt_ms of it: the customer's gain, never a loss)."""
    h = decode_header(header)
    if checkpoint is None:
        return _bill(h, [0] * h["tariff"].n, h["meter_start"], h["start_time"], "",
                     ABORT_POWER_LOSS)
    c = decode_checkpoint(checkpoint)
    if c["serial"] != h["serial"]:
        raise ValueError("checkpoint of %s given with header of %s" % (c["serial"], h["serial"]))
    return _bill(h, c["energies"], c["meter"], c["time"], c["vin"], ABORT_POWER_LOSS)


class _Trade:
    # One executed start: h (header dict, immutable), the accumulator, the
    # last accepted register reading, limits and control state.
    __slots__ = ("h", "acc", "last", "amount_cap", "balance_cap", "energy_cap", "deadline",
                 "soc_target", "t0", "t_last", "u", "p", "pp", "fails", "vin", "vin_dirty",
                 "needs_vin", "vin_done", "ckpt_reg", "ckpt_t", "low_since", "reply",
                 "backwards", "pmax", "rise")

    def __init__(self, h):
        self.h = h
        self.acc = Accumulator(h["tariff"])
        self.last = h["meter_start"]
        self.u = self.last + _STEP   # the true register is below this
        self.p = 0
        self.pp = 0
        self.fails = 0
        self.vin = None
        self.vin_dirty = False
        self.needs_vin = False
        self.vin_done = False
        self.ckpt_reg = self.last
        self.low_since = None
        self.reply = (1, START_NONE)
        self.backwards = 0
        self.t0 = self.t_last = self.ckpt_t = 0
        self.pmax = 0
        self.rise = False   # the power limit rose: plan the next period at pmax


class Gun:
    """One gun's sessions. pile: 14-digit str; gun: "01" (or 1)."""

    def __init__(self, pile, gun, clock, meter, contactor, vehicle, tariff=None,
                 next_serial=None, on_open=None, on_checkpoint=None, on_seal=None,
                 on_start_reply=None, vin_policy=None, log=None, period_ms=1000,
                 min_period_ms=0, meter_fails=3, ckpt_energy=1000, ckpt_ms=60000,
                 vin_wait_ms=30000, no_current_ms=60000, min_balance=1, plug_wait_ms=60000,
                 auth_timeout_ms=30000, stop_lag_ms=100, max_power_w=0, recent=8):
        self.pile = _digits(pile, 14, "pile")
        self.gun = _digits(gun if isinstance(gun, str) else "%02d" % gun, 2, "gun")
        self.clock = clock
        self.meter = meter
        self.contactor = contactor
        self.vehicle = vehicle
        self.tariff = tariff
        self.next_serial = next_serial
        self.on_open = on_open
        self.on_checkpoint = on_checkpoint
        self.on_seal = on_seal
        self.on_start_reply = on_start_reply
        self.vin_policy = vin_policy
        self._log = log
        self.period_ms = period_ms
        self.min_period_ms = min_period_ms
        self.meter_fails = meter_fails
        self.ckpt_energy = ckpt_energy
        self.ckpt_ms = ckpt_ms
        self.vin_wait_ms = vin_wait_ms
        self.no_current_ms = no_current_ms
        self.min_balance = min_balance
        self.plug_wait_ms = plug_wait_ms
        self.auth_timeout_ms = auth_timeout_ms
        self.stop_lag_ms = stop_lag_ms
        self.max_power_w = max_power_w
        self._recent_max = recent
        self.state = PLUGGED if vehicle.plugged else IDLE
        self.trade = None
        self.bill = None          # the last sealed bill
        self.bills = 0            # bills sealed since boot
        self.faults = 0           # 0x13 fault bits
        self.meter_backwards = 0  # register readings refused (lower than before)
        self.refusal = 0          # last 0x32 refusal reason
        self._recent = {}         # serial -> the 0x33 reply it got
        self._recent_order = []
        self._pending = None      # (spec, ticks received): 0x34 waiting for the plug
        self._auth = None         # (card, vin, ticks): 0x31 sent, waiting for 0x32
        self._unsealed = []       # bills on_seal refused, retried by tick()
        # W this gun's output may deliver, None: unshared. Set with the
        # trade's prediction by firmware/sharing.py (set_gun_limit).
        self.power_limit = None
        # Parallel charging (0xA4, firmware/pile.py): the group id of the
        # running session, its role (1 main, 2 auxiliary); None / 0 alone.
        self.group = None
        self.role = 0
        self._diff = diff_of(clock)
        self._at = clock.ticks_ms()  # the next sample is due _wait ms after _at
        self._wait = 0

    def log(self, msg):
        if self._log:
            self._log(msg)

    # --- configuration ---------------------------------------------------------

    def set_tariff(self, tariff):
        """The tariff for sessions that start from now on. A running session
        keeps its snapshot (docs/pricing.md: "A new tariff during a session")."""
        if not isinstance(tariff, Tariff):
            raise TypeError("set_tariff: a firmware.tariff.Tariff is needed")
        self.tariff = tariff

    # --- starts ------------------------------------------------------------------

    def remote_start(self, serial, card="", logical_card="", balance=None, amount=0, energy=0,
                     minutes=0, soc=0, pile=None, trade_flag=TRADE_APP):
        """0x34 (and the extended start with targets). Returns the 0x33
        (result, reason). balance: x100 yuan, None = not enforced (postpaid);
        amount x10^4 yuan, energy x10^4 kWh, minutes, soc %: 0 = no target.

        Same serial again: the same reply as the first time, nothing changes.
        Vehicle not plugged: (0, 5), and if it is plugged within plug_wait_ms
        the start is executed and on_start_reply() sends the late 0x33."""
        if pile is not None and pile != self.pile:
            return (0, START_WRONG_PILE)
        _digits(serial, 32, "serial")
        rep = self._known(serial)
        if rep is not None:
            return rep
        if self.state in (AUTHORISING, CHARGING, STOPPING):
            return (0, START_BUSY)
        if self.tariff is None:
            self.log("start %s refused: no tariff model" % serial)
            return (0, START_FAULT)
        spec = (serial, card, balance, amount, energy, minutes, soc, trade_flag)
        if not self.vehicle.plugged:
            self._pending = (spec, self.clock.ticks_ms())
            return (0, START_NOT_PLUGGED)
        return self._execute(spec)

    def request_start(self, card=None, vin=None):
        """A card swiped (or a VIN start) at the pile: the 0x31 fields to
        send, or None when the gun cannot start now. The answer comes in
        authorised() (0x32)."""
        if self.state not in (PLUGGED, FINISHED) or not self.vehicle.plugged or self.tariff is None:
            return None
        vin = norm_vin(vin)
        card = norm_card(card)
        self._auth = (card, vin, self.clock.ticks_ms())
        self.state = AUTHORISING
        return {"pile": self.pile, "gun": self.gun, "start_type": 3 if vin else 1,
                "need_password": 0, "card": card, "password": "0" * 32, "vin": vin or ""}

    def authorised(self, serial, ok, reason=0, balance=None, logical_card="", amount=0,
                   energy=0, minutes=0, soc=0):
        """0x32. Returns (result, reason): a refusal (0, platform reason)
        starts nothing and bills nothing; an authorisation executes the start
        (platform serial, or a pile-issued one if the platform sent zeros)."""
        if serial and serial != _ZERO_SERIAL:
            rep = self._known(serial)
            if rep is not None:
                return rep
        if self._auth is None or self.state != AUTHORISING:
            return (0, START_BUSY if self.state in (CHARGING, STOPPING) else START_NONE)
        card, vin, _ = self._auth
        self._auth = None
        if not ok:
            self.refusal = reason
            self.state = PLUGGED
            self.log("card %s refused by the platform, reason %d" % (card, reason))
            return (0, reason)
        if not serial or serial == _ZERO_SERIAL:
            serial = self._new_serial()
        _digits(serial, 32, "serial")
        self.state = PLUGGED
        flag = TRADE_VIN if vin else TRADE_CARD
        return self._execute((serial, card, balance, amount, energy, minutes, soc, flag), vin)

    def offline_start(self, card, balance=None, amount=0, energy=0, minutes=0, soc=0):
        """A card from the offline card list while the link is down: the pile
        issues the serial (next_serial) and bills with trade flag 4."""
        if self._auth is not None and self.state == AUTHORISING:
            self._auth = None
            self.state = PLUGGED
        if self.state not in (PLUGGED, FINISHED) or not self.vehicle.plugged or self.tariff is None:
            return (0, START_BUSY if self.state in (CHARGING, STOPPING) else START_FAULT)
        spec = (self._new_serial(), norm_card(card), balance, amount, energy, minutes, soc,
                TRADE_OFFLINE_CARD)
        return self._execute(spec)

    def _new_serial(self):
        if self.next_serial is None:
            raise ValueError("no next_serial() given: the pile cannot issue a trade serial")
        n = self.next_serial()
        if isinstance(n, str):
            return _digits(n, 32, "serial")
        return make_serial(self.pile, self.gun, self.clock.now(), n)

    def _known(self, serial):
        tr = self.trade
        if tr is not None and tr.h["serial"] == serial:
            return tr.reply
        if self._pending is not None and self._pending[0][0] == serial:
            return (0, START_NOT_PLUGGED)
        return self._recent.get(serial)

    def _remember(self, serial, reply):
        if serial not in self._recent:
            self._recent_order.append(serial)
            if len(self._recent_order) > self._recent_max:
                self._recent.pop(self._recent_order.pop(0), None)
        self._recent[serial] = reply

    def _read_start(self):
        for _ in range(self.meter_fails):
            try:
                r = self.meter.read_energy()
                self.faults &= ~FAULT_METER
                return r
            except MeterError as e:
                self.log("meter read at start failed: %s" % e)
        return None

    def _execute(self, spec, vin=None):
        serial, card, balance, amount, energy, minutes, soc, flag = spec
        self._pending = None
        clock = self.clock
        now = clock.now()
        r = self._read_start()
        card = norm_card(card)
        pol = self.vin_policy
        h = {"serial": serial, "pile": self.pile, "gun": self.gun, "start_time": now,
             "trade_time": now, "trade_flag": flag, "card": card,
             "meter_start": r if r is not None else 0,
             "nameplate_vin": pol.nameplate(card) if pol else "", "tariff": self.tariff}
        tr = _Trade(h)
        tr.vin = vin
        if self.on_open is not None:
            try:
                self.on_open(serial, encode_header(h))
            except StartRefused as e:  # nothing executed: nothing to bill
                self.log("start %s refused (reason %d): %s" % (serial, e.reason, e))
                return (0, e.reason)
            except Exception as e:  # nothing executed: nothing to bill
                self.log("start %s refused: journal: %s" % (serial, e))
                return (0, START_FAULT)
        # From here the start is executed: it ends in exactly one bill.
        self.trade = tr
        self.state = AUTHORISING
        fail = 0
        if r is None:
            fail = FAIL_METER
            self.faults |= FAULT_METER
        elif balance is not None and balance < self.min_balance:
            fail = FAIL_BALANCE
        else:
            self.contactor.close()
            if not self.contactor.closed:
                fail = FAIL_CLOSE
                self.faults |= FAULT_CONTACTOR
        if fail:
            self.contactor.open()
            tr.reply = (0, START_NONE if fail == FAIL_BALANCE else START_FAULT)
            self.log("start %s failed: reason 0x%02X" % (serial, fail))
            self._seal(fail)
            return tr.reply
        self.faults &= ~FAULT_CONTACTOR
        tr.amount_cap = amount
        tr.balance_cap = None if balance is None else balance * 100
        tr.energy_cap = energy
        tr.deadline = minutes * 60000
        tr.soc_target = soc
        tr.needs_vin = bool(pol and pol.needs_vin(card))
        t = clock.ticks_ms()
        tr.t0 = tr.t_last = tr.ckpt_t = t
        # The first period: power unknown yet, assume the most the pile can
        # give (its rating, max_power_w, or the vehicle's limit if lower).
        pmax = self.vehicle.max_power
        if self.max_power_w and (self.max_power_w < pmax or not pmax):
            pmax = self.max_power_w
        if not pmax:
            pmax = _UNKNOWN_PMAX_W
        lim = self.power_limit      # shared power: what this gun's output may give now
        if lim is not None and lim < pmax:
            pmax = lim
        tr.pp = pmax
        # The ramp extrapolation below never predicts more than the output can
        # give (with the measured power's own 1/16 margin).
        tr.pmax = pmax + pmax // 16
        self.state = CHARGING
        reason, delay = self._plan(tr, now, 0)
        if reason:
            self._stop(reason)
        else:
            self._at = t
            self._wait = delay
        return tr.reply

    # --- stops -------------------------------------------------------------------

    def remote_stop(self, pile=None, serial=None):
        """0x36. Returns the 0x35 (result, reason): (1, 0) when it stopped a
        charging session; (0, 2) for a gun not charging (second or third stop,
        stop after an automatic stop, unknown or finished serial) — which
        never creates, changes or drops a bill. A start still waiting for the
        plug is cancelled (the platform closed that order)."""
        if pile is not None and pile != self.pile:
            return (0, STOPR_UNKNOWN_PILE)
        if self._pending is not None and (serial is None or self._pending[0][0] == serial):
            self._pending = None
        tr = self.trade
        if self.state == CHARGING and (serial is None or tr.h["serial"] == serial):
            self._stop(STOP_REMOTE)
            return (1, STOPR_NONE)
        return (0, STOPR_NOT_CHARGING)

    def manual_stop(self):
        """The stop button at the pile. True if it stopped a session."""
        if self.state == AUTHORISING and self._auth is not None:
            self._auth = None
            self.state = PLUGGED
            return False
        if self.state == CHARGING:
            self._stop(STOP_MANUAL)
            return True
        return False

    def abort(self, reason):
        """The main loop caught a fault (Pile.poll): the contactor opens now
        and a running session is sealed, billed at the last good reading if
        the final read fails too. True if it sealed a session."""
        self.contactor.open()
        self._pending = None
        if self.trade is None:
            if self.state == CHARGING or self.state == STOPPING:
                self.state = FINISHED
            return False
        if self.state == CHARGING:
            try:
                self._stop(reason)
                return True
            except Exception as e:
                self.log("abort: final read failed (%s): billed at the last reading" % e)
        if self.trade is not None:
            self._seal(reason)
        return True

    def balance_update(self, balance):
        """0x42 for the running session: the new balance, x100 yuan."""
        if self.trade is not None and self.state == CHARGING:
            self.trade.balance_cap = balance * 100
            return True
        return False

    def _stop(self, reason, final_read=True):
        tr = self.trade
        self.state = STOPPING
        self.contactor.open()
        if final_read:
            try:
                self._account(tr, self.meter.read_energy(), self.clock.now())
            except MeterError as e:
                self.log("final meter read failed (%s): billed at the last reading" % e)
        self._seal(reason)

    def _seal(self, reason):
        tr = self.trade
        serial = tr.h["serial"]
        b = _bill(tr.h, tr.acc.energy, tr.last, self.clock.now(), tr.vin, reason)
        self.trade = None
        self.state = FINISHED
        self.bill = b
        self.bills += 1
        self._remember(serial, tr.reply)
        self._hand_over(serial, b)

    def _hand_over(self, serial, b):
        if self.on_seal is None:
            return
        try:
            self.on_seal(serial, b)
        except Exception as e:  # kept and retried: a bill is never dropped
            self.log("seal %s failed (%s): retrying" % (serial, e))
            self._unsealed.append((serial, b))

    # --- sampling ----------------------------------------------------------------

    def tick(self):
        """Run what is due; returns ms until the next call is wanted."""
        clock = self.clock
        t = clock.ticks_ms()
        if self._unsealed:
            pend = self._unsealed
            self._unsealed = []
            for serial, b in pend:
                self._hand_over(serial, b)
        st = self.state
        if st == CHARGING:
            left = self._wait - self._diff(t, self._at)
            if left > 0:
                return left
            return self._sample(self.trade, t)
        plugged = self.vehicle.plugged
        if self._pending is not None:
            spec, since = self._pending
            if self._diff(t, since) > self.plug_wait_ms:
                self._pending = None
            elif plugged and st in (IDLE, PLUGGED, FINISHED):
                rep = self._execute(spec)
                if self.on_start_reply is not None:
                    self.on_start_reply(spec[0], rep[0], rep[1])
                if self.state == CHARGING:
                    left = self._wait - self._diff(t, self._at)
                    return left if left > 0 else 0
                st = self.state
        if self.faults & FAULT_METER:
            # Reported as a fault (0x13 status 1) until the meter answers again.
            try:
                self.meter.read_energy()
                self.faults &= ~FAULT_METER
            except MeterError:
                pass
        if st == IDLE:
            if plugged:
                self.state = PLUGGED
        elif st == PLUGGED or st == FINISHED:
            if not plugged:
                self.state = IDLE
        elif st == AUTHORISING and self._auth is not None:
            if not plugged or self._diff(t, self._auth[2]) >= self.auth_timeout_ms:
                self.log("card start: no 0x32 in time or unplugged")
                self._auth = None
                self.state = PLUGGED if plugged else IDLE
        return self.period_ms

    def _account(self, tr, r, now):
        if r > tr.last:
            tr.acc.add(r - tr.last, now)
            tr.last = r
        elif r < tr.last:
            tr.backwards += 1
            self.meter_backwards += 1
            self.log("meter register went back %d -> %d: fault, not billed" % (tr.last, r))

    def _sample(self, tr, t):
        now = self.clock.now()
        diff = self._diff
        dt = diff(t, tr.t_last)
        tr.t_last = t
        elapsed = diff(t, tr.t0)
        if not self.vehicle.plugged:
            self._stop(ABORT_PILOT)
            return self.period_ms
        p_prev = tr.p
        try:
            r = self.meter.read_energy()
            p = self.meter.read_power()
            ok = True
        except MeterError as e:
            ok = False
            tr.fails += 1
            self.faults |= FAULT_METER
            self.log("meter read failed (%d/%d): %s" % (tr.fails, self.meter_fails, e))
        if ok:
            tr.fails = 0
            self.faults &= ~FAULT_METER
            if p < 0:
                p = 0
            self._account(tr, r, now)
            # Upper bound of the true register: the power over the period was at
            # most the larger end (monotone within a period); capped by the
            # register's own resolution.
            hi = p if p > p_prev else p_prev
            u = tr.u + _cdiv(hi * dt, _WMS_PER_E4)
            if u > tr.last + _STEP:
                u = tr.last + _STEP
            if u <= tr.last:
                u = tr.last + _STEP
            tr.u = u
            tr.p = p
            pp = p + (p - p_prev if p > p_prev else 0) + p // 16
            if tr.rise:             # the limit just rose: the power may reach it
                pp = tr.pmax
                tr.rise = False
            tr.pp = pp if pp < tr.pmax else tr.pmax
        else:
            # Blind: assume the predicted power went on flowing.
            tr.u += _cdiv(tr.pp * dt, _WMS_PER_E4)
            if tr.fails >= self.meter_fails:
                self._stop(ABORT_METER, False)
                return self.period_ms
        # VIN: recorded for the bill whatever the policy; decided once.
        v = norm_vin(self.vehicle.vin)
        if v and not tr.vin:
            tr.vin = v
            tr.vin_dirty = True
            plate = tr.h["nameplate_vin"]
            if plate and plate != v:
                self.log("VIN %s read, nameplate %s: flagged in the bill" % (v, plate))
        if tr.needs_vin and not tr.vin_done and (tr.vin or elapsed >= self.vin_wait_ms):
            tr.vin_done = True
            code = self.vin_policy.decide(tr.h["card"], tr.vin)
            if code:
                self.log("VIN %s not authorised for card %s: stop 0x%02X"
                         % (tr.vin, tr.h["card"], code))
                self._stop(code)
                return self.period_ms
        soc = self.vehicle.soc
        if soc >= 100 or (tr.soc_target and soc >= tr.soc_target):
            self._stop(STOP_SOC)
            return self.period_ms
        reason, delay = self._plan(tr, now, elapsed)
        if reason:
            self._stop(reason)
            return self.period_ms
        if ok:
            lim = self.power_limit
            if (tr.p >= _NO_CURRENT_W or (lim is not None and lim < _NO_CURRENT_W)
                    or getattr(self.vehicle, "paused", False)):
                # (power sharing holding this gun at ~0 W is not "no current":
                # a module fault lowers power, it never ends a session; nor
                # is a BMS pausing the charge, BSM "not permitted": its own
                # limit is firmware/bms.py's, 10 minutes)
                tr.low_since = None
            elif tr.low_since is None:
                tr.low_since = t
            elif diff(t, tr.low_since) >= self.no_current_ms:
                self._stop(ABORT_NO_CURRENT)
                return self.period_ms
        if self.on_checkpoint is not None and (
                tr.vin_dirty or tr.last - tr.ckpt_reg >= self.ckpt_energy
                or diff(t, tr.ckpt_t) >= self.ckpt_ms):
            self.on_checkpoint(tr.h["serial"],
                               encode_checkpoint(tr.h["serial"], now, tr.last, tr.acc.energy,
                                                 tr.vin))
            tr.ckpt_reg = tr.last
            tr.ckpt_t = t
            tr.vin_dirty = False
        self._at = t
        self._wait = delay
        return delay

    def _plan(self, tr, now, elapsed):
        """(stop reason, 0) if a limit would be crossed before the pile could
        act again, else (0, ms to the next sample)."""
        delay = self.period_ms
        if tr.deadline:
            left = tr.deadline - elapsed
            if left <= 0:
                return STOP_TIME, 0
            if left < delay:
                delay = left
        reason = self._crosses(tr, now, delay)
        if reason and 0 < self.min_period_ms < delay:
            # Close to a limit: sample faster rather than stop a period early.
            delay = self.min_period_ms
            reason = self._crosses(tr, now, delay)
        return reason, delay

    def _crosses(self, tr, now, delay):
        h = delay + self.stop_lag_ms
        # The highest register the pile could bill if it stopped at the next
        # sample: strictly below U + predicted energy, floored to the register.
        r = tr.u + _cdiv(tr.pp * h, _WMS_PER_E4) - 1
        r -= r % _STEP
        if r < tr.last:
            r = tr.last
        if tr.energy_cap and r - tr.h["meter_start"] > tr.energy_cap:
            return STOP_ENERGY
        if tr.amount_cap or tr.balance_cap is not None:
            d = r - tr.last
            acc = tr.acc
            c = acc.cost_of(d, now)
            later = now + h // 1000 + 1
            if slot_of(later) != slot_of(now):  # the next slot may cost more
                c2 = acc.cost_of(d, later)
                if c2 > c:
                    c = c2
            total = acc.amount() + c
            if tr.amount_cap and total > tr.amount_cap:
                return STOP_AMOUNT
            if tr.balance_cap is not None and total > tr.balance_cap:
                return ABORT_BALANCE
        return 0

    # --- realtime data (0x13) --------------------------------------------------------

    def status(self):
        """0x13 status: 1 fault, 2 idle, 3 charging (0 offline is the link's)."""
        if self.state == CHARGING:
            return RT_CHARGING
        return RT_FAULT if self.faults else RT_IDLE

    def realtime(self):
        """0x13 field values (names of protocol/frames.py), zeros when idle as
        the document asks ("待机置零")."""
        plugged = 1 if self.vehicle.plugged else 0
        d = {"serial": _ZERO_SERIAL, "pile": self.pile, "gun": self.gun,
             "status": self.status(), "homed": 0 if plugged else 1, "plugged": plugged,
             "voltage": 0, "current": 0, "gun_temp": 0, "cable_code": "0" * 16, "soc": 0,
             "battery_temp": 0, "minutes": 0, "minutes_left": 0, "energy": 0,
             "loss_energy": 0, "amount": 0, "faults": self.faults}
        tr = self.trade
        if self.state != CHARGING or tr is None:
            return d
        try:
            d["voltage"] = self.meter.read_voltage()
            d["current"] = self.meter.read_current()
        except MeterError:
            d["faults"] = self.faults | FAULT_METER
        elapsed = self._diff(self.clock.ticks_ms(), tr.t0)
        acc = tr.acc
        e = acc.total()
        amount = acc.amount()
        d["serial"] = tr.h["serial"]
        d["soc"] = self.vehicle.soc
        d["minutes"] = elapsed // 60000
        d["energy"] = e
        d["loss_energy"] = acc.total_loss()
        d["amount"] = amount
        d["minutes_left"] = self._minutes_left(tr, elapsed, e, amount)
        return d

    def _minutes_left(self, tr, elapsed, e, amount):
        best = -1
        if tr.deadline:
            best = _cdiv(tr.deadline - elapsed, 60000)
        p = tr.p
        if p > 0:
            rate = p * 60000 // _WMS_PER_E4  # e4kwh per minute
            if rate > 0:
                if tr.energy_cap:
                    m = _cdiv(tr.energy_cap - e, rate)
                    best = m if best < 0 or m < best else best
                cap = tr.amount_cap
                if tr.balance_cap is not None and (not cap or tr.balance_cap < cap):
                    cap = tr.balance_cap
                if cap:
                    per_min = tr.acc.cost_of(rate, self.clock.now())
                    if per_min > 0:
                        m = _cdiv(cap - amount, per_min)
                        best = m if best < 0 or m < best else best
        return best if best > 0 else 0
