//! The record and edit-lock service: the editor's path. One service
//! function per operation serves both the RPC method (`rpc.rs`) and the HTTP
//! route (`api/records.rs`); it validates input, authorises the caller, calls
//! the store once and wakes the outbox relay. It never publishes itself:
//! events leave through the outbox (`tasks.rs`), so nothing is announced
//! before it is committed and nothing committed goes unannounced.

pub mod input;
pub mod offline;
pub mod rpc;
pub mod tasks;

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::config::RecordsConfig;
use crate::domain::conflict::ConflictRules;
use crate::store::{
    Acquired, Lock, MergeStatus, MergeWrite, Record, RecordKey, SharedStore, Source, StoreError,
    StoredConflict, Write, WriteKind, conflict_view, lock_view, record_view, rfc3339_ms,
};

pub use tasks::Liveness;

/// Who is asking, as verified at the edge.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    /// The user id (`sub`), or `api` for a backend acting with the tenant's key.
    pub user: String,
    /// The connection id over WebSocket; empty over HTTP.
    pub client: String,
    pub admin: bool,
    /// A backend with the tenant's API key: writes like an integration
    /// (version checked, edit locks not in its way).
    pub backend: bool,
}

impl Caller {
    pub fn user(tenant: &str, user: &str, client: &str, admin: bool) -> Self {
        Self {
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            client: client.to_owned(),
            admin,
            backend: false,
        }
    }

    pub fn backend(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            user: "api".to_owned(),
            client: String::new(),
            admin: true,
            backend: true,
        }
    }
}

/// Every way a records call can fail. `code()` is the stable catalogue
/// shared by HTTP (`{"error":{"code"}}`) and RPC (the JSON error message).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("unknown entity `{0}`")]
    UnknownEntity(String),
    #[error("record not found")]
    NotFound,
    #[error("record already exists")]
    AlreadyExists,
    /// A stale base version: `conflict` is the stored field conflict when
    /// the three-way merge left fields for review.
    #[error("record changed since version {base}: current version is {}", current.version)]
    VersionConflict {
        base: i64,
        current: Box<Record>,
        conflict: Option<Box<StoredConflict>>,
    },
    #[error("this conflict is already resolved")]
    ConflictClosed,
    #[error("the lock is no longer held with this token")]
    LockLost { current: Option<Box<Lock>> },
    #[error("{} is editing this record", lock.holder)]
    LockHeld { lock: Box<Lock> },
    #[error("this needs the admin role")]
    Forbidden,
    #[error("the database is unavailable, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ServiceError {
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::InvalidInput(_) => "invalid_input",
            ServiceError::UnknownEntity(_) => "unknown_entity",
            ServiceError::NotFound => "not_found",
            ServiceError::AlreadyExists => "already_exists",
            ServiceError::VersionConflict { .. } => "version_conflict",
            ServiceError::ConflictClosed => "conflict_closed",
            ServiceError::LockLost { .. } => "lock_lost",
            ServiceError::LockHeld { .. } => "lock_held",
            ServiceError::Forbidden => "forbidden",
            ServiceError::Unavailable => "unavailable",
            ServiceError::Internal => "internal",
        }
    }

    /// The RPC application error code (400..2000), by analogy with HTTP.
    pub fn rpc_code(&self) -> u32 {
        match self {
            ServiceError::InvalidInput(_) => 400,
            ServiceError::Forbidden => 403,
            ServiceError::NotFound => 404,
            ServiceError::VersionConflict { .. } | ServiceError::ConflictClosed => 409,
            ServiceError::LockLost { .. } => 410,
            ServiceError::AlreadyExists => 412,
            ServiceError::UnknownEntity(_) => 422,
            ServiceError::LockHeld { .. } => 423,
            ServiceError::Internal => 500,
            ServiceError::Unavailable => 503,
        }
    }

    pub fn is_temporary(&self) -> bool {
        matches!(self, ServiceError::Unavailable)
    }

    /// `{code, message, ...details}`: the HTTP error body's inner object and
    /// the RPC error's message (as JSON text).
    pub fn body(&self) -> Value {
        let mut v = json!({"code": self.code(), "message": self.to_string()});
        match self {
            ServiceError::VersionConflict {
                base,
                current,
                conflict,
            } => {
                v["base_version"] = json!(base);
                v["current"] = record_view(current);
                if let Some(c) = conflict {
                    v["conflict"] = conflict_view(c);
                }
            }
            ServiceError::LockLost { current } => {
                v["lock"] = current.as_deref().map_or(Value::Null, lock_view);
            }
            ServiceError::LockHeld { lock } => v["lock"] = lock_view(lock),
            _ => {}
        }
        v
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound,
            StoreError::AlreadyExists => ServiceError::AlreadyExists,
            StoreError::Conflict { base, current } => ServiceError::VersionConflict {
                base,
                current,
                conflict: None,
            },
            StoreError::ConflictClosed => ServiceError::ConflictClosed,
            StoreError::ClientTaken => {
                ServiceError::InvalidInput("this client_id belongs to another user".into())
            }
            StoreError::LockLost { current } => ServiceError::LockLost {
                current: current.map(Box::new),
            },
            StoreError::LockHeld { lock } => ServiceError::LockHeld {
                lock: Box::new(lock),
            },
            e if e.is_transient() => {
                tracing::warn!(error = %e, "store unavailable");
                ServiceError::Unavailable
            }
            e => {
                tracing::error!(error = %e, "store failed");
                ServiceError::Internal
            }
        }
    }
}

pub type ServiceResult = Result<Value, ServiceError>;

/// The service: cheap to clone behind an `Arc`.
pub struct RecordService {
    store: SharedStore,
    config: RecordsConfig,
    /// Per-entity conflict rules (`[conflicts.<entity>]`), validated at start.
    rules: ConflictRules,
    /// Wakes the outbox relay after a commit that wrote events.
    relay: Arc<Notify>,
}

impl RecordService {
    pub fn new(store: SharedStore, config: RecordsConfig, rules: ConflictRules) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            rules,
            relay: Arc::new(Notify::new()),
        })
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn config(&self) -> &RecordsConfig {
        &self.config
    }

    pub fn relay_signal(&self) -> Arc<Notify> {
        self.relay.clone()
    }

    fn committed(&self) {
        self.relay.notify_one();
    }

    /// Parses an (entity, id) pair into a key of the caller's tenant.
    pub fn key(&self, caller: &Caller, entity: &str, id: &str) -> Result<RecordKey, ServiceError> {
        if !self.config.entities.iter().any(|e| e == entity) {
            return Err(ServiceError::UnknownEntity(
                entity.chars().take(64).collect(),
            ));
        }
        input::check_id(id, self.config.max_id_length)?;
        Ok(RecordKey::new(&caller.tenant, entity, id))
    }

    fn ttl_ms(&self, ttl_ms: Option<i64>) -> Result<i64, ServiceError> {
        let min = self.config.lock_min_ttl.as_millis() as i64;
        let max = self.config.lock_max_ttl.as_millis() as i64;
        match ttl_ms {
            None => Ok(self.config.lock_ttl.as_millis() as i64),
            Some(t) if (min..=max).contains(&t) => Ok(t),
            Some(_) => Err(ServiceError::InvalidInput(format!(
                "ttl_ms must be between {min} and {max}"
            ))),
        }
    }

    fn fields(&self, fields: Map<String, Value>) -> Result<Map<String, Value>, ServiceError> {
        input::check_fields(&fields, self.config.max_fields_bytes)?;
        Ok(fields)
    }

    /// The token goes to its holder only.
    fn lock_for(&self, caller: &Caller, lock: &Lock) -> Value {
        let mut v = lock_view(lock);
        if caller.user == lock.holder && !caller.backend {
            v["token"] = json!(lock.epoch);
        }
        v
    }

    fn write(&self, caller: &Caller, key: RecordKey, kind: WriteKind) -> Write {
        Write {
            key,
            kind,
            base_version: None,
            fields: Map::new(),
            lock_token: None,
            respect_locks: !caller.backend,
            by: caller.user.clone(),
            source: Source::Local,
        }
    }

    /// `record.get`, `GET /v1/records/{entity}/{id}`.
    pub async fn get(&self, caller: &Caller, entity: &str, id: &str) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        match self.store.get(&key).await? {
            Some(r) => Ok(json!({ "record": record_view(&r) })),
            None => Err(ServiceError::NotFound),
        }
    }

    /// `record.update`, `PATCH /v1/records/{entity}/{id}`: base version 0
    /// creates a record that does not exist yet. A stale base version goes
    /// through the same three-way merge as an offline mutation: fields the
    /// rules decide are written (`status: merged`); fields left for review
    /// are queued and the call fails with `version_conflict` carrying the
    /// conflict and the record as it now is.
    pub async fn update(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        base_version: i64,
        fields: Map<String, Value>,
        lock_token: Option<i64>,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let mut w = self.write(caller, key, WriteKind::Update);
        w.base_version = Some(base_version);
        w.fields = self.fields(fields)?;
        w.lock_token = lock_token;
        let rules = self.rules.for_entity(&w.key.entity).into_owned();
        let m = self
            .store
            .merge_write(MergeWrite {
                write: w,
                base: Map::new(),
                // The online edit is being made now.
                at: Some(time::OffsetDateTime::now_utc()),
                rules,
                origin: None,
                writer_is_remote: false,
            })
            .await?;
        if !m.committed.changed.is_empty() || m.conflict.is_some() {
            self.committed();
        }
        if m.status == MergeStatus::Conflict {
            return Err(ServiceError::VersionConflict {
                base: base_version,
                current: Box::new(m.committed.record),
                conflict: m.conflict.map(Box::new),
            });
        }
        let mut out = json!({
            "record": record_view(&m.committed.record),
            "changed": m.committed.changed,
            "status": m.status.as_str(),
        });
        if let Some(c) = &m.conflict {
            out["conflict"] = conflict_view(c);
        }
        Ok(out)
    }

    /// `POST /v1/records/{entity}`: a new record (id generated when absent).
    pub async fn create(
        &self,
        caller: &Caller,
        entity: &str,
        id: Option<&str>,
        fields: Map<String, Value>,
    ) -> ServiceResult {
        let id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let key = self.key(caller, entity, &id)?;
        let mut w = self.write(caller, key, WriteKind::Create);
        w.fields = self.fields(fields)?;
        let c = self.store.write(w).await?;
        self.committed();
        Ok(json!({ "record": record_view(&c.record) }))
    }

    /// `DELETE /v1/records/{entity}/{id}`.
    pub async fn delete(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        base_version: Option<i64>,
        lock_token: Option<i64>,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let mut w = self.write(caller, key, WriteKind::Delete);
        w.base_version = base_version;
        w.lock_token = lock_token;
        let c = self.store.write(w).await?;
        self.committed();
        Ok(json!({ "deleted": true, "version": c.record.version }))
    }

    /// `lock.acquire`; `takeover` (admin only) displaces a live holder.
    pub async fn lock_acquire(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        ttl_ms: Option<i64>,
        takeover: bool,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        if takeover && !caller.admin {
            return Err(ServiceError::Forbidden);
        }
        let ttl = self.ttl_ms(ttl_ms)?;
        let r = self
            .store
            .acquire(&key, &caller.user, &caller.client, ttl, takeover)
            .await?;
        Ok(match r {
            Acquired::Granted(l) => {
                self.committed();
                json!({"acquired": true, "lock": self.lock_for(caller, &l)})
            }
            Acquired::Held(l) => json!({"acquired": false, "lock": lock_view(&l)}),
        })
    }

    /// Whether `token` is the live lock's epoch and, for a user, that user
    /// holds it. Epochs are small integers, so a user's token is only good
    /// in that user's hands; an epoch names one grant, so this check cannot
    /// go stale before the store's own epoch check.
    async fn holds(
        &self,
        caller: &Caller,
        key: &RecordKey,
        token: i64,
    ) -> Result<bool, ServiceError> {
        let current = self.store.lock_status(key).await?;
        Ok(
            current
                .is_some_and(|l| l.epoch == token && (caller.backend || l.holder == caller.user)),
        )
    }

    /// `lock.renew`: only the live token extends the lease.
    pub async fn lock_renew(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        token: i64,
        ttl_ms: Option<i64>,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let ttl = self.ttl_ms(ttl_ms)?;
        let renewed = if self.holds(caller, &key, token).await? {
            self.store.renew(&key, token, ttl).await?
        } else {
            None
        };
        match renewed {
            Some(l) => {
                self.committed();
                Ok(json!({"lock": self.lock_for(caller, &l)}))
            }
            None => Err(ServiceError::LockLost {
                current: self.store.lock_status(&key).await?.map(Box::new),
            }),
        }
    }

    /// `lock.release`: `released` is false when the token no longer holds it.
    pub async fn lock_release(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        token: i64,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let released = self.holds(caller, &key, token).await?
            && self
                .store
                .release(&key, token, &caller.user)
                .await?
                .is_some();
        if released {
            self.committed();
        }
        Ok(json!({ "released": released }))
    }

    /// `lock.force_release` (admin).
    pub async fn lock_force_release(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        if !caller.admin {
            return Err(ServiceError::Forbidden);
        }
        let released = self
            .store
            .force_release(&key, &caller.user)
            .await?
            .is_some();
        if released {
            self.committed();
        }
        Ok(json!({ "released": released }))
    }

    /// `lock.status`: the live lock or null (with the token for its holder).
    pub async fn lock_status(&self, caller: &Caller, entity: &str, id: &str) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let lock = self.store.lock_status(&key).await?;
        Ok(json!({ "lock": lock.map_or(Value::Null, |l| self.lock_for(caller, &l)) }))
    }

    /// `draft.save`: the caller's unsaved edits of one record.
    pub async fn draft_save(
        &self,
        caller: &Caller,
        entity: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let fields = self.fields(fields)?;
        let at = self.store.save_draft(&key, &caller.user, &fields).await?;
        Ok(json!({ "saved_at": rfc3339_ms(at) }))
    }

    /// `draft.get`.
    pub async fn draft_get(&self, caller: &Caller, entity: &str, id: &str) -> ServiceResult {
        let key = self.key(caller, entity, id)?;
        let draft = self.store.get_draft(&key, &caller.user).await?;
        Ok(json!({
            "draft": draft.map_or(Value::Null, |(fields, at)| json!({
                "entity": entity, "id": id, "fields": fields, "saved_at": rfc3339_ms(at),
            }))
        }))
    }
}
