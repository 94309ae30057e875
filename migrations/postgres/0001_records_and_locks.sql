-- Records, their field-level change log, edit locks, drafts and the event
-- outbox. Append-only: never edit this file once applied; add 0002_... instead.

CREATE TABLE records (
    tenant         text        NOT NULL,
    entity         text        NOT NULL,
    id             text        NOT NULL,
    version        bigint      NOT NULL,
    fields         jsonb       NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    updated_by     text        NOT NULL,
    deleted        boolean     NOT NULL DEFAULT false,
    zoho_id        text,
    change_version bigint      NOT NULL,
    PRIMARY KEY (tenant, entity, id)
);
CREATE INDEX records_by_change ON records (tenant, change_version);

-- The per-tenant change version: the row is updated inside every writing
-- transaction and stays locked until commit, so versions follow commit order.
CREATE TABLE tenant_changes (
    tenant  text   PRIMARY KEY,
    version bigint NOT NULL
);

CREATE TABLE field_changes (
    id             bigserial   PRIMARY KEY,
    tenant         text        NOT NULL,
    entity         text        NOT NULL,
    record_id      text        NOT NULL,
    field          text        NOT NULL,
    old_value      jsonb,
    new_value      jsonb,
    version        bigint      NOT NULL,
    source         text        NOT NULL CHECK (source IN ('local', 'zoho', 'offline')),
    changed_by     text        NOT NULL,
    changed_at     timestamptz NOT NULL,
    change_version bigint      NOT NULL
);
CREATE INDEX field_changes_by_change ON field_changes (tenant, change_version);
CREATE INDEX field_changes_by_record ON field_changes (tenant, entity, record_id, version);

-- Fencing epochs: monotonic (not gapless), shared by every lock.
CREATE SEQUENCE record_lock_epoch;

CREATE TABLE record_locks (
    tenant               text        NOT NULL,
    entity               text        NOT NULL,
    record_id            text        NOT NULL,
    holder_user          text        NOT NULL,
    holder_client        text        NOT NULL,
    epoch                bigint      NOT NULL,
    acquired_at          timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    holder_offline_since timestamptz,
    PRIMARY KEY (tenant, entity, record_id)
);
CREATE INDEX record_locks_by_expiry ON record_locks (expires_at);
CREATE INDEX record_locks_by_holder ON record_locks (tenant, holder_user);

CREATE TABLE drafts (
    tenant     text        NOT NULL,
    entity     text        NOT NULL,
    record_id  text        NOT NULL,
    user_id    text        NOT NULL,
    fields     jsonb       NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, entity, record_id, user_id)
);

CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    tenant        text        NOT NULL,
    channel       text        NOT NULL,
    payload       text        NOT NULL,             -- the event JSON, byte for byte
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    claimed_until timestamptz
);

CREATE TABLE nodes (
    node_id text        PRIMARY KEY,
    name    text        NOT NULL,
    seen_at timestamptz NOT NULL
);
CREATE TABLE node_users (
    node_id text NOT NULL,
    tenant  text NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (node_id, tenant, user_id)
);
CREATE INDEX node_users_by_user ON node_users (tenant, user_id);
