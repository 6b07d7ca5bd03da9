# The site status page (issue 19 item 1): served by the bridge on
# [status] listen, three routes:
#
#   GET /             one small page (host/status_page.py), no build step; it
#                     fetches /status.json every 2 s and renders with
#                     textContent only (a pile's strings are never HTML)
#   GET /status.json  the snapshot below
#   GET /metrics      Prometheus text (prometheus_client): bills by custody
#                     state, the oldest unconfirmed bill's age, overdue
#                     sessions, piles online, link errors, store size
#   GET /ocmf/SERIAL  a bill's OCMF record as text, for copying into a
#                     verifier (docs/ocmf.md); 404 while it has none
#
# Access: HTTP Basic with the password in [status] password_file (any user
# name), and/or TLS with a client certificate from [status] client_ca_file.
# A listen address beyond loopback needs one of them (host/config.py).
#
# Custody states of a bill, in the order a bill moves through them:
#   pile       sealed on the pile, not yet at the bridge (counted from the
#              pile's journal status, 0xE5: the bridge cannot see serials)
#   held       at the bridge, committed raw, waiting for its MAC (keyed piles)
#   stored     in the bridge's store, not yet published
#   published  published (QoS 1 PUBACK), waiting for the platform's confirmation
#   confirmed  confirmed by the platform, waiting for the pile's settle ack
# (settled bills leave the view).
import asyncio
import base64
import hmac
import logging
import os
import ssl
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest, CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, CounterMetricFamily

from host import config as configmod
from host.status_page import PAGE

log = logging.getLogger("host.status")

STATES = ("pile", "held", "stored", "published", "confirmed")
BILLS_SHOWN = 500           # bills listed in the snapshot (the counts cover all)
RECENT_SHOWN = 20           # newest bills listed with their OCMF verdict, settled ones too


async def snapshot(bridge, now=None):
    """Everything the page shows, as one JSON-able dict."""
    now = time.time() if now is None else now
    store = bridge.store
    rows, held = await store.custody(BILLS_SHOWN)
    counts = await store.counts()
    bills = []
    for serial, pile, received, published, confirmed, verdict in rows:
        state = "confirmed" if confirmed is not None else \
            "published" if published is not None else "stored"
        bills.append({"serial": serial, "pile": pile, "state": state,
                      "age_s": round(now - received, 1), "ocmf": verdict})
    for serial, pile, received in held:
        bills.append({"serial": serial, "pile": pile, "state": "held",
                      "age_s": round(now - received, 1), "ocmf": None})
    # The newest bills, settled too, each with its OCMF verdict (null:
    # unsigned); the record itself is at /ocmf/SERIAL.
    recent = []
    for serial, pile, received, published, confirmed, settled, verdict in \
            await store.recent_bills(RECENT_SHOWN):
        state = "settled" if settled is not None else "confirmed" if confirmed is not None else \
            "published" if published is not None else "stored"
        recent.append({"serial": serial, "pile": pile, "state": state,
                       "age_s": round(now - received, 1), "ocmf": verdict})
    bills.sort(key=lambda b: -b["age_s"])
    piles = []
    on_piles = 0
    overdue = 0
    mono = time.monotonic()
    for p in sorted(bridge.piles.values(), key=lambda p: p.code):
        doc = p.status_json(bridge.site)
        pending = (doc.get("journal") or {}).get("pending")
        if isinstance(pending, int):
            on_piles += pending
        late = [{"serial": s[0], "gun": g, "since_s": round(mono - s[1], 1)}
                for g, s in p.sessions.items()
                if s[1] is not None and mono - s[1] >= bridge.cfg["bills"]["overdue_s"]]
        overdue += len(late)
        piles.append({"pile": p.code, "online": doc["online"], "trust": doc["trust"],
                      "link": doc["link"], "since": doc["since"], "last_seen": doc["last_seen"],
                      "offline_reason": doc["offline_reason"], "versions": doc["versions"],
                      "journal": doc["journal"],
                      "guns": {g: dict(v, **p.live.get(g, {})) for g, v in (doc["guns"] or {}).items()},
                      "overdue": late,
                      "frame_errors": doc["frame_errors"], "crc_swapped": doc["crc_swapped"]})
    by_state = dict.fromkeys(STATES, 0)
    by_state["pile"] = on_piles
    by_state["held"] = counts.get("held", 0)
    by_state["stored"] = counts["unpublished"]
    by_state["published"] = counts["unconfirmed"] - counts["unpublished"]
    by_state["confirmed"] = counts["unsettled"]
    unconfirmed = [b["age_s"] for b in bills if b["state"] in ("held", "stored", "published")]
    return {
        "schema": "pc.site_status/1",
        "site": bridge.site,
        "ts": now,
        "bridge": {"version": bridge_version(), "started_at": bridge.started_at,
                   "uptime_s": round(now - bridge.started_at, 1),
                   "mqtt_connected": bool(bridge.mqtt and bridge.mqtt.connected.is_set()),
                   "stats": dict(bridge.stats)},
        "bills_by_state": by_state,
        "oldest_unconfirmed_s": max(unconfirmed) if unconfirmed else None,
        "overdue": overdue,
        "quarantined": counts["rejected"],
        "bills": bills,
        "bills_listed": len(bills),
        "recent_bills": recent,
        "piles": piles,
        "errors": list(bridge.recent_events),
        "store_bytes": _store_bytes(bridge.cfg["database"]),
    }


def bridge_version():
    from host.bridge import VERSION
    return VERSION


def _store_bytes(path):
    n = 0
    for suffix in ("", "-wal"):
        try:
            n += os.stat(path + suffix).st_size
        except OSError:
            pass
    return n


class _Snapshot:
    """A prometheus_client collector over the last snapshot."""

    def __init__(self):
        self.snap = None

    def collect(self):
        s = self.snap
        if s is None:
            return
        g = GaugeMetricFamily("pc_bills", "Bills not yet settled, by custody state",
                              labels=["state"])
        for state in STATES:
            g.add_metric([state], s["bills_by_state"][state])
        yield g
        yield GaugeMetricFamily("pc_oldest_unconfirmed_bill_age_seconds",
                                "Age of the oldest bill the platform has not confirmed",
                                value=s["oldest_unconfirmed_s"] or 0)
        yield GaugeMetricFamily("pc_overdue_sessions", "Sessions ended with no bill after "
                                "bills.overdue_s", value=s["overdue"])
        yield GaugeMetricFamily("pc_quarantined_frames", "Bill frames kept in quarantine",
                                value=s["quarantined"])
        yield GaugeMetricFamily("pc_piles", "Piles known to the bridge", value=len(s["piles"]))
        yield GaugeMetricFamily("pc_piles_online", "Piles logged in now",
                                value=sum(1 for p in s["piles"] if p["online"]))
        c = CounterMetricFamily("pc_link_frame_errors", "Frames that failed to decode, per pile",
                                labels=["pile"])
        for p in s["piles"]:
            c.add_metric([p["pile"]], p["frame_errors"])
        yield c
        yield GaugeMetricFamily("pc_store_bytes", "The bridge's database and WAL, bytes",
                                value=s["store_bytes"])
        yield GaugeMetricFamily("pc_mqtt_connected", "1 while the bridge is connected to its broker",
                                value=1 if s["bridge"]["mqtt_connected"] else 0)


class StatusServer:
    def __init__(self, bridge):
        self.bridge = bridge
        c = bridge.cfg["status"]
        self.host, self.port = configmod.parse_hostport(c["listen"])
        self.password = None
        if c["password_file"]:
            self.password = configmod.read_secret_file(c["password_file"], "status.password_file")
        self.ssl = None
        if c["tls_cert_file"]:
            self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl.load_cert_chain(c["tls_cert_file"], c["tls_key_file"])
            if c["client_ca_file"]:
                self.ssl.load_verify_locations(c["client_ca_file"])
                self.ssl.verify_mode = ssl.CERT_REQUIRED
        self._collector = _Snapshot()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        self._runner = None

    async def start(self):
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._json)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ocmf/{serial}", self._ocmf)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("status page on http%s://%s:%d/", "s" if self.ssl else "", self.host, self.port)
        return self.port

    async def stop(self):
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request, handler):
        if self.password is not None:
            got = request.headers.get("Authorization", "")
            ok = False
            if got.startswith("Basic "):
                try:
                    user_pw = base64.b64decode(got[6:], validate=True).decode("utf-8")
                    ok = hmac.compare_digest(user_pw.partition(":")[2].encode(),
                                             self.password.encode())
                except (ValueError, UnicodeDecodeError):
                    ok = False
            if not ok:
                return web.Response(status=401, text="password required\n",
                                    headers={"WWW-Authenticate": 'Basic realm="pile-companion"'})
        return await handler(request)

    async def _page(self, request):
        return web.Response(text=PAGE, content_type="text/html",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; "
                                     "script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'"})

    async def _json(self, request):
        snap = await snapshot(self.bridge)
        self._collector.snap = snap
        return web.json_response(snap, headers={"Cache-Control": "no-store"})

    async def _ocmf(self, request):
        serial = request.match_info["serial"]
        row = await self.bridge.store.ocmf_record(serial) if serial.isdigit() else None
        if row is None or row[0] is None:
            return web.Response(status=404, text="bill %s has no OCMF record (yet)\n" % serial[:32])
        return web.Response(text=row[0], content_type="text/plain",
                            headers={"Cache-Control": "no-store", "X-OCMF-Verdict": row[1],
                                     "X-OCMF-Public-Key": row[2] or ""})

    async def _metrics(self, request):
        self._collector.snap = await snapshot(self.bridge)
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
