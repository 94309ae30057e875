-- Offline queues (the Replicache model, DESIGN.md §2) and the conflict
-- review queue (§3). Append-only: add 0003_... rather than editing this.

-- One row per offline client: the highest mutation seq applied, advanced in
-- the same transaction as that mutation's effects. A client id belongs to
-- the user who first pushed with it.
CREATE TABLE sync_clients (
    tenant       TEXT    NOT NULL,
    client_id    TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    last_seq     INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, client_id)
);

-- The result of every applied (or rejected) mutation, returned again for a
-- duplicate push.
CREATE TABLE client_mutations (
    tenant     TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    status     TEXT    NOT NULL,
    result     TEXT    NOT NULL,             -- the JSON result object
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, client_id, seq)
);

-- Field conflicts of one write, both sides, the base, the rule, and the
-- history of resolutions (a JSON array, appended to).
CREATE TABLE conflicts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT    NOT NULL,
    entity       TEXT    NOT NULL,
    record_id    TEXT    NOT NULL,
    base_version INTEGER NOT NULL,
    version      INTEGER NOT NULL,           -- the record version the merge wrote (or found)
    source       TEXT    NOT NULL,
    by_user      TEXT    NOT NULL,
    client_id    TEXT,
    seq          INTEGER,
    base         TEXT    NOT NULL,
    local        TEXT    NOT NULL,
    remote       TEXT    NOT NULL,
    fields       TEXT    NOT NULL,           -- JSON array of FieldConflict
    strategy     TEXT    NOT NULL,
    severity     TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('open', 'resolved')),
    history      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX conflicts_by_status ON conflicts (tenant, status, id);
CREATE INDEX conflicts_by_record ON conflicts (tenant, entity, record_id);
