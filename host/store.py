# The bridge's durable store: bills in custody, their publication and
# confirmation state, events waiting for the broker, tariffs.
#
# SQLite in WAL mode with synchronous=FULL: a commit returns only after the
# WAL is on disk, so "committed" means "survives SIGKILL and power loss".
# Every call runs on one writer thread; calls that arrive together share one
# transaction (group commit), and each call's result is handed back only
# after that transaction committed. So `await store.add_bill(...)` returning
# is the moment custody has passed and the 0x40 may go to the pile.
#
# The raw frame bytes are the record. JSON for MQTT is derived from them at
# publication (host/schema.py), so a bill is never re-encoded or rounded.
import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time

_BATCH = 256          # calls per transaction at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bills (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- custody order
    serial        TEXT NOT NULL UNIQUE,               -- trade serial: the identity
    pile          TEXT NOT NULL,
    pile_seq      INTEGER NOT NULL,                   -- 1, 2, 3 ... per pile
    frame         BLOB NOT NULL,                      -- the pile's 0x3B, as received
    crc_swapped   INTEGER NOT NULL DEFAULT 0,
    received_at   REAL NOT NULL,                      -- unix time at the bridge
    resends       INTEGER NOT NULL DEFAULT 0,         -- identical copies received again
    conflicts     INTEGER NOT NULL DEFAULT 0,         -- byte-different copies received
    published_at  REAL,                               -- first PUBACK
    publish_count INTEGER NOT NULL DEFAULT 0,
    confirmed_at  REAL,                               -- platform confirmation
    confirm_result INTEGER,
    settled_at    REAL                                -- pile acknowledged 0xE4 (or skipped)
);
CREATE INDEX IF NOT EXISTS bills_open ON bills (pile, id) WHERE confirmed_at IS NULL;
CREATE INDEX IF NOT EXISTS bills_unsettled ON bills (pile, id)
    WHERE confirmed_at IS NOT NULL AND settled_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS bills_pile_seq ON bills (pile, pile_seq);

CREATE TABLE IF NOT EXISTS pile_seqs (
    pile TEXT PRIMARY KEY,
    last INTEGER NOT NULL                             -- the last pile_seq given out
);

-- 0xEB fee split / VIN facts, keyed by the bill's trade serial; may arrive
-- before or after its bill.
CREATE TABLE IF NOT EXISTS extras (
    serial      TEXT PRIMARY KEY,
    frame       BLOB NOT NULL,
    received_at REAL NOT NULL
);

-- Copies that were not taken into custody as bills: byte-different resends of
-- a serial already held (the first copy wins) and refused (illegal) bills.
CREATE TABLE IF NOT EXISTS rejected (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    serial      TEXT,
    pile        TEXT,
    kind        TEXT NOT NULL,        -- 'conflict' | 'illegal' | 'extra_conflict'
    frame       BLOB NOT NULL,
    reason      TEXT,
    received_at REAL NOT NULL
);

-- Events are durable too: published (QoS 1) when the broker is reachable.
CREATE TABLE IF NOT EXISTS events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    pile         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS events_open ON events (id) WHERE published_at IS NULL;

-- The last signed-command counter used per pile (docs/security.md): it only
-- goes up, across restarts; committed (FULL) before the envelope is sent.
CREATE TABLE IF NOT EXISTS cmd_counters (
    pile       TEXT PRIMARY KEY,
    last       INTEGER NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tariffs (
    scope      TEXT PRIMARY KEY,      -- 'site' or a pile code
    tariff     TEXT NOT NULL,         -- JSON, see docs/bridge.md
    updated_at REAL NOT NULL
);
"""

# The store's schema version (PRAGMA user_version). A store written before
# versions existed reads 0 and holds version 1's tables. Each step upgrades
# from the version before it, inside one transaction with the version bump;
# tests/test_store_migration.py upgrades a store that holds unconfirmed
# bills and checks nothing is lost.
SCHEMA_VERSION = 7
_MIGRATIONS = (
    # 2: frames that failed their CRC, kept for diagnosis within caps (per
    # link and in total, oldest dropped first, the drops counted).
    (2, ("CREATE TABLE IF NOT EXISTS bad_frames ("
         " id INTEGER PRIMARY KEY AUTOINCREMENT,"
         " link TEXT NOT NULL,"
         " pile TEXT,"                    # the link's logged-in pile, if any
         " frame BLOB NOT NULL,"          # the bytes from the 0x68 on, as received
         " reason TEXT NOT NULL,"
         " received_at REAL NOT NULL)",
         "CREATE INDEX IF NOT EXISTS bad_frames_link ON bad_frames (link, id)",
         "CREATE TABLE IF NOT EXISTS bad_frame_drops (link TEXT PRIMARY KEY, dropped INTEGER NOT NULL)")),
    # 3: platform command ids, so a command is never executed twice, across
    # restarts too (RAM alone forgot them: the same command ran again).
    (3, ("CREATE TABLE IF NOT EXISTS commands_seen ("
         " target TEXT NOT NULL,"
         " id TEXT NOT NULL,"
         " result TEXT,"                  # the result document once there is one
         " at REAL NOT NULL,"
         " PRIMARY KEY (target, id))",
         "CREATE INDEX IF NOT EXISTS commands_seen_at ON commands_seen (at)")),
    # 4: the site the store belongs to: a bridge started with another site id
    # must not republish its bills under that id (pile-bridge migrate-site).
    (4, ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",)),
    # 5: a keyed pile's bill, committed raw while it waits for the fee split
    # (0xEB) that carries its MAC: no 0x40 before the MAC checks (issue 17).
    # Released into `bills` (good MAC) or moved to `rejected` (bad or no MAC)
    # in one transaction; a row left by a crash is quarantined at the next
    # start (the pile got no 0x40 and sends the bill again).
    (5, ("CREATE TABLE IF NOT EXISTS held_bills ("
         " serial TEXT PRIMARY KEY,"
         " pile TEXT NOT NULL,"
         " frame BLOB NOT NULL,"          # the 0x3B as received
         " received_at REAL NOT NULL)",)),
    # 6: the OCPP uplink (docs/ocpp.md). The CSMS's answer to a bill's
    # TransactionEvent(Ended) (1.6: StopTransaction) is recorded on the
    # bill: a pile's bill is settled only when every configured uplink has
    # acknowledged it. Every OCPP transaction message is queued durably, in
    # order per pile, its seqNo given once; `strict` mode stops retrying a
    # message after its attempts (gave_up_at) but never deletes it.
    (6, ("ALTER TABLE bills ADD COLUMN ocpp_acked_at REAL",
         "CREATE TABLE IF NOT EXISTS ocpp_tx ("
         " serial TEXT PRIMARY KEY,"      # the YKC trade serial = 2.0.1 transactionId
         " pile TEXT NOT NULL,"
         " evse INTEGER NOT NULL,"
         " next_seq INTEGER NOT NULL DEFAULT 0,"
         " tx_id TEXT,"                   # 1.6: the CSMS's transactionId from StartTransaction
         " remote_stop INTEGER NOT NULL DEFAULT 0,"
         " created_at REAL NOT NULL)",
         "CREATE TABLE IF NOT EXISTS ocpp_out ("
         " id INTEGER PRIMARY KEY AUTOINCREMENT,"
         " pile TEXT NOT NULL,"
         " serial TEXT NOT NULL,"
         " kind TEXT NOT NULL,"           # 'started' | 'updated' | 'ended'
         " seq_no INTEGER NOT NULL,"
         " payload TEXT NOT NULL,"        # JSON, version-specific (host/ocpp_uplink.py)
         " created_at REAL NOT NULL,"
         " attempts INTEGER NOT NULL DEFAULT 0,"
         " last_error TEXT,"
         " acked_at REAL,"
         " response TEXT,"
         " gave_up_at REAL)",
         "CREATE UNIQUE INDEX IF NOT EXISTS ocpp_out_once ON ocpp_out (serial, kind) "
         "WHERE kind IN ('started', 'ended')",
         "CREATE INDEX IF NOT EXISTS ocpp_out_open ON ocpp_out (pile, id) WHERE acked_at IS NULL")),
    # 7: a bill's OCMF signature (0xDB, docs/ocmf.md), kept beside the bill:
    # the frame as received, the OCMF record rebuilt from the bill, the key
    # it was checked against and the verdict. A bill's custody never waits
    # for it; a signature whose bill is not held yet is kept too
    # (verdict 'no_bill') and checked when it comes again.
    (7, ("CREATE TABLE IF NOT EXISTS bill_sigs ("
         " serial TEXT PRIMARY KEY,"
         " pile TEXT NOT NULL,"
         " frame BLOB NOT NULL,"          # the 0xDB as received
         " record TEXT,"                  # OCMF|payload|signature; null without its bill
         " public_key TEXT,"              # the registered key checked against (DER hex), or null
         " verdict TEXT NOT NULL,"        # verified | bad_signature | unregistered_key | no_bill
         " received_at REAL NOT NULL)",)),
)
COMMANDS_KEEP_S = 7 * 86400   # command ids remembered this long (a command's expires should be shorter)
BAD_FRAMES_PER_LINK = 100     # kept per link, oldest dropped first
BAD_FRAMES_TOTAL = 10000      # kept in all


def _migrate(db):
    """Bring the store to SCHEMA_VERSION; refuse one written by a newer bridge."""
    v = db.execute("PRAGMA user_version").fetchone()[0]
    if v > SCHEMA_VERSION:
        raise StoreError("store schema version %d is newer than this bridge's %d: "
                         "run the bridge version that wrote it" % (v, SCHEMA_VERSION))
    if v == 0:
        db.executescript(_SCHEMA)         # new, or written before versions: version 1
        v = 1
    for to, sql in _MIGRATIONS:
        if to <= v:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in sql:
                db.execute(stmt)
            db.execute("PRAGMA user_version=%d" % to)
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
        v = to
    return v

BILL_COLUMNS = ("id", "serial", "pile", "pile_seq", "frame", "crc_swapped", "received_at",
                "resends", "conflicts", "published_at", "publish_count", "confirmed_at",
                "confirm_result", "settled_at", "ocpp_acked_at")
_JOINED = ("extra", "ocmf_record", "ocmf_verdict", "ocmf_key")
# A signature kept before its bill ('no_bill': not checked) is not the bill's yet.
_SIG_JOIN = "LEFT JOIN bill_sigs s ON s.serial = b.serial AND s.verdict != 'no_bill' "
_BILL_SELECT = "SELECT " + ", ".join("b." + c for c in BILL_COLUMNS) + \
               ", x.frame, s.record, s.verdict, s.public_key FROM bills b " \
               "LEFT JOIN extras x ON x.serial = b.serial " + _SIG_JOIN


class Bill:
    """One row of `bills`, with its 0xEB frame when one arrived and its OCMF
    record (ocmf_record, ocmf_verdict, ocmf_key) when its signature did."""
    __slots__ = BILL_COLUMNS + _JOINED

    def __init__(self, row):
        for name, v in zip(BILL_COLUMNS + _JOINED, row):
            setattr(self, name, v)
        if self.frame is not None:
            self.frame = bytes(self.frame)
        if self.extra is not None:
            self.extra = bytes(self.extra)

    def __repr__(self):
        return "Bill(%d %s pile=%s confirmed=%s)" % (self.id, self.serial, self.pile,
                                                     self.confirmed_at is not None)


class StoreError(Exception):
    pass


class Store:
    """Async facade over one SQLite file, served by one thread."""

    def __init__(self, path):
        self.path = path
        self._lock_fd = None
        self._identity = None          # (st_dev, st_ino) of the file opened
        self.unsound = None            # why the store stopped taking custody, or None
        if path != ":memory:":
            self._lock(path)
        self._q = queue.Queue()
        self._ready = threading.Event()
        self._open_error = None
        self.commits = 0
        self.full_commits = 0
        self.calls = 0
        # The uplinks whose acknowledgement a bill needs before it is settled
        # on its pile (the bridge sets them from its config): the MQTT
        # platform's confirmation, the CSMS's answer to the Ended event.
        self.need = ("mqtt",)
        self._sync = None
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            self._unlock()
            if isinstance(self._open_error, StoreError):
                raise StoreError("%s: %s" % (path, self._open_error))
            raise StoreError("cannot open %s: %s" % (path, self._open_error))

    def _lock(self, path):
        # One bridge per store: a second one on the same file would fight the
        # first over MQTT and the piles. flock on PATH.lock, held until close.
        lp = path + ".lock"
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError("cannot open the store's lock file %s: %s" % (lp, e))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                other = ""
            os.close(fd)
            raise StoreError("%s is in use by another bridge (pid %s, lock %s): one store, one "
                             "bridge" % (path, other or "?", lp))
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._lock_fd = fd

    def _unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _same_file(self):
        """True while the path still names the file this store opened: a
        database deleted or replaced underneath a running bridge would take
        bills into a file nobody will ever read again."""
        if self._identity is None:
            return True
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    # --- plumbing -------------------------------------------------------------

    def _open_db(self):
        """Open, check and migrate the database: the connection the calls
        run on (the store thread's; sim/chaos_inproc.py runs them inline)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        self._sync = "FULL"
        db.execute("PRAGMA busy_timeout=5000")
        bad = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
        if bad != ["ok"]:
            raise StoreError("the database fails its integrity check (%s); restore it from a "
                             "backup or move it aside (the piles keep their unconfirmed "
                             "bills and send them again to a new store)" % "; ".join(bad))
        self.schema_version = _migrate(db)
        self.stale_held = _quarantine_stale_held(db, time.time())
        if self.path != ":memory:":
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
        return db

    def _serve(self):
        try:
            db = self._open_db()
        except Exception as e:  # reported to the constructor
            self._open_error = e
            self._ready.set()
            return
        self._ready.set()
        q = self._q
        while True:
            item = q.get()
            if item is None:
                break
            batch = [item]
            stop = False
            while len(batch) < _BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(db, batch)
            if stop:
                break
        db.close()

    def _run_batch(self, db, batch):
        results = []
        # Custody records (bills, fee splits, events, tariffs) commit with
        # synchronous=FULL: the WAL is fsynced before the caller hears "done",
        # so they survive power loss. Bookkeeping that is safe to redo
        # (published / confirmed / settled marks) commits with NORMAL: durable
        # against a crash or SIGKILL (the WAL is in the OS already), and after
        # a power loss at worst a bill is published or settled once more.
        # Reads take no write lock.
        durable = any(fn in _DURABLE for fn, _, _ in batch)
        writes = durable or any(fn not in _READS for fn, _, _ in batch)
        if writes and (self.unsound or not self._same_file()):
            # Checked before every write: once the file has gone, nothing is
            # acknowledged again (no 0x40) until the bridge restarts on a
            # sound store; the piles keep their bills meanwhile.
            if not self.unsound:
                self.unsound = "the database file %s was deleted or replaced while in use" % self.path
            err = StoreError(self.unsound)
            self.calls += len(batch)
            for _, _, done in batch:
                done(None, err)
            return
        mode = "FULL" if durable else "NORMAL"
        if mode != self._sync:
            db.execute("PRAGMA synchronous=" + mode)
            self._sync = mode
        try:
            db.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for fn, args, done in batch:
                db.execute("SAVEPOINT call")
                try:
                    r = fn(db, *args)
                except Exception as e:
                    db.execute("ROLLBACK TO call")
                    db.execute("RELEASE call")
                    results.append((done, None, e))
                else:
                    db.execute("RELEASE call")
                    results.append((done, r, None))
            db.execute("COMMIT")
            self.commits += 1
            if durable:
                self.full_commits += 1
        except Exception as e:
            # The commit failed (disk full, I/O error): nothing of this batch
            # is durable, so every caller gets the error (no 0x40 goes out).
            try:
                db.execute("ROLLBACK")
            except Exception:
                pass
            err = StoreError("commit failed: %s" % e)
            results = [(done, None, err) for _, _, done in batch]
        self.calls += len(batch)
        for done, r, e in results:
            done(r, e)

    def _submit(self, fn, *args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(r, e):
            try:
                loop.call_soon_threadsafe(_resolve, fut, r, e)
            except RuntimeError:
                pass  # the loop is gone (shutdown); nobody waits any more
        self._q.put((fn, args, done))
        return fut

    def call_sync(self, fn, *args):
        """Run `fn(db, *args)` from outside an event loop (tools, tests)."""
        out = []
        ev = threading.Event()

        def done(r, e):
            out.append((r, e))
            ev.set()
        self._q.put((fn, args, done))
        ev.wait()
        r, e = out[0]
        if e is not None:
            raise e
        return r

    def close(self):
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        self._unlock()

    # --- bills ----------------------------------------------------------------

    def add_bill(self, pile, serial, frame, crc_swapped=False, now=None):
        """Take a bill into custody. Resolves (kind, Bill) once committed:
        kind 'new', 'same' (identical resend) or 'conflict' (same serial,
        different bytes: the first copy is kept, this one goes to `rejected`)."""
        return self._submit(_add_bill, pile, serial, bytes(frame), bool(crc_swapped),
                            time.time() if now is None else now)

    def add_extra(self, serial, frame, now=None, pile=None):
        """Store a 0xEB for `serial` sent by `pile`. Resolves (kind, Bill or
        None): kind 'new', 'same', 'conflict', or 'foreign' (the bill is
        another pile's: kept in `rejected` as extra_quarantine, nothing
        else); the Bill when its 0x3B is already held."""
        return self._submit(_add_extra, pile, serial, bytes(frame), time.time() if now is None else now)

    def add_sig(self, pile, serial, frame, record, public_key, verdict, now=None):
        """A bill's OCMF signature (0xDB) with the record rebuilt from the
        bill and its verdict: ("new" | "same" | "updated" | "conflict" |
        "foreign", Bill or None). The first copy is kept; a copy that came
        before its bill ('no_bill') is replaced by one checked against it.
        Another pile's bill's signature is kept in `rejected`."""
        return self._submit(_add_sig, pile, serial, bytes(frame), record, public_key, verdict,
                            time.time() if now is None else now)

    def hold_bill(self, pile, serial, frame, now=None):
        """A keyed pile's bill, committed raw while its MAC is awaited (no
        0x40 yet). A copy already held for the serial is replaced: the pile
        sends the same bill again with its fee split."""
        return self._submit(_hold_bill, pile, serial, bytes(frame), time.time() if now is None else now)

    def release_held(self, pile, serial, frame, crc_swapped=False, now=None):
        """The held bill's MAC checked: into custody like add_bill, and the
        held row gone, in one transaction. Resolves like add_bill."""
        return self._submit(_release_held, pile, serial, bytes(frame), bool(crc_swapped),
                            time.time() if now is None else now)

    def quarantine_held(self, pile, serial, reason, extra=None, now=None):
        """The held bill (and the fee split that came with it) to `rejected`
        as quarantine, with the reason. Resolves True if a bill was held."""
        return self._submit(_quarantine_held, pile, serial, reason,
                            None if extra is None else bytes(extra), time.time() if now is None else now)

    def held(self):
        """(serial, pile, received_at) of the bills waiting for their MAC."""
        return self._submit(_held)

    def add_rejected(self, pile, serial, kind, frame, reason, now=None):
        return self._submit(_add_rejected, pile, serial, kind, bytes(frame), reason,
                            time.time() if now is None else now)

    def add_bad_frame(self, link, pile, frame, reason, now=None):
        """Keep a frame that failed its CRC, for diagnosis: at most
        BAD_FRAMES_PER_LINK per link and BAD_FRAMES_TOTAL in all, the oldest
        dropped first and counted. Resolves the number dropped by this call."""
        return self._submit(_add_bad_frame, link, pile, bytes(frame), reason,
                            time.time() if now is None else now)

    def bad_frames(self, link=None):
        """(link, pile, frame, reason, received_at) kept, oldest first, and
        {link: dropped} counts."""
        return self._submit(_bad_frames, link)

    def bind_site(self, site):
        """The store's site: bound at the first start; another one is
        refused by name (StoreError). Call from outside an event loop or
        with call_sync semantics: it runs at once."""
        return self.call_sync(_bind_site, site)

    def migrate_site(self, old, new):
        """pile-bridge migrate-site: the store's site from `old` to `new`."""
        return self.call_sync(_migrate_site, old, new)

    def command_seen(self, target, req_id, now=None):
        """Record a command id before it runs. Resolves None when it is new,
        else (result JSON or None while it is still running): a repeat."""
        return self._submit(_command_seen, target, req_id, time.time() if now is None else now)

    def command_result(self, target, req_id, result_json):
        return self._submit(_command_result, target, req_id, result_json)

    def open_bills(self, pile, limit):
        """Unconfirmed bills of `pile`, oldest first."""
        return self._submit(_open_bills, pile, limit)

    def piles_with_open_bills(self):
        return self._submit(_piles_with_open)

    def mark_published(self, ids, now=None):
        return self._submit(_mark_published, list(ids), time.time() if now is None else now)

    def confirm(self, serial, result=0, now=None):
        """Record the platform's confirmation. Resolves (Bill or None, new)."""
        return self._submit(_confirm, serial, result, time.time() if now is None else now)

    def mark_settled(self, serial, now=None):
        """Settled on its pile; only a bill every uplink in `need` has acknowledged."""
        return self._submit(_mark_settled, serial, time.time() if now is None else now, self.need)

    def unsettled(self, pile, limit=64):
        """Bills every uplink acknowledged whose settlement the pile has not."""
        return self._submit(_unsettled, pile, limit, self.need)

    def acked_all(self, bill):
        """True when every uplink in `need` has acknowledged `bill`."""
        return ((("mqtt" not in self.need) or bill.confirmed_at is not None) and
                (("ocpp" not in self.need) or bill.ocpp_acked_at is not None))

    # --- the OCPP uplink's durable queue (docs/ocpp.md) ----------------------------

    def ocpp_enqueue(self, pile, serial, evse, kind, payload, offline, now=None):
        """Queue one transaction message for the CSMS, committed (FULL)
        before it resolves. `payload`: a dict; its seqNo is given here, once.
        'started' and 'ended' are queued at most once per serial: resolves
        (id, seq_no), or None when the message was already queued."""
        return self._submit(_ocpp_enqueue, pile, serial, int(evse), kind, payload, bool(offline),
                            time.time() if now is None else now)

    def ocpp_open(self, pile, limit=64):
        """(id, serial, kind, seq_no, payload, attempts, tx_id) not yet
        acknowledged nor given up, oldest first."""
        return self._submit(_ocpp_open, pile, limit)

    def ocpp_ack(self, row_id, response, tx_id=None, now=None):
        """The CSMS answered message `row_id`: recorded (an Ended's on its
        bill too; 1.6: a StartTransaction's transactionId on its serial).
        Resolves (serial, kind)."""
        return self._submit(_ocpp_ack, row_id, response, tx_id, time.time() if now is None else now)

    def ocpp_failed(self, row_id, error, give_up=False, now=None):
        return self._submit(_ocpp_failed, row_id, error, bool(give_up),
                            time.time() if now is None else now)

    def ocpp_missing_ended(self, limit=1000):
        """Bills not settled whose Ended is not queued (a bridge that stopped
        between custody and queueing, or a store from before OCPP)."""
        return self._submit(_ocpp_missing_ended, limit)

    def ocpp_piles(self):
        """Piles with OCPP messages not yet acknowledged."""
        return self._submit(_ocpp_piles)

    def ocpp_tx(self, serial=None, tx_id=None):
        """(serial, pile, evse, tx_id, remote_stop, open messages, ended acked) or None."""
        return self._submit(_ocpp_tx, serial, tx_id)

    def ocpp_mark_remote_stop(self, serial):
        return self._submit(_ocpp_mark_remote_stop, serial)

    def ocpp_open_count(self, pile=None):
        return self._submit(_ocpp_open_count, pile)

    def bill(self, serial):
        return self._submit(_bill, serial)

    def counts(self):
        return self._submit(_counts)

    def custody(self, limit=500):
        """Every bill not yet settled on its pile, oldest first (at most
        `limit`), as (serial, pile, received_at, published_at, confirmed_at),
        with the bills held for their MAC: the status page's custody view."""
        return self._submit(_custody, limit)

    def recent_bills(self, limit=20):
        """[(serial, pile, received_at, published_at, confirmed_at, settled_at,
        OCMF verdict or None)], newest first, settled ones included."""
        return self._submit(_recent_bills, limit)

    def ocmf_record(self, serial):
        """(record, verdict, public_key) of a bill's OCMF signature, or None."""
        return self._submit(_ocmf_record, serial)

    def prune(self, keep_s, now=None):
        """Forget bills settled more than keep_s ago (and rejected copies as
        old). Resolves the number of bills removed. A serial forgotten here
        would be taken as new if a pile ever sent it again."""
        return self._submit(_prune, keep_s, time.time() if now is None else now)

    # --- events and tariffs ------------------------------------------------------

    def add_event(self, pile, payload, now=None):
        """Resolves the event id; `payload` is a JSON string."""
        return self._submit(_add_event, pile, payload, time.time() if now is None else now)

    def open_events(self, limit=100):
        return self._submit(_open_events, limit)

    def mark_events_published(self, ids, now=None):
        return self._submit(_mark_events, list(ids), time.time() if now is None else now)

    def set_tariff(self, scope, tariff_json, now=None):
        return self._submit(_set_tariff, scope, tariff_json, time.time() if now is None else now)

    def tariffs(self):
        return self._submit(_tariffs)

    # --- signed-command counters ----------------------------------------------------

    def next_counter(self, pile, floor, now=None):
        """The counter for the next signed command to `pile`: max(last + 1,
        floor), committed before it resolves. Raises StoreError past u32."""
        return self._submit(_next_counter, pile, int(floor), time.time() if now is None else now)

    def last_counter(self, pile):
        return self._submit(_last_counter, pile)


def _resolve(fut, r, e):
    if fut.done():
        return
    if e is not None:
        fut.set_exception(e)
    else:
        fut.set_result(r)


# --- functions run on the store thread, inside a transaction -------------------

def _one_bill(db, serial):
    row = db.execute(_BILL_SELECT + "WHERE b.serial = ?", (serial,)).fetchone()
    return Bill(row) if row else None


def _body(frame):
    # A resend is the same bill when its type and body are: the sequence
    # number (and so the CRC) of a resent frame may differ.
    return frame[5:-2]


def _add_bill(db, pile, serial, frame, crc_swapped, now):
    old = _one_bill(db, serial)
    if old is not None:
        if _body(old.frame) == _body(frame):
            db.execute("UPDATE bills SET resends = resends + 1 WHERE id = ?", (old.id,))
            old.resends += 1
            return "same", old
        db.execute("UPDATE bills SET conflicts = conflicts + 1 WHERE id = ?", (old.id,))
        db.execute("INSERT INTO rejected (serial, pile, kind, frame, reason, received_at) "
                   "VALUES (?, ?, 'conflict', ?, ?, ?)",
                   (serial, pile, frame, "same trade serial, different bytes; first copy kept", now))
        old.conflicts += 1
        return "conflict", old
    # A counter of its own per pile, so pruning old bills never reuses a number.
    seq = db.execute("SELECT COALESCE(MAX(pile_seq), 0) FROM bills WHERE pile = ?",
                     (pile,)).fetchone()[0]
    db.execute("INSERT INTO pile_seqs (pile, last) VALUES (?, ?) ON CONFLICT(pile) DO UPDATE "
               "SET last = MAX(last + 1, excluded.last)", (pile, seq + 1))
    seq = db.execute("SELECT last FROM pile_seqs WHERE pile = ?", (pile,)).fetchone()[0]
    db.execute("INSERT INTO bills (serial, pile, pile_seq, frame, crc_swapped, received_at) "
               "VALUES (?, ?, ?, ?, ?, ?)", (serial, pile, seq, frame, int(crc_swapped), now))
    return "new", _one_bill(db, serial)


def _add_extra(db, pile, serial, frame, now):
    # Ownership: a fee split belongs to the pile of the bill it completes
    # (held: its row says; not yet held: the serial starts with the pile
    # code, as YKC builds it). Any other copy is quarantined.
    if pile is not None and _foreign(db, pile, serial, "extra_quarantine", frame, "fee split", now):
        return "foreign", None
    old = db.execute("SELECT frame FROM extras WHERE serial = ?", (serial,)).fetchone()
    if old is not None:
        if _body(bytes(old[0])) == _body(frame):
            return "same", _one_bill(db, serial)
        db.execute("INSERT INTO rejected (serial, pile, kind, frame, reason, received_at) "
                   "VALUES (?, NULL, 'extra_conflict', ?, ?, ?)",
                   (serial, frame, "same trade serial, different 0xEB bytes; first copy kept", now))
        return "conflict", _one_bill(db, serial)
    db.execute("INSERT INTO extras (serial, frame, received_at) VALUES (?, ?, ?)",
               (serial, frame, now))
    return "new", _one_bill(db, serial)


def _foreign(db, pile, serial, kind, frame, what, now):
    """True (and the frame kept in `rejected` as `kind`) when the bill
    `serial` is not `pile`'s: held, its row says; not yet held, the serial
    starts with the pile code, as YKC builds it."""
    bill = _one_bill(db, serial)
    owner = bill.pile if bill is not None else serial[:14]
    if owner == pile:
        return False
    db.execute("INSERT INTO rejected (serial, pile, kind, frame, reason, received_at) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               (serial, pile, kind, frame, "%s for a bill of pile %s sent by pile %s"
                % (what, owner, pile), now))
    return True


def _add_sig(db, pile, serial, frame, record, public_key, verdict, now):
    if _foreign(db, pile, serial, "sig_quarantine", frame, "OCMF signature", now):
        return "foreign", None
    bill = _one_bill(db, serial)
    old = db.execute("SELECT frame, verdict FROM bill_sigs WHERE serial = ?", (serial,)).fetchone()
    if old is not None and old[1] != "no_bill":
        if _body(bytes(old[0])) == _body(frame):
            return "same", bill
        db.execute("INSERT INTO rejected (serial, pile, kind, frame, reason, received_at) "
                   "VALUES (?, ?, 'sig_conflict', ?, ?, ?)",
                   (serial, pile, frame, "same trade serial, different 0xDB bytes; first copy kept",
                    now))
        return "conflict", bill
    db.execute("INSERT OR REPLACE INTO bill_sigs (serial, pile, frame, record, public_key, verdict, "
               "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (serial, pile, frame, record, public_key, verdict, now))
    return ("updated" if old is not None else "new"), _one_bill(db, serial)


def _hold_bill(db, pile, serial, frame, now):
    db.execute("INSERT OR REPLACE INTO held_bills (serial, pile, frame, received_at) "
               "VALUES (?, ?, ?, ?)", (serial, pile, frame, now))


def _release_held(db, pile, serial, frame, crc_swapped, now):
    db.execute("DELETE FROM held_bills WHERE serial = ?", (serial,))
    return _add_bill(db, pile, serial, frame, crc_swapped, now)


def _quarantine_held(db, pile, serial, reason, extra, now):
    row = db.execute("SELECT pile, frame, received_at FROM held_bills WHERE serial = ?",
                     (serial,)).fetchone()
    if row is not None:
        db.execute("DELETE FROM held_bills WHERE serial = ?", (serial,))
        _add_rejected(db, row[0], serial, "quarantine", bytes(row[1]), reason, row[2])
    if extra is not None:
        _add_rejected(db, pile, serial, "extra_quarantine", extra, reason, now)
    return row is not None


def _quarantine_stale_held(db, now):
    # Bills held by a bridge that stopped before their MAC came: the piles
    # got no 0x40 and send them again; the raw copies stay as a trace.
    rows = db.execute("SELECT serial FROM held_bills").fetchall()
    if rows:
        db.execute("BEGIN IMMEDIATE")
        for (serial,) in rows:
            _quarantine_held(db, None, serial, "the bridge stopped while this bill waited for its "
                             "MAC; the pile sends it again", None, now)
        db.execute("COMMIT")
    return len(rows)


def _held(db):
    return [tuple(r) for r in db.execute("SELECT serial, pile, received_at FROM held_bills "
                                         "ORDER BY received_at")]


def _add_rejected(db, pile, serial, kind, frame, reason, now):
    db.execute("INSERT INTO rejected (serial, pile, kind, frame, reason, received_at) "
               "VALUES (?, ?, ?, ?, ?, ?)", (serial, pile, kind, frame, reason, now))


def _add_bad_frame(db, link, pile, frame, reason, now):
    db.execute("INSERT INTO bad_frames (link, pile, frame, reason, received_at) VALUES (?,?,?,?,?)",
               (link, pile, frame, reason, now))
    dropped = 0
    n = db.execute("SELECT COUNT(*) FROM bad_frames WHERE link=?", (link,)).fetchone()[0]
    if n > BAD_FRAMES_PER_LINK:
        dropped += _drop_bad(db, "WHERE link=?", (link,), n - BAD_FRAMES_PER_LINK)
    n = db.execute("SELECT COUNT(*) FROM bad_frames").fetchone()[0]
    if n > BAD_FRAMES_TOTAL:
        dropped += _drop_bad(db, "", (), n - BAD_FRAMES_TOTAL)
    return dropped


def _drop_bad(db, where, args, n):
    rows = db.execute("SELECT id, link FROM bad_frames %s ORDER BY id LIMIT ?" % where,
                      args + (n,)).fetchall()
    for rid, link in rows:
        db.execute("DELETE FROM bad_frames WHERE id=?", (rid,))
        db.execute("INSERT INTO bad_frame_drops (link, dropped) VALUES (?, 1) "
                   "ON CONFLICT(link) DO UPDATE SET dropped = dropped + 1", (link,))
    return len(rows)


def _bad_frames(db, link):
    q = "SELECT link, pile, frame, reason, received_at FROM bad_frames"
    rows = db.execute(q + (" WHERE link=? ORDER BY id" if link else " ORDER BY id"),
                      (link,) if link else ()).fetchall()
    drops = dict(db.execute("SELECT link, dropped FROM bad_frame_drops").fetchall())
    return [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows], drops


def _bind_site(db, site):
    row = db.execute("SELECT value FROM meta WHERE key='site'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta (key, value) VALUES ('site', ?)", (site,))
        return site
    if row[0] != site:
        raise StoreError("this store belongs to site %r, the config says %r: its bills would be "
                         "published again under the wrong site. If the site was renamed, run "
                         "'pile-bridge migrate-site -c CONFIG --from %s' once" % (row[0], site, row[0]))
    return site


def _migrate_site(db, old, new):
    row = db.execute("SELECT value FROM meta WHERE key='site'").fetchone()
    if row is not None and row[0] != old:
        raise StoreError("this store belongs to site %r, not %r: nothing changed" % (row[0], old))
    db.execute("INSERT INTO meta (key, value) VALUES ('site', ?) ON CONFLICT(key) DO UPDATE "
               "SET value=excluded.value", (new,))
    return db.execute("SELECT COUNT(*) FROM bills WHERE confirmed_at IS NULL").fetchone()[0]


def _command_seen(db, target, req_id, now):
    row = db.execute("SELECT result FROM commands_seen WHERE target=? AND id=?",
                     (target, req_id)).fetchone()
    if row is not None:
        return (row[0],)
    db.execute("DELETE FROM commands_seen WHERE at < ?", (now - COMMANDS_KEEP_S,))
    db.execute("INSERT INTO commands_seen (target, id, result, at) VALUES (?,?,NULL,?)",
               (target, req_id, now))
    return None


def _command_result(db, target, req_id, result_json):
    db.execute("UPDATE commands_seen SET result=? WHERE target=? AND id=?",
               (result_json, target, req_id))


def _open_bills(db, pile, limit):
    rows = db.execute(_BILL_SELECT + "WHERE b.pile = ? AND b.confirmed_at IS NULL "
                      "ORDER BY b.id LIMIT ?", (pile, limit)).fetchall()
    return [Bill(r) for r in rows]


def _piles_with_open(db):
    return [r[0] for r in db.execute(
        "SELECT DISTINCT pile FROM bills WHERE confirmed_at IS NULL OR settled_at IS NULL")]


def _mark_published(db, ids, now):
    db.executemany("UPDATE bills SET publish_count = publish_count + 1, "
                   "published_at = COALESCE(published_at, ?) WHERE id = ?",
                   [(now, i) for i in ids])


def _confirm(db, serial, result, now):
    b = _one_bill(db, serial)
    if b is None:
        return None, False
    if b.confirmed_at is not None:
        return b, False
    db.execute("UPDATE bills SET confirmed_at = ?, confirm_result = ? WHERE id = ?",
               (now, result, b.id))
    b.confirmed_at = now
    b.confirm_result = result
    return b, True


def _acked_sql(need):
    # A bill is ready to settle when every configured uplink acknowledged it.
    conds = []
    if "mqtt" in need:
        conds.append("b.confirmed_at IS NOT NULL")
    if "ocpp" in need:
        conds.append("b.ocpp_acked_at IS NOT NULL")
    return " AND ".join(conds) or "1"


def _mark_settled(db, serial, now, need=("mqtt",)):
    cur = db.execute("UPDATE bills SET settled_at = ? WHERE serial = ? AND settled_at IS NULL "
                     "AND " + _acked_sql(need).replace("b.", ""), (now, serial))
    return cur.rowcount > 0


def _unsettled(db, pile, limit, need=("mqtt",)):
    rows = db.execute(_BILL_SELECT + "WHERE b.pile = ? AND " + _acked_sql(need) +
                      " AND b.settled_at IS NULL ORDER BY b.id LIMIT ?", (pile, limit)).fetchall()
    return [Bill(r) for r in rows]


def _ocpp_enqueue(db, pile, serial, evse, kind, payload, offline, now):
    import json
    if kind in ("started", "ended") and db.execute(
            "SELECT 1 FROM ocpp_out WHERE serial = ? AND kind = ?", (serial, kind)).fetchone():
        return None
    if kind == "updated" and db.execute(
            "SELECT 1 FROM ocpp_out WHERE serial = ? AND kind = 'ended'", (serial,)).fetchone():
        return None           # a late 0x13 after the bill: nothing after Ended
    db.execute("INSERT INTO ocpp_tx (serial, pile, evse, created_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT(serial) DO NOTHING", (serial, pile, evse, now))
    seq = db.execute("SELECT next_seq FROM ocpp_tx WHERE serial = ?", (serial,)).fetchone()[0]
    db.execute("UPDATE ocpp_tx SET next_seq = next_seq + 1 WHERE serial = ?", (serial,))
    doc = dict(payload)
    doc["_offline"] = offline
    cur = db.execute("INSERT INTO ocpp_out (pile, serial, kind, seq_no, payload, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (pile, serial, kind, seq, json.dumps(doc), now))
    return cur.lastrowid, seq


def _ocpp_open(db, pile, limit):
    return [tuple(r) for r in db.execute(
        "SELECT o.id, o.serial, o.kind, o.seq_no, o.payload, o.attempts, t.tx_id FROM ocpp_out o "
        "LEFT JOIN ocpp_tx t ON t.serial = o.serial WHERE o.pile = ? AND o.acked_at IS NULL "
        "AND o.gave_up_at IS NULL ORDER BY o.id LIMIT ?", (pile, limit))]


def _ocpp_ack(db, row_id, response, tx_id, now):
    row = db.execute("SELECT serial, kind FROM ocpp_out WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        return None
    serial, kind = row
    if tx_id is not None:
        db.execute("UPDATE ocpp_tx SET tx_id = ? WHERE serial = ?", (str(tx_id), serial))
    db.execute("UPDATE ocpp_out SET acked_at = COALESCE(acked_at, ?), response = ? WHERE id = ?",
               (now, response, row_id))
    if kind == "ended":
        db.execute("UPDATE bills SET ocpp_acked_at = COALESCE(ocpp_acked_at, ?) WHERE serial = ?",
                   (now, serial))
    return serial, kind


def _ocpp_failed(db, row_id, error, give_up, now):
    db.execute("UPDATE ocpp_out SET attempts = attempts + 1, last_error = ?, "
               "gave_up_at = CASE WHEN ? THEN ? ELSE gave_up_at END WHERE id = ?",
               (error, give_up, now, row_id))


def _ocpp_missing_ended(db, limit):
    rows = db.execute(_BILL_SELECT + "WHERE b.settled_at IS NULL AND b.ocpp_acked_at IS NULL AND "
                      "NOT EXISTS (SELECT 1 FROM ocpp_out o WHERE o.serial = b.serial AND "
                      "o.kind = 'ended') ORDER BY b.id LIMIT ?", (limit,)).fetchall()
    return [Bill(r) for r in rows]


def _ocpp_piles(db):
    return [r[0] for r in db.execute("SELECT DISTINCT pile FROM ocpp_out WHERE acked_at IS NULL "
                                     "AND gave_up_at IS NULL")]


def _ocpp_tx(db, serial, tx_id):
    if serial is None:
        row = db.execute("SELECT serial FROM ocpp_tx WHERE tx_id = ?", (tx_id,)).fetchone()
        if row is None:
            return None
        serial = row[0]
    row = db.execute("SELECT serial, pile, evse, tx_id, remote_stop FROM ocpp_tx WHERE serial = ?",
                     (serial,)).fetchone()
    if row is None:
        return None
    n = db.execute("SELECT COUNT(*) FROM ocpp_out WHERE serial = ? AND acked_at IS NULL",
                   (serial,)).fetchone()[0]
    ended = db.execute("SELECT acked_at FROM ocpp_out WHERE serial = ? AND kind = 'ended'",
                       (serial,)).fetchone()
    return tuple(row) + (n, ended is not None and ended[0] is not None, ended is not None)


def _ocpp_mark_remote_stop(db, serial):
    db.execute("UPDATE ocpp_tx SET remote_stop = 1 WHERE serial = ?", (serial,))


def _ocpp_open_count(db, pile):
    if pile is None:
        return db.execute("SELECT COUNT(*) FROM ocpp_out WHERE acked_at IS NULL").fetchone()[0]
    return db.execute("SELECT COUNT(*) FROM ocpp_out WHERE acked_at IS NULL AND pile = ?",
                      (pile,)).fetchone()[0]


def _bill(db, serial):
    return _one_bill(db, serial)


def _counts(db):
    q = lambda sql: db.execute(sql).fetchone()[0]
    return {
        "bills": q("SELECT COUNT(*) FROM bills"),
        "unpublished": q("SELECT COUNT(*) FROM bills WHERE published_at IS NULL"),
        "unconfirmed": q("SELECT COUNT(*) FROM bills WHERE confirmed_at IS NULL"),
        "unsettled": q("SELECT COUNT(*) FROM bills WHERE confirmed_at IS NOT NULL "
                       "AND settled_at IS NULL"),
        "rejected": q("SELECT COUNT(*) FROM rejected"),
        "held": q("SELECT COUNT(*) FROM held_bills"),
        "events_unpublished": q("SELECT COUNT(*) FROM events WHERE published_at IS NULL"),
    }


def _custody(db, limit):
    rows = [tuple(r) for r in db.execute(
        "SELECT b.serial, b.pile, b.received_at, b.published_at, b.confirmed_at, s.verdict "
        "FROM bills b " + _SIG_JOIN + "WHERE b.settled_at IS NULL ORDER BY b.id LIMIT ?", (limit,))]
    held = [tuple(r) for r in db.execute(
        "SELECT serial, pile, received_at FROM held_bills ORDER BY received_at LIMIT ?", (limit,))]
    return rows, held


def _recent_bills(db, limit):
    return [tuple(r) for r in db.execute(
        "SELECT b.serial, b.pile, b.received_at, b.published_at, b.confirmed_at, b.settled_at, "
        "s.verdict FROM bills b " + _SIG_JOIN + "ORDER BY b.id DESC LIMIT ?", (limit,))]


def _ocmf_record(db, serial):
    row = db.execute("SELECT record, verdict, public_key FROM bill_sigs WHERE serial = ?",
                     (serial,)).fetchone()
    return tuple(row) if row else None


def _prune(db, keep_s, now):
    cut = now - keep_s
    n = db.execute("DELETE FROM extras WHERE serial IN (SELECT serial FROM bills "
                   "WHERE settled_at IS NOT NULL AND settled_at < ?)", (cut,)).rowcount
    db.execute("DELETE FROM bill_sigs WHERE serial IN (SELECT serial FROM bills "
               "WHERE settled_at IS NOT NULL AND settled_at < ?) OR (verdict = 'no_bill' "
               "AND received_at < ?)", (cut, cut))
    n = db.execute("DELETE FROM bills WHERE settled_at IS NOT NULL AND settled_at < ?",
                   (cut,)).rowcount
    # OCPP messages of transactions whose bill is gone, answered long ago;
    # a message the CSMS has not answered is never removed (never-drop).
    db.execute("DELETE FROM ocpp_out WHERE acked_at IS NOT NULL AND acked_at < ? AND serial NOT IN "
               "(SELECT serial FROM bills)", (cut,))
    db.execute("DELETE FROM ocpp_tx WHERE created_at < ? AND serial NOT IN (SELECT serial FROM bills) "
               "AND NOT EXISTS (SELECT 1 FROM ocpp_out o WHERE o.serial = ocpp_tx.serial)", (cut,))
    db.execute("DELETE FROM rejected WHERE received_at < ?", (cut,))
    return n


def _add_event(db, pile, payload, now):
    cur = db.execute("INSERT INTO events (pile, payload, created_at) VALUES (?, ?, ?)",
                     (pile, payload, now))
    return cur.lastrowid


def _open_events(db, limit):
    return db.execute("SELECT id, pile, payload FROM events WHERE published_at IS NULL "
                      "ORDER BY id LIMIT ?", (limit,)).fetchall()


def _mark_events(db, ids, now):
    db.executemany("UPDATE events SET published_at = ? WHERE id = ?", [(now, i) for i in ids])
    # Published events are kept a week for the technician, then dropped.
    db.execute("DELETE FROM events WHERE published_at < ?", (now - 7 * 86400,))


def _set_tariff(db, scope, tariff_json, now):
    db.execute("INSERT INTO tariffs (scope, tariff, updated_at) VALUES (?, ?, ?) "
               "ON CONFLICT(scope) DO UPDATE SET tariff = excluded.tariff, "
               "updated_at = excluded.updated_at", (scope, tariff_json, now))


def _next_counter(db, pile, floor, now):
    row = db.execute("SELECT last FROM cmd_counters WHERE pile = ?", (pile,)).fetchone()
    c = max((row[0] if row else 0) + 1, floor, 1)
    if c > 0xFFFFFFFF:
        raise StoreError("signed-command counter of pile %s exhausted: rotate its key" % pile)
    db.execute("INSERT INTO cmd_counters (pile, last, updated_at) VALUES (?, ?, ?) "
               "ON CONFLICT(pile) DO UPDATE SET last = excluded.last, "
               "updated_at = excluded.updated_at", (pile, c, now))
    return c


def _last_counter(db, pile):
    row = db.execute("SELECT last FROM cmd_counters WHERE pile = ?", (pile,)).fetchone()
    return row[0] if row else None


def _tariffs(db):
    return dict(db.execute("SELECT scope, tariff FROM tariffs").fetchall())


_DURABLE = {_ocpp_enqueue, _add_bill, _add_extra, _add_sig, _add_rejected, _add_event, _set_tariff,
            _next_counter, _command_seen, _bind_site, _migrate_site, _hold_bill, _release_held, _quarantine_held}
_READS = {_open_bills, _piles_with_open, _unsettled, _bill, _counts, _open_events, _tariffs,
          _last_counter, _bad_frames, _held, _custody, _recent_bills, _ocmf_record, _ocpp_open, _ocpp_missing_ended,
          _ocpp_piles, _ocpp_tx, _ocpp_open_count}
