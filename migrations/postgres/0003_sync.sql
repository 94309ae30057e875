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
    id               bigserial PRIMARY KEY,
    tenant           text       NOT NULL,
    kind             text       NOT NULL,            -- push | session
    entity           text       NOT NULL,
    record_id        text       NOT NULL,            -- the record (push) or session id
    serial_key       text       NOT NULL,            -- never two running jobs with one key
    status           text       NOT NULL CHECK (status IN ('queued', 'running', 'dead')),
    attempts         bigint  NOT NULL DEFAULT 0,  -- failures counted against the limit
    claims           bigint  NOT NULL DEFAULT 0,  -- fencing token
    run_at           bigint  NOT NULL,
    lease_owner      text,
    lease_until      bigint,
    last_error_class text,
    last_error       text,
    created_at       bigint  NOT NULL,
    updated_at       bigint  NOT NULL
);
CREATE UNIQUE INDEX sync_jobs_one_queued ON sync_jobs (serial_key, kind) WHERE status = 'queued';
CREATE INDEX sync_jobs_claim ON sync_jobs (kind, status, run_at, id);
CREATE INDEX sync_jobs_running ON sync_jobs (serial_key) WHERE status = 'running';
CREATE INDEX sync_jobs_by_tenant ON sync_jobs (tenant, status, id);

-- The last-synced value of every field on both sides, and where the record
-- stands (synced, pending, conflict, error).
CREATE TABLE sync_shadow (
    tenant        text       NOT NULL,
    entity        text       NOT NULL,
    record_id     text       NOT NULL,
    zoho_id       text,
    local         text       NOT NULL DEFAULT '{}',  -- local names -> last synced value
    remote        text       NOT NULL DEFAULT '{}',  -- Zoho names -> last synced value
    version       bigint  NOT NULL DEFAULT 0,     -- the local version last synced
    zoho_modified text,                           -- Zoho's Modified_Time last seen
    status        text       NOT NULL DEFAULT 'pending',
    error         text,
    synced_at     bigint,
    updated_at    bigint  NOT NULL,
    PRIMARY KEY (tenant, entity, record_id)
);
CREATE INDEX sync_shadow_by_status ON sync_shadow (tenant, status);
CREATE INDEX sync_shadow_by_zoho_id ON sync_shadow (tenant, entity, zoho_id);

-- Sync sessions: the whole session as JSON, with the columns listings sort by.
CREATE TABLE sync_sessions (
    tenant     text       NOT NULL,
    id         text       NOT NULL,
    kind       text       NOT NULL,
    module     text       NOT NULL,
    status     text       NOT NULL,
    body       text       NOT NULL,
    created_at bigint  NOT NULL,
    updated_at bigint  NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sync_sessions_recent ON sync_sessions (tenant, created_at);

-- Small named values: pull cursors, schedule slots, watch channels and the
-- encrypted Zoho connection.
CREATE TABLE sync_state (
    tenant     text       NOT NULL,
    name       text       NOT NULL,
    value      text       NOT NULL,
    updated_at bigint  NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- One row per worker batch or session step: what health analytics sums.
CREATE TABLE sync_stats (
    id          bigserial PRIMARY KEY,
    tenant      text       NOT NULL,
    module      text       NOT NULL,
    direction   text       NOT NULL,                -- push | pull
    synced      bigint  NOT NULL,
    failed      bigint  NOT NULL,
    duration_ms bigint  NOT NULL,
    api_calls   bigint  NOT NULL,
    error_code  text,
    at          bigint  NOT NULL
);
CREATE INDEX sync_stats_by_time ON sync_stats (tenant, at);
