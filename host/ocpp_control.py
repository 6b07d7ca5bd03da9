# What a CSMS controls on a station, beside the transactions (docs/ocpp.md):
# configuration variables (1.6 Get/ChangeConfiguration, 2.0.1 Get/SetVariables),
# authorisation of card and VIN starts at the pile (0x31 -> Authorize -> 0x32)
# with the offline rules and the local list (-> our firmware's VIN list),
# charging profiles as the pile's power cap (0xDE, 0x52), UpdateFirmware as
# the signed push (host/push.py), TriggerMessage. `Control` is a part of
# host/ocpp_uplink.OcppUplink (its state: self.b, self.cfg, self.stations).
import asyncio
import json
import logging
import time

log = logging.getLogger("host.ocpp")



def card_token(card):
    """A YKC card number (16 hex digits, zero-padded on the left) as the card
    reader shows its UID: D14B0A54. Empty for no card."""
    return (card or "").upper().lstrip("0")


def id_tag_16(card):
    return card_token(card)[:20] or "ykc"


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


class Control:
    """The CSMS-controlled state of every station: kept in the store's meta
    table, loaded at start."""

    def _control_init(self):
        self._auth_of = {}              # serial -> the idToken the CSMS authorised it with
        self.profiles = {}              # pile -> [charging profile entries] (meta "ocpp.profiles.")
        self.lists = {}                 # pile -> {"version", "ids": {token: status}} ("ocpp.list.")
        self.vars = {}                  # pile -> {1.6 key: value} changed by the CSMS ("ocpp.vars.")
        self._schedule_tasks = {}       # pile -> the task that sends the cap at the next period
        self._fw_last = {}              # pile -> (last FirmwareStatusNotification, request id)

    async def _control_load(self):
        for what, into in (("profiles", self.profiles), ("list", self.lists), ("vars", self.vars)):
            prefix = "ocpp.%s." % what
            for key, value in await self.b.store._submit(_meta_rows, prefix):
                into[key[len(prefix):]] = json.loads(value)

    def _control_stop(self):
        for t in list(self._schedule_tasks.values()):
            t.cancel()

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

    def _pile_wide(self, code, p):
        # EVSE 0 caps the pile; on a one-gun pile EVSE 1 is the same thing.
        return p["evse"] == 0 or self.guns(code) == 1

    def cap_w(self, code):
        """The power cap the CSMS's profiles put on pile `code`, W, or None:
        the station maximum and the transaction's limit (TxProfile, else
        TxDefaultProfile), the highest stack level of each, the lower of them."""
        return self._cap_of([p for p in self.profiles.get(code) or [] if self._pile_wide(code, p)])

    def gun_cap_w(self, code, gun):
        """The cap the CSMS's profiles on EVSE `gun` put on that gun of a pile
        with several guns (0xDC), W, or None."""
        if self.guns(code) == 1:
            return None
        return self._cap_of([p for p in self.profiles.get(code) or [] if p["evse"] == gun])

    def _cap_of(self, ps):
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
        if evse > 0 and guns > 1 and not self.b.pile_ext(code):
            # A third-party pile takes one cap for all its guns (0x52).
            return "Rejected", ("UnsupportedRequest: this pile takes one power cap for all its guns "
                                "(0x52): set it on EVSE 0")
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
                guns = self.guns(code)
                for g in range(1, guns + 1) if guns > 1 else ():
                    gw = self.gun_cap_w(code, g)
                    r = await pile.conn.request("gun_cap", {"pile": code, "gun": "%02d" % g,
                                                            "cap": gw or 0})
                    ok = ok and r.fields.get("result") == 1
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
