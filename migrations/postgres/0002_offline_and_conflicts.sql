-- Offline queues (the Replicache model, DESIGN.md §2) and the conflict
-- review queue (§3). Append-only: add 0003_... rather than editing this.

-- One row per offline client: the highest mutation seq applied, advanced in
-- the same transaction as that mutation's effects. A client id belongs to
-- the user who first pushed with it.
CREATE TABLE sync_clients (
    tenant       text    NOT NULL,
    client_id    text    NOT NULL,
    user_id      text    NOT NULL,
    last_seq     bigint  NOT NULL,
    last_seen_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, client_id)
);

-- The result of every applied (or rejected) mutation, returned again for a
-- duplicate push.
CREATE TABLE client_mutations (
    tenant     text    NOT NULL,
    client_id  text    NOT NULL,
    seq        bigint  NOT NULL,
    status     text    NOT NULL,
    result     jsonb   NOT NULL,             -- the JSON result object
    applied_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, client_id, seq)
);

-- Field conflicts of one write, both sides, the base, the rule, and the
-- history of resolutions (a JSON array, appended to).
CREATE TABLE conflicts (
    id           bigserial PRIMARY KEY,
    tenant       text    NOT NULL,
    entity       text    NOT NULL,
    record_id    text    NOT NULL,
    base_version bigint  NOT NULL,
    version      bigint  NOT NULL,           -- the record version the merge wrote (or found)
    source       text    NOT NULL,
    by_user      text    NOT NULL,
    client_id    text,
    seq          bigint,
    base jsonb NOT NULL,
    local jsonb NOT NULL,
    remote jsonb NOT NULL,
    fields jsonb NOT NULL,           -- JSON array of FieldConflict
    strategy     text    NOT NULL,
    severity     text    NOT NULL,
    status       text    NOT NULL CHECK (status IN ('open', 'resolved')),
    history jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX conflicts_by_status ON conflicts (tenant, status, id);
CREATE INDEX conflicts_by_record ON conflicts (tenant, entity, record_id);
