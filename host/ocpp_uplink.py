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
from host.mqtt import wait_event
from host.ocpp_control import Control, card_token, id_tag_16
from host.ocpp_handlers import make_charge_point

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


# --- the uplink -------------------------------------------------------------------------

class OcppUplink(Control):
    """One Station per pile; the bridge calls on_* as YKC frames arrive.
    What the CSMS controls besides transactions: host/ocpp_control.py."""

    def __init__(self, bridge):
        self.b = bridge
        self.cfg = bridge.cfg["ocpp"]
        self.v16 = self.cfg["version"] == "1.6"
        self.stations = {}
        self.stats = {"sent": 0, "acked": 0, "failed": 0, "gave_up": 0, "connects": 0}
        self._last_update = {}          # serial -> monotonic time of the last Updated queued
        self._started = set()           # serials whose Started is queued (a cache of the store)
        self._control_init()
        self._password = None
        if self.cfg["password_file"]:
            self._password = configmod.read_secret_file(self.cfg["password_file"],
                                                        "ocpp.password_file")

    async def start(self):
        await self._control_load()
        # Bills taken into custody by a bridge that stopped before queueing
        # their Ended (or before OCPP was configured) are queued now.
        for bill in await self.b.store.ocpp_missing_ended():
            await self._queue_bill(bill.pile, bill.serial, bill.frame, offline=True)
        for code in await self.b.store.ocpp_piles():
            self.station(code)
        for code in self.profiles:
            self._follow_schedules(code)

    async def stop(self):
        self._control_stop()
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
            if await wait_event(self._hb_changed, self.heartbeat_s):
                continue        # a new interval: counted from now
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
            await wait_event(self._wake, wait)
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
