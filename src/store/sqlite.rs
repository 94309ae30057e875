//! SQLite backend: one file in the data directory, WAL journal. One pooled
//! connection serialises every transaction, which is what SQLite does for
//! writers anyway and rules out `SQLITE_BUSY` upgrades; a single node owns
//! the file, so the lack of `FOR UPDATE` changes nothing.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// Entities whose local changes queue a Zoho push.
    sync: std::sync::Arc<std::collections::HashSet<String>>,
}

impl SqliteStore {
    /// Sets the entities whose local changes queue a Zoho push (in the
    /// transaction of the change).
    pub fn with_sync_entities(mut self, entities: impl IntoIterator<Item = String>) -> Self {
        self.sync = std::sync::Arc::new(entities.into_iter().collect());
        self
    }

    /// Opens (creating when missing) the database file.
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            sync: Default::default(),
        })
    }

    /// Applies pending migrations from `migrations/sqlite/` (embedded at build time).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        super::migrator(MIGRATIONS).run(&self.pool).await
    }
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "records and locks",
        include_str!("../../migrations/sqlite/0001_records_and_locks.sql"),
    ),
    (
        2,
        "offline and conflicts",
        include_str!("../../migrations/sqlite/0002_offline_and_conflicts.sql"),
    ),
    (
        3,
        "sync",
        include_str!("../../migrations/sqlite/0003_sync.sql"),
    ),
];

sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

/// Database "now" in Unix milliseconds.
macro_rules! now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}

macro_rules! now_ms {
    () => {
        now!()
    };
}

macro_rules! lock_cols {
    () => {
        concat!(
            "entity, record_id, holder_user, holder_client, epoch, acquired_at, expires_at, ",
            "CASE WHEN expires_at > ",
            now!(),
            " THEN 1 ELSE 0 END"
        )
    };
}

macro_rules! holder_connected {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM node_users nu JOIN nodes n ON n.node_id = nu.node_id ",
            "WHERE nu.tenant = record_locks.tenant AND nu.user_id = record_locks.holder_user ",
            "AND n.seen_at > ",
            now!(),
            " - $1)"
        )
    };
}

macro_rules! conflict_select {
    () => {
        "SELECT id, entity, record_id, base_version, version, source, by_user, client_id, seq, \
         base, local, remote, fields, strategy, severity, status, history, created_at, updated_at FROM conflicts"
    };
}

mod q {
    const RECORD: &str = "SELECT entity, id, version, fields, updated_at, updated_by, deleted, zoho_id \
         FROM records WHERE tenant = $1 AND entity = $2 AND id = $3";
    pub const GET_RECORD: &str = RECORD;
    pub const RECORD_FOR_UPDATE: &str = RECORD;
    pub const LOCK_STATUS: &str = concat!(
        "SELECT ",
        lock_cols!(),
        " FROM record_locks WHERE tenant = $1 AND entity = $2 AND record_id = $3"
    );
    pub const LOCK_FOR_SHARE: &str = LOCK_STATUS;
    pub const LOCK_FOR_UPDATE: &str = LOCK_STATUS;
    pub const BUMP_CHANGE: &str = "INSERT INTO tenant_changes (tenant, version) VALUES ($1, 1) \
         ON CONFLICT (tenant) DO UPDATE SET version = tenant_changes.version + 1 RETURNING version";
    pub const CHANGE_VERSION: &str = "SELECT version FROM tenant_changes WHERE tenant = $1";
    pub const UPSERT_RECORD: &str = concat!(
        "INSERT INTO records (tenant, entity, id, version, fields, created_at, updated_at, updated_by, deleted, change_version) ",
        "VALUES ($1, $2, $3, $4, $5, ",
        now!(),
        ", ",
        now!(),
        ", $6, $7, $8) ON CONFLICT (tenant, entity, id) DO UPDATE SET version = excluded.version, ",
        "fields = excluded.fields, updated_at = excluded.updated_at, updated_by = excluded.updated_by, ",
        "deleted = excluded.deleted, change_version = excluded.change_version RETURNING updated_at"
    );
    pub const INSERT_FIELD_CHANGE: &str = concat!(
        "INSERT INTO field_changes (tenant, entity, record_id, field, old_value, new_value, version, source, ",
        "changed_by, changed_at, change_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, ",
        now!(),
        ", $10)"
    );
    pub const INSERT_OUTBOX: &str = concat!(
        "INSERT INTO outbox (tenant, channel, payload, created_at) VALUES ($1, $2, $3, ",
        now!(),
        ")"
    );
    pub const NEXT_EPOCH: &str =
        "UPDATE lock_epoch SET value = value + 1 WHERE id = 1 RETURNING value";
    pub const INSERT_LOCK: &str = concat!(
        "INSERT INTO record_locks (tenant, entity, record_id, holder_user, holder_client, epoch, acquired_at, expires_at) ",
        "VALUES ($1, $2, $3, $4, $5, $6, ",
        now!(),
        ", ",
        now!(),
        " + $7) ON CONFLICT DO NOTHING RETURNING acquired_at, expires_at"
    );
    pub const SET_LOCK: &str = concat!(
        "UPDATE record_locks SET holder_user = $4, holder_client = $5, epoch = $6, acquired_at = ",
        now!(),
        ", expires_at = ",
        now!(),
        " + $7, holder_offline_since = NULL WHERE tenant = $1 AND entity = $2 AND record_id = $3 ",
        "RETURNING acquired_at, expires_at"
    );
    pub const RENEW_LOCK: &str = concat!(
        "UPDATE record_locks SET expires_at = ",
        now!(),
        " + $5 WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND epoch = $4 AND expires_at > ",
        now!(),
        " RETURNING ",
        lock_cols!()
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
        "DELETE FROM record_locks WHERE expires_at <= ",
        now!(),
        " RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const MARK_OFFLINE: &str = concat!(
        "UPDATE record_locks SET holder_offline_since = ",
        now!(),
        " WHERE holder_offline_since IS NULL AND holder_client <> '' AND NOT ",
        holder_connected!()
    );
    pub const MARK_ONLINE: &str = concat!(
        "UPDATE record_locks SET holder_offline_since = NULL WHERE holder_offline_since IS NOT NULL AND ",
        holder_connected!()
    );
    pub const RELEASE_ABANDONED: &str = concat!(
        "DELETE FROM record_locks WHERE holder_offline_since IS NOT NULL AND holder_offline_since <= ",
        now!(),
        " - $1 RETURNING ",
        lock_cols!(),
        ", tenant"
    );
    pub const HEARTBEAT: &str = concat!(
        "INSERT INTO nodes (node_id, name, seen_at) VALUES ($1, $2, ",
        now!(),
        ") ON CONFLICT (node_id) DO UPDATE SET seen_at = excluded.seen_at"
    );
    pub const ADD_NODE_USER: &str = "INSERT INTO node_users (node_id, tenant, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
    pub const REMOVE_NODE_USER: &str =
        "DELETE FROM node_users WHERE node_id = $1 AND tenant = $2 AND user_id = $3";
    pub const DROP_DEAD_NODE_USERS: &str = concat!(
        "DELETE FROM node_users WHERE node_id IN (SELECT node_id FROM nodes WHERE seen_at <= ",
        now!(),
        " - $1)"
    );
    pub const DROP_DEAD_NODES: &str =
        concat!("DELETE FROM nodes WHERE seen_at <= ", now!(), " - $1");
    pub const FORGET_NODE_USERS: &str = "DELETE FROM node_users WHERE node_id = $1";
    pub const FORGET_NODE: &str = "DELETE FROM nodes WHERE node_id = $1";
    pub const SAVE_DRAFT: &str = concat!(
        "INSERT INTO drafts (tenant, entity, record_id, user_id, fields, updated_at) VALUES ($1, $2, $3, $4, $5, ",
        now!(),
        ") ON CONFLICT (tenant, entity, record_id, user_id) DO UPDATE SET fields = excluded.fields, ",
        "updated_at = excluded.updated_at RETURNING updated_at"
    );
    pub const GET_DRAFT: &str = "SELECT fields, updated_at FROM drafts \
         WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND user_id = $4";
    pub const CLAIM_OUTBOX: &str = concat!(
        "UPDATE outbox SET claimed_until = ",
        now!(),
        " + $2, attempts = attempts + 1 WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until <= ",
        now!(),
        " ORDER BY id LIMIT $1) RETURNING id, tenant, channel, payload"
    );
    pub const ACK_OUTBOX: &str = "DELETE FROM outbox WHERE id = $1";
    pub const RETRY_OUTBOX: &str = concat!(
        "UPDATE outbox SET claimed_until = ",
        now!(),
        " + $2 WHERE id = $1"
    );

    pub const BASE_VALUE: &str = "SELECT old_value FROM field_changes WHERE tenant = $1 AND entity = $2 \
         AND record_id = $3 AND field = $4 AND version > $5 ORDER BY version LIMIT 1";
    pub const ENSURE_CLIENT: &str = concat!(
        "INSERT INTO sync_clients (tenant, client_id, user_id, last_seq, last_seen_at) VALUES ($1, $2, $3, 0, ",
        now!(),
        ") ON CONFLICT (tenant, client_id) DO NOTHING"
    );
    pub const CLIENT_FOR_UPDATE: &str =
        "SELECT user_id, last_seq FROM sync_clients WHERE tenant = $1 AND client_id = $2";
    pub const LAST_SEQ: &str =
        "SELECT last_seq FROM sync_clients WHERE tenant = $1 AND client_id = $2";
    pub const STORED_RESULT: &str =
        "SELECT result FROM client_mutations WHERE tenant = $1 AND client_id = $2 AND seq = $3";
    pub const INSERT_RESULT: &str = concat!(
        "INSERT INTO client_mutations (tenant, client_id, seq, status, result, applied_at) VALUES ($1, $2, $3, $4, $5, ",
        now!(),
        ")"
    );
    pub const SET_LAST_SEQ: &str = concat!(
        "UPDATE sync_clients SET last_seq = $3, last_seen_at = ",
        now!(),
        " WHERE tenant = $1 AND client_id = $2"
    );
    pub const PULL: &str = "SELECT entity, id, version, fields, updated_at, updated_by, deleted, zoho_id, change_version \
         FROM records WHERE tenant = $1 AND change_version > $2 AND change_version <= $3 \
         AND ($4 IS NULL OR entity IN (SELECT value FROM json_each($4))) ORDER BY change_version LIMIT $5";
    pub const INSERT_CONFLICT: &str = concat!(
        "INSERT INTO conflicts (tenant, entity, record_id, base_version, version, source, by_user, client_id, seq, ",
        "base, local, remote, fields, strategy, severity, status, history, created_at, updated_at) VALUES ",
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, ",
        now!(),
        ", ",
        now!(),
        ") RETURNING id, created_at"
    );
    pub const LIST_CONFLICTS: &str = concat!(
        conflict_select!(),
        " WHERE tenant = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR entity = $3) AND id > $4 ORDER BY id LIMIT $5"
    );
    pub const GET_CONFLICT: &str = concat!(conflict_select!(), " WHERE tenant = $1 AND id = $2");
    pub const CONFLICT_FOR_UPDATE: &str = GET_CONFLICT;
    pub const SET_CONFLICT_RESOLVED: &str = concat!(
        "UPDATE conflicts SET status = 'resolved', history = $3, updated_at = ",
        now!(),
        " WHERE tenant = $1 AND id = $2 RETURNING updated_at"
    );
}

sync_store!(SqliteStore);
// One writer: the single pooled connection serialises claims.
sync_queries!("", "", "deleted = 0");
