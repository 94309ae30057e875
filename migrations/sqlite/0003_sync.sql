-- Two-way Zoho sync (DESIGN.md §4, research/sync-locks.md §3-§4): the
-- durable job queue, the per-field last-synced shadow, sync sessions, small
-- named state (cursors, schedules, the encrypted Zoho connection) and the
-- per-batch outcomes health analytics reads. Append-only.

-- The job queue. A job is claimed by setting status 'running' with a lease
-- (owner + expiry) and bumping `claims`, the fencing token every later
-- update of the job must quote. At most one queued job per (serial_key,
-- kind): a second change of the same record while one waits is coalesced
-- into it, and pushes are computed from the record's state when they run.
CREATE TABLE sync_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,            -- push | session
    entity           TEXT    NOT NULL,
    record_id        TEXT    NOT NULL,            -- the record (push) or session id
    serial_key       TEXT    NOT NULL,            -- never two running jobs with one key
    status           TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,  -- failures counted against the limit
    claims           INTEGER NOT NULL DEFAULT 0,  -- fencing token
    run_at           INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_until      INTEGER,
    last_error_class TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX sync_jobs_one_queued ON sync_jobs (serial_key, kind) WHERE status = 'queued';
CREATE INDEX sync_jobs_claim ON sync_jobs (kind, status, run_at, id);
CREATE INDEX sync_jobs_running ON sync_jobs (serial_key) WHERE status = 'running';
CREATE INDEX sync_jobs_by_tenant ON sync_jobs (tenant, status, id);

-- The last-synced value of every field on both sides, and where the record
-- stands (synced, pending, conflict, error).
CREATE TABLE sync_shadow (
    tenant        TEXT    NOT NULL,
    entity        TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    zoho_id       TEXT,
    local         TEXT    NOT NULL DEFAULT '{}',  -- local names -> last synced value
    remote        TEXT    NOT NULL DEFAULT '{}',  -- Zoho names -> last synced value
    version       INTEGER NOT NULL DEFAULT 0,     -- the local version last synced
    zoho_modified TEXT,                           -- Zoho's Modified_Time last seen
    status        TEXT    NOT NULL DEFAULT 'pending',
    error         TEXT,
    synced_at     INTEGER,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant, entity, record_id)
);
CREATE INDEX sync_shadow_by_status ON sync_shadow (tenant, status);
CREATE INDEX sync_shadow_by_zoho_id ON sync_shadow (tenant, entity, zoho_id);

-- Sync sessions: the whole session as JSON, with the columns listings sort by.
CREATE TABLE sync_sessions (
    tenant     TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    module     TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sync_sessions_recent ON sync_sessions (tenant, created_at);

-- Small named values: pull cursors, schedule slots, watch channels and the
-- encrypted Zoho connection.
CREATE TABLE sync_state (
    tenant     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- One row per worker batch or session step: what health analytics sums.
CREATE TABLE sync_stats (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT    NOT NULL,
    module      TEXT    NOT NULL,
    direction   TEXT    NOT NULL,                -- push | pull
    synced      INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    api_calls   INTEGER NOT NULL,
    error_code  TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX sync_stats_by_time ON sync_stats (tenant, at);
