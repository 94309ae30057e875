//! The store: records, their field-level change log, edit locks, drafts, the
//! event outbox and holder liveness, in SQLite (the embedded default) or
//! PostgreSQL, behind the one [`Store`] trait.
//!
//! Both backends run the same transaction logic (written once in
//! `sql_store!`); only the SQL text differs (`sqlite.rs`, `postgres.rs`).
//! Every lease is judged by the database clock, never by a node's clock.
//! Every event is written to the outbox in the same transaction as the change
//! it announces; the relay publishes it after commit. The store knows nothing
//! about sessions, channels' subscribers or the broker.

#[macro_use]
mod shared;
#[macro_use]
pub mod sync;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::conflict::{EntityRules, FieldConflict};

pub use shared::{
    RecordKey, Source, conflict_view, events, lock_view, now_rfc3339, record_view, rfc3339_ms,
};

/// A record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub entity: String,
    pub id: String,
    pub version: i64,
    pub fields: Map<String, Value>,
    /// Unix milliseconds (database clock).
    pub updated_at: i64,
    pub updated_by: String,
    pub deleted: bool,
    pub zoho_id: Option<String>,
}

/// An edit lock lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub entity: String,
    pub id: String,
    pub holder: String,
    /// The connection that took it; empty when taken over HTTP.
    pub client: String,
    /// The fencing token: drawn from a sequence, so it only grows.
    pub epoch: i64,
    pub acquired_at: i64,
    pub expires_at: i64,
}

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Changes an existing record; `base_version` 0 creates one that does not exist.
    Update,
    /// Creates a record; fails when a live one exists.
    Create,
    /// Marks a record deleted (a tombstone keeps its version for pulls).
    Delete,
}

/// A write request, already validated.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: RecordKey,
    pub kind: WriteKind,
    /// The version the writer saw; `None` skips the optimistic check.
    pub base_version: Option<i64>,
    /// Fields to set (a patch: absent fields keep their value).
    pub fields: Map<String, Value>,
    /// The fencing token of the writer's lock, checked in the write transaction.
    pub lock_token: Option<i64>,
    /// Refuse the write when another user holds a live lock and no token is given.
    pub respect_locks: bool,
    pub by: String,
    pub source: Source,
}

/// A committed write.
#[derive(Debug, Clone)]
pub struct Committed {
    pub record: Record,
    /// Names of the fields whose value changed (empty: nothing was written).
    pub changed: Vec<String>,
}

/// A write that goes through the conflict engine when its base version is
/// stale (DESIGN.md §2-§3).
#[derive(Debug, Clone)]
pub struct MergeWrite {
    /// `base_version` is the version the writer started from.
    pub write: Write,
    /// The writer's base value of each field it changed; a field missing
    /// here is looked up in the field change log at `base_version`.
    pub base: Map<String, Value>,
    /// When the writer made the change (a mutation's `at`); `None` is unknown.
    pub at: Option<time::OffsetDateTime>,
    pub rules: EntityRules,
    /// The offline client and mutation seq, kept with a conflict.
    pub origin: Option<(String, i64)>,
    /// The writer is Zoho (a pull): the conflict engine sees it as the
    /// remote side and the stored record as the local one.
    pub writer_is_remote: bool,
}

/// How a merge write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStatus {
    /// The base version was current: written as is.
    Applied,
    /// The base was stale; every field was decided (one-sided changes, or
    /// conflicts a rule resolved) and written.
    Merged,
    /// At least one field needs a person: the decided fields were written,
    /// the rest queued in the conflicts table.
    Conflict,
}

impl MergeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeStatus::Applied => "applied",
            MergeStatus::Merged => "merged",
            MergeStatus::Conflict => "conflict",
        }
    }
}

/// A committed merge write.
#[derive(Debug, Clone)]
pub struct Merged {
    pub committed: Committed,
    pub status: MergeStatus,
    /// The stored conflict, when any field was changed on both sides.
    pub conflict: Option<StoredConflict>,
}

/// A row of the conflicts table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConflict {
    pub id: i64,
    pub entity: String,
    pub record_id: String,
    pub base_version: i64,
    pub version: i64,
    pub source: String,
    pub by: String,
    pub client_id: Option<String>,
    pub seq: Option<i64>,
    pub base: Map<String, Value>,
    pub local: Map<String, Value>,
    pub remote: Map<String, Value>,
    pub fields: Vec<FieldConflict>,
    /// The entity's configured strategy.
    pub strategy: String,
    /// The highest severity of its field conflicts.
    pub severity: String,
    /// `open` (a field waits for a person) or `resolved`.
    pub status: String,
    /// Every resolution: `[{at, by, resolution, fields}]`.
    pub history: Vec<Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a push does with one mutation once its seq is next.
#[derive(Debug, Clone)]
pub enum MutationPlan {
    Apply(Box<MergeWrite>),
    /// It can never apply (bad input): the seq still advances.
    Reject {
        code: String,
        message: String,
    },
}

/// The outcome of one pushed mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum PushStep {
    /// Committed now: the result stored with it.
    Done(Value),
    /// At or below `last_seq`: the stored result (`Null` when pruned).
    Duplicate(Value),
    /// Not the next seq: nothing was written.
    Gap { last_seq: i64 },
}

/// A page of changes after a cursor.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Each changed record (tombstones included) with its change version,
    /// in change-version order.
    pub changes: Vec<(Record, i64)>,
    pub cursor: i64,
    pub more: bool,
}

/// A conflicts listing filter.
#[derive(Debug, Clone, Default)]
pub struct ConflictFilter {
    pub status: Option<String>,
    pub entity: Option<String>,
    /// Only ids above this one (paging).
    pub after: i64,
    pub limit: i64,
}

/// The answer to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds the lock (new, re-acquired, or taken over).
    Granted(Lock),
    /// Someone else holds it.
    Held(Lock),
}

/// One event waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub tenant: String,
    pub channel: String,
    pub payload: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("record not found")]
    NotFound,
    #[error("record already exists")]
    AlreadyExists,
    /// The base version is stale: the current record comes with it.
    #[error("record changed since version {base}")]
    Conflict { base: i64, current: Box<Record> },
    /// The lock token is not the live lock's epoch (expired, released or taken over).
    #[error("the lock is no longer held with this token")]
    LockLost { current: Option<Lock> },
    /// Another user holds a live lock and the write carried no token.
    #[error("another user holds the lock")]
    LockHeld { lock: Lock },
    /// The conflict is already resolved (or was never open).
    #[error("the conflict is not open")]
    ConflictClosed,
    /// The client id belongs to another user of the tenant.
    #[error("this client id belongs to another user")]
    ClientTaken,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// A fault worth retrying later (connection lost, pool timeout, lock timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c.starts_with("40") || c == "55P03" || c == "5" || c == "6")
            }
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The records-and-locks store. Every method is one transaction (or one
/// statement); a method that returns an error has written nothing.
#[async_trait]
pub trait Store: sync::SyncStore + Send + Sync + 'static {
    /// Which backend, for logs and `/api/info`.
    fn backend(&self) -> &'static str;

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>>;

    /// Applies a write: checks the lock fence (holding the lock row in share
    /// mode on PostgreSQL), then the base version, then writes the record,
    /// one `field_changes` row per changed field, the next per-tenant change
    /// version and the events to the outbox, all in one transaction. A write
    /// that changes nothing commits nothing and announces nothing.
    async fn write(&self, write: Write) -> StoreResult<Committed>;

    /// Takes the lock when it is free, expired, or already the caller's
    /// (same client keeps its epoch; another client of the same user gets a
    /// new one). With `takeover`, a live lock of another user is taken with
    /// a new epoch. Events: `lock.acquired` (and `lock.expired` for a lapsed
    /// predecessor) or `lock.taken_over`.
    async fn acquire(
        &self,
        key: &RecordKey,
        user: &str,
        client: &str,
        ttl_ms: i64,
        takeover: bool,
    ) -> StoreResult<Acquired>;

    /// Extends a live lock whose epoch is `token`; `None` when it is not live
    /// with that epoch. Event: `lock.renewed`.
    async fn renew(&self, key: &RecordKey, token: i64, ttl_ms: i64) -> StoreResult<Option<Lock>>;

    /// Deletes the lock if its epoch is `token`. Event: `lock.released`.
    async fn release(&self, key: &RecordKey, token: i64, by: &str) -> StoreResult<Option<Lock>>;

    /// Deletes the lock whoever holds it. Event: `lock.released` (reason `forced`).
    async fn force_release(&self, key: &RecordKey, by: &str) -> StoreResult<Option<Lock>>;

    /// The live lock, if any.
    async fn lock_status(&self, key: &RecordKey) -> StoreResult<Option<Lock>>;

    /// Deletes every lease that ended by the database clock, with a
    /// `lock.expired` event each. Safe to run on every node at once.
    async fn expire_locks(&self) -> StoreResult<Vec<(String, Lock)>>;

    /// Marks locks whose holder no live node reports connected, clears the
    /// mark when the holder is back, and releases locks marked for longer
    /// than `grace_ms` (`lock.released`, reason `disconnected`). A node is
    /// live while its heartbeat is younger than `node_ttl_ms`.
    async fn release_abandoned(
        &self,
        grace_ms: i64,
        node_ttl_ms: i64,
    ) -> StoreResult<Vec<(String, Lock)>>;

    /// Records this node as live and applies the change in its connected users.
    async fn heartbeat(
        &self,
        node_id: &str,
        node_name: &str,
        added: &[(String, String)],
        removed: &[(String, String)],
        node_ttl_ms: i64,
    ) -> StoreResult<()>;

    /// Forgets a node (graceful stop): its users count as disconnected now.
    async fn forget_node(&self, node_id: &str) -> StoreResult<()>;

    async fn save_draft(
        &self,
        key: &RecordKey,
        user: &str,
        fields: &Map<String, Value>,
    ) -> StoreResult<i64>;

    /// The user's draft and when it was saved.
    async fn get_draft(
        &self,
        key: &RecordKey,
        user: &str,
    ) -> StoreResult<Option<(Map<String, Value>, i64)>>;

    /// Claims up to `limit` unclaimed outbox events (oldest first) for
    /// `lease_ms`; a claim that is not acknowledged in time is claimed again.
    async fn claim_outbox(&self, limit: i64, lease_ms: i64) -> StoreResult<Vec<OutboxEvent>>;

    /// Deletes published events.
    async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()>;

    /// Returns an event to the queue after `delay_ms`.
    async fn retry_outbox(&self, id: i64, delay_ms: i64) -> StoreResult<()>;

    /// The newest change version of a tenant (0 before any change).
    async fn change_version(&self, tenant: &str) -> StoreResult<i64>;

    /// Like [`Store::write`] (same fence, same events), but a stale base
    /// version goes through the conflict engine instead of failing: the
    /// base is the writer's `base` values, else the change log at
    /// `base_version`; the remote side is the stored record. Field
    /// conflicts are stored (with `conflict.detected` events when one is
    /// left open) in the same transaction.
    async fn merge_write(&self, m: MergeWrite) -> StoreResult<Merged>;

    /// Applies one offline mutation of `client` (Replicache model): in one
    /// transaction, reads the client's `last_seq` for update; a seq at or
    /// below it returns the stored result; a seq above `last_seq + 1` is a
    /// gap and writes nothing; otherwise applies the plan (a permanent
    /// failure becomes a `rejected` result), stores the result built by
    /// `result` and advances `last_seq`. A transient error has written
    /// nothing.
    async fn push_mutation(
        &self,
        tenant: &str,
        client: &str,
        user: &str,
        seq: i64,
        plan: MutationPlan,
    ) -> StoreResult<PushStep>;

    /// The client's `last_seq` (0 when unknown).
    async fn last_seq(&self, tenant: &str, client: &str) -> StoreResult<i64>;

    /// Records changed after change version `cursor`, oldest change first,
    /// at most `limit`, optionally only of `entities`. The new cursor never
    /// passes a version that is not yet committed.
    async fn pull(
        &self,
        tenant: &str,
        cursor: i64,
        entities: &[String],
        limit: i64,
    ) -> StoreResult<Pulled>;

    async fn list_conflicts(
        &self,
        tenant: &str,
        filter: &ConflictFilter,
    ) -> StoreResult<Vec<StoredConflict>>;

    async fn get_conflict(&self, tenant: &str, id: i64) -> StoreResult<Option<StoredConflict>>;

    /// Resolves an open conflict: writes `patch` to the record (no version
    /// check: the person saw both sides), marks the conflict resolved,
    /// appends `{at, by, resolution, fields}` to its history and announces
    /// `conflict.resolved`, in one transaction.
    async fn resolve_conflict(
        &self,
        tenant: &str,
        id: i64,
        by: &str,
        resolution: &str,
        patch: Map<String, Value>,
    ) -> StoreResult<(StoredConflict, Option<Committed>)>;
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the configured store and applies pending migrations: PostgreSQL
/// when `database_url` is set, else SQLite at `<data_dir>/synchub.db`.
pub async fn open(config: &crate::config::Config) -> anyhow::Result<SharedStore> {
    use anyhow::Context as _;
    // Local changes of entities that sync to Zoho queue a push.
    let pushed: Vec<String> = config
        .sync
        .entities
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
        .filter(|m| m.crosses(crate::domain::mapping::Flow::ToZoho))
        .map(|m| m.name().to_owned())
        .collect();
    match &config.database_url {
        Some(url) => {
            let store = postgres::PgStore::connect(url.expose())
                .await
                .context("connecting to PostgreSQL")?
                .with_sync_entities(pushed);
            store.migrate().await.context("migrating PostgreSQL")?;
            Ok(Arc::new(store))
        }
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let path = config.data_dir.join("synchub.db");
            let store = sqlite::SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?
                .with_sync_entities(pushed);
            store.migrate().await.context("migrating SQLite")?;
            Ok(Arc::new(store))
        }
    }
}

/// `synchub migrate`: applies pending migrations to the configured database.
pub async fn migrate(config: &crate::config::Config) -> anyhow::Result<&'static str> {
    let store = open(config).await?;
    Ok(store.backend())
}

/// A migrator over migrations embedded at build time, so the binary needs no
/// files beside it. `files`: (version, description, SQL), in order.
fn migrator(files: &'static [(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    std::borrow::Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}
