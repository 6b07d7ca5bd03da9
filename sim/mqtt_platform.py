# The platform's side of MQTT, as a double for the bridge suites, the
# fuzzers and the live tests (the real one is host/platform.py): takes bills
# (optionally as a member of a shared subscription), confirms them naming
# their content hash unless told not to, sends commands, collects results,
# events, status and real-time documents.
#
#   async with MqttPlatform("mqtt://127.0.0.1:1883", site="t1") as plat:
#       await plat.wait_for(lambda: serial in plat.bills, 10)
#       res = await plat.command(pile, {"id": "c1", "cmd": "stop", "gun": "01"})
import asyncio
import collections
import collections.abc
import json
import os
import socket

import aiomqtt

from host.mqtt import Background
from host.topics import Topics
from sim.testkit import poll


class MqttPlatform(Background):
    """fast: a client for thousands of messages (the fuzzers): large
    in-flight and outgoing queues. Unparsable documents are counted in
    `errors`, never raised."""

    def __init__(self, broker_url, site="t1", name="platform", share_group=None,
                 confirm=True, subscribe_all=True, fast=False, **client_kw):
        self.url = broker_url
        self.client_kw = client_kw       # username, password, tls_context ...
        if fast:
            self.client_kw.update(max_inflight_messages=200, max_queued_outgoing_messages=100000)
        self.fast = fast
        self.topics = Topics(site)
        self.name = name
        self.share_group = share_group
        self.confirm = confirm
        self.subscribe_all = subscribe_all
        self.bills = {}                 # serial -> last bill doc
        self.bill_count = {}            # serial -> deliveries
        self.bill_order = []            # serials in arrival order
        self.by_pile = collections.defaultdict(set)   # pile -> serials
        self.events = []
        self.results = {}               # id -> result doc
        self.result_list = []           # every result, in arrival order
        self.result_log = []            # (target, doc) of every result
        self.status = {}                # topic -> last retained/live doc
        self.status_log = []            # every status doc, in arrival order
        self.realtime = []
        self.errors = collections.Counter()
        self.connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = None
        self.client = None

    @property
    def ready(self):                    # Background: entered once connected
        return self.connected

    @property
    def result_count(self):
        return len(self.result_log)

    @property
    def bridge_status(self):
        """The latest pc.bridge/1 document (retained)."""
        return self.status.get(self.topics.bridge)

    async def _run(self):
        host, port = self.url.split("//")[1].rsplit(":", 1)
        while True:
            try:
                async with aiomqtt.Client(host, int(port), identifier="%s-%d" % (self.name, os.getpid()),
                                          clean_session=True, socket_options=[
                                              (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                          **self.client_kw) as c:
                    if self.fast:
                        c.pending_calls_threshold = 10 ** 9
                    self.client = c
                    bills = self.topics.base + "/bills/+"
                    if self.share_group:
                        bills = "$share/%s/%s" % (self.share_group, bills)
                    await c.subscribe(bills, qos=1)
                    if self.subscribe_all:
                        for t in ("/events/+", "/result/#", "/pile/+/status", "/pile/+/realtime",
                                  "/bridge"):
                            await c.subscribe(self.topics.base + t, qos=1)
                    self.connected.set()
                    async for m in c.messages:
                        await self._on(str(m.topic), m.payload)
            except aiomqtt.MqttError as e:
                self.connected.clear()
                self.client = None
                self.errors[type(e).__name__] += 1
                await asyncio.sleep(0.05)

    async def _on(self, topic, payload):
        parts = topic.split("/")
        kind = parts[2]
        try:
            doc = json.loads(payload)
        except ValueError:
            self.errors["unparsable " + kind] += 1
            return
        if kind == "bills":
            s = doc["serial"]
            self.bills[s] = doc
            self.bill_count[s] = self.bill_count.get(s, 0) + 1
            self.bill_order.append(s)
            self.by_pile[doc["pile"]].add(s)
            if self.confirm:
                await self.confirm_bill(doc["pile"], s)
        elif kind == "events":
            self.events.append(doc)
        elif kind == "result":
            rid = doc.get("id") if isinstance(doc, dict) else None
            if isinstance(rid, collections.abc.Hashable):   # a fuzzed id may be a list
                self.results[rid] = doc
            self.result_list.append(doc)
            self.result_log.append(("/".join(parts[3:]), doc))
        elif kind == "pile" and topic.endswith("/realtime"):
            self.realtime.append(doc)
        else:
            self.status[topic] = doc
            self.status_log.append(doc)
        self._changed.set()
        self._changed = asyncio.Event()

    async def confirm_bill(self, pile, serial, result=0, content_hash=None):
        """Confirm a bill, naming the content hash of the copy received (or
        the one given)."""
        if content_hash is None:
            content_hash = (self.bills.get(serial) or {}).get("content_hash")
        await self.client.publish(self.topics.confirm(pile),
                                  json.dumps({"serial": serial, "result": result,
                                              "hash": content_hash}), qos=1)

    async def publish(self, topic, payload, qos=1):
        await self.client.publish(topic, payload, qos=qos)

    async def command(self, pile, doc, timeout=10.0):
        """Publish a command (dict, or raw bytes) and wait for its result."""
        payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
        await self.client.publish(self.topics.command(pile), payload, qos=1)
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            return await self.wait_for(lambda: self.results.get(doc["id"]), timeout)
        return None

    async def poll_for(self, pred, timeout=10.0):
        """pred()'s value once truthy (re-checked on every document), or its
        last falsy value after timeout s."""
        return await poll(pred, lambda: self._changed, timeout)

    async def wait_for(self, pred, timeout=10.0):
        """As poll_for, but a timeout is an AssertionError."""
        r = await self.poll_for(pred, timeout)
        if not r:
            raise AssertionError("platform %s: condition not met in %g s" % (self.name, timeout))
        return r

    async def bridge_online(self, bridge, timeout=30):
        """Wait until `bridge` (a started sim.bridge_child.BridgeChild) says it
        is online: it publishes that status once it has subscribed to
        commands. A command published before then is never delivered to it
        (its session does not exist yet): the mqtt-commands fuzz lost its
        first input that way about one run in four on a loaded machine."""
        ok = await self.poll_for(lambda: (self.bridge_status or {}).get("online") is True and
                                 self.bridge_status.get("started_at") == bridge.started_at, timeout)
        if not ok:
            raise RuntimeError("the bridge did not come online on MQTT within %g s (last status %r):\n%s"
                               % (timeout, self.bridge_status, bridge.log_tail()))
