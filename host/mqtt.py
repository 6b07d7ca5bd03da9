# The bridge's MQTT connection (aiomqtt 2.x): connect with a last will,
# subscribe, hand every message to a callback, reconnect with backoff for
# ever. Nothing durable lives here: bills and events wait in SQLite and are
# published again after a reconnect; retained status is re-sent on connect.
import asyncio
import logging
import random
import socket
import ssl

import aiomqtt

from host.config import mqtt_credentials, parse_mqtt_url

log = logging.getLogger("host.mqtt")



STOP_GRACE_S = 3.0


async def subscribe_all(client, topics):
    """Subscribe (QoS 1) and check the broker's answer: a refused filter
    (SUBACK 0x80, e.g. NATS failing to create the subscription's JetStream
    consumer under load) raises MqttError, so the caller reconnects (the
    next node) instead of running on without, say, its confirmations."""
    for t in topics:
        granted = await client.subscribe(t, qos=1)
        for g in granted or ():
            if getattr(g, "value", g) >= 0x80:
                raise aiomqtt.MqttError("the broker refused the subscription to %s (%r)"
                                        % (t, g))


async def stop_tasks(tasks, grace_s=STOP_GRACE_S):
    """Cancel tasks and wait until they end. A task running an aiomqtt
    client enters the client's clean exit on the first cancel, and that exit
    waits for the broker to close its side without a bound: one still
    running grace_s later is cancelled again. Returns the tasks that outlived
    both (logged)."""
    tasks = [t for t in tasks if t is not None]
    for t in tasks:
        t.cancel()
    pending = [t for t in tasks if not t.done()]
    for _ in range(2):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=grace_s)
        for t in pending:
            log.warning("%r still running %g s after its cancel: cancelled again",
                        t.get_coro(), grace_s)
            t.cancel()
    await asyncio.gather(*[t for t in tasks if t.done()], return_exceptions=True)
    return list(pending)


async def wait_event(ev, timeout):
    """True once the asyncio.Event `ev` is set, False after `timeout` s.
    Instead of asyncio.wait_for(ev.wait(), timeout): on Python 3.11 that
    returns normally when a cancel arrives as the event is set, so a task's
    loop runs on after its cancel and its owner's stop waits for it forever
    (a bridge stop hung that way in CI, its outbox kicked as it stopped).
    asyncio.wait never swallows the cancel."""
    if ev.is_set():
        return True
    w = asyncio.ensure_future(ev.wait())
    try:
        done, _ = await asyncio.wait((w,), timeout=timeout)
    finally:
        w.cancel()
    return bool(done)


class Background:
    """An MQTT client task between `async with` enter and exit: enter starts
    self._run() and returns once self.ready (an asyncio.Event the subclass
    sets when subscribed) is set, within READY_S; exit stops it with
    stop_tasks. For the platforms and subscribers of tests, benches and
    fuzzers."""
    READY_S = 15.0

    async def __aenter__(self):
        self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(self.ready.wait(), self.READY_S)
        except BaseException:
            await stop_tasks([self._task])
            raise
        return self

    async def __aexit__(self, *exc):
        await stop_tasks([self._task])


class NotConnected(ConnectionError):
    pass


class MqttLink:
    def __init__(self, cfg, will, subscriptions, on_message, on_connected=None):
        self.cfg = cfg
        self.m = cfg["mqtt"]
        self.will = will                   # (topic, payload) retained, QoS 1
        self.subscriptions = subscriptions
        self.on_message = on_message       # fn(topic: str, payload: bytes), sync
        self.on_connected = on_connected   # coroutine fn, run in its own task
        self.connected = asyncio.Event()
        self.gen = 0                       # bumps on every successful connect
        self.client = None
        self._lost = None
        self._stopping = False
        self.connects = 0
        self.failures = 0
        # A cluster's nodes (mqtt.url as a list): on a lost or failed
        # connection the next node is tried at once with the same client id,
        # so the persistent session (QoS 1 commands and confirmations queued
        # while away) follows; after a whole round, the backoff applies.
        self.urls = list(self.m.get("urls") or [self.m["url"]])
        self.node = 0
        self.failovers = 0

    @property
    def url(self):
        return self.urls[self.node]

    def _client(self):
        tls, host, port, _, _ = parse_mqtt_url(self.url)
        user, pw = mqtt_credentials(self.cfg)
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=self.m["ca_file"] or None)
            if self.m["cert_file"]:
                ctx.load_cert_chain(self.m["cert_file"], self.m["key_file"] or None)
            if self.m["tls_insecure"]:
                ctx.check_hostname = False
        proto = aiomqtt.ProtocolVersion.V5 if self.m["protocol"] == "5" else aiomqtt.ProtocolVersion.V311
        kw = {}
        if proto == aiomqtt.ProtocolVersion.V311:
            # A persistent session: confirmations and commands published
            # while we were away are queued by the broker (QoS 1).
            kw["clean_session"] = False
        client = aiomqtt.Client(
            host, port, username=user, password=pw, identifier=self.m["client_id"],
            protocol=proto, will=aiomqtt.Will(self.will[0], self.will[1], qos=1, retain=True),
            keepalive=int(self.m["keepalive"]), tls_context=ctx, timeout=self.m["publish_timeout_s"],
            max_inflight_messages=200,
            # Small packets (PUBACKs, confirmations) must not wait for Nagle
            # behind a delayed ACK: that alone costs ~40 ms per round trip.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], **kw)
        # A window of bills per pile is in flight by design: not worth a warning.
        client.pending_calls_threshold = 1 << 30
        return client

    async def run(self):
        delay = self.m["reconnect_min_s"]
        tried = 0                          # nodes failed in a row
        while not self._stopping:
            client = None
            try:
                client = self._client()
                async with client:
                    await subscribe_all(client, self.subscriptions)
                    self.client = client
                    self._lost = asyncio.get_running_loop().create_future()
                    self.gen += 1
                    self.connects += 1
                    self.connected.set()
                    delay = self.m["reconnect_min_s"]
                    tried = 0
                    log.info("connected to %s as %s", self.url, self.m["client_id"])
                    if self.on_connected:
                        asyncio.ensure_future(self._guard(self.on_connected()))
                    async for msg in client.messages:
                        try:
                            self.on_message(str(msg.topic), bytes(msg.payload or b""))
                        except Exception:
                            log.exception("handling a message on %s", msg.topic)
            except aiomqtt.MqttError as e:
                self.failures += 1
                if not self._stopping:
                    log.warning("broker %s: %s", self.url, e)
            except (OSError, ssl.SSLError) as e:
                self.failures += 1
                log.warning("broker %s: %s", self.url, e)
            finally:
                self._drop()
            if self._stopping:
                break
            tried += 1
            if len(self.urls) > 1:
                self.node = (self.node + 1) % len(self.urls)
                self.failovers += 1
                if tried < len(self.urls):
                    log.warning("trying the next broker node, %s", self.url)
                    continue
            # Backoff with jitter, so a site's bridges do not reconnect in step.
            log.warning("no broker reached; retry %s in %.1f s", self.url, delay)
            tried = 0
            await asyncio.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, self.m["reconnect_max_s"])

    def _drop(self):
        self.connected.clear()
        self.client = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _guard(self, coro):
        try:
            await coro
        except NotConnected:
            pass
        except Exception:
            log.exception("on_connected")

    async def publish(self, topic, payload, qos=1, retain=False):
        """Publish and, for QoS 1, wait for the PUBACK. NotConnected when the
        broker is not reachable or the connection drops before the PUBACK."""
        client = self.client
        lost = self._lost
        if client is None or lost is None or lost.done():
            raise NotConnected("not connected to the broker")
        if isinstance(payload, str):
            payload = payload.encode()
        pub = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain))
        done, _ = await asyncio.wait((pub, lost), return_when=asyncio.FIRST_COMPLETED)
        if pub in done:
            try:
                pub.result()
            except aiomqtt.MqttError as e:
                raise NotConnected(str(e))
            return
        pub.cancel()
        raise NotConnected("connection lost before PUBACK")

    async def stop(self, last_words=()):
        """Publish `last_words` [(topic, payload, retain)]; the caller then
        cancels run(), whose `async with` sends a clean DISCONNECT (so the
        broker does not fire the last will)."""
        self._stopping = True
        for topic, payload, retain in last_words:
            try:
                await asyncio.wait_for(self.publish(topic, payload, 1, retain), 2)
            except (NotConnected, asyncio.TimeoutError):
                break
