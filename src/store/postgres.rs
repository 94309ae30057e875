//! PostgreSQL backend (`SYNCHUB_DATABASE_URL=postgres://...`), for several
//! nodes sharing one database. Saves hold the lock row `FOR SHARE`, so a
//! takeover (`FOR UPDATE`) waits for an in-flight save and the save is
//! linearised with it; epochs come from the sequence `record_lock_epoch`;
//! the outbox is claimed with `FOR UPDATE SKIP LOCKED`, so relays on several
//! nodes never publish the same claim twice.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
    /// Entities whose local changes queue a Zoho push.
    sync: std::sync::Arc<std::collections::HashSet<String>>,
}

impl PgStore {
    /// Sets the entities whose local changes queue a Zoho push (in the
    /// transaction of the change).
    pub fn with_sync_entities(mut self, entities: impl IntoIterator<Item = String>) -> Self {
        self.sync = std::sync::Arc::new(entities.into_iter().collect());
        self
    }

    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// Connects with explicit options (tests pin a schema through `search_path`).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            sync: Default::default(),
        })
    }

    /// Applies pending migrations from `migrations/postgres/` (embedded at build time).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        super::migrator(MIGRATIONS).run(&self.pool).await
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "records and locks",
        include_str!("../../migrations/postgres/0001_records_and_locks.sql"),
    ),
    (
        2,
        "offline and conflicts",
        include_str!("../../migrations/postgres/0002_offline_and_conflicts.sql"),
    ),
    (
        3,
        "sync",
        include_str!("../../migrations/postgres/0003_sync.sql"),
    ),
];

sql_store!(PgStore, sqlx::Postgres, "postgres");

/// The database clock in Unix milliseconds (`clock_timestamp`: leases
/// taken late in a long transaction still start now).
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch from ", $col, ") * 1000)::bigint")
    };
}

/// `now()` plus (or minus) a bound number of milliseconds.
macro_rules! now_plus {
    ($p:literal) => {
        concat!("now() + make_interval(secs => ", $p, "::float8 / 1000.0)")
    };
}
macro_rules! now_minus {
    ($p:literal) => {
        concat!("now() - make_interval(secs => ", $p, "::float8 / 1000.0)")
    };
}

macro_rules! lock_cols {
    () => {
        concat!(
            "entity, record_id, holder_user, holder_client, epoch, ",
            ms!("acquired_at"),
            ", ",
            ms!("expires_at"),
            ", (CASE WHEN expires_at > now() THEN 1 ELSE 0 END)::bigint"
        )
    };
}

macro_rules! holder_connected {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM node_users nu JOIN nodes n ON n.node_id = nu.node_id ",
            "WHERE nu.tenant = record_locks.tenant AND nu.user_id = record_locks.holder_user ",
            "AND n.seen_at > ",
            now_minus!("$1"),
            ")"
        )
    };
}

macro_rules! record_select {
    () => {
        concat!(
            "SELECT entity, id, version, fields::text, ",
            ms!("updated_at"),
            ", updated_by, (CASE WHEN deleted THEN 1 ELSE 0 END)::bigint, zoho_id ",
            "FROM records WHERE tenant = $1 AND entity = $2 AND id = $3"
        )
    };
}

macro_rules! conflict_select {
    () => {
        concat!(
            "SELECT id, entity, record_id, base_version, version, source, by_user, client_id, seq, ",
            "base::text, local::text, remote::text, fields::text, strategy, severity, status, history::text, ",
            ms!("created_at"),
            ", ",
            ms!("updated_at"),
            " FROM conflicts"
        )
    };
}

mod q {
    pub const GET_RECORD: &str = record_select!();
    pub const RECORD_FOR_UPDATE: &str = concat!(record_select!(), " FOR UPDATE");
    pub const LOCK_STATUS: &str = concat!(
        "SELECT ",
        lock_cols!(),
        " FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3"
    );
    pub const LOCK_FOR_SHARE: &str = concat!(
        "SELECT ",
        lock_cols!(),
        " FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3 FOR SHARE"
    );
    pub const LOCK_FOR_UPDATE: &str = concat!(
        "SELECT ",
        lock_cols!(),
        " FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3 FOR UPDATE"
    );
    pub const BUMP_CHANGE: &str = "INSERT INTO tenant_changes (tenant, version) VALUES ($1, 1) \
         ON CONFLICT (tenant) DO UPDATE SET version = tenant_changes.version + 1 RETURNING version";
    pub const CHANGE_VERSION: &str = "SELECT version FROM tenant_changes WHERE tenant = $1";
    pub const UPSERT_RECORD: &str = concat!(
        "INSERT INTO records (tenant, entity, id, version, fields, created_at, updated_at, updated_by, deleted, change_version) ",
        "VALUES ($1, $2, $3, $4, $5::jsonb, now(), now(), $6, $7, $8) ON CONFLICT (tenant, entity, id) DO UPDATE SET ",
        "version = excluded.version, fields = excluded.fields, updated_at = excluded.updated_at, ",
        "updated_by = excluded.updated_by, deleted = excluded.deleted, change_version = excluded.change_version RETURNING ",
        ms!("updated_at")
    );
    pub const INSERT_FIELD_CHANGE: &str = "INSERT INTO field_changes (tenant, entity, record_id, field, old_value, new_value, \
         version, source, changed_by, changed_at, change_version) \
         VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, now(), $10)";
    pub const INSERT_OUTBOX: &str =
        "INSERT INTO outbox (tenant, channel, payload, created_at) VALUES ($1, $2, $3, now())";
    pub const NEXT_EPOCH: &str = "SELECT nextval('record_lock_epoch')";
    pub const INSERT_LOCK: &str = concat!(
        "INSERT INTO record_locks (tenant, entity, record_id, holder_user, holder_client, epoch, acquired_at, expires_at) ",
        "VALUES ($1, $2, $3, $4, $5, $6, now(), ",
        now_plus!("$7"),
        ") ON CONFLICT DO NOTHING RETURNING ",
        ms!("acquired_at"),
        ", ",
        ms!("expires_at")
    );
    pub const SET_LOCK: &str = concat!(
        "UPDATE record_locks SET holder_user = $4, holder_client = $5, epoch = $6, acquired_at = now(), expires_at = ",
        now_plus!("$7"),
        ", holder_offline_since = NULL WHERE tenant = $1 AND entity = $2 AND record_id = $3 RETURNING ",
        ms!("acquired_at"),
        ", ",
        ms!("expires_at")
    );
    pub const RENEW_LOCK: &str = concat!(
        "UPDATE record_locks SET expires_at = ",
        now_plus!("$5"),
        " WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND epoch = $4 AND expires_at > now() RETURNING ",
        "entity, record_id, holder_user, holder_client, epoch, ",
        ms!("acquired_at"),
        ", ",
        ms!("expires_at"),
        ", 1::bigint"
    );
    pub const DELETE_LOCK_BY_EPOCH: &str = concat!(
        "DELETE FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND epoch = $4 RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const DELETE_LOCK: &str = concat!(
        "DELETE FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3 RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const EXPIRE_LOCKS: &str = concat!(
        "DELETE FROM record_locks WHERE expires_at <= now() RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const MARK_OFFLINE: &str = concat!(
        "UPDATE record_locks SET holder_offline_since = now() ",
        "WHERE holder_offline_since IS NULL AND holder_client <> '' AND NOT ",
        holder_connected!()
    );
    pub const MARK_ONLINE: &str = concat!(
        "UPDATE record_locks SET holder_offline_since = NULL WHERE holder_offline_since IS NOT NULL AND ",
        holder_connected!()
    );
    pub const RELEASE_ABANDONED: &str = concat!(
        "DELETE FROM record_locks WHERE holder_offline_since IS NOT NULL AND holder_offline_since <= ",
        now_minus!("$1"),
        " RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const HEARTBEAT: &str = "INSERT INTO nodes (node_id, name, seen_at) VALUES ($1, $2, now()) \
         ON CONFLICT (node_id) DO UPDATE SET seen_at = excluded.seen_at";
    pub const ADD_NODE_USER: &str = "INSERT INTO node_users (node_id, tenant, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
    pub const REMOVE_NODE_USER: &str =
        "DELETE FROM node_users WHERE node_id = $1 AND tenant = $2 AND user_id = $3";
    pub const DROP_DEAD_NODE_USERS: &str = concat!(
        "DELETE FROM node_users WHERE node_id IN (SELECT node_id FROM nodes WHERE seen_at <= ",
        now_minus!("$1"),
        ")"
    );
    pub const DROP_DEAD_NODES: &str =
        concat!("DELETE FROM nodes WHERE seen_at <= ", now_minus!("$1"));
    pub const FORGET_NODE_USERS: &str = "DELETE FROM node_users WHERE node_id = $1";
    pub const FORGET_NODE: &str = "DELETE FROM nodes WHERE node_id = $1";
    pub const SAVE_DRAFT: &str = concat!(
        "INSERT INTO drafts (tenant, entity, record_id, user_id, fields, updated_at) VALUES ($1, $2, $3, $4, $5::jsonb, now()) ",
        "ON CONFLICT (tenant, entity, record_id, user_id) DO UPDATE SET fields = excluded.fields, ",
        "updated_at = excluded.updated_at RETURNING ",
        ms!("updated_at")
    );
    pub const GET_DRAFT: &str = concat!(
        "SELECT fields::text, ",
        ms!("updated_at"),
        " FROM drafts WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND user_id = $4"
    );
    pub const CLAIM_OUTBOX: &str = concat!(
        "UPDATE outbox SET claimed_until = ",
        now_plus!("$2"),
        ", attempts = attempts + 1 WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until <= now() ",
        "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, tenant, channel, payload"
    );
    pub const ACK_OUTBOX: &str = "DELETE FROM outbox WHERE id = $1";
    pub const RETRY_OUTBOX: &str = concat!(
        "UPDATE outbox SET claimed_until = ",
        now_plus!("$2"),
        " WHERE id = $1"
    );

    pub const BASE_VALUE: &str = "SELECT old_value::text FROM field_changes WHERE tenant = $1 AND entity = $2 \
         AND record_id = $3 AND field = $4 AND version > $5 ORDER BY version LIMIT 1";
    pub const ENSURE_CLIENT: &str = "INSERT INTO sync_clients (tenant, client_id, user_id, last_seq, last_seen_at) \
         VALUES ($1, $2, $3, 0, now()) ON CONFLICT (tenant, client_id) DO NOTHING";
    pub const CLIENT_FOR_UPDATE: &str = "SELECT user_id, last_seq FROM sync_clients WHERE tenant = $1 AND client_id = $2 FOR UPDATE";
    pub const LAST_SEQ: &str =
        "SELECT last_seq FROM sync_clients WHERE tenant = $1 AND client_id = $2";
    pub const STORED_RESULT: &str = "SELECT result::text FROM client_mutations WHERE tenant = $1 AND client_id = $2 AND seq = $3";
    pub const INSERT_RESULT: &str = "INSERT INTO client_mutations (tenant, client_id, seq, status, result, applied_at) \
         VALUES ($1, $2, $3, $4, $5::jsonb, now())";
    pub const SET_LAST_SEQ: &str = "UPDATE sync_clients SET last_seq = $3, last_seen_at = now() \
         WHERE tenant = $1 AND client_id = $2";
    pub const PULL: &str = concat!(
        "SELECT entity, id, version, fields::text, ",
        ms!("updated_at"),
        ", updated_by, (CASE WHEN deleted THEN 1 ELSE 0 END)::bigint, zoho_id, change_version ",
        "FROM records WHERE tenant = $1 AND change_version > $2 AND change_version <= $3 ",
        "AND ($4::text IS NULL OR entity IN (SELECT jsonb_array_elements_text($4::jsonb))) ",
        "ORDER BY change_version LIMIT $5"
    );
    pub const INSERT_CONFLICT: &str = concat!(
        "INSERT INTO conflicts (tenant, entity, record_id, base_version, version, source, by_user, client_id, seq, ",
        "base, local, remote, fields, strategy, severity, status, history, created_at, updated_at) VALUES ",
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12::jsonb, $13::jsonb, $14, $15, $16, $17::jsonb, now(), now()) ",
        "RETURNING id, ",
        ms!("created_at")
    );
    pub const LIST_CONFLICTS: &str = concat!(
        conflict_select!(),
        " WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR entity = $3) AND id > $4 ORDER BY id LIMIT $5"
    );
    pub const GET_CONFLICT: &str = concat!(conflict_select!(), " WHERE tenant = $1 AND id = $2");
    pub const CONFLICT_FOR_UPDATE: &str = concat!(
        conflict_select!(),
        " WHERE tenant = $1 AND id = $2 FOR UPDATE"
    );
    pub const SET_CONFLICT_RESOLVED: &str = concat!(
        "UPDATE conflicts SET status = 'resolved', history = $3::jsonb, updated_at = now() ",
        "WHERE tenant = $1 AND id = $2 RETURNING ",
        ms!("updated_at")
    );
}

sync_store!(PgStore);
sync_queries!("FOR UPDATE SKIP LOCKED", "FOR UPDATE", "NOT deleted");
