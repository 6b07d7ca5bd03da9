# The reference platform (`pile-platform`): an MQTT consumer that takes bills
# from one or more bridges, stores each trade serial once in SQLite, confirms
# (again, when a bill it holds arrives again), checks that every bill
# reconciles and, for piles whose key it holds, that the bill's MAC verifies;
# sends commands, and prints a summary. It is what a platform engineer reads
# to learn the contract in docs/mqtt.md (platform side: docs/platform.md), and
# what the demo and the chaos harness count bills with.
#
# Reconciliation is done on the raw integers (protocol units), never on the
# scaled decimals, by protocol/reconcile.py: the bridge publishes the very
# same problem list in each bill's `checks`.
import argparse
import asyncio
import binascii
import json
import logging
import os
import sqlite3
import ssl
import stat
import sys
import time
import uuid

import aiomqtt

from host import cli
from host import schema
from protocol import reconcile as R
from protocol import sign
from host.leases import LEASE_S, FencedWorker, Leases, stop_on_sigterm, worker_args
from host.mqtt import stop_tasks, subscribe_all
from host.topics import ROOT, shared_bills
from protocol import codec

log = logging.getLogger("pile-platform")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bills (
    serial      TEXT PRIMARY KEY,
    site        TEXT NOT NULL,
    pile        TEXT NOT NULL,
    stop_code   INTEGER NOT NULL,
    energy      INTEGER NOT NULL,   -- x10^4 kWh
    amount      INTEGER NOT NULL,   -- x10^4 yuan
    reconciled  INTEGER NOT NULL,
    problems    TEXT NOT NULL,
    doc         TEXT NOT NULL,
    received_at REAL NOT NULL,
    copies      INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT, pile TEXT, kind TEXT, doc TEXT, at REAL
);
-- Copies of a serial that were not kept as the bill (a differing copy) or
-- that a better copy replaced (an incomplete one, a tampered one): nothing
-- received is ever thrown away.
CREATE TABLE IF NOT EXISTS copies (
    id INTEGER PRIMARY KEY AUTOINCREMENT, serial TEXT NOT NULL, why TEXT NOT NULL,
    doc TEXT NOT NULL, at REAL NOT NULL
);
"""

# Columns added after the first release: added in place to an older file.
_COLUMNS = (
    ("complete", "INTEGER NOT NULL DEFAULT 1"),
    ("mac", "TEXT NOT NULL DEFAULT 'not_checked'"),
    ("conflicts", "INTEGER NOT NULL DEFAULT 0"),
    ("confirm_result", "INTEGER"),
)

# The bill MAC's state (column bills.mac).
MAC_VERIFIED = "verified"        # the pile's key verifies it
MAC_FAILED = "failed"            # it does not: the bill changed after the pile (tampered)
MAC_MISSING = "missing"          # a keyed pile's bill without a MAC (zero, or none came)
MAC_PENDING = "pending"          # incomplete copy: the MAC travels in the 0xEB, not here yet
MAC_NOT_CHECKED = "not_checked"  # no key for this pile: accepted as it is
MAC_STATES = (MAC_VERIFIED, MAC_FAILED, MAC_MISSING, MAC_PENDING, MAC_NOT_CHECKED)

# Confirmation results (docs/mqtt.md: 0 settled, other values the platform's
# own refusal codes; docs/platform.md). A refusal still ends republication
# and settles the pile (the bridge passes the code in 0xE4, our firmware
# releases the bill either way): the refused copy is kept here, marked.
CONFIRM_OK = 0
CONFIRM_REFUSED_MAC = 1          # the MAC does not verify: tampered between pile and platform
CONFIRM_REFUSED_UNSIGNED = 2     # a keyed pile's bill with no MAC

# How long an incomplete copy from a keyed pile is left unconfirmed waiting
# for the completed copy (with the MAC): the bridge republishes it completed
# as soon as its 0xEB arrives, and republishes the incomplete one meanwhile.
MAC_WAIT_S = 120.0

_ZERO_MAC = "0" * 64

# A database write that fails (disk full, I/O error, a locked file) is
# retried for the same message after DB_RETRY_MIN_S, doubling up to
# DB_RETRY_MAX_S, for as long as it fails: nothing is confirmed before it is
# stored, and the bridge republishes what stays unconfirmed anyway.
DB_RETRY_MIN_S = 0.2
DB_RETRY_MAX_S = 30.0
DB_LOCK_WAIT_S = 10.0



class PlatformError(Exception):
    """A bad option, key file or database: the message says which and why."""


def reconcile(doc):
    """Problems (list of str) with a bill document, from its raw integers:
    protocol/reconcile.py's, on the 0x3B fields and the 0xEB fee split."""
    if doc.get("decoded") is False:
        # Kept raw by the bridge (docs/bridge.md "Custody"): stored and
        # confirmed like any bill, flagged for an operator to read by hand.
        return [R.undecodable(doc.get("error"))]
    raw = doc.get("raw")
    if not isinstance(raw, dict):
        return ["field_missing: raw"]
    x = raw.get("extra")
    # A bill read leniently (a pile not ours) names what its reading gave
    # way on (protocol/lenient.py): those first, as the bridge lists them.
    dp = doc.get("decode_problems")
    dp = [p for p in dp if isinstance(p, str)] if isinstance(dp, list) else []
    return R.bill_problems(dp, raw, x if isinstance(x, dict) else None)


# --- bill keys -----------------------------------------------------------------

def _hex_key(text, where):
    text = text.strip()
    if len(text) != 64:
        raise PlatformError("%s: a key is 64 hex digits, got %d characters" % (where, len(text)))
    try:
        return binascii.unhexlify(text)
    except (ValueError, binascii.Error):
        raise PlatformError("%s: a key is 64 hex digits" % where)


class BillKeys:
    """The piles' keys K_pile (docs/security.md "Keys"): per pile, or derived
    from a site key with sign.pile_key for every pile not listed."""

    def __init__(self, piles=None, site_key=None):
        self.piles = dict(piles or {})
        self.site_key = site_key

    def __len__(self):
        return len(self.piles) + (1 if self.site_key else 0)

    def get(self, pile):
        k = self.piles.get(pile)
        if k is None and self.site_key is not None and isinstance(pile, str) \
                and len(pile) == 14 and pile.isdigit():
            k = sign.pile_key(self.site_key, pile)
        return k

    def add_file(self, path):
        """A keys file: `<14-digit pile code> <64 hex digits>` per line, or
        `* <64 hex digits>` for a site key; `#` starts a comment."""
        try:
            st = os.stat(path)
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise PlatformError("keys file %s: %s" % (path, e.strerror or e))
        except UnicodeDecodeError:
            raise PlatformError("keys file %s: not text" % path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("keys file %s is readable by others (mode %o): chmod 600 it",
                        path, stat.S_IMODE(st.st_mode))
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = "keys file %s line %d" % (path, n)
            parts = line.split()
            if len(parts) != 2:
                raise PlatformError("%s: expected `PILE KEY` or `* KEY`" % where)
            who, key = parts
            key = _hex_key(key, where)
            if who == "*":
                if self.site_key is not None:
                    raise PlatformError("%s: a second site key" % where)
                self.site_key = key
            elif len(who) == 14 and who.isdigit() and who.isascii():
                if who in self.piles:
                    raise PlatformError("%s: pile %s listed twice" % (where, who))
                self.piles[who] = key
            else:
                raise PlatformError("%s: %r is not a 14-digit pile code or *" % (where, who))
        return self

    def add_option(self, spec):
        """--bill-key PILE=PATH: one pile's key from a key file (sign.load_key:
        64 hex digits or 32 raw bytes), so the key never sits on argv."""
        pile, sep, path = spec.partition("=")
        if not sep or not (len(pile) == 14 and pile.isdigit() and pile.isascii()) or not path:
            raise PlatformError("--bill-key %r: expected PILE=PATH (14-digit pile code)" % spec)
        try:
            self.piles[pile] = sign.load_key(path)
        except OSError as e:
            raise PlatformError("--bill-key %s: %s" % (pile, e.strerror or e))
        except ValueError as e:
            raise PlatformError("--bill-key %s: %s: %s" % (pile, path, e))
        return self


def _norm(v):
    # Field values as they look after a JSON round trip (what the doc holds).
    return json.loads(json.dumps(v))


def check_mac(doc, key):
    """(state, problems) of a bill document's MAC under the pile's key (None:
    no key). The MAC covers the 0x3B body (`frame`); the doc's `raw` fields,
    which the platform stores and reconciles, must be that frame's fields,
    and `mac` / `raw.extra` those of the 0xEB (`extra_frame`)."""
    if key is None:
        return MAC_NOT_CHECKED, []
    if doc.get("complete") is False:
        return MAC_PENDING, []
    try:
        f = codec.decode(binascii.unhexlify(doc["frame"]), tolerant=True)
        if f.code != 0x3B or f.fields is None:
            raise ValueError("type 0x%02X, not a bill (0x3B)" % f.code)
    except (KeyError, TypeError, ValueError, binascii.Error, codec.FrameError) as e:
        return MAC_FAILED, ["bill frame unreadable: %s" % (e,)]
    mac = doc.get("mac")
    if mac is None or mac == _ZERO_MAC:
        return MAC_MISSING, ["no MAC from a pile whose key the platform holds"]
    if not sign.verify_bill_mac(key, f.body, mac):
        return MAC_FAILED, ["MAC does not verify: the bill changed after it left the pile"]
    raw = doc.get("raw")
    fields = _norm(f.fields)
    if not isinstance(raw, dict):
        return MAC_FAILED, ["no raw fields beside the signed frame"]
    differ = sorted(k for k in set(fields) | (set(raw) - {"extra"}) if raw.get(k) != fields.get(k))
    if differ:
        return MAC_FAILED, ["raw fields differ from the signed frame: %s" % ", ".join(differ)]
    for k in ("serial", "pile"):
        if doc.get(k) != fields[k]:
            return MAC_FAILED, ["%s differs from the signed frame" % k]
    # The 0xEB (fee split) is not under the MAC; its MAC field must be the one
    # in the doc, and raw.extra its fields, so no part of the doc says
    # something else than the frames.
    try:
        x = codec.decode(binascii.unhexlify(doc["extra_frame"]), tolerant=True)
        xf = _norm(x.fields)
    except (KeyError, TypeError, ValueError, binascii.Error, codec.FrameError, AttributeError) as e:
        return MAC_FAILED, ["fee split frame unreadable: %s" % (e,)]
    if x.code != 0xEB or xf.get("mac") != mac or xf.get("serial") != fields["serial"] \
            or raw.get("extra") != xf:
        return MAC_FAILED, ["fee split differs from its frame (0xEB)"]
    return MAC_VERIFIED, []


def content_hash(doc):
    """The hash a confirmation names: of the frame this platform stored
    (docs/mqtt.md), computed here, not taken from the document."""
    try:
        return schema.bill_hash(binascii.unhexlify(doc["frame"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None


def _dec4(v):
    sign = "-" if v < 0 else ""
    return "%s%d.%04d" % ((sign,) + divmod(abs(v), 10000))


def _bill_part(doc):
    # What a bill is apart from its 0xEB: an incomplete copy and the completed
    # one agree on it.
    raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
    return json.dumps([doc.get("pile"), doc.get("frame"),
                       {k: v for k, v in raw.items() if k != "extra"}], sort_keys=True)


def _content(doc):
    raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
    return json.dumps([_bill_part(doc), doc.get("extra_frame"), raw.get("extra"), doc.get("mac")],
                      sort_keys=True)


def open_db(path, create=True):
    """The platform's SQLite file. create=False (the summary): it must exist
    and be a platform database, opened read-only."""
    if path == ":memory:":
        create = True
    try:
        if create:
            d = os.path.dirname(os.path.abspath(path)) if path != ":memory:" else "."
            if not os.path.isdir(d):
                raise PlatformError("database %s: directory %s does not exist" % (path, d))
            if os.path.isdir(path):
                raise PlatformError("database %s is a directory" % path)
            db = sqlite3.connect(path, timeout=DB_LOCK_WAIT_S)   # workers share the file
            db.executescript(_SCHEMA)
            have = set(r[1] for r in db.execute("PRAGMA table_info(bills)"))
            for name, decl in _COLUMNS:
                if name not in have:
                    db.execute("ALTER TABLE bills ADD COLUMN %s %s" % (name, decl))
            if "event_id" not in set(r[1] for r in db.execute("PRAGMA table_info(events)")):
                db.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_once ON events(event_id) "
                       "WHERE event_id IS NOT NULL")
            db.commit()
            db.execute("PRAGMA journal_mode=WAL")
            return db
        if not os.path.exists(path):
            raise PlatformError("database %s does not exist (give --db the platform's file)" % path)
        if os.path.isdir(path):
            raise PlatformError("database %s is a directory" % path)
        from urllib.parse import quote
        db = sqlite3.connect("file:%s?mode=ro" % quote(os.path.abspath(path)), uri=True)
        tables = set(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        if "bills" not in tables:
            db.close()
            raise PlatformError("%s is an SQLite file but not a pile-platform database "
                                "(no bills table)" % path)
        return db
    except sqlite3.DatabaseError as e:
        raise PlatformError("database %s: %s" % (path, e))


def event_kind(doc):
    """An event document's kind as stored. A bridge from before the rename
    called a bill that does not reconcile `illegal_bill` (with `refused`
    false and its `problems`): stored as `unreconciled_bill`, its name now.
    `illegal_bill` stays for what YKC means by it (the pile's own count of
    bills refused with 0x40 result 1, `source: "pile"`)."""
    if not isinstance(doc, dict):
        return ""
    kind = doc.get("type") or doc.get("kind", "")
    if kind == "illegal_bill" and doc.get("refused") is False and doc.get("source") != "pile":
        return "unreconciled_bill"
    return kind


def split_by_kind(rows):
    """Bills split by whose pile sent them (the bill document's `pile_kind`;
    a document from a bridge before it counts as ours): rows of (doc JSON,
    reconciled, problems JSON). Ours: bills and unreconciled; third party:
    the same and, per problem class, how many bills have it."""
    out = {schema.PILE_OURS: {"bills": 0, "unreconciled": 0},
           schema.PILE_THIRD_PARTY: {"bills": 0, "unreconciled": 0, "by_class": {}}}
    for doc, ok, problems in rows:
        try:
            kind = json.loads(doc).get("pile_kind")
        except (ValueError, AttributeError):
            kind = None
        part = out[schema.PILE_THIRD_PARTY if kind == schema.PILE_THIRD_PARTY else schema.PILE_OURS]
        part["bills"] += 1
        if not ok:
            part["unreconciled"] += 1
            if "by_class" in part:
                for c in R.problem_classes(json.loads(problems)):
                    part["by_class"][c] = part["by_class"].get(c, 0) + 1
    return out


def summarize(db, stats=None):
    """The summary of a platform database (dict, JSON-ready)."""
    q = db.execute
    cols = set(r[1] for r in q("PRAGMA table_info(bills)"))
    n, energy, amount = q("SELECT COUNT(*), COALESCE(SUM(energy),0), COALESCE(SUM(amount),0)"
                          " FROM bills").fetchone()
    dup = q("SELECT COUNT(*) FROM bills WHERE copies > 1").fetchone()[0]
    split = split_by_kind(q("SELECT doc, reconciled, problems FROM bills"))
    bad = split["ours"]["unreconciled"]
    mac = dict((s, 0) for s in MAC_STATES)
    incomplete = conflicts = 0
    if "mac" in cols:
        for state, k in q("SELECT mac, COUNT(*) FROM bills GROUP BY mac"):
            mac[state] = k
        incomplete = q("SELECT COUNT(*) FROM bills WHERE complete=0").fetchone()[0]
        conflicts = q("SELECT COUNT(*) FROM bills WHERE conflicts > 0").fetchone()[0]
    else:
        mac[MAC_NOT_CHECKED] = n
    stats = stats or {}
    return {"bills": n, "unreconciled": bad, "received_more_than_once": dup,
            # "unreconciled" is measured on our piles; third-party piles'
            # bills are counted by problem class (docs/platform.md).
            "ours": split["ours"], "third_party": split["third_party"],
            "energy_kwh": "%d.%04d" % divmod(energy, 10000),
            "amount_yuan": "%d.%04d" % divmod(amount, 10000),
            # A tampered bill (MAC fails) is also unreconciled; "mac not
            # checked": piles whose key the platform does not hold.
            "tampered": mac[MAC_FAILED], "unsigned": mac[MAC_MISSING],
            "mac_verified": mac[MAC_VERIFIED], "mac_pending": mac[MAC_PENDING],
            "mac_not_checked": mac[MAC_NOT_CHECKED],
            "incomplete": incomplete, "conflicting_copies": conflicts,
            "duplicates_received": stats.get("duplicates", 0),
            "confirms_sent": stats.get("confirms_sent", 0),
            "refusals_sent": stats.get("refusals_sent", 0), "events": stats.get("events", 0)}


def tls_context(ca_file=None, cert_file=None, key_file=None, insecure=False):
    """Client TLS as the shipped broker wants it (docs/mqtt-security.md):
    the site CA, and our client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise PlatformError("TLS files (--ca %s, --cert %s, --key %s): %s"
                            % (ca_file, cert_file, key_file, e))
    if insecure:
        ctx.check_hostname = False
    return ctx


class Platform(FencedWorker):
    """Consumes bills and events; confirms (under a site lease: FencedWorker);
    sends commands and awaits results."""

    _hash = staticmethod(content_hash)

    def __init__(self, url="mqtt://127.0.0.1:1883", db=":memory:", group=None, site="+",
                 username=None, password=None, client_id=None, keys=None, tls_context=None,
                 mac_wait_s=MAC_WAIT_S, consume=True, cmd_key=None, workers=1, worker_index=0,
                 lease_s=LEASE_S, clock=time.time):
        from host.config import ConfigError, parse_mqtt_url
        # "URL,URL,...": a cluster's nodes, tried in turn (host/mqtt.py's rule)
        self.nodes = []
        try:
            for u in url.split(","):
                self.nodes.append(parse_mqtt_url(u.strip())[1:3])
            tls, self.host, self.port, u_user, u_pw = parse_mqtt_url(url.split(",")[0].strip())
        except ConfigError as e:
            raise PlatformError(str(e).replace("mqtt.url", "the broker URL"))
        self.node = 0
        if tls and tls_context is None:
            # mqtts:// is never quietly plain: the system's CAs at least.
            tls_context = ssl.create_default_context()
        elif tls_context is not None and not tls:
            raise PlatformError("TLS files given but %s is plain MQTT: use mqtts://" % url)
        self.url = url
        self.tls_context = tls_context
        self.username = username or u_user
        self.password = password or u_pw
        self.client_id = client_id or "pc-platform-" + uuid.uuid4().hex[:8]
        self.group = group
        self.site = site
        self.keys = keys if keys is not None else BillKeys()
        self.cmd_key = cmd_key         # the site's platform key: commands and confirmations carry `auth`
        self.mac_wait_s = mac_wait_s
        # consume=False (a one-off --cmd): results only, in a clean session,
        # so it never takes bills queued for the running platform's session.
        self.consume = consume
        self.db = open_db(db)
        try:   # this worker's site leases (a one-off --cmd confirms nothing: none)
            self.leases = Leases(self.db, "%s#%s" % (self.client_id, uuid.uuid4().hex[:6]),
                                 lease_s, worker_index, workers, clock) if consume else None
        except ValueError as e:
            raise PlatformError(str(e))
        self._init_worker()
        self.silent = False            # an outage: take nothing, confirm nothing
        self.confirming = True
        self.changed = asyncio.Event()
        self.last_error = None         # why the last connection attempt failed
        self.last_db_error = None      # the last database write that failed (str)
        self._client = None
        self._waiting = {}             # request id -> future of the result
        self.stats = {"bill_messages": 0, "duplicates": 0, "confirms_sent": 0, "events": 0,
                      "bad_messages": 0, "refusals_sent": 0, "held": 0, "completed": 0,
                      "conflicts": 0, "db_errors": 0, "not_owner": 0, "not_confirmed_lease": 0,
                      "duplicate_events": 0}

    # --- storage -----------------------------------------------------------

    def _row(self, serial):
        return self.db.execute("SELECT doc, complete, mac, problems FROM bills WHERE serial=?",
                               (serial,)).fetchone()

    def _keep_copy(self, serial, why, doc):
        self.db.execute("INSERT INTO copies (serial, why, doc, at) VALUES (?,?,?,?)",
                        (serial, why, json.dumps(doc), time.time()))

    def _write(self, doc, problems, mac, insert, extra_problems=()):
        raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
        problems = list(problems) + list(extra_problems)
        vals = (doc.get("site", ""), doc.get("pile", ""), raw.get("stop_reason", -1),
                raw.get("total_energy", 0), raw.get("total_amount", 0), 0 if problems else 1,
                json.dumps(problems), json.dumps(doc), 0 if doc.get("complete") is False else 1,
                mac)
        if insert:
            self.db.execute(
                "INSERT INTO bills (site, pile, stop_code, energy, amount, reconciled, problems,"
                " doc, complete, mac, serial, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                vals + (doc["serial"], time.time()))
        else:
            self.db.execute(
                "UPDATE bills SET site=?, pile=?, stop_code=?, energy=?, amount=?, reconciled=?,"
                " problems=?, doc=?, complete=?, mac=?, copies = copies + 1 WHERE serial=?",
                vals + (doc["serial"],))
        return problems

    def take_bill(self, doc):
        """Store a bill once; returns (new, problems). A later copy of a
        serial replaces the stored one only when it completes it (the
        incomplete copy's 0x3B part with the 0xEB added) or when the pile's
        key verifies it and not the stored one; any other copy that differs
        is kept in `copies` and flags the bill."""
        serial = doc["serial"]
        mac, mac_problems = check_mac(doc, self.keys.get(doc.get("pile")))
        problems = reconcile(doc) + mac_problems
        row = self._row(serial)
        if row is None:
            problems = self._write(doc, problems, mac, True)
            self.db.commit()
            if problems:
                log.warning("bill %s: %s", serial, "; ".join(problems))
            return True, problems
        self.stats["duplicates"] += 1
        old = json.loads(row[0])
        old_complete, old_mac, old_problems = row[1], row[2], json.loads(row[3])
        new_complete = doc.get("complete") is not False
        if _content(old) == _content(doc):
            self.db.execute("UPDATE bills SET copies = copies + 1 WHERE serial=?", (serial,))
            self.db.commit()
            return False, old_problems
        same_bill = _bill_part(old) == _bill_part(doc)
        if same_bill and not old_complete and new_complete:
            # The completed copy (fee split, MAC) of a bill published before
            # its 0xEB arrived: it replaces the incomplete one.
            self._keep_copy(serial, "incomplete copy, replaced by the completed one", old)
            problems = self._write(doc, problems, mac, False)
            self.stats["completed"] += 1
            self.db.commit()
            if problems:
                log.warning("bill %s (completed): %s", serial, "; ".join(problems))
            return False, problems
        if same_bill and old_complete and not new_complete:
            # An incomplete copy of a bill held complete: nothing to learn.
            self._keep_copy(serial, "incomplete copy of a bill held complete", doc)
            self.db.execute("UPDATE bills SET copies = copies + 1 WHERE serial=?", (serial,))
            self.db.commit()
            return False, old_problems
        # A copy that says something else than the stored one.
        self.stats["conflicts"] += 1
        note = "a copy that differs from the stored one arrived (kept in copies)"
        if mac == MAC_VERIFIED and old_mac in (MAC_FAILED, MAC_MISSING):
            # The pile's key vouches for this copy, not for the stored one.
            self._keep_copy(serial, "replaced by a copy the pile's key verifies", old)
            problems = self._write(doc, problems, mac, False, [note])
        else:
            self._keep_copy(serial, "differs from the stored copy (mac %s)" % mac, doc)
            problems = old_problems + ([note] if note not in old_problems else [])
            self.db.execute("UPDATE bills SET copies = copies + 1, reconciled = 0, problems = ?"
                            " WHERE serial=?", (json.dumps(problems), serial))
        self.db.execute("UPDATE bills SET conflicts = conflicts + 1 WHERE serial=?", (serial,))
        self.db.commit()
        log.warning("bill %s: %s", serial, note)
        return False, problems

    def take_late_extra(self, event):
        """A `bill_extra_late` event (the 0xEB came after the bill was
        confirmed without it): complete the stored incomplete copy from it,
        as if the completed bill had been published. Returns the problems, or
        None when there is nothing to complete."""
        x, frame = event.get("raw"), event.get("frame")
        serial = event.get("serial")
        if not isinstance(x, dict) or not isinstance(frame, str) or not isinstance(serial, str):
            return None
        row = self._row(serial)
        if row is None or row[1]:
            return None
        doc = json.loads(row[0])
        raw = doc.get("raw")
        if not isinstance(raw, dict) or x.get("serial") != serial:
            return None
        raw["extra"] = x
        energy_fee = service_fee = 0
        for item in doc.get("periods") or ():
            p = item.get("period")
            ef, sf = x.get("%s_energy_fee" % p, 0), x.get("%s_service_fee" % p, 0)
            item["energy_fee"], item["service_fee"] = _dec4(ef), _dec4(sf)
            energy_fee += ef
            service_fee += sf
        doc.update({"complete": True, "mac": x.get("mac"), "extra_frame": frame,
                    "energy_fee": _dec4(energy_fee), "service_fee": _dec4(service_fee),
                    "tariff_model": x.get("model")})
        return self.take_bill(doc)[1]

    def confirm_result(self, serial, now=None):
        """The result to confirm `serial` with (CONFIRM_*), or None: not yet
        (an incomplete copy from a keyed pile, within mac_wait_s)."""
        row = self.db.execute("SELECT mac, received_at FROM bills WHERE serial=?",
                              (serial,)).fetchone()
        if row is None:
            return None
        mac, first = row
        if mac == MAC_FAILED:
            return CONFIRM_REFUSED_MAC
        if mac == MAC_MISSING:
            return CONFIRM_REFUSED_UNSIGNED
        if mac == MAC_PENDING:
            now = time.time() if now is None else now
            if now - first < self.mac_wait_s:
                return None
            # The 0xEB never came (lost after the pile had its 0x40): the
            # bill cannot be verified; refuse it as unsigned, keep it marked.
            probs = json.loads(self.db.execute("SELECT problems FROM bills WHERE serial=?",
                                               (serial,)).fetchone()[0])
            probs.append("no MAC arrived within %g s" % self.mac_wait_s)
            self.db.execute("UPDATE bills SET mac=?, reconciled=0, problems=? WHERE serial=?",
                            (MAC_MISSING, json.dumps(probs), serial))
            self.db.commit()
            return CONFIRM_REFUSED_UNSIGNED
        return CONFIRM_OK

    def summary(self):
        return summarize(self.db, self.stats)

    def bills(self):
        return [json.loads(r[0]) for r in self.db.execute("SELECT doc FROM bills ORDER BY rowid")]

    def bill(self, serial):
        """The stored state of one bill (dict) or None."""
        r = self.db.execute("SELECT doc, reconciled, problems, copies, complete, mac, conflicts,"
                            " confirm_result FROM bills WHERE serial=?", (serial,)).fetchone()
        if r is None:
            return None
        return {"doc": json.loads(r[0]), "reconciled": bool(r[1]), "problems": json.loads(r[2]),
                "copies": r[3], "complete": bool(r[4]), "mac": r[5], "conflicts": r[6],
                "confirm_result": r[7]}

    def serials(self):
        return set(r[0] for r in self.db.execute("SELECT serial FROM bills"))

    # --- MQTT --------------------------------------------------------------

    def _subscriptions(self):
        if not self.consume:
            return ["%s/%s/result/+" % (ROOT, self.site)]
        bills = (shared_bills(self.group, self.site) if self.group
                 else "%s/%s/bills/+" % (ROOT, self.site))
        return [bills, "%s/%s/events/+" % (ROOT, self.site), "%s/%s/result/+" % (ROOT, self.site)]

    async def run(self, ready=None):
        """Consume until cancelled; reconnects with backoff (a cluster: the
        next node at once, the backoff after a whole round)."""
        await self._leased(self._connect_loop(ready))

    async def _connect_loop(self, ready):
        delay = 0.2
        tried = 0
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.client_id,
                                          username=self.username, password=self.password,
                                          tls_context=self.tls_context,
                                          clean_session=not self.consume) as client:
                    # Commands to many piles are in flight at once by design.
                    client.pending_calls_threshold = 1 << 30
                    self._client = client
                    await subscribe_all(client, self._subscriptions())
                    delay = 0.2
                    tried = 0
                    self.last_error = None
                    if ready is not None:
                        ready.set()
                    async for m in client.messages:
                        await self._take_message(client, str(m.topic), m.payload)
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as e:
                self._client = None
                self.last_error = str(e) or type(e).__name__
                log.info("platform: broker %s:%d: %s", self.host, self.port, self.last_error)
                if len(self.nodes) > 1:
                    # The next node at once, the same client id: the
                    # persistent session (bills queued meanwhile) follows.
                    self.node = (self.node + 1) % len(self.nodes)
                    self.host, self.port = self.nodes[self.node]
                    tried += 1
                    if tried < len(self.nodes):
                        continue
                tried = 0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _take_message(self, client, topic, payload):
        """Handle one message, retrying it while the database fails. `done`
        carries the steps already through across attempts, so a retry
        neither stores, counts nor confirms anything twice."""
        done = {}
        delay = DB_RETRY_MIN_S
        await self._gate.wait()
        while True:
            stats = dict(self.stats)
            try:
                return await self._on_message(client, topic, payload, done)
            except sqlite3.Error as e:
                # The failed step's transaction is undone; so are the counters
                # of a copy that is not stored yet (it is counted when it is).
                try:
                    self.db.rollback()
                except sqlite3.Error:
                    pass
                if "stored" not in done:
                    self.stats.update(stats)
                self.stats["db_errors"] += 1
                self.last_db_error = str(e) or type(e).__name__
                log.warning("platform: database write failed (%s) on %s: the message is "
                            "taken again in %.1fs (a bill is confirmed only once stored)",
                            self.last_db_error, topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_S)

    async def _on_message(self, client, topic, payload, done=None):
        done = {} if done is None else done
        parts = topic.split("/")
        if len(parts) != 4:
            return
        _, site, kind, pile = parts
        try:
            doc = json.loads(payload)
        except ValueError:
            self.stats["bad_messages"] += 1
            return
        if kind == "bills":
            if self.silent:
                return  # an outage: the bridge keeps it and sends it again
            if not isinstance(doc, dict) or not isinstance(doc.get("serial"), str):
                self.stats["bill_messages"] += 1
                self.stats["bad_messages"] += 1
                return
            if "stored" not in done and self._not_mine(site, doc):
                return
            if "stored" not in done:
                log.debug("bill %s of site %s: taken", doc["serial"], site)
                self.stats["bill_messages"] += 1
                self.take_bill(doc)
                done["stored"] = True
            if self.confirming:
                if "result" not in done:
                    done["result"] = self.confirm_result(doc["serial"])
                result = done["result"]
                if result is None:
                    # Incomplete, from a keyed pile: the completed copy follows.
                    self.stats["held"] += 1
                else:
                    if "confirmed" not in done:
                        # Confirm every copy: a resend means the bridge did not see our answer.
                        if not await self._send_confirm(client, site, pile, doc, result):
                            self.changed.set()
                            return
                        done["confirmed"] = True
                    self.db.execute("UPDATE bills SET confirm_result=? WHERE serial=?",
                                    (result, doc["serial"]))
                    self.db.commit()
            self.changed.set()
        elif kind == "events":
            if self.leases is not None and self._fence(site) is None:
                self.stats["not_owner"] += 1
                return   # the site's owner stores it
            if "stored" not in done:
                # A copy (the bridge sent it again) is known by its event_id.
                eid = doc.get("event_id") if isinstance(doc, dict) else None
                if self.db.execute("INSERT OR IGNORE INTO events (site, pile, kind, doc, at, "
                                   "event_id) VALUES (?,?,?,?,?,?)",
                                   (site, pile, event_kind(doc), payload.decode(errors="replace"),
                                    time.time(), eid if isinstance(eid, str) else None)).rowcount:
                    self.stats["events"] += 1
                else:
                    self.stats["duplicate_events"] += 1
                self.db.commit()
                done["stored"] = True
            if isinstance(doc, dict) and doc.get("type") == "bill_extra_late":
                self.take_late_extra(doc)
            self.changed.set()
        elif kind == "result" and isinstance(doc, dict):
            fut = self._waiting.pop(doc.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(doc)

    async def command(self, site, pile, cmd, timeout=30.0, **args):
        """Send one command and return its result document."""
        if self._client is None:
            raise ConnectionError("platform is not connected to the broker")
        req = uuid.uuid4().hex[:12]
        doc = {"id": req, "cmd": cmd}
        doc.update(args)
        if self.cmd_key is not None:
            from host.commands import sign_command
            doc = sign_command(self.cmd_key, site, pile, doc, life_s=timeout + 60)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        await self._client.publish("%s/%s/cmd/%s" % (ROOT, site, pile), json.dumps(doc), qos=1)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(req, None)


# pile-platform --cmd SITE PILE CMD key=value ...: how a value is read.
# Money and energy stay decimal text ("balance=1000.00" yuan,
# "targets.amount=1.00"); the command schema reads them exactly
# (docs/mqtt.md "Commands"). Integers only for fields named so.
_CMD_INTS = {"minutes", "soc", "reason", "version", "department"}
_CMD_BOOLS = {"ok", "activate"}


class UsageError(ValueError):
    pass


def cmd_args(words):
    """The arguments of --cmd: `key=value` words (dotted keys build objects:
    targets.amount=1.00), `key={json}` / `key=[json]` for object and list
    arguments (targets, tariff, vins), or one JSON object holding them all."""
    out = {}
    for w in words:
        if w.startswith("{"):
            try:
                d = json.loads(w)
            except ValueError as e:
                raise UsageError("--cmd: %r is not a JSON object: %s" % (w, e))
            if not isinstance(d, dict):
                raise UsageError("--cmd: %r is not a JSON object" % w)
            out.update(d)
            continue
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise UsageError("--cmd: %r is not key=value (or a JSON object)" % w)
        leaf = k.rsplit(".", 1)[-1]
        if v[:1] in ("{", "["):
            try:
                val = json.loads(v)
            except ValueError as e:
                raise UsageError("--cmd: %s: not JSON: %s" % (k, e))
        elif leaf in _CMD_INTS or leaf.rsplit("_e", 1)[-1].isdigit() and "_e" in leaf:
            if not v.isdigit():
                raise UsageError("--cmd: %s is a whole number, got %r" % (k, v))
            val = int(v)
        elif leaf in _CMD_BOOLS:
            if v not in ("true", "false"):
                raise UsageError("--cmd: %s is true or false, got %r" % (k, v))
            val = v == "true"
        else:
            val = v
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError("--cmd: %s: %s is not an object" % (k, p))
        node[parts[-1]] = val
    return out


def _read_secret(path, what):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise PlatformError("%s %s: %s" % (what, path, e.strerror or e))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="pile-platform", description="The reference platform: takes bills from bridges over "
        "MQTT, stores, checks and confirms them; sends commands (docs/platform.md).")
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                    help="mqtt://host:port or mqtts://host:port (TLS); URL,URL,...: a broker "
                    "cluster's nodes, tried in turn (docs/scaling.md)")
    ap.add_argument("--db", default="platform.db", help="SQLite file for bills")
    ap.add_argument("--site", default="+", help="site id, or + for every site")
    ap.add_argument("--group", help="share the bill stream: $share/<group>/...")
    ap.add_argument("--username", "--user", dest="username",
                    help="MQTT user (the platform's, e.g. platform)")
    ap.add_argument("--password", help="MQTT password (visible in ps: prefer --password-file or "
                    "PILE_PLATFORM_MQTT_PASSWORD)")
    ap.add_argument("--password-file", help="file holding the MQTT password (pile-mqtt-site's "
                    "clients/<user>/password)")
    ap.add_argument("--ca", help="CA certificate to trust (pile-mqtt-site's ca.crt); mqtts:// only")
    ap.add_argument("--cert", help="client certificate (clients/<user>/<user>.crt)")
    ap.add_argument("--key", help="client private key (clients/<user>/<user>.key)")
    ap.add_argument("--tls-insecure", action="store_true",
                    help="do not check the broker's host name (tests only)")
    ap.add_argument("--bill-keys", metavar="FILE", action="append", default=[],
                    help="piles' keys for the bill MAC: `PILE HEX` or `* SITEKEYHEX` lines")
    ap.add_argument("--bill-key", metavar="PILE=PATH", action="append", default=[],
                    help="one pile's key from a key file (64 hex digits or 32 bytes)")
    ap.add_argument("--platform-key", metavar="FILE",
                    help="the site's platform key (the bridge's keys.platform_key_file): "
                    "commands and confirmations carry its `auth` MAC")
    worker_args(ap)
    ap.add_argument("--mac-wait", type=float, default=MAC_WAIT_S, metavar="S",
                    help="hold an incomplete bill of a keyed pile this long for its MAC")
    ap.add_argument("--connect-timeout", type=float, default=15.0, metavar="S",
                    help="--cmd: give up when the broker is not reached in S seconds")
    ap.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="--cmd: how long to wait for the command's result")
    ap.add_argument("--summary", action="store_true", help="print the summary of --db and exit")
    ap.add_argument("--cmd", nargs="+", metavar=("SITE PILE CMD", "k=v"),
                    help="send one command and print its result as JSON, e.g. --cmd demo "
                    "55031412782305 start gun=01 balance=100.00 targets.amount=1.00 "
                    "(money and energy in decimal yuan / kWh; key={json} or one JSON object "
                    "for object arguments: targets, tariff, vins)")
    cli.common(ap)
    args = ap.parse_args(argv)
    cli.setup_logging(args)

    def fail(msg, code=cli.USAGE):
        print("pile-platform: %s" % msg, file=sys.stderr)
        return code
    if args.cmd and len(args.cmd) < 3:
        return fail("--cmd needs SITE PILE CMD [key=value ...]")
    cmd_kw = {}
    if args.cmd:
        try:
            cmd_kw = cmd_args(args.cmd[3:])
        except UsageError as e:
            return fail(e)
    try:
        if args.summary:
            db = open_db(args.db, create=False)
            try:
                print(json.dumps(summarize(db), indent=2))
            except sqlite3.DatabaseError as e:
                raise PlatformError("database %s: %s" % (args.db, e))
            finally:
                db.close()
            return 0
        keys = BillKeys()
        for path in args.bill_keys:
            keys.add_file(path)
        for spec in args.bill_key:
            keys.add_option(spec)
        password = args.password
        if args.password_file:
            password = _read_secret(args.password_file, "--password-file")
        if password is None:
            password = os.environ.get("PILE_PLATFORM_MQTT_PASSWORD")
        ctx = None
        for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key),
                           ("--password-file", args.password_file)):
            # a config error naming the file, at once: never a retried connect
            if path and not os.access(path, os.R_OK):
                raise PlatformError("%s %s: %s" % (flag, path, "cannot be read"
                                                   if os.path.exists(path) else "no such file"))
        if args.ca or args.cert or args.key or args.tls_insecure:
            if args.key and not args.cert:
                raise PlatformError("--key needs --cert")
            ctx = tls_context(args.ca, args.cert, args.key, args.tls_insecure)
        cmd_key = None
        if args.platform_key:
            try:
                cmd_key = sign.load_key(args.platform_key)
            except (OSError, ValueError) as e:
                raise PlatformError("--platform-key %s: %s" % (args.platform_key, e))
        p = Platform(args.broker, ":memory:" if args.cmd else args.db, args.group, args.site,
                     args.username, password, args.client_id, keys=keys, tls_context=ctx,
                     mac_wait_s=args.mac_wait, consume=not args.cmd, cmd_key=cmd_key,
                     workers=args.workers, worker_index=args.worker_index, lease_s=args.lease)
    except PlatformError as e:
        return fail(e)
    if len(keys):
        log.info("bill MAC checked for %s", "every pile (site key)" if keys.site_key
                 else "%d pile(s); others: mac not checked" % len(keys.piles))

    async def go():
        ready = asyncio.Event()
        stop_on_sigterm()
        task = asyncio.create_task(p.run(ready))
        try:
            if args.cmd:
                try:
                    await asyncio.wait_for(ready.wait(), args.connect_timeout)
                except asyncio.TimeoutError:
                    return fail("broker %s not reached in %g s: %s" % (
                        args.broker, args.connect_timeout, p.last_error or "no answer"),
                        cli.UNREACHABLE)
                site, pile, cmd = args.cmd[:3]
                try:
                    res = await p.command(site, pile, cmd, timeout=args.timeout, **cmd_kw)
                except asyncio.TimeoutError:
                    return fail("no result for %s to %s/%s in %g s (is the site's bridge up?)"
                                % (cmd, site, pile, args.timeout), cli.UNREACHABLE)
                print(json.dumps(res, indent=2))
                return cli.OK if res.get("ok") else cli.NO
            # One machine-readable line once subscribed (as pile-bridge's), so a
            # supervisor or a test knows bills published from now on reach it.
            await ready.wait()
            print(json.dumps({"ready": True, "broker": args.broker, "db": args.db}), flush=True)
            while True:
                await asyncio.sleep(10)
                print(json.dumps(p.summary()), flush=True)
        finally:
            await stop_tasks([task])
    try:
        return asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(json.dumps(p.summary(), indent=2))
        return 0


if __name__ == "__main__":
    sys.exit(main())
