//! Offline queues and the conflict review queue (DESIGN.md §2-§3): the
//! service behind `offline.push`, `offline.pull`, `POST /v1/offline/push`,
//! `GET /v1/offline/pull`, `GET /v1/conflicts` and
//! `POST /v1/conflicts/{id}/resolve`.
//!
//! Push follows the Replicache model (research/sync-locks.md §1.9): each
//! mutation is one store transaction that reads the client's `last_seq`,
//! applies the mutation through the conflict engine and advances the seq,
//! so a mutation is applied exactly once whatever the client retries. This
//! module parses and judges input; a mutation whose input can never be valid
//! is handed to the store as a rejection so the seq still advances and the
//! client is never stuck. Results leave only after their commit; a transient
//! fault stops the batch with a retryable error, and the retry returns the
//! committed ones as duplicates.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::input::{self, opt_number, opt_string, string};
use super::{Caller, RecordService, ServiceError, ServiceResult};
use crate::store::{
    ConflictFilter, MergeWrite, MutationPlan, PushStep, Source, Write, WriteKind, conflict_view,
    record_view,
};

/// Most mutations one push may carry: a bigger queue is pushed in batches.
pub const MAX_BATCH: usize = 1000;
/// Default and largest page of `offline.pull`.
pub const DEFAULT_PULL_LIMIT: i64 = 100;
pub const MAX_PULL_LIMIT: i64 = 1000;
/// Default and largest page of `/v1/conflicts`.
pub const DEFAULT_CONFLICT_LIMIT: i64 = 50;
pub const MAX_CONFLICT_LIMIT: i64 = 500;

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidInput(message.into())
}

/// Client ids name a device's queue: short and printable.
fn check_client_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(invalid("client_id must be 1 to 128 printable characters"));
    }
    Ok(())
}

/// What `offline.pull` asks for.
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub client_id: Option<String>,
    pub cursor: i64,
    pub entities: Vec<String>,
    pub limit: Option<i64>,
}

impl PullRequest {
    /// From the RPC data object.
    pub fn from_data(d: &Map<String, Value>) -> Result<Self, ServiceError> {
        let entities = match d.get("entities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid("`entities` must be a list of entity names"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("`entities` must be a list of entity names")),
        };
        Ok(Self {
            client_id: opt_string(d, "client_id")?.map(str::to_owned),
            cursor: opt_number(d, "cursor")?.unwrap_or(0),
            entities,
            limit: opt_number(d, "limit")?,
        })
    }
}

impl RecordService {
    /// Turns one mutation object into what the store should do with it;
    /// `Err` only when it has no usable `seq` (then nothing can be recorded).
    fn plan(
        &self,
        caller: &Caller,
        client: &str,
        m: &Value,
    ) -> Result<(i64, MutationPlan), ServiceError> {
        let obj = m
            .as_object()
            .ok_or_else(|| invalid("every mutation must be a JSON object"))?;
        let seq = match obj.get("seq").and_then(Value::as_i64) {
            Some(s) if s >= 1 => s,
            _ => return Err(invalid("every mutation needs `seq`, an integer from 1")),
        };
        let plan = match self.mutation_write(caller, client, seq, obj) {
            Ok(w) => MutationPlan::Apply(Box::new(w)),
            Err(e) => MutationPlan::Reject {
                code: e.code().to_owned(),
                message: e.to_string(),
            },
        };
        Ok((seq, plan))
    }

    fn mutation_write(
        &self,
        caller: &Caller,
        client: &str,
        seq: i64,
        m: &Map<String, Value>,
    ) -> Result<MergeWrite, ServiceError> {
        let key = self.key(caller, string(m, "entity")?, string(m, "id")?)?;
        let kind = match opt_string(m, "op")?.unwrap_or("update") {
            "update" => WriteKind::Update,
            "create" => WriteKind::Create,
            "delete" => WriteKind::Delete,
            other => {
                return Err(invalid(format!(
                    "op `{}` is not one of update, create, delete",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let fields = match m.get("fields") {
            None | Some(Value::Null) if kind == WriteKind::Delete => Map::new(),
            _ => self.fields(input::fields(m, "fields")?)?,
        };
        let base = match m.get("base") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(b)) => b.clone(),
            Some(_) => return Err(invalid("`base` must be a JSON object")),
        };
        let base_version = match kind {
            WriteKind::Create => None,
            _ => Some(opt_number(m, "base_version")?.unwrap_or(0)),
        };
        let at = match opt_string(m, "at")? {
            Some(text) => Some(
                OffsetDateTime::parse(text, &Rfc3339)
                    .map_err(|_| invalid("`at` must be an RFC 3339 time"))?,
            ),
            None => None,
        };
        Ok(MergeWrite {
            rules: self.rules.for_entity(&key.entity).into_owned(),
            write: Write {
                key,
                kind,
                base_version,
                fields,
                lock_token: None,
                // An offline client holds no lease; a live editor's lock
                // does not drop its queue: the three-way merge protects the
                // editor's fields instead (DESIGN.md §2).
                respect_locks: false,
                by: caller.user.clone(),
                source: Source::Offline,
            },
            base,
            at,
            origin: Some((client.to_owned(), seq)),
            writer_is_remote: false,
        })
    }

    /// `offline.push`, `POST /v1/offline/push`:
    /// `{client_id, mutations: [{seq, op?, entity, id, base_version, base?, fields, at?}]}`
    /// → `{last_seq, results: [{seq, status, record?, conflict?, error?}], gap?}`.
    pub async fn offline_push(&self, caller: &Caller, d: &Map<String, Value>) -> ServiceResult {
        if caller.backend {
            return Err(invalid(
                "offline queues belong to users: push with a user token",
            ));
        }
        let client = string(d, "client_id")?;
        check_client_id(client)?;
        let mutations = match d.get("mutations") {
            Some(Value::Array(a)) => a,
            _ => return Err(invalid("`mutations` must be a list")),
        };
        if mutations.len() > MAX_BATCH {
            return Err(invalid(format!(
                "at most {MAX_BATCH} mutations per push; push the rest next"
            )));
        }
        // Every envelope is checked before anything is applied, so a batch
        // with an unnumbered mutation changes nothing.
        let plans = mutations
            .iter()
            .map(|m| self.plan(caller, client, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(plans.len());
        let mut gap = None;
        let mut wrote = false;
        for (seq, plan) in plans {
            let step = self
                .store
                .push_mutation(&caller.tenant, client, &caller.user, seq, plan)
                .await;
            match step {
                Ok(PushStep::Done(v)) => {
                    wrote = true;
                    results.push(v);
                }
                Ok(PushStep::Duplicate(stored)) => results.push(duplicate(seq, stored)),
                Ok(PushStep::Gap { last_seq }) => {
                    gap = Some(json!({"expected": last_seq + 1, "got": seq}));
                    break;
                }
                Err(e) => {
                    if wrote {
                        self.committed();
                    }
                    // Committed mutations come back as duplicates on retry.
                    return Err(e.into());
                }
            }
        }
        if wrote {
            self.committed();
        }
        let last_seq = self.store.last_seq(&caller.tenant, client).await?;
        let mut out = json!({"last_seq": last_seq, "results": results});
        if let Some(g) = gap {
            out["gap"] = g;
        }
        Ok(out)
    }

    /// `offline.pull`, `GET /v1/offline/pull`: records changed after
    /// `cursor` (the per-tenant change version) → `{changes, cursor, more,
    /// last_seq}`.
    pub async fn offline_pull(&self, caller: &Caller, req: PullRequest) -> ServiceResult {
        for e in &req.entities {
            if !self.config.entities.iter().any(|x| x == e) {
                return Err(ServiceError::UnknownEntity(e.chars().take(64).collect()));
            }
        }
        let limit = req.limit.unwrap_or(DEFAULT_PULL_LIMIT);
        if !(1..=MAX_PULL_LIMIT).contains(&limit) {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_PULL_LIMIT}"
            )));
        }
        let last_seq = match &req.client_id {
            Some(c) => {
                check_client_id(c)?;
                self.store.last_seq(&caller.tenant, c).await?
            }
            None => 0,
        };
        let page = self
            .store
            .pull(&caller.tenant, req.cursor, &req.entities, limit)
            .await?;
        let changes: Vec<Value> = page
            .changes
            .iter()
            .map(|(r, v)| {
                json!({
                    "type": if r.deleted { "record.deleted" } else { "record.changed" },
                    "change_version": v,
                    "record": record_view(r),
                })
            })
            .collect();
        Ok(json!({
            "changes": changes,
            "cursor": page.cursor,
            "more": page.more,
            "last_seq": last_seq,
        }))
    }

    /// `GET /v1/conflicts?status=&entity=&after=&limit=`.
    pub async fn conflicts_list(
        &self,
        caller: &Caller,
        status: Option<&str>,
        entity: Option<&str>,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> ServiceResult {
        if let Some(s) = status
            && !matches!(s, "open" | "resolved")
        {
            return Err(invalid("status must be open or resolved"));
        }
        if let Some(e) = entity
            && !self.config.entities.iter().any(|x| x == e)
        {
            return Err(ServiceError::UnknownEntity(e.chars().take(64).collect()));
        }
        let limit = limit.unwrap_or(DEFAULT_CONFLICT_LIMIT);
        if !(1..=MAX_CONFLICT_LIMIT).contains(&limit) {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_CONFLICT_LIMIT}"
            )));
        }
        let filter = ConflictFilter {
            status: status.map(str::to_owned),
            entity: entity.map(str::to_owned),
            after: after.unwrap_or(0),
            limit,
        };
        let rows = self.store.list_conflicts(&caller.tenant, &filter).await?;
        let next = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|c| c.id))
            .flatten();
        Ok(json!({
            "conflicts": rows.iter().map(conflict_view).collect::<Vec<_>>(),
            "next_after": next,
        }))
    }

    /// `POST /v1/conflicts/{id}/resolve` with `{resolution: use_local |
    /// use_remote | merge, fields?}` (admin): `use_local` writes the local
    /// side of the open fields, `use_remote` keeps the record, `merge`
    /// writes the chosen values of open fields.
    pub async fn conflict_resolve(
        &self,
        caller: &Caller,
        id: i64,
        d: &Map<String, Value>,
    ) -> ServiceResult {
        if !caller.admin {
            return Err(ServiceError::Forbidden);
        }
        let resolution = string(d, "resolution")?;
        let conflict = self
            .store
            .get_conflict(&caller.tenant, id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        let open: Vec<&str> = conflict
            .fields
            .iter()
            .filter(|f| !f.is_resolved())
            .map(|f| f.field.as_str())
            .collect();
        let patch: Map<String, Value> = match resolution {
            "use_local" => open
                .iter()
                .map(|f| {
                    (
                        (*f).to_owned(),
                        conflict.local.get(*f).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
            "use_remote" => Map::new(),
            "merge" => {
                let chosen = input::fields(d, "fields")?;
                if let Some(name) = chosen.keys().find(|k| !open.contains(&k.as_str())) {
                    return Err(invalid(format!(
                        "`{}` is not an open field of this conflict",
                        name.chars().take(64).collect::<String>()
                    )));
                }
                self.fields(chosen)?
            }
            _ => return Err(invalid("resolution must be use_local, use_remote or merge")),
        };
        let (c, committed) = self
            .store
            .resolve_conflict(&caller.tenant, id, &caller.user, resolution, patch)
            .await?;
        self.committed();
        let mut out = json!({"conflict": conflict_view(&c)});
        if let Some(w) = committed {
            out["record"] = record_view(&w.record);
        }
        Ok(out)
    }
}

/// The stored result, marked as a duplicate; its original status stays in
/// `original_status`, so a client can replay the outcome it missed.
fn duplicate(seq: i64, stored: Value) -> Value {
    match stored {
        Value::Object(mut m) => {
            let original = m.remove("status").unwrap_or(Value::Null);
            m.insert("status".into(), json!("duplicate"));
            m.insert("original_status".into(), original);
            Value::Object(m)
        }
        _ => json!({"seq": seq, "status": "duplicate"}),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::config::RecordsConfig;
    use crate::store::{
        Acquired, Committed, ConflictFilter, Lock, MergeWrite, Merged, OutboxEvent, Pulled, Record,
        RecordKey, Store, StoreError, StoreResult, StoredConflict,
    };

    /// SQLite, except that `push_mutation` fails transiently once
    /// `fail_after` pushes have committed.
    struct Flaky {
        inner: crate::store::sqlite::SqliteStore,
        pushes: AtomicUsize,
        fail_after: usize,
    }

    crate::store::sync::delegate_sync_store!(Flaky, inner);

    #[async_trait]
    impl Store for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
            self.inner.get(key).await
        }
        async fn write(&self, w: Write) -> StoreResult<Committed> {
            self.inner.write(w).await
        }
        async fn acquire(
            &self,
            key: &RecordKey,
            user: &str,
            client: &str,
            ttl_ms: i64,
            takeover: bool,
        ) -> StoreResult<Acquired> {
            self.inner
                .acquire(key, user, client, ttl_ms, takeover)
                .await
        }
        async fn renew(
            &self,
            key: &RecordKey,
            token: i64,
            ttl_ms: i64,
        ) -> StoreResult<Option<Lock>> {
            self.inner.renew(key, token, ttl_ms).await
        }
        async fn release(
            &self,
            key: &RecordKey,
            token: i64,
            by: &str,
        ) -> StoreResult<Option<Lock>> {
            self.inner.release(key, token, by).await
        }
        async fn force_release(&self, key: &RecordKey, by: &str) -> StoreResult<Option<Lock>> {
            self.inner.force_release(key, by).await
        }
        async fn lock_status(&self, key: &RecordKey) -> StoreResult<Option<Lock>> {
            self.inner.lock_status(key).await
        }
        async fn expire_locks(&self) -> StoreResult<Vec<(String, Lock)>> {
            self.inner.expire_locks().await
        }
        async fn release_abandoned(
            &self,
            grace_ms: i64,
            node_ttl_ms: i64,
        ) -> StoreResult<Vec<(String, Lock)>> {
            self.inner.release_abandoned(grace_ms, node_ttl_ms).await
        }
        async fn heartbeat(
            &self,
            node_id: &str,
            node_name: &str,
            added: &[(String, String)],
            removed: &[(String, String)],
            node_ttl_ms: i64,
        ) -> StoreResult<()> {
            self.inner
                .heartbeat(node_id, node_name, added, removed, node_ttl_ms)
                .await
        }
        async fn forget_node(&self, node_id: &str) -> StoreResult<()> {
            self.inner.forget_node(node_id).await
        }
        async fn save_draft(
            &self,
            key: &RecordKey,
            user: &str,
            fields: &Map<String, Value>,
        ) -> StoreResult<i64> {
            self.inner.save_draft(key, user, fields).await
        }
        async fn get_draft(
            &self,
            key: &RecordKey,
            user: &str,
        ) -> StoreResult<Option<(Map<String, Value>, i64)>> {
            self.inner.get_draft(key, user).await
        }
        async fn claim_outbox(&self, limit: i64, lease_ms: i64) -> StoreResult<Vec<OutboxEvent>> {
            self.inner.claim_outbox(limit, lease_ms).await
        }
        async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()> {
            self.inner.ack_outbox(ids).await
        }
        async fn retry_outbox(&self, id: i64, delay_ms: i64) -> StoreResult<()> {
            self.inner.retry_outbox(id, delay_ms).await
        }
        async fn change_version(&self, tenant: &str) -> StoreResult<i64> {
            self.inner.change_version(tenant).await
        }
        async fn merge_write(&self, m: MergeWrite) -> StoreResult<Merged> {
            self.inner.merge_write(m).await
        }
        async fn push_mutation(
            &self,
            tenant: &str,
            client: &str,
            user: &str,
            seq: i64,
            plan: MutationPlan,
        ) -> StoreResult<PushStep> {
            if self.pushes.fetch_add(1, Ordering::SeqCst) == self.fail_after {
                return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
            }
            self.inner
                .push_mutation(tenant, client, user, seq, plan)
                .await
        }
        async fn last_seq(&self, tenant: &str, client: &str) -> StoreResult<i64> {
            self.inner.last_seq(tenant, client).await
        }
        async fn pull(
            &self,
            tenant: &str,
            cursor: i64,
            entities: &[String],
            limit: i64,
        ) -> StoreResult<Pulled> {
            self.inner.pull(tenant, cursor, entities, limit).await
        }
        async fn list_conflicts(
            &self,
            tenant: &str,
            filter: &ConflictFilter,
        ) -> StoreResult<Vec<StoredConflict>> {
            self.inner.list_conflicts(tenant, filter).await
        }
        async fn get_conflict(&self, tenant: &str, id: i64) -> StoreResult<Option<StoredConflict>> {
            self.inner.get_conflict(tenant, id).await
        }
        async fn resolve_conflict(
            &self,
            tenant: &str,
            id: i64,
            by: &str,
            resolution: &str,
            patch: Map<String, Value>,
        ) -> StoreResult<(StoredConflict, Option<Committed>)> {
            self.inner
                .resolve_conflict(tenant, id, by, resolution, patch)
                .await
        }
    }

    #[tokio::test]
    async fn a_transient_fault_stops_the_batch_with_a_retryable_error_and_the_retry_sees_duplicates()
     {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open");
        inner.migrate().await.expect("migrate");
        let store = Arc::new(Flaky {
            inner,
            pushes: AtomicUsize::new(0),
            fail_after: 2,
        });
        let service = RecordService::new(store, RecordsConfig::default(), Default::default());
        let ann = Caller::user("t", "ann", "c1", false);
        let batch = json!({"client_id": "phone", "mutations": (1..=4).map(|seq| json!({
            "seq": seq, "entity": "deals", "id": format!("d{seq}"), "base_version": 0, "fields": {"n": seq}
        })).collect::<Vec<_>>()});
        let d = batch.as_object().cloned().unwrap_or_default();
        let err = service
            .offline_push(&ann, &d)
            .await
            .expect_err("third push fails");
        assert!(err.is_temporary(), "{err:?}");
        let r = service.offline_push(&ann, &d).await.expect("retry");
        let statuses: Vec<&str> = r["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["status"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(statuses, ["duplicate", "duplicate", "applied", "applied"]);
        assert_eq!(r["last_seq"], 4);
    }

    #[test]
    fn a_duplicate_keeps_the_stored_result_and_its_original_status() {
        let d = duplicate(
            3,
            json!({"seq": 3, "status": "merged", "record": {"version": 4}}),
        );
        assert_eq!(d["status"], "duplicate");
        assert_eq!(d["original_status"], "merged");
        assert_eq!(d["record"]["version"], 4);
    }

    #[test]
    fn a_duplicate_whose_result_was_pruned_still_says_duplicate() {
        assert_eq!(
            duplicate(7, Value::Null),
            json!({"seq": 7, "status": "duplicate"})
        );
    }

    #[test]
    fn pull_data_with_entities_that_are_not_names_is_refused() {
        let d = json!({"entities": [1]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(PullRequest::from_data(&d).is_err());
    }
}
