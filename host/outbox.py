# Delivery of what the store holds: bills (until the platform confirms) and
# events (until the broker acknowledges).
#
# One publisher task per pile keeps that pile's bills in order: at most
# `bills.window` unconfirmed bills are out at a time, published oldest first
# (QoS 1, waiting for each PUBACK); a bill not confirmed in time is published
# again with exponential backoff (retry_initial_s doubling to retry_max_s),
# and everything unconfirmed is published again after every reconnect. The
# platform deduplicates by trade serial. Nothing is kept only in memory: the
# state that matters (which bills are unconfirmed) is in SQLite, so a
# restarted bridge just starts publishing again.
import asyncio
import json
import logging
import time

from host import schema
from host.mqtt import NotConnected, stop_tasks, wait_event

log = logging.getLogger("host.outbox")

_SWEEP_S = 30.0


class _Sent:
    __slots__ = ("gen", "attempts", "due")

    def __init__(self, gen, attempts, due):
        self.gen = gen
        self.attempts = attempts
        self.due = due


class Outbox:
    def __init__(self, bridge):
        self.bridge = bridge
        self.cfg = bridge.cfg["bills"]
        self._wake = {}
        self._tasks = {}
        self._force = {}
        self._events_wake = asyncio.Event()
        self._events_task = None
        self.published = 0       # bill publications (first and repeated)
        self.republished = 0

    def kick(self, pile, republish=None):
        """Wake `pile`'s publisher; `republish`: a bill id to publish again
        now (its 0xEB came after it went out)."""
        if republish is not None:
            self._force.setdefault(pile, set()).add(republish)
        ev = self._wake.get(pile)
        if ev is None:
            ev = self._wake[pile] = asyncio.Event()
            self._tasks[pile] = asyncio.ensure_future(self._run(pile, ev))
        ev.set()

    def kick_all(self):
        for pile in list(self._wake):
            self.kick(pile)
        self._events_wake.set()

    def kick_events(self):
        self._events_wake.set()

    def start(self):
        self._events_task = asyncio.ensure_future(self._run_events())

    async def stop(self):
        await stop_tasks(list(self._tasks.values()) + [self._events_task])

    def _backoff(self, attempts):
        return min(self.cfg["retry_max_s"], self.cfg["retry_initial_s"] * 2 ** (attempts - 1))

    async def _run(self, pile, ev):
        b = self.bridge
        mqtt = b.mqtt
        sent = {}
        cache = {}
        while True:
            try:
                ev.clear()
                await mqtt.connected.wait()
                gen = mqtt.gen
                rows = await b.store.open_bills(pile, self.cfg["window"])
                live = {r.id for r in rows}
                for i in [i for i in sent if i not in live]:
                    del sent[i]        # confirmed meanwhile
                # Cache keys are (id, has 0xEB, OCMF verdict): prune by the id in them, or
                # every bill ever published stays in memory.
                for k in [k for k in cache if k[0] not in live]:
                    del cache[k]
                now = time.monotonic()
                wall = time.time()
                wait = None
                batch = []
                ext = b.pile_ext(pile)
                signs = ext and b.ocmf_key(pile) is not None
                force = self._force.pop(pile, ())
                for r in rows:
                    s = sent.get(r.id)
                    if s is not None and s.gen == gen and now < s.due and r.id not in force:
                        wait = s.due - now if wait is None else min(wait, s.due - now)
                        continue
                    if ext and r.extra is None and wall < r.received_at + self.cfg["extra_wait_s"]:
                        # Our firmware sends the fee split (0xEB) right after the
                        # bill: give it a moment so the bill goes out complete.
                        # Later bills wait too, to keep the pile's order.
                        left = r.received_at + self.cfg["extra_wait_s"] - wall
                        wait = left if wait is None else min(wait, left)
                        break
                    if signs and r.ocmf_verdict is None and \
                            wall < r.received_at + self.cfg["sig_wait_s"]:
                        # A pile with a registered OCMF key signs each bill
                        # after sealing it (docs/ocmf.md): give the signature
                        # a moment so the bill goes out with its record. The
                        # 0x40 went long ago: custody never waits for it.
                        left = r.received_at + self.cfg["sig_wait_s"] - wall
                        wait = left if wait is None else min(wait, left)
                        break
                    batch.append(r)
                published = []
                payloads = []
                for r in batch:
                    key = (r.id, r.extra is not None, r.ocmf_verdict)
                    payload = cache.get(key)
                    if payload is None:
                        payload = json.dumps(schema.bill_json(b.site, r, ext=ext), separators=(",", ":"))
                        cache[key] = payload
                    payloads.append(payload)
                # Pipelined: the PUBLISHes go out in order, the PUBACKs are
                # awaited together (a bill is "published" only once its own
                # PUBACK came back).
                topic = b.topics.bills(pile)
                results = await asyncio.gather(*[mqtt.publish(topic, p, qos=1) for p in payloads],
                                               return_exceptions=True)
                lost = None
                for r, res in zip(batch, results):
                    if isinstance(res, BaseException):
                        lost = res
                        continue
                    s = sent.get(r.id)
                    attempts = s.attempts + 1 if s is not None else 1
                    if attempts > 1:
                        self.republished += 1
                        log.info("pile %s: bill %s published again (attempt %d)",
                                 pile, r.serial, attempts)
                    back = self._backoff(attempts)
                    sent[r.id] = _Sent(gen, attempts, time.monotonic() + back)
                    wait = back if wait is None else min(wait, back)
                    published.append(r.id)
                    self.published += 1
                if lost is not None:
                    if published:
                        await b.store.mark_published(published)
                    if isinstance(lost, NotConnected):
                        raise lost
                    raise lost
                if published:
                    await b.store.mark_published(published)
                # A sweep now and then even when idle: a wake-up lost to a
                # bug must not strand a bill.
                await wait_event(ev, _SWEEP_S if wait is None else min(wait, _SWEEP_S))
            except NotConnected:
                continue                 # wait for the reconnect, publish again
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pile %s: bill publisher", pile)
                await asyncio.sleep(1)   # a store error: do not spin

    async def _run_events(self):
        b = self.bridge
        while True:
            try:
                self._events_wake.clear()
                await b.mqtt.connected.wait()
                rows = await b.store.open_events(100)
                done = []
                try:
                    for eid, pile, payload in rows:
                        await b.mqtt.publish(b.topics.events(pile), payload, qos=1)
                        done.append(eid)
                finally:
                    if done:
                        await b.store.mark_events_published(done)
                if len(rows) == 100:
                    continue
                await self._events_wake.wait()
            except NotConnected:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event publisher")
                await asyncio.sleep(1)
