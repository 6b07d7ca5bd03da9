# Platform workers (docs/scaling.md "Platform workers"): each site is owned
# by one worker through a lease in the platform's shared database, with a
# fencing token that grows with every new owner and rides in every
# confirmation (docs/mqtt.md "Confirmation": `fence`). A worker without the
# lease never confirms; the bridge refuses a token lower than one it has
# seen. `Leases` is the lease table's rules; `FencedWorker` the part of the
# reference platform (host/platform.py) that confirms under a lease.
import asyncio
import json
import logging
import signal
import sqlite3
import time
import zlib

import aiomqtt

from host.mqtt import stop_tasks
from host.store import StoreError
from host.topics import ROOT

log = logging.getLogger("pile-platform")

# Site leases (docs/scaling.md "Platform workers"): a worker confirms a
# site's bills only while it holds the site's lease, renewed every
# LEASE_S / 3. A worker that is not a site's preferred one (stable hash of
# the site over the workers) takes a lease only LEASE_GRACE of LEASE_S after
# it expired, so the preferred worker gets it first.
LEASE_S = 15.0
LEASE_GRACE = 0.5


_SCHEMA = """
-- Which worker owns a site: owner '' is free since `expires`; `token` (the
-- fencing token) grows with every new owner and rides in every confirmation.
CREATE TABLE IF NOT EXISTS leases (
    site TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL,
    expires REAL NOT NULL, since REAL NOT NULL
);
-- A new owner confirms what its site's last owner stored and did not
-- confirm (FencedWorker._confirm_stored): found by this index, not a scan.
CREATE INDEX IF NOT EXISTS bills_unconfirmed ON bills(site) WHERE confirm_result IS NULL;
"""


def worker_args(ap):
    """pile-platform's options for running as one of several workers."""
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="platform workers sharing --db: each site is owned by one of them "
                    "through a lease (docs/scaling.md)")
    ap.add_argument("--worker-index", type=int, default=0, metavar="I",
                    help="this worker's index, 0..N-1: the sites it takes first")
    ap.add_argument("--lease", type=float, default=LEASE_S, metavar="S",
                    help="site lease time: a dead worker's sites move on after about 1.5 S")
    ap.add_argument("--client-id", metavar="ID",
                    help="MQTT client id (default: a new one each start); a fixed one per "
                    "worker resumes its persistent session after a restart")


def fence_seen(db, fence):
    """(honoured, highest token seen before) for a confirmation's fencing
    token (None: it has none), raising the highest kept in `meta`."""
    row = db.execute("SELECT value FROM meta WHERE key='confirm_fence'").fetchone()
    highest = int(row[0]) if row else 0
    if fence is None:
        return highest == 0, highest
    if fence < highest:
        return False, highest
    if fence > highest:
        db.execute("INSERT INTO meta (key, value) VALUES ('confirm_fence', ?) ON CONFLICT(key) "
                   "DO UPDATE SET value=excluded.value", (str(fence),))
    return True, highest


async def fence_check(store, fence):
    """The bridge's side (host/bridge.py): (honoured, highest token seen
    before) for a confirmation's `fence`, the highest kept in the store's
    `meta` table; (False, None) when the store failed (nothing confirmed:
    the bills are published again)."""
    try:
        return await store._submit(fence_seen, fence)
    except StoreError as e:
        log.warning("confirmation not taken: %s (the bills are published again)", e)
        return False, None


def stop_on_sigterm():
    """SIGTERM (systemd's stop) cancels the running task: a clean stop, so the
    leases are released for the other workers at once instead of running out."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM,
                                                       asyncio.current_task().cancel)
    except (RuntimeError, ValueError):
        pass     # not the main thread (a caller embedding main()): its own stop


class Leases:
    """The site leases of one worker, kept in the platform's database (table
    `leases`), which every worker shares and which outlives any of them: a
    crashed owner's lease simply runs out there. Each step is one UPDATE,
    atomic under SQLite's write lock, so two workers never both take a site.

    `worker`: this incarnation's id (a restart is a new owner, with a new
    token). `index` of `workers`: the sites this worker takes first
    (crc32(site) % workers == index); any worker takes a site whose lease
    ran out `grace * ttl` ago, so a dead worker's sites move on."""

    def __init__(self, db, worker, ttl=LEASE_S, index=0, workers=1, clock=time.time,
                 grace=LEASE_GRACE):
        if workers < 1 or not 0 <= index < workers:
            raise ValueError("worker index %d of %d workers: must be 0..%d"
                                % (index, workers, workers - 1))
        if ttl <= 0:
            raise ValueError("lease time must be positive, got %g s" % ttl)
        self.db = db
        db.executescript(_SCHEMA)
        self.worker = worker
        self.ttl = ttl
        self.index = index
        self.workers = workers
        self.clock = clock
        self.grace = grace * ttl
        self.held = {}        # site -> (token, expires) of the leases this worker holds
        self._busy = {}       # site -> expiry of another worker's lease: no DB read before
        self.taken = []       # (site, token) taken since the caller last looked

    def preferred(self, site):
        return zlib.crc32(site.encode()) % self.workers == self.index

    def token(self, site):
        """This worker's fencing token for `site`, taking or renewing the
        lease as needed; None when another worker holds it."""
        now = self.clock()
        mine = self.held.get(site)
        if mine is not None and now < mine[1] - self.ttl / 2:
            return mine[0]
        if mine is None and now < self._busy.get(site, 0):
            return None
        return self._take(site, now)

    def _take(self, site, now):
        db = self.db
        if db.in_transaction:
            db.commit()
        try:
            mine = self.held.get(site)
            if mine is not None and db.execute(
                    "UPDATE leases SET expires=? WHERE site=? AND owner=? AND token=?",
                    (now + self.ttl, site, self.worker, mine[0])).rowcount:
                # Nobody took it meanwhile (the token would have grown).
                db.commit()
                self.held[site] = (mine[0], now + self.ttl)
                return mine[0]
            self.held.pop(site, None)
            # Never seen: free from now on (the preferred worker takes it at
            # once; the others only after the grace).
            db.execute("INSERT OR IGNORE INTO leases (site, owner, token, expires, since) "
                       "VALUES (?, '', 0, ?, ?)", (site, now, now))
            pref = self.preferred(site)
            # A free site (owner '') is the preferred worker's at once, whatever
            # its `expires` says: another worker may have marked it free a moment
            # after our `now` was read, while we waited for the write lock.
            if db.execute("UPDATE leases SET owner=?, token=token+1, expires=?, since=? "
                          "WHERE site=? AND (expires<=? OR (owner='' AND ?))",
                          (self.worker, now + self.ttl, now, site,
                           now if pref else now - self.grace, pref)).rowcount:
                tok = db.execute("SELECT token FROM leases WHERE site=?", (site,)).fetchone()[0]
                db.commit()
                self.held[site] = (tok, now + self.ttl)
                self._busy.pop(site, None)
                self.taken.append((site, tok))
                log.info("worker %s: took site %s (fencing token %d)", self.worker, site, tok)
                return tok
            exp = db.execute("SELECT expires FROM leases WHERE site=?", (site,)).fetchone()[0]
            db.commit()
            self._busy[site] = exp if self.preferred(site) else exp + self.grace
            return None
        except sqlite3.Error:
            db.rollback()
            raise

    def renew(self):
        """Renew every lease held and take the ones that ran out (a dead
        worker's). Returns the sites lost (another worker has them now)."""
        now = self.clock()
        lost = []
        for site in list(self.held):
            if self._take(site, now) is None:
                lost.append(site)
                log.warning("worker %s: lost site %s to another worker: its bills are no "
                            "longer confirmed here", self.worker, site)
        for (site,) in self.db.execute("SELECT site FROM leases WHERE expires<=? AND owner!=?",
                                       (now, self.worker)).fetchall():
            self._busy.pop(site, None)
            self._take(site, now)
        if self.db.in_transaction:
            self.db.commit()
        return lost

    def release(self):
        """A clean stop: every lease held runs out now, for another worker."""
        for site, (tok, _) in list(self.held.items()):
            self.db.execute("UPDATE leases SET expires=? WHERE site=? AND owner=? AND token=?",
                            (self.clock(), site, self.worker, tok))
        self.db.commit()
        self.held.clear()


class FencedWorker:
    """Confirmation under a site lease, for a platform that has `db`,
    `leases` (Leases or None), `stats`, `cmd_key`, `confirming`, `silent`,
    `group`, `changed`, `_client`, `take_bill(doc)`, `confirm_result(serial)`
    and `_hash(doc)` (the content hash a confirmation names)."""

    def _init_worker(self):
        # Awaited just before a confirmation is published (after the lease
        # check): where a stalled worker (GC pause, slow disk) would stop.
        self.before_confirm = None
        self._gate = asyncio.Event()   # cleared: the worker is paused (pause())
        self._gate.set()

    def _not_mine(self, site, doc):
        """True when a bill message is not this worker's to confirm (done
        with it here); False: the worker owns the site."""
        if self._fence(site) is not None:
            return False
        log.debug("bill %s of site %s: not this worker's site", doc["serial"], site)
        self.stats["not_owner"] += 1
        if self.group is not None:
            # $share/: this copy came to this worker alone. Stored (the
            # database deduplicates by serial), confirmed by the owner from
            # the store (_confirm_stored).
            self.take_bill(doc)
            self.stats["bill_messages"] += 1
            self.changed.set()
        return True

    def _fence(self, site):
        # This worker's fencing token for the site, or None: not its owner.
        return self.leases.token(site) if self.leases is not None else 0

    async def _send_confirm(self, client, site, pile, doc, result):
        """Publish the confirmation of a stored bill, with this worker's
        fencing token; False (nothing sent) when it does not own the site."""
        fence = self._fence(site)
        if fence is None:
            self.stats["not_confirmed_lease"] += 1
            return False
        if self.before_confirm is not None:
            await self.before_confirm(site, pile, doc["serial"])
        await self._gate.wait()
        conf = {"serial": doc["serial"], "result": result, "hash": self._hash(doc)}
        if fence:
            conf["fence"] = fence
        if self.cmd_key is not None:
            from host.commands import sign_confirmation
            conf = sign_confirmation(self.cmd_key, site, pile, conf)
        await client.publish("%s/%s/confirm/%s" % (ROOT, site, pile), json.dumps(conf), qos=1)
        self.stats["confirms_sent"] += 1
        if result != 0:    # CONFIRM_OK: anything else is a refusal
            self.stats["refusals_sent"] += 1
        return True

    async def _confirm_stored(self, client, site):
        """Confirm the site's stored bills that no confirmation went out for
        (its last owner died or paused between storing and confirming; a
        copy a peer stored under $share/; a keyed pile's bill whose MAC
        wait ran out)."""
        rows = self.db.execute("SELECT serial, pile, doc FROM bills WHERE site=? AND "
                               "confirm_result IS NULL", (site,)).fetchall()
        for serial, pile, doc in rows:
            result = self.confirm_result(serial)
            if result is None:
                continue
            if not await self._send_confirm(client, site, pile, json.loads(doc), result):
                return
            self.db.execute("UPDATE bills SET confirm_result=? WHERE serial=?", (result, serial))
            self.db.commit()
            self.changed.set()

    async def _lease_loop(self):
        # Every third of the lease time: renew, take the leases that ran out,
        # confirm what the sites' stores hold unconfirmed.
        while True:
            await self._gate.wait()
            try:
                self.leases.renew()
                client = self._client
                if client is not None and self.confirming and not self.silent:
                    for site in list(self.leases.held):
                        await self._confirm_stored(client, site)
            except sqlite3.Error as e:
                self.db.rollback()
                log.warning("platform: lease renewal: database: %s (tried again)", e)
            except aiomqtt.MqttError:
                pass     # the reconnect loop deals with the broker
            await asyncio.sleep(self.leases.ttl / 3)

    def pause(self):
        """Stop taking messages, renewing leases and confirming (an
        in-process SIGSTOP, for tests), until resume()."""
        self._gate.clear()

    def resume(self):
        self._gate.set()

    async def _leased(self, coro):
        # Run `coro` (the consumer) with the lease loop beside it; a clean
        # stop releases the leases, so another worker takes over at once.
        task = asyncio.ensure_future(self._lease_loop()) if self.leases is not None else None
        try:
            await coro
        finally:
            if task is not None:
                await stop_tasks([task])
                try:
                    self.leases.release()
                except sqlite3.Error as e:
                    log.warning("platform: leases not released (%s): they run out", e)
