-- Records, their field-level change log, edit locks, drafts and the event
-- outbox. Times are Unix milliseconds from the database clock. Append-only:
-- never edit this file once applied; add 0002_... instead.

CREATE TABLE records (
    tenant         TEXT    NOT NULL,
    entity         TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    fields         TEXT    NOT NULL,             -- a JSON object
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    updated_by     TEXT    NOT NULL,
    deleted        INTEGER NOT NULL DEFAULT 0,
    zoho_id        TEXT,
    change_version INTEGER NOT NULL,
    PRIMARY KEY (tenant, entity, id)
);
CREATE INDEX records_by_change ON records (tenant, change_version);

-- The per-tenant change version: bumped inside every writing transaction,
-- so its order is the commit order (writes of one tenant serialise on it).
CREATE TABLE tenant_changes (
    tenant  TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
);

CREATE TABLE field_changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT    NOT NULL,
    entity         TEXT    NOT NULL,
    record_id      TEXT    NOT NULL,
    field          TEXT    NOT NULL,
    old_value      TEXT,                          -- JSON; NULL when the field was absent
    new_value      TEXT,                          -- JSON; NULL when the field was removed
    version        INTEGER NOT NULL,
    source         TEXT    NOT NULL CHECK (source IN ('local', 'zoho', 'offline')),
    changed_by     TEXT    NOT NULL,
    changed_at     INTEGER NOT NULL,
    change_version INTEGER NOT NULL
);
CREATE INDEX field_changes_by_change ON field_changes (tenant, change_version);
CREATE INDEX field_changes_by_record ON field_changes (tenant, entity, record_id, version);

-- SQLite has no sequences: a one-row counter bumped in the same transaction
-- as the lock write gives the same guarantee (fencing epochs only grow).
CREATE TABLE lock_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO lock_epoch (id, value) VALUES (1, 0);

CREATE TABLE record_locks (
    tenant               TEXT    NOT NULL,
    entity               TEXT    NOT NULL,
    record_id            TEXT    NOT NULL,
    holder_user          TEXT    NOT NULL,
    holder_client        TEXT    NOT NULL,
    epoch                INTEGER NOT NULL,
    acquired_at          INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    holder_offline_since INTEGER,                 -- set when no node reports the holder connected
    PRIMARY KEY (tenant, entity, record_id)
);
CREATE INDEX record_locks_by_expiry ON record_locks (expires_at);
CREATE INDEX record_locks_by_holder ON record_locks (tenant, holder_user);

CREATE TABLE drafts (
    tenant     TEXT    NOT NULL,
    entity     TEXT    NOT NULL,
    record_id  TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    fields     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, entity, record_id, user_id)
);

-- Events written in the same transaction as the change they announce; the
-- relay publishes and deletes them.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_until INTEGER
);

-- Holder liveness: every node heartbeats its row and lists the users it has
-- connected, so no single node's memory decides whether a holder is gone.
CREATE TABLE nodes (
    node_id TEXT    PRIMARY KEY,
    name    TEXT    NOT NULL,
    seen_at INTEGER NOT NULL
);
CREATE TABLE node_users (
    node_id TEXT NOT NULL,
    tenant  TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (node_id, tenant, user_id)
);
CREATE INDEX node_users_by_user ON node_users (tenant, user_id);
