# A real CSMS for the OCPP suites, pile-demo --ocpp and the benchmark: the `ocpp` library's own
# classes on a `websockets` server bound to port 0 (it reports its port).
# It records what reaches it, deduplicates transaction messages by
# (transactionId, seqNo) as a CSMS should, and can be taken down, slowed
# down or made to refuse, to play the field's failures. No tests here.
import asyncio
import base64
import collections
import itertools
import logging
import time
from http import HTTPStatus

from ocpp.routing import on

logging.getLogger("ocpp").setLevel(logging.CRITICAL)
logging.getLogger("websockets").setLevel(logging.CRITICAL)


class Csms:
    def __init__(self, version="2.0.1", password=None, delay_s=0.0, port=0, host="127.0.0.1",
                 ssl=None):
        self.version = version
        self.ssl = ssl                  # an ssl.SSLContext: wss:// (security profiles 2 and 3)
        self.password = password        # basic auth (security profile 1) when set
        self.delay_s = delay_s          # answer every transaction message this late
        self.refuse = False             # answer transaction messages with a CallError
        self.refused = 0                # transaction messages answered with a CallError
        self.host = host
        self.port = port
        self.server = None
        self.stations = {}              # station id -> live ChargePoint
        self.boots = collections.Counter()
        self.statuses = []              # (station, evse, status)
        self.heartbeats = collections.Counter()
        self.events = []                # every transaction message received, with repeats
        self.unique = {}                # (tx id, seq) -> payload: what a deduplicating CSMS keeps
        self.ended = collections.Counter()   # tx id -> distinct Ended received
        self.ended_at = {}              # tx id -> time.monotonic() of its first Ended
        self.auth_refused = 0
        self.boot_status = "Accepted"   # B02 / B03: "Pending" or "Rejected" ...
        self.boot_interval = 300        # ... asked again after this many seconds
        self.id_tokens = {}             # Authorize: id token -> status; others get unknown_token
        self.unknown_token = "Invalid"
        self.authorized = []            # (station, id token, type or None, status)
        self.firmware = []              # FirmwareStatusNotification: (station, status, request id)
        self._tx16 = itertools.count(1000)
        self._tx16_of = {}              # (station, connector, timestamp) -> id (1.6 start dedup)
        self.tx16_serial = {}           # 1.6 transactionId -> station
        self._changed = asyncio.Event()
        self.connected = {}             # station id -> asyncio.Event of its current connection

    # --- life cycle --------------------------------------------------------------------

    async def start(self):
        from websockets.asyncio.server import serve
        sub = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        self.server = await serve(self._handler, self.host, self.port, subprotocols=[sub],
                                  process_request=self._check_auth, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]   # the same port after a restart
        return self

    async def stop(self):
        """Down: the listener closed and every station's link dropped."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.stations.clear()

    @property
    def url(self):
        return "%s://%s:%d/ocpp" % ("wss" if self.ssl else "ws", self.host, self.port)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def _notify(self):
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, pred, timeout=20.0, what="condition"):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = self._changed
            r = pred()
            if r:
                return r
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError("CSMS: timed out after %g s waiting for %s" % (timeout, what))
            try:
                await asyncio.wait_for(ev.wait(), left)
            except asyncio.TimeoutError:
                pass

    # --- the server ----------------------------------------------------------------------

    def _check_auth(self, conn, request):
        if self.password is None:
            return None
        station = request.path.rstrip("/").split("/")[-1]
        want = "Basic " + base64.b64encode(("%s:%s" % (station, self.password)).encode()).decode()
        if request.headers.get("Authorization") != want:
            self.auth_refused += 1
            self._notify()
            return conn.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
        return None

    async def _handler(self, ws):
        station = ws.request.path.rstrip("/").split("/")[-1]
        cp = (self._cp16 if self.version == "1.6" else self._cp201)(station, ws)
        self.stations[station] = cp
        self._notify()
        try:
            await cp.start()
        except Exception:
            pass
        finally:
            if self.stations.get(station) is cp:
                del self.stations[station]
            self._notify()

    def _authorize(self, station, token, kind=None):
        st = self.id_tokens.get(token, self.unknown_token)
        self.authorized.append((station, token, kind, st))
        self._notify()
        return st

    def _firmware(self, station, status, request_id):
        self.firmware.append((station, status, request_id))
        self._notify()

    def _boot(self, station):
        self.boots[station] += 1
        self._notify()
        return dict(current_time=_now(), interval=self.boot_interval, status=self.boot_status)

    def _record(self, station, tx_id, seq, kind, payload):
        self.events.append((station, tx_id, seq, kind))
        key = (tx_id, seq)
        if key not in self.unique:
            self.unique[key] = (station, kind, payload)
            if kind == "Ended":
                self.ended[tx_id] += 1
                self.ended_at[tx_id] = time.monotonic()
        self._notify()

    async def _slow(self):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.refuse:
            self.refused += 1
            self._notify()
            raise RuntimeError("refused by the test CSMS")

    # --- per version ---------------------------------------------------------------------------

    def _common(self, station, call_result):
        # The handlers alike in 1.6 and 2.0.1 (the library checks each
        # version's fields against its schema before it calls them).
        csms = self

        class Common:
            @on("BootNotification")
            async def boot(self, **kw):
                return call_result.BootNotification(**csms._boot(station))

            @on("FirmwareStatusNotification")
            async def firmware_status(self, status, request_id=None, **kw):
                csms._firmware(station, status, request_id)   # 1.6: no request id
                return call_result.FirmwareStatusNotification()

            @on("Heartbeat")
            async def heartbeat(self, **kw):
                csms.heartbeats[station] += 1
                csms._notify()
                return call_result.Heartbeat(current_time=_now())

        return Common

    def _cp201(self, station, ws):
        from ocpp.v201 import ChargePoint, call_result
        csms = self

        class CP(self._common(station, call_result), ChargePoint):
            @on("Authorize")
            async def authorize(self, id_token, **kw):
                st = csms._authorize(station, id_token["id_token"], id_token["type"])
                return call_result.Authorize(id_token_info={"status": st})

            @on("StatusNotification")
            async def status(self, timestamp, connector_status, evse_id, connector_id, **kw):
                csms.statuses.append((station, evse_id, connector_status))
                csms._notify()
                return call_result.StatusNotification()

            @on("TransactionEvent")
            async def tx_event(self, event_type, timestamp, trigger_reason, seq_no, transaction_info,
                               **kw):
                await csms._slow()
                kw.update(event_type=event_type, timestamp=timestamp, trigger_reason=trigger_reason,
                          transaction_info=transaction_info)
                csms._record(station, transaction_info["transaction_id"], seq_no, event_type, kw)
                return call_result.TransactionEvent()

        return CP(station, ws, response_timeout=10)

    def _cp16(self, station, ws):
        from ocpp.v16 import ChargePoint, call_result
        csms = self

        class CP(self._common(station, call_result), ChargePoint):
            @on("Authorize")
            async def authorize(self, id_tag, **kw):
                return call_result.Authorize(id_tag_info={"status": csms._authorize(station, id_tag)})

            @on("StatusNotification")
            async def status(self, connector_id, error_code, status, **kw):
                csms.statuses.append((station, connector_id, status))
                csms._notify()
                return call_result.StatusNotification()

            @on("StartTransaction")
            async def start_tx(self, connector_id, id_tag, meter_start, timestamp, **kw):
                await csms._slow()
                # 1.6 has no transaction id from the station: a CSMS
                # recognises a repeated start by its station, connector and time.
                key = (station, connector_id, timestamp)
                tx = csms._tx16_of.get(key)
                if tx is None:
                    tx = csms._tx16_of[key] = next(csms._tx16)
                    csms.tx16_serial[tx] = station
                csms._record(station, str(tx), 0, "Started", dict(kw, meter_start=meter_start, id_tag=id_tag))
                return call_result.StartTransaction(transaction_id=tx,
                                                    id_tag_info={"status": "Accepted"})

            @on("MeterValues")
            async def meter_values(self, connector_id, meter_value, transaction_id=None, **kw):
                await csms._slow()
                csms.events.append((station, str(transaction_id), None, "MeterValues"))
                csms._notify()
                return call_result.MeterValues()

            @on("StopTransaction")
            async def stop_tx(self, meter_stop, timestamp, transaction_id, **kw):
                await csms._slow()
                csms._record(station, str(transaction_id), 1, "Ended",
                             dict(kw, meter_stop=meter_stop, timestamp=timestamp))
                return call_result.StopTransaction()

        return CP(station, ws, response_timeout=10)


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
