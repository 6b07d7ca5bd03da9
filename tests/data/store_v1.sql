-- The bridge store as written before schema versions (user_version 0 = version 1),
-- frozen here so the migration test keeps testing the upgrade from it.
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
