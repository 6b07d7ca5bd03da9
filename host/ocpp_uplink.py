# The OCPP uplink (docs/ocpp.md): every pile behind the bridge is an OCPP
# charging station (2.0.1 or 1.6J) on a CSMS, one EVSE per gun, built on the
# `ocpp` library (mobilityhouse) over `websockets`.
#
# Never drop: every transaction message (Started, Updated, Ended; 1.6:
# StartTransaction, MeterValues, StopTransaction) is committed to the
# bridge's SQLite store before it is sent, with its seqNo given once, and is
# sent, in order per pile, until the CSMS answers it: across CSMS outages and
# bridge restarts, with exponential backoff. The CSMS's answer to a bill's
# Ended event is recorded on the bill; the pile is settled (0xE4) only when
# every configured uplink has acknowledged it (decisions.md "Uplinks").
# `strict` mode stops after ocpp.message_attempts tries per message (OCPP
# 2.0.1 MessageAttempts) but never deletes a message nor settles a pile.
#
# Boot, Heartbeat and StatusNotification are state, not custody: sent on each
# connection (status again on every change while connected), never queued.
import asyncio
import json
import logging
import ssl
import time

from protocol import codec
from protocol import fields as F

from host import config as configmod
from host import schema

log = logging.getLogger("host.ocpp")
logging.getLogger("ocpp").setLevel(logging.WARNING)   # it logs every message at INFO


def _inline_validation():
    # The library validates every message against its JSON schema in a
    # thread pool by default; in line is faster here (shared/context/tooling.md)
    # and keeps the station's order trivially.
    try:
        import ocpp.messages
        ocpp.messages.ASYNC_VALIDATION = False
    except (ImportError, AttributeError):
        pass


_inline_validation()

_VENDOR_ID = "pile-companion"
_MAX_CUSTOMDATA_PERIODS = 5

# 0x13 gun status -> OCPP connector status (2.0.1 / 1.6)
_STATUS_201 = {0: "Unavailable", 1: "Faulted", 2: "Available", 3: "Occupied"}
_STATUS_16 = {0: "Unavailable", 1: "Faulted", 2: "Available", 3: "Charging"}


def utc_of_local(secs):
    """The pile's local seconds since 2000-01-01 (YKC CP56Time2a, the site's
    time zone = the bridge's) as an OCPP UTC timestamp."""
    y, mo, d, h, mi, s, _ = F.to_civil(secs)
    return schema.utc_iso(time.mktime((y, mo, d, h, mi, s, 0, 0, -1)))


def wh(x):
    """YKC energy (10^-4 kWh) in Wh: exact, an int when whole."""
    q, r = divmod(x, 10)
    return q if r == 0 else x / 10


def gun_no(gun):
    try:
        return max(1, int(gun))
    except (TypeError, ValueError):
        return 1


# --- messages built from YKC frames ----------------------------------------------------

def _sampled(value_wh, context, measurand="Energy.Active.Import.Register"):
    return {"value": value_wh, "context": context, "measurand": measurand,
            "unit_of_measure": {"unit": "Wh"}}


def bill_custom(f):
    """The bill's money as OCPP customData: exact decimal strings (yuan,
    kWh), the periods in the pile's own split (single-word keys: the ocpp
    library renames snake_case keys)."""
    periods = []
    for p in schema.periods_of(f):
        periods.append({"period": p, "energy": schema.dec(f[p + "_energy"], 4),
                        "amount": schema.dec(f[p + "_amount"], 4),
                        "price": schema.dec(f[p + "_price"], 5)})
    return {"vendorId": _VENDOR_ID, "amount": schema.dec(f["total_amount"], 4),
            "energy": schema.dec(f["total_energy"], 4), "reason": f["stop_reason"],
            "periods": periods[:_MAX_CUSTOMDATA_PERIODS]}


def started_201(serial, gun, when_utc, meter_wh=None, card=None, remote=False, id_token=None):
    p = {"event_type": "Started", "timestamp": when_utc,
         "trigger_reason": "RemoteStart" if remote else (
             "Authorized" if card or id_token else "CablePluggedIn"),
         "transaction_info": {"transaction_id": serial, "charging_state": "Charging"},
         "evse": {"id": gun_no(gun), "connector_id": 1}}
    if meter_wh is not None:
        p["meter_value"] = [{"timestamp": when_utc,
                             "sampled_value": [_sampled(meter_wh, "Transaction.Begin")]}]
    if id_token:
        p["id_token"] = id_token
    elif card_token(card):
        p["id_token"] = {"id_token": card_token(card), "type": "ISO14443"}
    return p


def updated_201(serial, gun, when_utc, energy, power_w):
    return {"event_type": "Updated", "timestamp": when_utc, "trigger_reason": "MeterValuePeriodic",
            "transaction_info": {"transaction_id": serial, "charging_state": "Charging"},
            "evse": {"id": gun_no(gun), "connector_id": 1},
            "meter_value": [{"timestamp": when_utc, "sampled_value": [
                _sampled(wh(energy), "Sample.Periodic", "Energy.Active.Import.Interval"),
                {"value": power_w, "context": "Sample.Periodic", "measurand": "Power.Active.Import",
                 "unit_of_measure": {"unit": "W"}}]}]}


def ended_201(f, remote=False):
    end = utc_of_local(f["end_time"])
    return {"event_type": "Ended", "timestamp": end,
            "trigger_reason": "RemoteStop" if remote else "StopAuthorized",
            "transaction_info": {"transaction_id": f["serial"], "charging_state": "Idle",
                                 "stopped_reason": "Remote" if remote else "Local"},
            "evse": {"id": gun_no(f["gun"]), "connector_id": 1},
            "meter_value": [{"timestamp": end, "sampled_value": [
                _sampled(wh(f["meter_stop"]), "Transaction.End")]}],
            "custom_data": bill_custom(f)}


def ended_201_raw(serial, gun, when_utc):
    # A bill we cannot decode still ends its transaction (its money is in
    # the MQTT document / the store, raw).
    return {"event_type": "Ended", "timestamp": when_utc, "trigger_reason": "StopAuthorized",
            "transaction_info": {"transaction_id": serial, "charging_state": "Idle",
                                 "stopped_reason": "Other"},
            "evse": {"id": gun_no(gun), "connector_id": 1}}


def card_token(card):
    """A YKC card number (16 hex digits, zero-padded on the left) as the card
    reader shows its UID: D14B0A54. Empty for no card."""
    return (card or "").upper().lstrip("0")


def id_tag_16(card):
    return card_token(card)[:20] or "ykc"


def started_16(gun, when_utc, meter_wh, card=None, id_tag=None):
    return {"connector_id": gun_no(gun), "id_tag": id_tag or id_tag_16(card),
            "meter_start": int(meter_wh or 0), "timestamp": when_utc}


def updated_16(gun, when_utc, energy, power_w):
    return {"connector_id": gun_no(gun), "meter_value": [{"timestamp": when_utc, "sampled_value": [
        {"value": str(wh(energy)), "context": "Sample.Periodic",
         "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": str(power_w), "context": "Sample.Periodic", "measurand": "Power.Active.Import",
         "unit": "W"}]}]}


def ended_16(f, remote=False):
    end = utc_of_local(f["end_time"])
    return {"meter_stop": int(wh(f["meter_stop"])), "timestamp": end,
            "reason": "Remote" if remote else "Local", "id_tag": id_tag_16(f.get("card")),
            "transaction_data": [{"timestamp": end, "sampled_value": [
                {"value": str(wh(f["meter_stop"])), "context": "Transaction.End",
                 "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}


def decode_bill(frame):
    try:
        return codec.decode(frame, tolerant=True, lenient=True).fields
    except codec.FrameError:
        return None


# --- what the CSMS sets, kept per pile in the store's `meta` table ---------------------
# Charging profiles, the local authorisation list and changed configuration
# variables are small JSON values under "ocpp.<what>.<pile code>" (no schema
# change): they survive a bridge restart, as OCPP asks of all three.

def _meta_rows(db, prefix):
    return db.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ?",
                      (prefix, prefix + "\x7f")).fetchall()


def _meta_put(db, key, value):
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
               "SET value = excluded.value", (key, value))


# Configuration: 1.6 key -> (2.0.1 component, variable, instance, type, writable).
_VARS = {
    "HeartbeatInterval": ("OCPPCommCtrlr", "HeartbeatInterval", None, int, True),
    "MeterValueSampleInterval": ("SampledDataCtrlr", "TxUpdatedInterval", None, int, True),
    "LocalAuthorizeOffline": ("AuthCtrlr", "LocalAuthorizeOffline", None, bool, True),
    "AllowOfflineTxForUnknownId": ("AuthCtrlr", "OfflineTxForUnknownIdEnabled", None, bool, True),
    "LocalAuthListEnabled": ("LocalAuthListCtrlr", "Enabled", None, bool, False),
    "TransactionMessageAttempts": ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent", int, False),
    "TransactionMessageRetryInterval": ("OCPPCommCtrlr", "MessageAttemptInterval",
                                        "TransactionEvent", int, False),
    "ChargingScheduleAllowedChargingRateUnit": ("SmartChargingCtrlr", "RateUnit", None, str, False),
    "NumberOfConnectors": (None, None, None, int, False),                       # 1.6 only
    "SupportedFeatureProfiles": (None, None, None, str, False),                 # 1.6 only
}
_VAR_OF_201 = {(c, v, i): k for k, (c, v, i, _, _) in _VARS.items() if c}
_COMPONENTS = {c for c, _, _, _, _ in _VARS.values() if c}
_MAX_LIST = 5000        # local authorisation list entries per pile (the VIN list's own cap)

# OCPP authorisation status -> YKC 0x32 refusal reason (V1.6: 1 no such account,
# 2 account frozen, 3 balance too low, 4 card has an unsettled bill, 6 not
# allowed at this pile, 9 VIN unknown, 0x0A the pile has unsettled bills:
# the bridge's OCPP queue is full).
_AUTH_REASON = {"CustodyFull": 0x0A, "Invalid": 1, "Unknown": 1, "Blocked": 2, "Expired": 2,
                "NoCredit": 3, "ConcurrentTx": 4, "NotAllowedTypeEVSE": 6, "NotAtThisLocation": 6,
                "NotAtThisTime": 6}
# The balance a CSMS-authorised start carries in 0x32 / 0x34 (0.01 yuan): OCPP
# has none and the CSMS bills, so the pile is given no balance limit (below
# its min_balance the pile refuses the start, firmware/session.py).
START_BALANCE = 0xFFFFFFFF

_PURPOSE = {"ChargingStationMaxProfile": "max", "ChargePointMaxProfile": "max",
            "TxDefaultProfile": "default", "TxProfile": "tx"}


def _utc_secs(s):
    import datetime
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _elapsed(schedule, kind, now):
    # Seconds into the schedule (Relative: its start, always 0 here) and the
    # recurrence length (Recurring) or None.
    if not schedule.get("start_schedule") or kind == "Relative":
        return 0.0, None
    e = (time.time() if now is None else now) - _utc_secs(schedule["start_schedule"])
    if kind == "Recurring":
        cycle = 604800 if schedule.get("recurrency_kind") == "Weekly" else 86400
        return e % cycle, cycle
    return e, None


def next_period_in(schedule, kind, now=None):
    """Seconds until the schedule's next period starts, or None (no later
    period: the limit holds until the profile is cleared or replaced)."""
    if not schedule.get("start_schedule") or kind == "Relative":
        return None         # no start to count from: the first period holds
    try:
        e, cycle = _elapsed(schedule, kind, now)
        starts = sorted(p["start_period"] for p in schedule.get("charging_schedule_period") or [])
    except (KeyError, TypeError, ValueError):
        return None
    later = [t - e for t in starts if t > e]
    if later:
        return later[0]
    if cycle and starts:
        return cycle - e + starts[0]
    return None


def profile_limit_w(schedule, kind, volts, now=None):
    """The limit a charging schedule puts in force now, W (an int >= 1: 0 W
    on the wire lifts the cap). Amperes count per phase: A x volts x phases
    (number_phases, 3 when absent)."""
    periods = sorted(schedule.get("charging_schedule_period") or [], key=lambda p: p["start_period"])
    if not periods:
        raise ValueError("no chargingSchedulePeriod")
    elapsed, _ = _elapsed(schedule, kind, now)
    cur = periods[0]
    for p in periods:
        if p["start_period"] <= elapsed:
            cur = p
    unit = schedule.get("charging_rate_unit")
    if unit == "W":
        w = cur["limit"]
    elif unit == "A":
        w = cur["limit"] * volts * (cur.get("number_phases") or 3)
    else:
        raise ValueError("chargingRateUnit %r" % (unit,))
    if w < 0:
        raise ValueError("a negative limit")
    return max(1, int(round(w)))


def is_vin(token):
    return isinstance(token, str) and len(token) == 17 and token.isalnum() and token.isascii()


# --- the uplink -------------------------------------------------------------------------

class OcppUplink:
    """One Station per pile; the bridge calls on_* as YKC frames arrive."""

    def __init__(self, bridge):
        self.b = bridge
        self.cfg = bridge.cfg["ocpp"]
        self.v16 = self.cfg["version"] == "1.6"
        self.stations = {}
        self.stats = {"sent": 0, "acked": 0, "failed": 0, "gave_up": 0, "connects": 0}
        self._last_update = {}          # serial -> monotonic time of the last Updated queued
        self._started = set()           # serials whose Started is queued (a cache of the store)
        self._auth_of = {}              # serial -> the idToken the CSMS authorised it with
        self.profiles = {}              # pile -> [charging profile entries] (meta "ocpp.profiles.")
        self.lists = {}                 # pile -> {"version", "ids": {token: status}} ("ocpp.list.")
        self.vars = {}                  # pile -> {1.6 key: value} changed by the CSMS ("ocpp.vars.")
        self._schedule_tasks = {}       # pile -> the task that sends the cap at the next period
        self._fw_last = {}              # pile -> (last FirmwareStatusNotification, request id)
        self._password = None
        if self.cfg["password_file"]:
            self._password = configmod.read_secret_file(self.cfg["password_file"],
                                                        "ocpp.password_file")

    async def start(self):
        for what, into in (("profiles", self.profiles), ("list", self.lists), ("vars", self.vars)):
            prefix = "ocpp.%s." % what
            for key, value in await self.b.store._submit(_meta_rows, prefix):
                into[key[len(prefix):]] = json.loads(value)
        # Bills taken into custody by a bridge that stopped before queueing
        # their Ended (or before OCPP was configured) are queued now.
        for bill in await self.b.store.ocpp_missing_ended():
            await self._queue_bill(bill.pile, bill.serial, bill.frame, offline=True)
        for code in await self.b.store.ocpp_piles():
            self.station(code)
        for code in self.profiles:
            self._follow_schedules(code)

    async def stop(self):
        for t in list(self._schedule_tasks.values()):
            t.cancel()
        for st in list(self.stations.values()):
            await st.stop()

    def station(self, code):
        st = self.stations.get(code)
        if st is None:
            st = self.stations[code] = Station(self, code)
            st.start()
        return st

    def connected(self, code):
        st = self.stations.get(code)
        return st is not None and st.cp is not None

    # --- from the pile -------------------------------------------------------------------

    def on_pile_seen(self, pile):
        self.station(pile.code).status_changed()
        if pile.conn is not None and not pile.ext and self.cap_w(pile.code) is not None:
            # A third-party pile's 0x52 again at each login (ours get the cap
            # in 0xDE from piles.py push_site_cap).
            self.b._spawn(self.push_cap(pile.code))

    def on_realtime(self, pile, v):
        """0x13: Started when a gun starts charging with a serial, Updated at
        most every meter_interval_s, the connector's status on change."""
        st = self.station(pile.code)
        st.status_changed()
        serial = v["serial"]
        if v["status"] != 3 or not serial or not serial.strip("0"):
            return
        now = time.monotonic()
        gun = v["gun"]
        when = schema.utc_iso()
        power = v["voltage"] * v["current"] // 100
        if serial not in self._started:
            self._started.add(serial)
            self._last_update[serial] = now
            tok = self._auth_of.get(serial)
            p = started_16(gun, when, None, id_tag=tok and tok["id_token"]) if self.v16 else \
                started_201(serial, gun, when, id_token=tok)
            self._spawn_queue(pile.code, serial, gun, "started", p)
            return
        last = self._last_update.get(serial, 0)
        if now - last >= self.var(pile.code, "MeterValueSampleInterval"):
            self._last_update[serial] = now
            p = updated_16(gun, when, v["energy"], power) if self.v16 else \
                updated_201(serial, gun, when, v["energy"], power)
            self._spawn_queue(pile.code, serial, gun, "updated", p)

    def _spawn_queue(self, code, serial, gun, kind, payload):
        offline = not self.connected(code)

        async def go():
            try:
                await self.b.store.ocpp_enqueue(code, serial, gun_no(gun), kind, payload, offline)
            except Exception:
                log.exception("pile %s: %s for %s not queued", code, kind, serial)
                return
            self.station(code).wake()
        self.b._spawn(go())

    async def on_bill(self, pile_code, bill):
        """A bill newly in custody: its transaction ends at the CSMS."""
        await self._queue_bill(pile_code, bill.serial, bill.frame, offline=not self.connected(pile_code))

    async def _queue_bill(self, code, serial, frame, offline):
        f = decode_bill(frame)
        tx = await self.b.store.ocpp_tx(serial)
        remote = bool(tx and tx[4])
        gun = f["gun"] if f else (serial[14:16] if len(serial) >= 16 else "01")
        if f is not None:
            start = utc_of_local(f["start_time"])
            if self.v16:
                sp = started_16(gun, start, wh(f["meter_start"]), f.get("card"))
                ep = ended_16(f, remote)
            else:
                sp = started_201(serial, gun, start, wh(f["meter_start"]), f.get("card"))
                ep = ended_201(f, remote)
        else:
            now = schema.utc_iso()
            sp = started_16(gun, now, 0) if self.v16 else started_201(serial, gun, now)
            ep = ({"meter_stop": 0, "timestamp": now, "reason": "Other"} if self.v16
                  else ended_201_raw(serial, gun, now))
        # A transaction the CSMS never heard start (a third-party pile, a
        # session that ran while the bridge was down): Started first, late.
        # Both are no-ops when already queued (a bill sent twice ends once).
        self._started.add(serial)
        await self.b.store.ocpp_enqueue(code, serial, gun_no(gun), "started", sp, True)
        await self.b.store.ocpp_enqueue(code, serial, gun_no(gun), "ended", ep, offline)
        self._last_update.pop(serial, None)
        self._started.discard(serial)     # a late 0x13 finds the store's copy
        self._auth_of.pop(serial, None)
        self.station(code).wake()
        if any(p.get("serial") == serial for p in self.profiles.get(code) or []):
            self.b._spawn(self._end_tx_profiles(code, serial))    # not in the bill's path

    # --- configuration variables (1.6 Get/ChangeConfiguration, 2.0.1 Get/SetVariables) ----

    def var(self, code, key):
        """A configuration variable's value for pile `code`: what the CSMS set,
        else the site config's."""
        c = self.cfg
        st = self.stations.get(code)
        if key == "HeartbeatInterval" and st is not None:
            return int(st.heartbeat_s)      # the boot answer's, or the CSMS's since
        v = self.vars.get(code, {}).get(key)
        if v is not None:
            return v
        return {"HeartbeatInterval": int(st.heartbeat_s if st else c["heartbeat_s"]),
                "MeterValueSampleInterval": c["meter_interval_s"],
                "LocalAuthorizeOffline": c["local_authorize_offline"],
                "AllowOfflineTxForUnknownId": c["offline_unknown_ids"],
                "LocalAuthListEnabled": True,
                "TransactionMessageAttempts": c["message_attempts"],
                "TransactionMessageRetryInterval": int(c["retry_initial_s"]),
                "ChargingScheduleAllowedChargingRateUnit": "Current,Power" if self.v16 else "A,W",
                "NumberOfConnectors": self.guns(code),
                "SupportedFeatureProfiles": "Core,LocalAuthListManagement,SmartCharging"}[key]

    @staticmethod
    def var_text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v == int(v):
            v = int(v)
        return str(v)

    async def set_var(self, code, key, text):
        """Accepted / Rejected (read-only, or a value of the wrong type);
        None for a key we do not know."""
        spec = _VARS.get(key)
        if spec is None:
            return None
        kind, writable = spec[3], spec[4]
        if not writable:
            return "Rejected"
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                v = text.lower() == "true"
            else:
                v = kind(text)
                if v < 0 or (key == "HeartbeatInterval" and v == 0):
                    raise ValueError(text)
        except (TypeError, ValueError):
            return "Rejected"
        new = dict(self.vars.get(code, {}), **{key: v})
        await self.b.store._submit(_meta_put, "ocpp.vars." + code, json.dumps(new))
        self.vars[code] = new
        st = self.stations.get(code)
        if key == "HeartbeatInterval" and st is not None:
            st.set_heartbeat(v)
        return "Accepted"

    def guns(self, code):
        pile = self.b.piles.get(code)
        if pile is None:
            return 1
        n = int((pile.login or {}).get("guns") or 0)
        return max(n, len(pile.guns), 1)

    # --- authorisation (0x31 -> Authorize -> 0x32) and the local list -----------------

    def id_token(self, token, vin):
        """The idToken a card or a VIN goes to the CSMS as: a card as ISO14443
        (its UID, the card number without the zero padding); a VIN as type Local with an
        additionalInfo of type "VIN" (2.0.1 has no VIN type). 1.6: the idTag."""
        if self.v16:
            return {"id_token": token if vin else id_tag_16(token)}
        if vin:
            return {"id_token": token, "type": "Local",
                    "additional_info": [{"additional_id_token": token, "type": "VIN"}]}
        return {"id_token": card_token(token), "type": "ISO14443"}

    async def custody_full(self, code):
        """True when pile `code` has ocpp.max_queued messages or more the
        CSMS has not answered: new starts through the bridge are refused
        (RequestStart / RemoteStart, 0x31) until the queue drains, so a CSMS
        that is away for long cannot make the store grow without end."""
        cap = self.cfg["max_queued"]
        return bool(cap) and await self.b.store.ocpp_open_count(code) >= cap

    def on_start_request(self, code, req):
        """0x31: a card or VIN start at the pile, authorised by the CSMS."""
        self.b._spawn(self._authorize_start(code, req))

    async def _authorize_start(self, code, req):
        gun = req["gun"]
        card = req.get("card") or ""
        vin = (req.get("vin") or "").strip("\x00 ")
        use_vin = req.get("start_type") == 3 or bool(vin and not card.strip("0"))
        tok = self.id_token(vin if use_vin else card, use_vin)
        if await self.custody_full(code):
            status, how = "CustodyFull", "the bridge: %d messages queued" % self.cfg["max_queued"]
        else:
            status, how = await self.authorize(code, tok)
        ok = status == "Accepted"
        reason = 0 if ok else (9 if use_vin and status in ("Invalid", "Unknown")
                               else _AUTH_REASON.get(status, 1))
        pile = self.b.piles.get(code)
        if pile is None or pile.conn is None:
            return
        serial = self.b._new_serial(code, gun) if ok else "0" * 32
        if ok:
            self._auth_of[serial] = tok
        a = {"gun": gun, "serial": serial, "logical_card": "0", "balance": START_BALANCE if ok else 0,
             "ok": ok, "reason": reason}
        try:
            await self.b._execute_on(pile, pile.conn, "ocpp-auth-%d" % time.time_ns(), "authorize", a)
        except Exception as e:
            log.info("pile %s: 0x32 for gun %s not sent: %s", code, gun, e)
            return
        self.b.event(code, "ocpp_authorize", "%s %s on gun %s: %s (%s)" % (
            "VIN" if use_vin else "card", tok["id_token"], gun, status, how),
            gun=gun, status=status, by=how, serial=serial if ok else None)

    async def authorize(self, code, tok):
        """(status, how): the CSMS's Authorize answer; without a CSMS (link
        down, no answer in response_timeout_s) the local list if
        LocalAuthorizeOffline, then AllowOfflineTxForUnknownId."""
        st = self.station(code)
        cp = st.cp
        if cp is not None:
            try:
                if self.v16:
                    from ocpp.v16 import call
                    r = await asyncio.wait_for(st.call(cp, call.Authorize(id_tag=tok["id_token"])),
                                               self.cfg["response_timeout_s"])
                    return r.id_tag_info["status"], "csms"
                from ocpp.v201 import call
                r = await asyncio.wait_for(st.call(cp, call.Authorize(id_token=tok)),
                                           self.cfg["response_timeout_s"])
                return r.id_token_info["status"], "csms"
            except Exception as e:
                log.info("pile %s: Authorize: %s: offline rules", code, e or type(e).__name__)
        if self.var(code, "LocalAuthorizeOffline"):
            # Cards compared without their zero padding, letters in either case.
            want = card_token(tok["id_token"])
            s = next((v for k, v in self.local_list(code)["ids"].items() if card_token(k) == want),
                     None)
            if s is not None:
                return s, "local list"
        if self.var(code, "AllowOfflineTxForUnknownId"):
            return "Accepted", "offline, unknown ids allowed"
        return "Unknown", "offline"

    def local_list(self, code):
        return self.lists.get(code) or {"version": 0, "ids": {}}

    async def send_local_list(self, code, version, full, entries):
        """SendLocalList: entries [(token, status or None)] (None: removed, in
        a Differential update). Returns Accepted / VersionMismatch / Failed.
        The Accepted VINs go to our firmware's VIN list (0xEE), so the pile
        itself can start them while the bridge is away."""
        cur = self.local_list(code)
        if not full and version <= cur["version"]:
            return "VersionMismatch"
        ids = {} if full else dict(cur["ids"])
        for token, status in entries:
            if status is None:
                ids.pop(token, None)
            else:
                ids[token] = status
        if len(ids) > _MAX_LIST:
            return "Failed"
        new = {"version": version, "ids": ids}
        await self.b.store._submit(_meta_put, "ocpp.list." + code, json.dumps(new))
        self.lists[code] = new
        await self.push_vins(code)
        return "Accepted"

    async def push_vins(self, code):
        pile = self.b.piles.get(code)
        if pile is None or pile.conn is None or not pile.ext:
            return
        lst = self.local_list(code)
        vins = sorted(t.upper() for t, s in lst["ids"].items() if s == "Accepted" and is_vin(t))
        a = {"vins": [{"vin": v, "department": 0} for v in vins], "version": lst["version"]}
        try:
            await self.b._execute_on(pile, pile.conn, "ocpp-list-%d" % time.time_ns(), "vin_list", a)
        except Exception as e:
            log.info("pile %s: VIN list from the local list not sent: %s", code, e)

    # --- smart charging: charging profiles -> the pile's power cap (0xDE / 0x52) --------

    def cap_w(self, code):
        """The power cap the CSMS's profiles put on pile `code`, W, or None:
        the station maximum and the transaction's limit (TxProfile, else
        TxDefaultProfile), the highest stack level of each, the lower of them."""
        ps = self.profiles.get(code) or []

        def top(purpose):
            c = [p for p in ps if p["purpose"] == purpose]
            return max(c, key=lambda p: p["stack"]) if c else None
        caps = [self._limit(p) for p in (top("max"), top("tx") or top("default")) if p]
        return min(caps) if caps else None

    def _limit(self, p):
        # The entry's limit in force now (its schedule's current period).
        try:
            return profile_limit_w(p["schedule"], p["kind"], self.cfg["volts"])
        except (KeyError, TypeError, ValueError):
            return p["w"]

    def _follow_schedules(self, code):
        """Send the pile its cap again whenever a period of one of its
        profiles' schedules starts (the next one, then again)."""
        t = self._schedule_tasks.pop(code, None)
        if t is not None:
            t.cancel()
        waits = [w for w in (next_period_in(p.get("schedule") or {}, p.get("kind"))
                             for p in self.profiles.get(code) or []) if w is not None]
        if not waits:
            return

        async def later(delay):
            await asyncio.sleep(delay + 0.001)
            self._schedule_tasks.pop(code, None)
            await self.push_cap(code)
            self._follow_schedules(code)
        self._schedule_tasks[code] = asyncio.ensure_future(later(max(0.0, min(waits))))

    async def set_profile(self, code, evse, prof):
        """SetChargingProfile: (status, why or None); `why` starts with the
        2.0.1 reasonCode (UnsupportedRequest / InvalidProfile / TxNotFound)."""
        purpose = _PURPOSE.get(prof.get("charging_profile_purpose"))
        guns = self.guns(code)
        if purpose is None:
            return "Rejected", "UnsupportedRequest: purpose %s" % prof.get("charging_profile_purpose")
        if purpose == "max" and evse != 0:
            return "Rejected", "InvalidProfile: a station maximum profile goes on EVSE 0"
        if evse > guns or evse < 0:
            return "Rejected", "InvalidProfile: no EVSE %d" % evse
        if evse > 0 and guns > 1:
            # 0xDE caps the whole pile; YKC has no per-gun cap frame.
            return "Rejected", ("UnsupportedRequest: per-gun caps are not in the YKC protocol (0xDE "
                                "caps the pile): set it on EVSE 0")
        serial = None
        if purpose == "tx":
            serial = await self._running_tx(code, evse or 1, prof.get("transaction_id"))
            if serial is None:
                return "Rejected", "TxNotFound: no such transaction running on EVSE %d" % evse
        sched = prof.get("charging_schedule")
        if isinstance(sched, list):
            sched = sched[0] if sched else {}
        if isinstance(sched, dict) and prof.get("recurrency_kind"):
            sched = dict(sched, recurrency_kind=prof["recurrency_kind"])   # a profile field
        try:
            w = profile_limit_w(sched or {}, prof.get("charging_profile_kind"), self.cfg["volts"])
        except (KeyError, TypeError, ValueError) as e:
            return "Rejected", "InvalidProfile: bad charging schedule: %s" % e
        pid = prof.get("id", prof.get("charging_profile_id"))
        entry = {"id": pid, "evse": evse, "purpose": purpose, "stack": prof.get("stack_level", 0),
                 "w": w, "serial": serial, "kind": prof.get("charging_profile_kind"),
                 "schedule": sched}
        old = self.profiles.get(code) or []
        new = [p for p in old if p["id"] != pid and not (
            p["purpose"] == purpose and p["stack"] == entry["stack"] and p["evse"] == evse)]
        new.append(entry)
        if not await self._apply_profiles(code, old, new):
            return "Rejected", "UnsupportedRequest: the pile did not take the cap"
        return "Accepted", None

    async def clear_profiles(self, code, pid=None, evse=None, purpose=None, stack=None):
        """ClearChargingProfile: Accepted when one or more went, else Unknown."""
        old = self.profiles.get(code) or []
        want = _PURPOSE.get(purpose) if purpose else None

        def match(p):
            if pid is not None:
                return p["id"] == pid
            return ((evse is None or p["evse"] == evse) and (want is None or p["purpose"] == want)
                    and (stack is None or p["stack"] == stack))
        new = [p for p in old if not match(p)]
        if len(new) == len(old):
            return "Unknown"
        await self._apply_profiles(code, old, new)
        return "Accepted"

    async def _end_tx_profiles(self, code, serial):
        # A TxProfile lives as long as its transaction.
        old = self.profiles.get(code) or []
        new = [p for p in old if p.get("serial") != serial]
        if len(new) != len(old):
            await self._apply_profiles(code, old, new)

    async def _apply_profiles(self, code, old, new):
        """Keep `new` and send the pile its cap; back to `old` if the pile
        refuses. A pile that is away gets it at its next login (piles.py
        push_site_cap asks Bridge.power_cap_w)."""
        self.profiles[code] = new
        ok = await self.push_cap(code)
        if not ok:
            self.profiles[code] = old
            return False
        await self.b.store._submit(_meta_put, "ocpp.profiles." + code, json.dumps(new))
        self._follow_schedules(code)
        return True

    async def push_cap(self, code):
        pile = self.b.piles.get(code)
        if pile is None or pile.conn is None:
            return True
        w = self.b.power_cap_w(code)
        try:
            if pile.ext:
                r = await pile.conn.request("site_cap", {"pile": code, "cap": w or 0})
                ok = r.fields.get("result") == 1
                pile.site_cap_w = w if ok else None
                return ok
            # A third-party pile: 0x52 max_power, in % of ocpp.rated_kw (30..100).
            rated = self.cfg["rated_kw"]
            if not rated:
                return w is None
            pct = 100 if w is None else min(100, w * 100 // int(rated * 1000))
            if pct < 30:
                return False
            r = await pile.conn.request("work_params", {"pile": code, "locked": 0, "max_power": pct})
            return r.fields.get("result") == 1
        except Exception as e:
            log.info("pile %s: power cap %s W not sent: %s", code, w, e)
            return False

    async def _running_tx(self, code, evse, tx_id):
        # 2.0.1: the transactionId is the trade serial; 1.6: the CSMS's int.
        if tx_id is not None and self.v16:
            tx = await self.b.store.ocpp_tx(tx_id=str(tx_id))
            tx_id = tx[0] if tx else None
            if tx_id is None:
                return None
        pile = self.b.piles.get(code)
        g = (pile.guns.get("%02d" % evse) if pile is not None else None) or {}
        if g.get("status") != "charging" or not g.get("serial"):
            return None
        if tx_id is not None and tx_id != g["serial"]:
            return None
        return g["serial"]

    # --- firmware: UpdateFirmware -> the signed push (host/push.py, docs/upgrade.md) -----

    def update_firmware(self, code, location, request_id=None, version=None, when=None):
        """UpdateFirmware: None when accepted (the push runs, reported by
        FirmwareStatusNotification), else why not. The image is the file the
        location's last path segment names in upgrade.image_dir: the CSMS
        picks among images the operator put there, the bridge downloads no
        code. Its version: customData `version`, else the last dotted number
        in the file name (fw-209.5.0.img -> 209.5.0)."""
        import re
        import urllib.parse
        pile = self.b.piles.get(code)
        if self.b.keys.upgrade_key() is None:
            return "no upgrade key on the bridge (keys.upgrade_key_file)"
        if not self.b.cfg["upgrade"]["image_dir"]:
            return "no upgrade.image_dir on the bridge"
        if pile is None or not pile.ext:
            return "firmware push needs our firmware (ext)"
        if pile.upgrade_task is not None and not pile.upgrade_task.done():
            return "an upgrade is already running"
        name = urllib.parse.urlsplit(location or "").path.rsplit("/", 1)[-1]
        if not version:
            found = re.findall(r"\d+(?:\.\d+)+", name)
            version = found[-1] if found else None
        self.b._spawn(self._update_firmware(code, pile, name, version, request_id, when))
        return None

    async def _update_firmware(self, code, pile, name, version, request_id, when):
        from host import commands as C
        from host import push as pushmod
        if when:
            try:
                await asyncio.sleep(max(0.0, _utc_secs(when) - time.time()))
            except ValueError:
                pass
        await self.firmware_status(code, "Downloading", request_id)
        a = {"image": name, "image_b64": None, "version": version, "activate": True}
        try:
            if not name or name.startswith("."):
                raise C.CommandError("bad_request", "no image name in the location")
            if not version:
                raise C.CommandError("bad_request", "no version in %r (customData version, or a "
                                     "name like fw-209.5.0.img)" % name)
            pushmod.load_image(self.b.cfg, a)
        except C.CommandError as e:
            log.warning("pile %s: UpdateFirmware %s: %s", code, name, e)
            await self.firmware_status(code, "DownloadFailed", request_id)
            return
        await self.firmware_status(code, "Downloaded", request_id)
        await self.firmware_status(code, "Installing", request_id)
        try:
            doc = await pushmod.run_command(self.b, pile, "ocpp-fw-%s" % (request_id or name), a)
            ok = bool(doc.get("ok"))
        except Exception as e:
            log.warning("pile %s: UpdateFirmware %s: %s", code, name, e)
            ok = False
        await self.firmware_status(code, "Installed" if ok else "InstallationFailed", request_id)

    async def firmware_status(self, code, status, request_id=None):
        # State, not custody: sent when the CSMS link is up (the push's own
        # stages are events and in the pile's status either way).
        self._fw_last[code] = (status, request_id)
        st = self.station(code)
        if st.cp is None:
            log.info("pile %s: FirmwareStatusNotification %s not sent: CSMS link down", code, status)
            return
        if self.v16:
            from ocpp.v16 import call
            msg = call.FirmwareStatusNotification(status=status)
        else:
            from ocpp.v201 import call
            msg = call.FirmwareStatusNotification(status=status, request_id=request_id)
        try:
            await st.call(st.cp, msg)
        except Exception as e:
            log.info("pile %s: FirmwareStatusNotification %s: %s", code, status, e)

    # --- TriggerMessage (F06) ------------------------------------------------------------

    TRIGGERS = ("Heartbeat", "StatusNotification", "FirmwareStatusNotification")

    def trigger(self, code, what, evse=None):
        """Send `what` now (after the TriggerMessage answer went): a
        Heartbeat, the StatusNotification of every EVSE (or `evse`), the
        firmware status (Idle unless an update is under way)."""
        st = self.stations.get(code)
        if st is None or st.cp is None:
            return
        if what == "Heartbeat":
            self.b._spawn(st.beat(st.cp))
        elif what == "StatusNotification":
            if evse:
                st._sent_status.pop(evse, None)
            else:
                st._sent_status.clear()
            st.status_changed()
        elif what == "FirmwareStatusNotification":
            status, rid = self._fw_last.get(code, ("Idle", None))
            if status in ("Installed", "DownloadFailed", "InstallationFailed"):
                status, rid = "Idle", None
            self.b._spawn(self.firmware_status(code, status, rid))

    # --- from the CSMS ---------------------------------------------------------------------

    async def acked(self, serial, kind):
        if kind == "ended":
            await self.b.uplink_acked(serial)

    def backoff(self, attempts):
        return min(self.cfg["retry_max_s"], self.cfg["retry_initial_s"] * 2 ** max(0, attempts - 1))

    def ssl_context(self):
        if not self.cfg["csms_url"].startswith("wss://"):
            return None
        ctx = ssl.create_default_context(cafile=self.cfg["ca_file"] or None)
        if self.cfg["cert_file"]:
            ctx.load_cert_chain(self.cfg["cert_file"], self.cfg["key_file"] or None)
        return ctx

    def headers(self, code):
        if self.cfg["security_profile"] in (1, 2) and self._password:
            import base64
            tok = base64.b64encode(("%s:%s" % (code, self._password)).encode()).decode()
            return {"Authorization": "Basic " + tok}
        return None


class _Lost(Exception):
    pass


class Station:
    """One pile as an OCPP charging station: a websocket to the CSMS, kept
    up with backoff, and the pile's queue sent in order over it."""

    def __init__(self, up, code):
        self.up = up
        self.code = code
        self.cp = None
        self.boot_status = None
        self._wake = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._task = None
        self._sent_status = {}
        self.heartbeat_s = up.vars.get(code, {}).get("HeartbeatInterval") or up.cfg["heartbeat_s"]
        self._hb_changed = asyncio.Event()

    def start(self):
        self._task = asyncio.ensure_future(self._run())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self):
        self._wake.set()

    def set_heartbeat(self, s):
        self.heartbeat_s = s
        self._hb_changed.set()

    def status_changed(self):
        self._status_dirty.set()
        self._wake.set()

    async def _run(self):
        from websockets.asyncio.client import connect
        cfg = self.up.cfg
        url = cfg["csms_url"].rstrip("/") + "/" + self.code
        sub = "ocpp1.6" if self.up.v16 else "ocpp2.0.1"
        delay = cfg["reconnect_min_s"]
        while True:
            try:
                async with connect(url, subprotocols=[sub], ssl=self.up.ssl_context(),
                                   additional_headers=self.up.headers(self.code),
                                   open_timeout=cfg["response_timeout_s"], ping_interval=20,
                                   max_queue=None) as ws:
                    delay = cfg["reconnect_min_s"]
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("pile %s: CSMS link: %s; again in %.1f s", self.code,
                         e or type(e).__name__, delay)
            self.cp = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg["reconnect_max_s"])

    async def _session(self, ws):
        cp = make_charge_point(self, ws)
        reader = asyncio.ensure_future(cp.start())
        reader.add_done_callback(lambda _t: self._wake.set())
        self._reader = reader
        self._cp_pending = cp
        self.up.stats["connects"] += 1
        hb = None
        try:
            await self._boot(cp)
            self.cp = cp
            self._sent_status = {}
            self._status_dirty.set()
            hb = asyncio.ensure_future(self._heartbeats(cp))
            await self._drain(cp)
        finally:
            self.cp = None
            for t in (hb, reader):
                if t is not None:
                    t.cancel()
            await asyncio.gather(*[t for t in (hb, reader) if t is not None], return_exceptions=True)

    async def call(self, cp, msg):
        """One call, raced against the link: a dropped link ends it at once
        (the library would wait out its response timeout)."""
        from websockets.exceptions import ConnectionClosed
        t = asyncio.ensure_future(cp.call(msg, suppress=False))
        done, _ = await asyncio.wait({t, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        if t not in done:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            raise _Lost("the CSMS link closed")
        try:
            return t.result()
        except ConnectionClosed as e:
            # Not the CSMS's answer: the message was not delivered (no attempt counted).
            raise _Lost("the CSMS link closed: %s" % e)

    async def _boot(self, cp):
        pile = self.up.b.piles.get(self.code)
        login = (pile.login if pile is not None else None) or {}
        model = self.up.b.cfg.model(self.code, login) or "ykc"
        while True:
            if self.up.v16:
                from ocpp.v16 import call
                r = await self.call(cp, call.BootNotification(
                    charge_point_model=model, charge_point_vendor=self.up.cfg["vendor"],
                    charge_point_serial_number=self.code,
                    firmware_version=login.get("sw_version") or None))
            else:
                from ocpp.v201 import call
                cs = {"model": model, "vendor_name": self.up.cfg["vendor"], "serial_number": self.code}
                if login.get("sw_version"):
                    cs["firmware_version"] = login["sw_version"]
                r = await self.call(cp, call.BootNotification(charging_station=cs, reason="PowerUp"))
            if r.interval:
                self.heartbeat_s = r.interval
            self.boot_status = r.status
            if r.status == "Accepted":
                return
            # B02 Pending / B03 Rejected: no transaction message goes until
            # a BootNotification is Accepted (the CSMS's calls are answered
            # meanwhile); asked again after the interval it gave.
            log.info("pile %s: BootNotification %s; again in %s s", self.code, r.status,
                     r.interval or 10)
            await asyncio.sleep(r.interval or 10)

    async def _heartbeats(self, cp):
        while True:
            self._hb_changed.clear()
            try:
                await asyncio.wait_for(self._hb_changed.wait(), self.heartbeat_s)
                continue        # a new interval: counted from now
            except asyncio.TimeoutError:
                pass
            try:
                await self.beat(cp)
            except Exception:
                return

    async def beat(self, cp):
        if self.up.v16:
            from ocpp.v16 import call
        else:
            from ocpp.v201 import call
        await cp.call(call.Heartbeat())

    async def _statuses(self, cp):
        self._status_dirty.clear()
        pile = self.up.b.piles.get(self.code)
        guns = {}
        if pile is not None:
            for g, info in pile.guns.items():
                st = {"charging": 3, "idle": 2, "fault": 1, "offline": 0}.get(info.get("status"), 2)
                guns[gun_no(g)] = st if pile.conn is not None else 0
            if not guns and pile.conn is not None:
                for g in range(1, int((pile.login or {}).get("guns") or 1) + 1):
                    guns[g] = 2
        for evse, st in sorted(guns.items()):
            if self._sent_status.get(evse) == st:
                continue
            now = schema.utc_iso()
            if self.up.v16:
                from ocpp.v16 import call
                msg = call.StatusNotification(connector_id=evse, error_code="NoError",
                                              status=_STATUS_16[st], timestamp=now)
            else:
                from ocpp.v201 import call
                msg = call.StatusNotification(timestamp=now, connector_status=_STATUS_201[st],
                                              evse_id=evse, connector_id=1)
            await self.call(cp, msg)
            self._sent_status[evse] = st

    async def _drain(self, cp):
        store = self.up.b.store
        cfg = self.up.cfg
        strict = cfg["mode"] == "strict"
        while True:
            self._wake.clear()
            if self._status_dirty.is_set():
                await self._statuses(cp)
            rows = await store.ocpp_open(self.code, 64)
            wait = None
            again = False
            for row_id, serial, kind, seq_no, payload, attempts, tx_id in rows:
                msg = self._message(serial, kind, seq_no, json.loads(payload), tx_id)
                if msg is None:
                    # 1.6: no transactionId read yet: its StartTransaction was
                    # answered in this pass (read again) or gave up (strict:
                    # later messages of the pile wait, in order).
                    again = row_id != rows[0][0]
                    break
                self.up.stats["sent"] += 1
                try:
                    r = await self.call(cp, msg)
                except _Lost:
                    raise
                except Exception as e:
                    # A CallError or no answer in time: the message stays
                    # queued and goes again after a backoff (strict: up to
                    # message_attempts tries, then it stays in the store).
                    self.up.stats["failed"] += 1
                    give_up = strict and attempts + 1 >= cfg["message_attempts"]
                    if give_up:
                        self.up.stats["gave_up"] += 1
                        log.warning("pile %s: %s %s seq %d not accepted after %d tries: kept, not "
                                    "retried (strict mode), the pile is not settled", self.code,
                                    kind, serial, seq_no, attempts + 1)
                    await store.ocpp_failed(row_id, "%s: %s" % (type(e).__name__, e), give_up)
                    if isinstance(e, asyncio.TimeoutError) or "Timeout" in type(e).__name__:
                        raise _Lost("no answer in time")
                    wait = self.up.backoff(attempts + 1)
                    break
                tx = getattr(r, "transaction_id", None) if self.up.v16 and kind == "started" else None
                await store.ocpp_ack(row_id, json.dumps(_as_dict(r)), tx)
                self.up.stats["acked"] += 1
                await self.up.acked(serial, kind)
            else:
                if len(rows) == 64:
                    continue
            if again:
                continue
            # Idle: woken by new work, the backoff's end, or the link closing
            # (the reader's done callback: `connected` and the offline rules
            # see an outage at once).
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            if self._reader.done():
                raise _Lost("the CSMS link closed")

    def _message(self, serial, kind, seq_no, p, tx_id):
        offline = p.pop("_offline", False)
        if self.up.v16:
            from ocpp.v16 import call
            if kind == "started":
                return call.StartTransaction(**p)
            if tx_id is None:
                return None
            if kind == "updated":
                return call.MeterValues(transaction_id=int(tx_id), **p)
            return call.StopTransaction(transaction_id=int(tx_id), **p)
        from ocpp.v201 import call
        p["seq_no"] = seq_no
        if offline:
            p["offline"] = True
        return call.TransactionEvent(**p)


def _as_dict(r):
    try:
        import dataclasses
        return dataclasses.asdict(r)
    except TypeError:
        return None


def make_charge_point(station, ws):
    """The station side's ChargePoint, with the CSMS's calls mapped onto the
    bridge (docs/ocpp.md has the table)."""
    from ocpp.routing import after, on
    up = station.up
    b = up.b
    code = station.code

    if up.v16:
        from ocpp.v16 import ChargePoint, call_result

        class CP(ChargePoint):
            @on("RemoteStartTransaction")
            async def remote_start(self, id_tag, connector_id=None, **kw):
                if await up.custody_full(code):
                    return call_result.RemoteStartTransaction(status="Rejected")
                ok, _ = await b.ocpp_start(code, connector_id or 1, id_tag)
                return call_result.RemoteStartTransaction(status="Accepted" if ok else "Rejected")

            @on("RemoteStopTransaction")
            async def remote_stop(self, transaction_id, **kw):
                tx = await b.store.ocpp_tx(tx_id=str(transaction_id))
                ok = tx is not None and await b.ocpp_stop(code, tx[0])
                return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

            @on("Reset")
            async def reset(self, type, **kw):
                ok = await b.ocpp_reset(code, type == "Hard")
                return call_result.Reset(status="Accepted" if ok else "Rejected")

            @on("SetChargingProfile")
            async def set_profile(self, connector_id, cs_charging_profiles, **kw):
                st, why = await up.set_profile(code, connector_id, cs_charging_profiles)
                if why:
                    log.info("pile %s: SetChargingProfile %s: %s", code, st, why)
                return call_result.SetChargingProfile(status=st)

            @on("ClearChargingProfile")
            async def clear_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                    stack_level=None, **kw):
                return call_result.ClearChargingProfile(status=await up.clear_profiles(
                    code, id, connector_id, charging_profile_purpose, stack_level))

            @on("GetConfiguration")
            async def get_configuration(self, key=None, **kw):
                keys = list(_VARS) if not key else key
                known = [k for k in keys if k in _VARS]
                return call_result.GetConfiguration(
                    configuration_key=[{"key": k, "readonly": not _VARS[k][4],
                                        "value": up.var_text(up.var(code, k))} for k in known],
                    unknown_key=[k for k in keys if k not in _VARS] or None)

            @on("ChangeConfiguration")
            async def change_configuration(self, key, value, **kw):
                st = await up.set_var(code, key, value)
                return call_result.ChangeConfiguration(status=st or "NotSupported")

            @on("SendLocalList")
            async def send_local_list(self, list_version, update_type, local_authorization_list=None,
                                      **kw):
                entries = [(e["id_tag"], (e.get("id_tag_info") or {}).get("status"))
                           for e in local_authorization_list or []]
                return call_result.SendLocalList(status=await up.send_local_list(
                    code, list_version, update_type == "Full", entries))

            @on("GetLocalListVersion")
            async def get_local_list_version(self, **kw):
                return call_result.GetLocalListVersion(list_version=up.local_list(code)["version"])

            @on("TriggerMessage")
            async def trigger_message(self, requested_message, connector_id=None, **kw):
                return call_result.TriggerMessage(
                    status="Accepted" if requested_message in up.TRIGGERS else "NotImplemented")

            @after("TriggerMessage")
            async def triggered(self, requested_message, connector_id=None, **kw):
                if requested_message in up.TRIGGERS:
                    up.trigger(code, requested_message, connector_id)

            @on("UpdateFirmware")
            async def update_firmware(self, location, retrieve_date, **kw):
                why = up.update_firmware(code, location, when=retrieve_date)
                if why:     # 1.6 has no refusal: the CSMS hears DownloadFailed
                    log.warning("pile %s: UpdateFirmware refused: %s", code, why)
                    b._spawn(up.firmware_status(code, "DownloadFailed"))
                return call_result.UpdateFirmware()

        return CP(code, ws, response_timeout=up.cfg["response_timeout_s"])

    from ocpp.v201 import ChargePoint, call_result

    class CP(ChargePoint):
        @on("RequestStartTransaction")
        async def request_start(self, id_token, remote_start_id, evse_id=None, **kw):
            if await up.custody_full(code):
                return call_result.RequestStartTransaction(status="Rejected", status_info={
                    "reason_code": "Busy",
                    "additional_info": "%d messages for the CSMS not answered yet (ocpp.max_queued)"
                                       % up.cfg["max_queued"]})
            ok, serial = await b.ocpp_start(code, evse_id or 1, (id_token or {}).get("id_token"))
            if ok:
                return call_result.RequestStartTransaction(status="Accepted", transaction_id=serial)
            return call_result.RequestStartTransaction(status="Rejected")

        @on("RequestStopTransaction")
        async def request_stop(self, transaction_id, **kw):
            ok = await b.ocpp_stop(code, transaction_id)
            return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

        @on("GetTransactionStatus")
        async def get_status(self, transaction_id=None, **kw):
            # Answered from the SQLite custody, not from memory.
            if transaction_id is None:
                n = await b.store.ocpp_open_count(code)
                return call_result.GetTransactionStatus(messages_in_queue=n > 0)
            tx = await b.store.ocpp_tx(transaction_id)
            if tx is None:
                return call_result.GetTransactionStatus(messages_in_queue=False)
            ongoing = not tx[7]
            return call_result.GetTransactionStatus(messages_in_queue=tx[5] > 0,
                                                    ongoing_indicator=ongoing)

        @on("Reset")
        async def reset(self, type, evse_id=None, **kw):
            ok = await b.ocpp_reset(code, type == "Immediate")
            return call_result.Reset(status="Accepted" if ok else "Rejected")

        @on("SetChargingProfile")
        async def set_profile(self, evse_id, charging_profile, **kw):
            st, why = await up.set_profile(code, evse_id, charging_profile)
            info = None
            if why:
                code_, _, text = why.partition(": ")
                info = {"reason_code": code_, "additional_info": text[:512]}
            return call_result.SetChargingProfile(status=st, status_info=info)

        @on("ClearChargingProfile")
        async def clear_profile(self, charging_profile_id=None, charging_profile_criteria=None, **kw):
            c = charging_profile_criteria or {}
            return call_result.ClearChargingProfile(status=await up.clear_profiles(
                code, charging_profile_id, c.get("evse_id"), c.get("charging_profile_purpose"),
                c.get("stack_level")))

        @on("GetVariables")
        async def get_variables(self, get_variable_data, **kw):
            out = []
            for d in get_variable_data:
                comp, var = d["component"], d["variable"]
                r = {"component": comp, "variable": var}
                key = _VAR_OF_201.get((comp["name"], var["name"], var.get("instance")))
                if d.get("attribute_type", "Actual") != "Actual":
                    r["attribute_status"] = "NotSupportedAttributeType"
                elif key is None:
                    r["attribute_status"] = ("UnknownVariable" if comp["name"] in _COMPONENTS
                                             else "UnknownComponent")
                else:
                    r.update(attribute_status="Accepted", attribute_type="Actual",
                             attribute_value=up.var_text(up.var(code, key)))
                out.append(r)
            return call_result.GetVariables(get_variable_result=out)

        @on("SetVariables")
        async def set_variables(self, set_variable_data, **kw):
            out = []
            for d in set_variable_data:
                comp, var = d["component"], d["variable"]
                key = _VAR_OF_201.get((comp["name"], var["name"], var.get("instance")))
                if d.get("attribute_type", "Actual") != "Actual":
                    st = "NotSupportedAttributeType"
                elif key is None:
                    st = "UnknownVariable" if comp["name"] in _COMPONENTS else "UnknownComponent"
                else:
                    st = await up.set_var(code, key, d["attribute_value"])
                out.append({"attribute_status": st, "component": comp, "variable": var,
                            "attribute_type": d.get("attribute_type", "Actual")})
            return call_result.SetVariables(set_variable_result=out)

        @on("SendLocalList")
        async def send_local_list(self, version_number, update_type, local_authorization_list=None,
                                  **kw):
            entries = [(e["id_token"]["id_token"], (e.get("id_token_info") or {}).get("status"))
                       for e in local_authorization_list or []]
            return call_result.SendLocalList(status=await up.send_local_list(
                code, version_number, update_type == "Full", entries))

        @on("GetLocalListVersion")
        async def get_local_list_version(self, **kw):
            return call_result.GetLocalListVersion(version_number=up.local_list(code)["version"])

        @on("TriggerMessage")
        async def trigger_message(self, requested_message, evse=None, **kw):
            return call_result.TriggerMessage(
                status="Accepted" if requested_message in up.TRIGGERS else "NotImplemented")

        @after("TriggerMessage")
        async def triggered(self, requested_message, evse=None, **kw):
            if requested_message in up.TRIGGERS:
                up.trigger(code, requested_message, (evse or {}).get("id"))

        @on("UpdateFirmware")
        async def update_firmware(self, request_id, firmware, custom_data=None, **kw):
            why = up.update_firmware(code, firmware["location"], request_id,
                                     (custom_data or {}).get("version"),
                                     firmware.get("retrieve_date_time"))
            if why:
                return call_result.UpdateFirmware(status="Rejected", status_info={
                    "reason_code": "UnsupportedRequest", "additional_info": why[:512]})
            return call_result.UpdateFirmware(status="Accepted")

    return CP(code, ws, response_timeout=up.cfg["response_timeout_s"])
