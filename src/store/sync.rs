//! The store's part of the Zoho sync (DESIGN.md §4): the durable job queue,
//! the per-field last-synced shadow, sync sessions, small named state and
//! the per-batch outcomes that health analytics sums.
//!
//! The queue follows research/sync-locks.md §3.5. A push job is written in
//! the same transaction as the local change that causes it (see
//! `apply` in `shared.rs`). Claiming sets a lease (owner and expiry,
//! judged by the database clock) and bumps `claims`, the fencing token:
//! finishing, retrying or burying a job quotes it, so a worker whose lease
//! lapsed and whose job was claimed again can no longer touch it.
//!
//! Per-record ordering: at most one queued job per `(serial_key, kind)`
//! (a partial unique index; a second change while one waits is coalesced
//! into it, which is safe because a push is computed from the record's
//! state when it runs), and a queued job is not claimable while a job with
//! its key runs. Two claimers cannot both take the one queued job of a key
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; one writer on SQLite), and a
//! job queued behind a running one only becomes visible to claimers after
//! that running job committed its claim, so two workers never push the
//! same record at once.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{RecordKey, StoreResult};

/// A job to add to the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    /// `push` (one record) or `session` (a sync session's work).
    pub kind: String,
    pub entity: String,
    /// The record id (push) or the session id (session).
    pub record_id: String,
    /// Jobs with the same key never run at once.
    pub serial_key: String,
    pub delay_ms: i64,
}

impl NewJob {
    /// A push of one record, keyed by the record.
    pub fn push(key: &RecordKey) -> Self {
        Self {
            tenant: key.tenant.clone(),
            kind: JOB_PUSH.into(),
            entity: key.entity.clone(),
            record_id: key.id.clone(),
            serial_key: push_serial_key(key),
            delay_ms: 0,
        }
    }
}

pub const JOB_PUSH: &str = "push";
pub const JOB_SESSION: &str = "session";

/// The ordering key of a record's pushes.
pub fn push_serial_key(key: &RecordKey) -> String {
    format!("{}\u{1f}{}\u{1f}{}", key.tenant, key.entity, key.id)
}

/// A claimed (or listed) job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub tenant: String,
    pub kind: String,
    pub entity: String,
    pub record_id: String,
    pub status: String,
    pub attempts: i64,
    /// The fencing token of this claim.
    pub claims: i64,
    pub lease_owner: Option<String>,
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    pub run_at: i64,
    pub created_at: i64,
}

impl Job {
    pub fn key(&self) -> RecordKey {
        RecordKey::new(&self.tenant, &self.entity, &self.record_id)
    }
}

/// How a failed job goes on.
#[derive(Debug, Clone, PartialEq)]
pub enum Retry {
    /// Queued again after `delay_ms`; `counted` adds one to its attempts.
    Later { delay_ms: i64, counted: bool },
    /// Dead-lettered: kept for review, never run again unless revived.
    Dead,
}

/// The last-synced state of one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shadow {
    pub zoho_id: Option<String>,
    /// Local field names to the value last synced.
    pub local: Map<String, Value>,
    /// Zoho field names to the value last synced.
    pub remote: Map<String, Value>,
    /// The local record version last synced (0: never).
    pub version: i64,
    /// Zoho's `Modified_Time` when last seen.
    pub zoho_modified: Option<String>,
    /// `synced`, `pending`, `conflict` or `error`.
    pub status: String,
    pub error: Option<String>,
    pub synced_at: Option<i64>,
}

/// A change to a shadow: maps are merged into the stored ones, `Some`
/// values replace.
#[derive(Debug, Clone, Default)]
pub struct ShadowPatch {
    pub zoho_id: Option<String>,
    pub local: Map<String, Value>,
    pub remote: Map<String, Value>,
    pub version: Option<i64>,
    pub zoho_modified: Option<String>,
    pub status: Option<String>,
    /// Replaces the error (`Some(None)` clears it).
    pub error: Option<Option<String>>,
    /// Marks the record synced now.
    pub synced: bool,
}

/// One worker batch or session step, as health analytics counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStat {
    pub module: String,
    /// `push` or `pull`.
    pub direction: String,
    pub synced: i64,
    pub failed: i64,
    pub duration_ms: i64,
    pub api_calls: i64,
    pub error_code: Option<String>,
    pub at: i64,
}

/// Queue sizes of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub entity: String,
    pub queued: i64,
    pub running: i64,
    pub dead: i64,
}

/// The sync's tables. Every method is one transaction.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Adds a job; `false` when a queued job with the same key and kind
    /// already waits (the change is coalesced into it).
    async fn enqueue_job(&self, job: &NewJob) -> StoreResult<bool>;

    /// Requeues running jobs whose lease lapsed (folding each into a queued
    /// job of its key when one waits), then claims up to `limit` due jobs
    /// of `kind` whose key has no running job, oldest first, for `lease_ms`.
    async fn claim_jobs(
        &self,
        owner: &str,
        kind: &str,
        limit: i64,
        lease_ms: i64,
    ) -> StoreResult<Vec<Job>>;

    /// Extends the leases of jobs `owner` still holds with the same claim
    /// (`(id, claims)` pairs); returns how many.
    async fn extend_leases(
        &self,
        owner: &str,
        jobs: &[(i64, i64)],
        lease_ms: i64,
    ) -> StoreResult<u64>;

    /// Makes a tenant's jobs that wait for a Zoho connection due now.
    async fn unpark_jobs(&self, tenant: &str) -> StoreResult<u64>;

    /// Deletes a finished job; `false` when the claim was lost (fenced out).
    async fn finish_job(&self, job: &Job) -> StoreResult<bool>;

    /// Records a failure and queues the job again or dead-letters it;
    /// `false` when the claim was lost. A retry folds into a queued job of
    /// the same key if one waits.
    async fn fail_job(
        &self,
        job: &Job,
        retry: Retry,
        class: &str,
        message: &str,
    ) -> StoreResult<bool>;

    /// Jobs of a tenant, newest first, optionally of one status.
    async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Job>>;

    /// Queues a dead job again with its attempts reset; `false` when it is
    /// not dead (or a queued job of its key already waits: then it is
    /// dropped, the waiting job covers it).
    async fn revive_job(&self, tenant: &str, id: i64) -> StoreResult<bool>;

    /// Queued, running and dead jobs per entity.
    async fn queue_depth(&self, tenant: &str) -> StoreResult<Vec<QueueDepth>>;

    async fn shadow(&self, key: &RecordKey) -> StoreResult<Option<Shadow>>;

    /// Merges a patch into the record's shadow (creating it); returns the result.
    async fn patch_shadow(&self, key: &RecordKey, patch: &ShadowPatch) -> StoreResult<Shadow>;

    /// The local id of the record linked to a Zoho id.
    async fn find_by_zoho_id(
        &self,
        tenant: &str,
        entity: &str,
        zoho_id: &str,
    ) -> StoreResult<Option<String>>;

    /// Records the Zoho id of a record (`zoho_id` in its views).
    async fn set_zoho_id(&self, key: &RecordKey, zoho_id: &str) -> StoreResult<()>;

    /// Records of a tenant in one sync status, at most `limit`.
    async fn records_in_status(
        &self,
        tenant: &str,
        status: &str,
        limit: i64,
    ) -> StoreResult<Vec<(RecordKey, Shadow)>>;

    /// Sync status counts of a tenant: `(entity, status, count)`.
    async fn status_counts(&self, tenant: &str) -> StoreResult<Vec<(String, String, i64)>>;

    /// Ids of a tenant's live records of `entity` after `after` (paging), in id order.
    async fn record_ids(
        &self,
        tenant: &str,
        entity: &str,
        after: &str,
        limit: i64,
    ) -> StoreResult<Vec<String>>;

    /// Field names of the record's open conflicts (kept out of pushes).
    async fn open_conflict_fields(&self, key: &RecordKey) -> StoreResult<Vec<String>>;

    /// Inserts or replaces a session.
    async fn save_session(
        &self,
        tenant: &str,
        id: &str,
        kind: &str,
        module: &str,
        status: &str,
        body: &Value,
    ) -> StoreResult<()>;

    async fn get_session(&self, tenant: &str, id: &str) -> StoreResult<Option<Value>>;

    /// Sessions newest first, optionally of one status.
    async fn list_sessions(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Value>>;

    async fn get_state(&self, tenant: &str, name: &str) -> StoreResult<Option<String>>;

    async fn put_state(&self, tenant: &str, name: &str, value: &str) -> StoreResult<()>;

    /// Claims the schedule slot `name`: true (for one caller across every
    /// node) when its time has come, moving it `interval_ms` ahead by the
    /// database clock. A new slot opens now when `open_now`, else after
    /// one interval.
    async fn claim_slot(
        &self,
        tenant: &str,
        name: &str,
        interval_ms: i64,
        open_now: bool,
    ) -> StoreResult<bool>;

    async fn add_stat(&self, tenant: &str, stat: &SyncStat) -> StoreResult<()>;

    /// Stats of a tenant since `since_ms` (database clock), oldest first.
    async fn stats_since(&self, tenant: &str, since_ms: i64) -> StoreResult<Vec<SyncStat>>;

    /// Deletes stats older than `before_ms`; returns how many.
    async fn prune_stats(&self, before_ms: i64) -> StoreResult<u64>;

    /// The database clock in Unix milliseconds.
    async fn now_ms(&self) -> StoreResult<i64>;
}

/// The sync queries of one backend: `now_ms!()` (the database clock in Unix
/// milliseconds), `$skip` (the row-lock clause of a claim), `$for_update`
/// and `$live` (a live record) differ.
macro_rules! sync_queries {
    ($skip:literal, $for_update:literal, $live:literal) => {
        mod qs {
            /// As `ENQUEUE`, but a waiting job of the key is updated, so it
            /// stays locked until the change commits: a claimer skips it
            /// (`SKIP LOCKED`) instead of pushing the record as it was.
            pub const ENQUEUE_IN_CHANGE: &str = concat!(
                "INSERT INTO sync_jobs (tenant, kind, entity, record_id, serial_key, status, run_at, created_at, updated_at) ",
                "VALUES ($1, $2, $3, $4, $5, 'queued', ", now_ms!(), " + $6, ", now_ms!(), ", ", now_ms!(), ") ",
                "ON CONFLICT (serial_key, kind) WHERE status = 'queued' DO UPDATE SET updated_at = excluded.updated_at"
            );
            pub const ENQUEUE: &str = concat!(
                "INSERT INTO sync_jobs (tenant, kind, entity, record_id, serial_key, status, run_at, created_at, updated_at) ",
                "VALUES ($1, $2, $3, $4, $5, 'queued', ", now_ms!(), " + $6, ", now_ms!(), ", ", now_ms!(), ") ",
                "ON CONFLICT (serial_key, kind) WHERE status = 'queued' DO NOTHING"
            );
            /// Lapsed leases whose key has a queued job: the queued job covers them.
            pub const REAP_FOLD: &str = concat!(
                "DELETE FROM sync_jobs WHERE status = 'running' AND lease_until < ", now_ms!(),
                " AND EXISTS (SELECT 1 FROM sync_jobs q WHERE q.serial_key = sync_jobs.serial_key ",
                "AND q.kind = sync_jobs.kind AND q.status = 'queued')"
            );
            pub const REAP: &str = concat!(
                "UPDATE sync_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, ",
                "last_error_class = 'lease_expired', last_error = 'the worker holding it stopped renewing its lease', ",
                "run_at = ", now_ms!(), ", updated_at = ", now_ms!(),
                " WHERE status = 'running' AND lease_until < ", now_ms!()
            );
            pub const CLAIM: &str = concat!(
                "UPDATE sync_jobs SET status = 'running', lease_owner = $1, lease_until = ", now_ms!(), " + $2, ",
                "claims = claims + 1, updated_at = ", now_ms!(), " WHERE id IN (",
                "SELECT j.id FROM sync_jobs j WHERE j.kind = $3 AND j.status = 'queued' AND j.run_at <= ", now_ms!(),
                " AND NOT EXISTS (SELECT 1 FROM sync_jobs r WHERE r.serial_key = j.serial_key AND r.status = 'running') ",
                "ORDER BY j.id LIMIT $4 ", $skip, ") ",
                "RETURNING id, tenant, kind, entity, record_id, status, attempts, claims, lease_owner, last_error_class, last_error, run_at, created_at"
            );
            pub const EXTEND: &str = concat!(
                "UPDATE sync_jobs SET lease_until = ", now_ms!(), " + $2 ",
                "WHERE id = $3 AND claims = $4 AND lease_owner = $1 AND status = 'running'"
            );
            /// Jobs of this tenant waiting for a connection run now.
            pub const UNPARK: &str = concat!(
                "UPDATE sync_jobs SET run_at = ", now_ms!(), " WHERE tenant = $1 AND status = 'queued' ",
                "AND last_error_class = 'no_connection'"
            );
            pub const FINISH: &str =
                "DELETE FROM sync_jobs WHERE id = $1 AND claims = $2 AND lease_owner = $3 AND status = 'running'";
            /// A queued job with the same key as this running one.
            pub const QUEUED_TWIN: &str = concat!(
                "SELECT q.id FROM sync_jobs q JOIN sync_jobs r ON r.serial_key = q.serial_key AND r.kind = q.kind ",
                "WHERE r.id = $1 AND q.status = 'queued'"
            );
            pub const DELAY_TWIN: &str = concat!(
                "UPDATE sync_jobs SET run_at = CASE WHEN run_at > ", now_ms!(), " + $2 THEN run_at ELSE ", now_ms!(), " + $2 END, ",
                "attempts = CASE WHEN attempts > $3 THEN attempts ELSE $3 END, last_error_class = $4, last_error = $5, ",
                "updated_at = ", now_ms!(), " WHERE id = $1"
            );
            pub const RETRY: &str = concat!(
                "UPDATE sync_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, ",
                "run_at = ", now_ms!(), " + $4, attempts = $5, last_error_class = $6, last_error = $7, updated_at = ", now_ms!(),
                " WHERE id = $1 AND claims = $2 AND lease_owner = $3 AND status = 'running'"
            );
            pub const BURY: &str = concat!(
                "UPDATE sync_jobs SET status = 'dead', lease_owner = NULL, lease_until = NULL, ",
                "attempts = $4, last_error_class = $5, last_error = $6, updated_at = ", now_ms!(),
                " WHERE id = $1 AND claims = $2 AND lease_owner = $3 AND status = 'running'"
            );
            pub const LIST_JOBS: &str = concat!(
                "SELECT id, tenant, kind, entity, record_id, status, attempts, claims, lease_owner, last_error_class, last_error, run_at, created_at ",
                "FROM sync_jobs WHERE tenant = $1 AND ($2 = '' OR status = $2) ORDER BY id DESC LIMIT $3"
            );
            pub const REVIVE: &str = concat!(
                "UPDATE sync_jobs SET status = 'queued', attempts = 0, run_at = ", now_ms!(), ", updated_at = ", now_ms!(),
                " WHERE tenant = $1 AND id = $2 AND status = 'dead' AND NOT EXISTS (SELECT 1 FROM sync_jobs q ",
                "WHERE q.serial_key = sync_jobs.serial_key AND q.kind = sync_jobs.kind AND q.status = 'queued')"
            );
            pub const DROP_DEAD: &str =
                "DELETE FROM sync_jobs WHERE tenant = $1 AND id = $2 AND status = 'dead'";
            pub const DEPTH: &str =
                "SELECT entity, status, COUNT(*) FROM sync_jobs WHERE tenant = $1 AND kind = 'push' GROUP BY entity, status";
            pub const SHADOW: &str = concat!(
                "SELECT zoho_id, local, remote, version, zoho_modified, status, error, synced_at FROM sync_shadow ",
                "WHERE tenant = $1 AND entity = $2 AND record_id = $3"
            );
            pub const SHADOW_FOR_UPDATE: &str = concat!(
                "SELECT zoho_id, local, remote, version, zoho_modified, status, error, synced_at FROM sync_shadow ",
                "WHERE tenant = $1 AND entity = $2 AND record_id = $3 ", $for_update
            );
            pub const PUT_SHADOW: &str = concat!(
                "INSERT INTO sync_shadow (tenant, entity, record_id, zoho_id, local, remote, version, zoho_modified, status, error, synced_at, updated_at) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $11 THEN ", now_ms!(), " ELSE $12 END, ", now_ms!(), ") ",
                "ON CONFLICT (tenant, entity, record_id) DO UPDATE SET zoho_id = excluded.zoho_id, local = excluded.local, ",
                "remote = excluded.remote, version = excluded.version, zoho_modified = excluded.zoho_modified, ",
                "status = excluded.status, error = excluded.error, synced_at = excluded.synced_at, updated_at = excluded.updated_at ",
                "RETURNING synced_at"
            );
            /// Written with every local change of a synced entity.
            pub const SHADOW_PENDING: &str = concat!(
                "INSERT INTO sync_shadow (tenant, entity, record_id, status, updated_at) VALUES ($1, $2, $3, 'pending', ", now_ms!(), ") ",
                "ON CONFLICT (tenant, entity, record_id) DO UPDATE SET status = CASE WHEN sync_shadow.status = 'conflict' ",
                "THEN sync_shadow.status ELSE 'pending' END, updated_at = excluded.updated_at"
            );
            pub const BY_ZOHO_ID: &str =
                "SELECT record_id FROM sync_shadow WHERE tenant = $1 AND entity = $2 AND zoho_id = $3 LIMIT 1";
            pub const SET_ZOHO_ID: &str =
                "UPDATE records SET zoho_id = $4 WHERE tenant = $1 AND entity = $2 AND id = $3";
            pub const IN_STATUS: &str = concat!(
                "SELECT entity, record_id, zoho_id, local, remote, version, zoho_modified, status, error, synced_at ",
                "FROM sync_shadow WHERE tenant = $1 AND status = $2 ORDER BY updated_at DESC LIMIT $3"
            );
            pub const STATUS_COUNTS: &str =
                "SELECT entity, status, COUNT(*) FROM sync_shadow WHERE tenant = $1 GROUP BY entity, status";
            pub const RECORD_IDS: &str = concat!(
                "SELECT id FROM records WHERE tenant = $1 AND entity = $2 AND id > $3 AND ",
                $live, " ORDER BY id LIMIT $4"
            );
            pub const OPEN_CONFLICTS: &str =
                "SELECT fields FROM conflicts WHERE tenant = $1 AND entity = $2 AND record_id = $3 AND status = 'open'";
            pub const SAVE_SESSION: &str = concat!(
                "INSERT INTO sync_sessions (tenant, id, kind, module, status, body, created_at, updated_at) ",
                "VALUES ($1, $2, $3, $4, $5, $6, ", now_ms!(), ", ", now_ms!(), ") ",
                "ON CONFLICT (tenant, id) DO UPDATE SET status = excluded.status, body = excluded.body, updated_at = excluded.updated_at"
            );
            pub const GET_SESSION: &str =
                "SELECT body FROM sync_sessions WHERE tenant = $1 AND id = $2";
            pub const LIST_SESSIONS: &str = concat!(
                "SELECT body FROM sync_sessions WHERE tenant = $1 AND ($2 = '' OR status = $2) ",
                "ORDER BY created_at DESC, id DESC LIMIT $3"
            );
            pub const GET_STATE: &str =
                "SELECT value FROM sync_state WHERE tenant = $1 AND name = $2";
            pub const PUT_STATE: &str = concat!(
                "INSERT INTO sync_state (tenant, name, value, updated_at) VALUES ($1, $2, $3, ", now_ms!(), ") ",
                "ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
            );
            pub const SLOT_INSERT: &str = concat!(
                "INSERT INTO sync_state (tenant, name, value, updated_at) VALUES ($1, $2, CAST(", now_ms!(), " + $3 AS TEXT), ", now_ms!(), ") ",
                "ON CONFLICT (tenant, name) DO NOTHING"
            );
            /// The slot's value is the time it next opens; one caller moves it.
            pub const SLOT_CLAIM: &str = concat!(
                "UPDATE sync_state SET value = CAST(", now_ms!(), " + $3 AS TEXT), updated_at = ", now_ms!(),
                " WHERE tenant = $1 AND name = $2 AND CAST(value AS BIGINT) <= ", now_ms!()
            );
            pub const ADD_STAT: &str = concat!(
                "INSERT INTO sync_stats (tenant, module, direction, synced, failed, duration_ms, api_calls, error_code, at) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ", now_ms!(), ")"
            );
            pub const STATS_SINCE: &str = concat!(
                "SELECT module, direction, synced, failed, duration_ms, api_calls, error_code, at FROM sync_stats ",
                "WHERE tenant = $1 AND at >= $2 ORDER BY at, id"
            );
            pub const PRUNE_STATS: &str = "DELETE FROM sync_stats WHERE at < $1";
            pub const NOW: &str = concat!("SELECT ", now_ms!());
        }
    };
}

/// The [`SyncStore`] of one SQL backend, over its `qs` queries. Expanded
/// after `sql_store!` in the same module (it uses `keyed`, `Tx`, `DbRow`).
macro_rules! sync_store {
    ($store:ident) => {
        use $crate::store::sync::{
            Job, NewJob, QueueDepth, Retry, Shadow, ShadowPatch, SyncStat, SyncStore,
        };

        /// Columns: see `qs::CLAIM`.
        fn job_from(row: &DbRow) -> StoreResult<Job> {
            Ok(Job {
                id: row.try_get(0)?,
                tenant: row.try_get(1)?,
                kind: row.try_get(2)?,
                entity: row.try_get(3)?,
                record_id: row.try_get(4)?,
                status: row.try_get(5)?,
                attempts: row.try_get(6)?,
                claims: row.try_get(7)?,
                lease_owner: row.try_get(8)?,
                last_error_class: row.try_get(9)?,
                last_error: row.try_get(10)?,
                run_at: row.try_get(11)?,
                created_at: row.try_get(12)?,
            })
        }

        /// Column 0: a session's JSON body.
        fn session_from(row: &DbRow) -> StoreResult<Value> {
            let text: String = row.try_get(0)?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("session: {e}")))
        }

        fn json_map(text: &str) -> StoreResult<Map<String, Value>> {
            parse_fields(text)
        }

        /// Columns from `offset`: zoho_id, local, remote, version,
        /// zoho_modified, status, error, synced_at.
        fn shadow_from(row: &DbRow, offset: usize) -> StoreResult<Shadow> {
            Ok(Shadow {
                zoho_id: row.try_get(offset)?,
                local: json_map(&row.try_get::<String, _>(offset + 1)?)?,
                remote: json_map(&row.try_get::<String, _>(offset + 2)?)?,
                version: row.try_get(offset + 3)?,
                zoho_modified: row.try_get(offset + 4)?,
                status: row.try_get(offset + 5)?,
                error: row.try_get(offset + 6)?,
                synced_at: row.try_get(offset + 7)?,
            })
        }

        /// A job queued meanwhile by another transaction took the key
        /// (PostgreSQL): the whole step is tried again and folds into it.
        fn is_unique_violation(e: &StoreError) -> bool {
            matches!(e, StoreError::Database(d)
                if d.as_database_error().is_some_and(|d| d.is_unique_violation()))
        }

        async fn claim_once(
            pool: &sqlx::Pool<DbKind>,
            owner: &str,
            kind: &str,
            limit: i64,
            lease_ms: i64,
        ) -> StoreResult<Vec<Job>> {
            let mut tx = pool.begin().await?;
            sqlx::query(qs::REAP_FOLD).execute(&mut *tx).await?;
            sqlx::query(qs::REAP).execute(&mut *tx).await?;
            let rows = sqlx::query(qs::CLAIM)
                .bind(owner)
                .bind(lease_ms)
                .bind(kind)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let mut jobs = rows.iter().map(job_from).collect::<StoreResult<Vec<_>>>()?;
            jobs.sort_by_key(|j| j.id);
            Ok(jobs)
        }

        async fn fail_once(
            pool: &sqlx::Pool<DbKind>,
            job: &Job,
            retry: Retry,
            class: &str,
            message: &str,
        ) -> StoreResult<bool> {
            let owner = job.lease_owner.as_deref().unwrap_or("");
            let mut tx = pool.begin().await?;
            let done = match retry {
                Retry::Later { delay_ms, counted } => {
                    let attempts = job.attempts + i64::from(counted);
                    let twin: Option<i64> = sqlx::query(qs::QUEUED_TWIN)
                        .bind(job.id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?;
                    match twin {
                        // A change queued meanwhile covers this job: it
                        // inherits the backoff and the attempts.
                        Some(twin) => {
                            let gone = sqlx::query(qs::FINISH)
                                .bind(job.id)
                                .bind(job.claims)
                                .bind(owner)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                                > 0;
                            if gone {
                                sqlx::query(qs::DELAY_TWIN)
                                    .bind(twin)
                                    .bind(delay_ms)
                                    .bind(attempts)
                                    .bind(class)
                                    .bind(message)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            gone
                        }
                        None => {
                            sqlx::query(qs::RETRY)
                                .bind(job.id)
                                .bind(job.claims)
                                .bind(owner)
                                .bind(delay_ms)
                                .bind(attempts)
                                .bind(class)
                                .bind(message)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                                > 0
                        }
                    }
                }
                Retry::Dead => {
                    sqlx::query(qs::BURY)
                        .bind(job.id)
                        .bind(job.claims)
                        .bind(owner)
                        .bind(job.attempts + 1)
                        .bind(class)
                        .bind(message)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        > 0
                }
            };
            tx.commit().await?;
            Ok(done)
        }

        /// Marks a synced entity's record pending and queues its push, in
        /// the transaction of the change.
        async fn queue_push(tx: &mut Tx<'_>, key: &RecordKey) -> StoreResult<()> {
            let job = NewJob::push(key);
            sqlx::query(qs::ENQUEUE_IN_CHANGE)
                .bind(&job.tenant)
                .bind(&job.kind)
                .bind(&job.entity)
                .bind(&job.record_id)
                .bind(&job.serial_key)
                .bind(job.delay_ms)
                .execute(&mut **tx)
                .await?;
            keyed(qs::SHADOW_PENDING, key).execute(&mut **tx).await?;
            Ok(())
        }

        #[async_trait::async_trait]
        impl SyncStore for $store {
            async fn enqueue_job(&self, job: &NewJob) -> StoreResult<bool> {
                let done = sqlx::query(qs::ENQUEUE)
                    .bind(&job.tenant)
                    .bind(&job.kind)
                    .bind(&job.entity)
                    .bind(&job.record_id)
                    .bind(&job.serial_key)
                    .bind(job.delay_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn claim_jobs(
                &self,
                owner: &str,
                kind: &str,
                limit: i64,
                lease_ms: i64,
            ) -> StoreResult<Vec<Job>> {
                let mut tries = 0;
                loop {
                    match claim_once(&self.pool, owner, kind, limit, lease_ms).await {
                        Err(e) if tries < 3 && is_unique_violation(&e) => tries += 1,
                        other => return other,
                    }
                }
            }


            async fn extend_leases(
                &self,
                owner: &str,
                jobs: &[(i64, i64)],
                lease_ms: i64,
            ) -> StoreResult<u64> {
                let mut tx = self.pool.begin().await?;
                let mut n = 0;
                for (id, claims) in jobs {
                    n += sqlx::query(qs::EXTEND)
                        .bind(owner)
                        .bind(lease_ms)
                        .bind(id)
                        .bind(claims)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(n)
            }

            async fn unpark_jobs(&self, tenant: &str) -> StoreResult<u64> {
                Ok(sqlx::query(qs::UNPARK)
                    .bind(tenant)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn finish_job(&self, job: &Job) -> StoreResult<bool> {
                let done = sqlx::query(qs::FINISH)
                    .bind(job.id)
                    .bind(job.claims)
                    .bind(job.lease_owner.as_deref().unwrap_or(""))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn fail_job(
                &self,
                job: &Job,
                retry: Retry,
                class: &str,
                message: &str,
            ) -> StoreResult<bool> {
                let mut tries = 0;
                loop {
                    match fail_once(&self.pool, job, retry.clone(), class, message).await {
                        Err(e) if tries < 3 && is_unique_violation(&e) => tries += 1,
                        other => return other,
                    }
                }
            }

            async fn list_jobs(
                &self,
                tenant: &str,
                status: Option<&str>,
                limit: i64,
            ) -> StoreResult<Vec<Job>> {
                let rows = sqlx::query(qs::LIST_JOBS)
                    .bind(tenant)
                    .bind(status.unwrap_or(""))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(job_from).collect()
            }

            async fn revive_job(&self, tenant: &str, id: i64) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let revived = sqlx::query(qs::REVIVE)
                    .bind(tenant)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                let dropped = !revived
                    && sqlx::query(qs::DROP_DEAD)
                        .bind(tenant)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        > 0;
                tx.commit().await?;
                Ok(revived || dropped)
            }

            async fn queue_depth(&self, tenant: &str) -> StoreResult<Vec<QueueDepth>> {
                let rows = sqlx::query(qs::DEPTH)
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out: Vec<QueueDepth> = Vec::new();
                for row in &rows {
                    let entity: String = row.try_get(0)?;
                    let status: String = row.try_get(1)?;
                    let n: i64 = row.try_get(2)?;
                    let i = match out.iter().position(|d| d.entity == entity) {
                        Some(i) => i,
                        None => {
                            out.push(QueueDepth {
                                entity,
                                ..QueueDepth::default()
                            });
                            out.len() - 1
                        }
                    };
                    match status.as_str() {
                        "queued" => out[i].queued += n,
                        "running" => out[i].running += n,
                        _ => out[i].dead += n,
                    }
                }
                out.sort_by(|a, b| a.entity.cmp(&b.entity));
                Ok(out)
            }

            async fn shadow(&self, key: &RecordKey) -> StoreResult<Option<Shadow>> {
                let row = keyed(qs::SHADOW, key).fetch_optional(&self.pool).await?;
                row.as_ref().map(|r| shadow_from(r, 0)).transpose()
            }

            async fn patch_shadow(
                &self,
                key: &RecordKey,
                patch: &ShadowPatch,
            ) -> StoreResult<Shadow> {
                let mut tx = self.pool.begin().await?;
                let row = keyed(qs::SHADOW_FOR_UPDATE, key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let mut s = row
                    .as_ref()
                    .map(|r| shadow_from(r, 0))
                    .transpose()?
                    .unwrap_or_else(|| Shadow {
                        status: "pending".into(),
                        ..Shadow::default()
                    });
                if patch.zoho_id.is_some() {
                    s.zoho_id = patch.zoho_id.clone();
                }
                s.local
                    .extend(patch.local.iter().map(|(k, v)| (k.clone(), v.clone())));
                s.remote
                    .extend(patch.remote.iter().map(|(k, v)| (k.clone(), v.clone())));
                if let Some(v) = patch.version {
                    // Versions only grow: a late writer never moves it back.
                    s.version = s.version.max(v);
                }
                if patch.zoho_modified.is_some() {
                    s.zoho_modified = patch.zoho_modified.clone();
                }
                if let Some(status) = &patch.status {
                    s.status = status.clone();
                }
                if let Some(error) = &patch.error {
                    s.error = error.clone();
                }
                let synced_at: Option<i64> = keyed(qs::PUT_SHADOW, key)
                    .bind(&s.zoho_id)
                    .bind(Value::Object(s.local.clone()).to_string())
                    .bind(Value::Object(s.remote.clone()).to_string())
                    .bind(s.version)
                    .bind(&s.zoho_modified)
                    .bind(&s.status)
                    .bind(&s.error)
                    .bind(patch.synced)
                    .bind(s.synced_at)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                s.synced_at = synced_at;
                tx.commit().await?;
                Ok(s)
            }

            async fn find_by_zoho_id(
                &self,
                tenant: &str,
                entity: &str,
                zoho_id: &str,
            ) -> StoreResult<Option<String>> {
                let key = RecordKey::new(tenant, entity, zoho_id);
                let row = keyed(qs::BY_ZOHO_ID, &key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            }

            async fn set_zoho_id(&self, key: &RecordKey, zoho_id: &str) -> StoreResult<()> {
                keyed(qs::SET_ZOHO_ID, key)
                    .bind(zoho_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn records_in_status(
                &self,
                tenant: &str,
                status: &str,
                limit: i64,
            ) -> StoreResult<Vec<(RecordKey, Shadow)>> {
                let rows = sqlx::query(qs::IN_STATUS)
                    .bind(tenant)
                    .bind(status)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            RecordKey::new(
                                tenant,
                                r.try_get::<String, _>(0)?,
                                r.try_get::<String, _>(1)?,
                            ),
                            shadow_from(r, 2)?,
                        ))
                    })
                    .collect()
            }

            async fn status_counts(&self, tenant: &str) -> StoreResult<Vec<(String, String, i64)>> {
                let rows = sqlx::query(qs::STATUS_COUNTS)
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            }

            async fn record_ids(
                &self,
                tenant: &str,
                entity: &str,
                after: &str,
                limit: i64,
            ) -> StoreResult<Vec<String>> {
                let rows = sqlx::query(qs::RECORD_IDS)
                    .bind(tenant)
                    .bind(entity)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
            }

            async fn open_conflict_fields(&self, key: &RecordKey) -> StoreResult<Vec<String>> {
                let rows = keyed(qs::OPEN_CONFLICTS, key).fetch_all(&self.pool).await?;
                let mut out = Vec::new();
                for row in &rows {
                    let text: String = row.try_get(0)?;
                    let fields: Vec<Value> = serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("conflict fields: {e}")))?;
                    for f in &fields {
                        if f.get("status").and_then(Value::as_str) == Some("unresolved")
                            && let Some(name) = f.get("field").and_then(Value::as_str)
                        {
                            out.push(name.to_owned());
                        }
                    }
                }
                out.sort();
                out.dedup();
                Ok(out)
            }

            async fn save_session(
                &self,
                tenant: &str,
                id: &str,
                kind: &str,
                module: &str,
                status: &str,
                body: &Value,
            ) -> StoreResult<()> {
                sqlx::query(qs::SAVE_SESSION)
                    .bind(tenant)
                    .bind(id)
                    .bind(kind)
                    .bind(module)
                    .bind(status)
                    .bind(body.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_session(&self, tenant: &str, id: &str) -> StoreResult<Option<Value>> {
                let row = sqlx::query(qs::GET_SESSION)
                    .bind(tenant)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(session_from).transpose()
            }

            async fn list_sessions(
                &self,
                tenant: &str,
                status: Option<&str>,
                limit: i64,
            ) -> StoreResult<Vec<Value>> {
                let rows = sqlx::query(qs::LIST_SESSIONS)
                    .bind(tenant)
                    .bind(status.unwrap_or(""))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(session_from).collect()
            }

            async fn get_state(&self, tenant: &str, name: &str) -> StoreResult<Option<String>> {
                let row = sqlx::query(qs::GET_STATE)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            }

            async fn put_state(&self, tenant: &str, name: &str, value: &str) -> StoreResult<()> {
                sqlx::query(qs::PUT_STATE)
                    .bind(tenant)
                    .bind(name)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_slot(
                &self,
                tenant: &str,
                name: &str,
                interval_ms: i64,
                open_now: bool,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(qs::SLOT_INSERT)
                    .bind(tenant)
                    .bind(name)
                    .bind(if open_now { 0 } else { interval_ms })
                    .execute(&mut *tx)
                    .await?;
                let won = sqlx::query(qs::SLOT_CLAIM)
                    .bind(tenant)
                    .bind(name)
                    .bind(interval_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                tx.commit().await?;
                Ok(won)
            }

            async fn add_stat(&self, tenant: &str, stat: &SyncStat) -> StoreResult<()> {
                sqlx::query(qs::ADD_STAT)
                    .bind(tenant)
                    .bind(&stat.module)
                    .bind(&stat.direction)
                    .bind(stat.synced)
                    .bind(stat.failed)
                    .bind(stat.duration_ms)
                    .bind(stat.api_calls)
                    .bind(&stat.error_code)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn stats_since(&self, tenant: &str, since_ms: i64) -> StoreResult<Vec<SyncStat>> {
                let rows = sqlx::query(qs::STATS_SINCE)
                    .bind(tenant)
                    .bind(since_ms)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SyncStat {
                            module: r.try_get(0)?,
                            direction: r.try_get(1)?,
                            synced: r.try_get(2)?,
                            failed: r.try_get(3)?,
                            duration_ms: r.try_get(4)?,
                            api_calls: r.try_get(5)?,
                            error_code: r.try_get(6)?,
                            at: r.try_get(7)?,
                        })
                    })
                    .collect()
            }

            async fn prune_stats(&self, before_ms: i64) -> StoreResult<u64> {
                Ok(sqlx::query(qs::PRUNE_STATS)
                    .bind(before_ms)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn now_ms(&self) -> StoreResult<i64> {
                Ok(sqlx::query(qs::NOW)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?)
            }
        }
    };
}

/// Implements [`SyncStore`] by delegating to a field (test wrappers that
/// alter one `Store` method).
#[cfg(test)]
macro_rules! delegate_sync_store {
    ($ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::sync::SyncStore for $ty {
            async fn enqueue_job(
                &self,
                job: &$crate::store::sync::NewJob,
            ) -> $crate::store::StoreResult<bool> {
                self.$field.enqueue_job(job).await
            }
            async fn claim_jobs(
                &self,
                owner: &str,
                kind: &str,
                limit: i64,
                lease_ms: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::sync::Job>> {
                self.$field.claim_jobs(owner, kind, limit, lease_ms).await
            }
            async fn extend_leases(
                &self,
                owner: &str,
                jobs: &[(i64, i64)],
                lease_ms: i64,
            ) -> $crate::store::StoreResult<u64> {
                self.$field.extend_leases(owner, jobs, lease_ms).await
            }
            async fn unpark_jobs(&self, tenant: &str) -> $crate::store::StoreResult<u64> {
                self.$field.unpark_jobs(tenant).await
            }
            async fn finish_job(
                &self,
                job: &$crate::store::sync::Job,
            ) -> $crate::store::StoreResult<bool> {
                self.$field.finish_job(job).await
            }
            async fn fail_job(
                &self,
                job: &$crate::store::sync::Job,
                retry: $crate::store::sync::Retry,
                class: &str,
                message: &str,
            ) -> $crate::store::StoreResult<bool> {
                self.$field.fail_job(job, retry, class, message).await
            }
            async fn list_jobs(
                &self,
                tenant: &str,
                status: Option<&str>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::sync::Job>> {
                self.$field.list_jobs(tenant, status, limit).await
            }
            async fn revive_job(&self, tenant: &str, id: i64) -> $crate::store::StoreResult<bool> {
                self.$field.revive_job(tenant, id).await
            }
            async fn queue_depth(
                &self,
                tenant: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::sync::QueueDepth>> {
                self.$field.queue_depth(tenant).await
            }
            async fn shadow(
                &self,
                key: &$crate::store::RecordKey,
            ) -> $crate::store::StoreResult<Option<$crate::store::sync::Shadow>> {
                self.$field.shadow(key).await
            }
            async fn patch_shadow(
                &self,
                key: &$crate::store::RecordKey,
                patch: &$crate::store::sync::ShadowPatch,
            ) -> $crate::store::StoreResult<$crate::store::sync::Shadow> {
                self.$field.patch_shadow(key, patch).await
            }
            async fn find_by_zoho_id(
                &self,
                tenant: &str,
                entity: &str,
                zoho_id: &str,
            ) -> $crate::store::StoreResult<Option<String>> {
                self.$field.find_by_zoho_id(tenant, entity, zoho_id).await
            }
            async fn set_zoho_id(
                &self,
                key: &$crate::store::RecordKey,
                zoho_id: &str,
            ) -> $crate::store::StoreResult<()> {
                self.$field.set_zoho_id(key, zoho_id).await
            }
            async fn records_in_status(
                &self,
                tenant: &str,
                status: &str,
                limit: i64,
            ) -> $crate::store::StoreResult<
                Vec<($crate::store::RecordKey, $crate::store::sync::Shadow)>,
            > {
                self.$field.records_in_status(tenant, status, limit).await
            }
            async fn status_counts(
                &self,
                tenant: &str,
            ) -> $crate::store::StoreResult<Vec<(String, String, i64)>> {
                self.$field.status_counts(tenant).await
            }
            async fn record_ids(
                &self,
                tenant: &str,
                entity: &str,
                after: &str,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<String>> {
                self.$field.record_ids(tenant, entity, after, limit).await
            }
            async fn open_conflict_fields(
                &self,
                key: &$crate::store::RecordKey,
            ) -> $crate::store::StoreResult<Vec<String>> {
                self.$field.open_conflict_fields(key).await
            }
            async fn save_session(
                &self,
                tenant: &str,
                id: &str,
                kind: &str,
                module: &str,
                status: &str,
                body: &serde_json::Value,
            ) -> $crate::store::StoreResult<()> {
                self.$field
                    .save_session(tenant, id, kind, module, status, body)
                    .await
            }
            async fn get_session(
                &self,
                tenant: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<serde_json::Value>> {
                self.$field.get_session(tenant, id).await
            }
            async fn list_sessions(
                &self,
                tenant: &str,
                status: Option<&str>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<serde_json::Value>> {
                self.$field.list_sessions(tenant, status, limit).await
            }
            async fn get_state(
                &self,
                tenant: &str,
                name: &str,
            ) -> $crate::store::StoreResult<Option<String>> {
                self.$field.get_state(tenant, name).await
            }
            async fn put_state(
                &self,
                tenant: &str,
                name: &str,
                value: &str,
            ) -> $crate::store::StoreResult<()> {
                self.$field.put_state(tenant, name, value).await
            }
            async fn claim_slot(
                &self,
                tenant: &str,
                name: &str,
                interval_ms: i64,
                open_now: bool,
            ) -> $crate::store::StoreResult<bool> {
                self.$field
                    .claim_slot(tenant, name, interval_ms, open_now)
                    .await
            }
            async fn add_stat(
                &self,
                tenant: &str,
                stat: &$crate::store::sync::SyncStat,
            ) -> $crate::store::StoreResult<()> {
                self.$field.add_stat(tenant, stat).await
            }
            async fn stats_since(
                &self,
                tenant: &str,
                since_ms: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::sync::SyncStat>> {
                self.$field.stats_since(tenant, since_ms).await
            }
            async fn prune_stats(&self, before_ms: i64) -> $crate::store::StoreResult<u64> {
                self.$field.prune_stats(before_ms).await
            }
            async fn now_ms(&self) -> $crate::store::StoreResult<i64> {
                self.$field.now_ms().await
            }
        }
    };
}
#[cfg(test)]
pub(crate) use delegate_sync_store;
