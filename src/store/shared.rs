//! What both SQL backends share: the record key, event payloads, and the
//! transaction logic (`sql_store!`), expanded once per backend over that
//! backend's SQL text (a module `q` of constants with the same names).

use serde_json::{Map, Value, json};

use super::{Lock, Merged, Record, StoredConflict};

/// Which tenant's record, parsed and validated at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub tenant: String,
    pub entity: String,
    pub id: String,
}

impl RecordKey {
    pub fn new(
        tenant: impl Into<String>,
        entity: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            entity: entity.into(),
            id: id.into(),
        }
    }

    /// `record:<entity>:<id>`: presence, record and lock events.
    pub fn record_channel(&self) -> String {
        format!("record:{}:{}", self.entity, self.id)
    }

    /// `changes:<entity>`: every change of the entity.
    pub fn changes_channel(&self) -> String {
        format!("changes:{}", self.entity)
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Zoho,
    Offline,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Zoho => "zoho",
            Source::Offline => "offline",
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    rfc3339_ms((now.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The public view of a lock (the token is only ever given to its holder).
pub fn lock_view(lock: &Lock) -> Value {
    json!({
        "holder": lock.holder,
        "acquired_at": rfc3339_ms(lock.acquired_at),
        "expires_at": rfc3339_ms(lock.expires_at),
    })
}

/// The record as `record.get` and the HTTP routes show it.
pub fn record_view(r: &Record) -> Value {
    let mut v = json!({
        "entity": r.entity,
        "id": r.id,
        "version": r.version,
        "fields": Value::Object(r.fields.clone()),
        "updated_at": rfc3339_ms(r.updated_at),
        "updated_by": r.updated_by,
    });
    if let Some(z) = &r.zoho_id {
        v["zoho_id"] = json!(z);
    }
    if r.deleted {
        v["deleted"] = json!(true);
    }
    v
}

/// Event payloads: each a JSON object with `type`, `at` and its subject.
pub mod events {
    use super::*;

    pub fn record_changed(r: &Record, fields: &[String], source: Source, by: &str) -> String {
        json!({
            "type": "record.changed",
            "at": rfc3339_ms(r.updated_at),
            "entity": r.entity,
            "id": r.id,
            "version": r.version,
            "fields": fields,
            "source": source.as_str(),
            "by": by,
        })
        .to_string()
    }

    pub fn record_deleted(r: &Record, source: Source, by: &str) -> String {
        json!({
            "type": "record.deleted",
            "at": rfc3339_ms(r.updated_at),
            "entity": r.entity,
            "id": r.id,
            "version": r.version,
            "source": source.as_str(),
            "by": by,
        })
        .to_string()
    }

    /// `lock.acquired`, `lock.renewed`, `lock.expired`.
    pub fn lock(kind: &str, lock: &Lock) -> String {
        json!({
            "type": kind,
            "at": now_rfc3339(),
            "entity": lock.entity,
            "id": lock.id,
            "lock": lock_view(lock),
        })
        .to_string()
    }

    /// `lock.released`; `reason` is `released`, `forced` or `disconnected`.
    pub fn released(lock: &Lock, reason: &str, by: Option<&str>) -> String {
        let mut v = json!({
            "type": "lock.released",
            "at": now_rfc3339(),
            "entity": lock.entity,
            "id": lock.id,
            "lock": lock_view(lock),
            "reason": reason,
        });
        if let Some(by) = by {
            v["by"] = json!(by);
        }
        v.to_string()
    }

    /// `conflict.detected`, `conflict.resolved`.
    pub fn conflict(kind: &str, c: &StoredConflict) -> String {
        json!({
            "type": kind,
            "at": now_rfc3339(),
            "entity": c.entity,
            "id": c.record_id,
            "conflict": conflict_view(c),
        })
        .to_string()
    }

    pub fn taken_over(lock: &Lock, previous: &Lock) -> String {
        json!({
            "type": "lock.taken_over",
            "at": now_rfc3339(),
            "entity": lock.entity,
            "id": lock.id,
            "lock": lock_view(lock),
            "previous_holder": previous.holder,
        })
        .to_string()
    }
}

/// A conflict as `/v1/conflicts`, results and events show it.
pub fn conflict_view(c: &StoredConflict) -> Value {
    json!({
        "id": c.id,
        "entity": c.entity,
        "record_id": c.record_id,
        "base_version": c.base_version,
        "version": c.version,
        "source": c.source,
        "by": c.by,
        "client_id": c.client_id,
        "seq": c.seq,
        "base": c.base,
        "local": c.local,
        "remote": c.remote,
        "fields": c.fields,
        "strategy": c.strategy,
        "severity": c.severity,
        "status": c.status,
        "history": c.history,
        "created_at": rfc3339_ms(c.created_at),
        "updated_at": rfc3339_ms(c.updated_at),
    })
}

/// The stored (and returned) result of an offline mutation that applied.
pub fn mutation_result(seq: i64, m: &Merged) -> Value {
    let mut v = json!({
        "seq": seq,
        "status": m.status.as_str(),
        "record": record_view(&m.committed.record),
        "changed": m.committed.changed,
    });
    if let Some(c) = &m.conflict {
        v["conflict"] = conflict_view(c);
    }
    v
}

/// The result of a mutation that can never apply.
pub fn rejected_result(seq: i64, code: &str, message: &str) -> Value {
    json!({"seq": seq, "status": "rejected", "error": {"code": code, "message": message}})
}

/// Unix milliseconds as a time, for the conflict engine's sides.
pub fn ms_to_time(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Applies a patch; returns the merged fields and the names that changed, sorted.
pub fn merge_fields(
    old: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> (Map<String, Value>, Vec<String>) {
    let mut merged = old.clone();
    let mut changed = Vec::new();
    for (k, v) in patch {
        if old.get(k) != Some(v) {
            changed.push(k.clone());
        }
        merged.insert(k.clone(), v.clone());
    }
    changed.sort();
    (merged, changed)
}

/// The transaction logic of both SQL backends. Expanded in a module that
/// defines `q` (the SQL text) and a store type with a `pool` field.
macro_rules! sql_store {
    ($store:ident, $db:ty, $backend:literal) => {
        type Tx<'a> = sqlx::Transaction<'a, $db>;
        type SyncSet = std::collections::HashSet<String>;
        type DbRow = <$db as sqlx::Database>::Row;
        type DbKind = $db;

        use sqlx::Row as _;
        use $crate::domain::conflict::{Side, resolve};
        use $crate::store::shared::{
            events, merge_fields, ms_to_time, mutation_result, now_rfc3339, rejected_result,
        };
        use $crate::store::{
            Acquired, ConflictFilter, Committed, Lock, MergeStatus, MergeWrite, Merged,
            MutationPlan, OutboxEvent, Pulled, PushStep, Record, RecordKey, Source, StoreError,
            StoreResult, StoredConflict, Write, WriteKind,
        };
        use serde_json::{Map, Value, json};

        /// A statement whose first three parameters are the record key, in
        /// the order every keyed statement of `queries` takes them.
        fn keyed<'q>(
            sql: &'static str,
            key: &'q RecordKey,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            sqlx::query(sql).bind(&key.tenant).bind(&key.entity).bind(&key.id)
        }

        fn parse_fields(text: &str) -> StoreResult<serde_json::Map<String, serde_json::Value>> {
            match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(m)) => Ok(m),
                _ => Err(StoreError::Corrupt(
                    "record fields are not a JSON object".into(),
                )),
            }
        }

        /// Columns: entity, id, version, fields, updated_ms, updated_by, deleted, zoho_id.
        fn record_from(row: &DbRow) -> StoreResult<Record> {
            Ok(Record {
                entity: row.try_get(0)?,
                id: row.try_get(1)?,
                version: row.try_get(2)?,
                fields: parse_fields(&row.try_get::<String, _>(3)?)?,
                updated_at: row.try_get(4)?,
                updated_by: row.try_get(5)?,
                deleted: row.try_get::<i64, _>(6)? != 0,
                zoho_id: row.try_get(7)?,
            })
        }

        /// Columns: entity, record_id, holder_user, holder_client, epoch,
        /// acquired_ms, expires_ms, live (0/1) [, tenant].
        fn lock_from(row: &DbRow) -> StoreResult<(Lock, bool)> {
            Ok((
                Lock {
                    entity: row.try_get(0)?,
                    id: row.try_get(1)?,
                    holder: row.try_get(2)?,
                    client: row.try_get(3)?,
                    epoch: row.try_get(4)?,
                    acquired_at: row.try_get(5)?,
                    expires_at: row.try_get(6)?,
                },
                row.try_get::<i64, _>(7)? != 0,
            ))
        }

        async fn outbox(
            tx: &mut Tx<'_>,
            tenant: &str,
            channel: &str,
            payload: &str,
        ) -> StoreResult<()> {
            sqlx::query(q::INSERT_OUTBOX)
                .bind(tenant)
                .bind(channel)
                .bind(payload)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn lock_row(
            tx: &mut Tx<'_>,
            sql: &'static str,
            key: &RecordKey,
        ) -> StoreResult<Option<(Lock, bool)>> {
            let row = keyed(sql, key)
                .fetch_optional(&mut **tx)
                .await?;
            row.as_ref().map(lock_from).transpose()
        }

        async fn next_epoch(tx: &mut Tx<'_>) -> StoreResult<i64> {
            Ok(sqlx::query(q::NEXT_EPOCH)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?)
        }

        /// Writes the lock row (insert or overwrite); `None` when an insert lost a race.
        async fn put_lock(
            tx: &mut Tx<'_>,
            insert: bool,
            key: &RecordKey,
            user: &str,
            client: &str,
            epoch: i64,
            ttl_ms: i64,
        ) -> StoreResult<Option<Lock>> {
            let row = keyed(if insert { q::INSERT_LOCK } else { q::SET_LOCK }, key)
                .bind(user)
                .bind(client)
                .bind(epoch)
                .bind(ttl_ms)
                .fetch_optional(&mut **tx)
                .await?;
            row.map(|row| {
                Ok(Lock {
                    entity: key.entity.clone(),
                    id: key.id.clone(),
                    holder: user.to_owned(),
                    client: client.to_owned(),
                    epoch,
                    acquired_at: row.try_get(0)?,
                    expires_at: row.try_get(1)?,
                })
            })
            .transpose()
        }

        /// Deletes locks with one statement returning lock columns + tenant,
        /// announcing each with `event`.
        async fn drop_locks(
            tx: &mut Tx<'_>,
            rows: Vec<DbRow>,
            event: impl Fn(&Lock) -> String,
        ) -> StoreResult<Vec<(String, Lock)>> {
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let (lock, _) = lock_from(row)?;
                let tenant: String = row.try_get(8)?;
                let key = RecordKey::new(tenant.clone(), lock.entity.clone(), lock.id.clone());
                outbox(tx, &tenant, &key.record_channel(), &event(&lock)).await?;
                out.push((tenant, lock));
            }
            Ok(out)
        }

        /// The lock fence of a write, in share mode: a takeover waits for
        /// this transaction's commit.
        async fn fence(tx: &mut Tx<'_>, w: &Write) -> StoreResult<()> {
            let key = &w.key;
            let lock = lock_row(tx, q::LOCK_FOR_SHARE, key).await?;
            let live_lock = lock.filter(|(_, live)| *live).map(|(l, _)| l);
            match (w.lock_token, live_lock) {
                (Some(token), Some(l))
                    if l.epoch == token && (!w.respect_locks || l.holder == w.by) => {}
                (Some(_), current) => return Err(StoreError::LockLost { current }),
                (None, Some(l)) if w.respect_locks && l.holder != w.by => {
                    return Err(StoreError::LockHeld { lock: l });
                }
                (None, _) => {}
            }
            Ok(())
        }

        /// A fenced write's effects: version check, record, change log,
        /// change version and events. Commits nothing itself.
        async fn apply(tx: &mut Tx<'_>, w: &Write, sync: &SyncSet) -> StoreResult<Committed> {
            let key = &w.key;
            let row = keyed(q::RECORD_FOR_UPDATE, key)
                .fetch_optional(&mut **tx)
                .await?;
            let stored = row.as_ref().map(record_from).transpose()?;
            let tomb_version = stored.as_ref().map_or(0, |r| r.version);
            let live = stored.filter(|r| !r.deleted);
            let check_base = |r: &Record| match w.base_version {
                Some(base) if base != r.version => Err(StoreError::Conflict {
                    base,
                    current: Box::new(r.clone()),
                }),
                _ => Ok(()),
            };
            match (w.kind, &live) {
                (WriteKind::Create, Some(_)) => return Err(StoreError::AlreadyExists),
                (WriteKind::Create, None) => {}
                (WriteKind::Update, None) if w.base_version == Some(0) => {}
                (WriteKind::Update | WriteKind::Delete, None) => {
                    return Err(StoreError::NotFound);
                }
                (WriteKind::Update | WriteKind::Delete, Some(r)) => check_base(r)?,
            }
            let empty = serde_json::Map::new();
            let old = live.as_ref().map_or(&empty, |r| &r.fields);
            let deleting = w.kind == WriteKind::Delete;
            let (fields, changed) = if deleting {
                (old.clone(), Vec::new())
            } else {
                merge_fields(old, &w.fields)
            };
            if !deleting && changed.is_empty() {
                if let Some(r) = live {
                    // Nothing to change: no version, no event.
                    return Ok(Committed { record: r, changed });
                }
            }
            let version = tomb_version + 1;
            let change_version: i64 = sqlx::query(q::BUMP_CHANGE)
                .bind(&key.tenant)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
            let fields_text = serde_json::Value::Object(fields.clone()).to_string();
            let updated_at: i64 = keyed(q::UPSERT_RECORD, key)
                .bind(version)
                .bind(&fields_text)
                .bind(&w.by)
                .bind(deleting)
                .bind(change_version)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
            for name in &changed {
                let old_value = old.get(name).map(|v| v.to_string());
                let new_value = fields.get(name).map(|v| v.to_string());
                keyed(q::INSERT_FIELD_CHANGE, key)
                    .bind(name)
                    .bind(old_value)
                    .bind(new_value)
                    .bind(version)
                    .bind(w.source.as_str())
                    .bind(&w.by)
                    .bind(change_version)
                    .execute(&mut **tx)
                    .await?;
            }
            let record = Record {
                entity: key.entity.clone(),
                id: key.id.clone(),
                version,
                fields,
                updated_at,
                updated_by: w.by.clone(),
                deleted: deleting,
                zoho_id: live.and_then(|r| r.zoho_id),
            };
            let payload = if deleting {
                events::record_deleted(&record, w.source, &w.by)
            } else {
                events::record_changed(&record, &changed, w.source, &w.by)
            };
            outbox(tx, &key.tenant, &key.changes_channel(), &payload).await?;
            outbox(tx, &key.tenant, &key.record_channel(), &payload).await?;
            // A change made here goes to Zoho; one that came from Zoho does not
            // go back (no echo). The push job commits with the change.
            if w.source != Source::Zoho && sync.contains(&key.entity) {
                queue_push(tx, key).await?;
            }
            Ok(Committed { record, changed })
        }


        fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
            serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }

        /// Columns: see `conflict_select!` in the backend.
        fn conflict_from(row: &DbRow) -> StoreResult<StoredConflict> {
            Ok(StoredConflict {
                id: row.try_get(0)?,
                entity: row.try_get(1)?,
                record_id: row.try_get(2)?,
                base_version: row.try_get(3)?,
                version: row.try_get(4)?,
                source: row.try_get(5)?,
                by: row.try_get(6)?,
                client_id: row.try_get(7)?,
                seq: row.try_get(8)?,
                base: parse_fields(&row.try_get::<String, _>(9)?)?,
                local: parse_fields(&row.try_get::<String, _>(10)?)?,
                remote: parse_fields(&row.try_get::<String, _>(11)?)?,
                fields: parse_json(&row.try_get::<String, _>(12)?, "conflict fields")?,
                strategy: row.try_get(13)?,
                severity: row.try_get(14)?,
                status: row.try_get(15)?,
                history: parse_json(&row.try_get::<String, _>(16)?, "conflict history")?,
                created_at: row.try_get(17)?,
                updated_at: row.try_get(18)?,
            })
        }

        /// The value `field` had at `version`: the old value of its first
        /// change after that version, else (never changed since) its
        /// current value.
        async fn base_value(
            tx: &mut Tx<'_>,
            key: &RecordKey,
            field: &str,
            version: i64,
            current: &Map<String, Value>,
        ) -> StoreResult<Value> {
            let row = keyed(q::BASE_VALUE, key)
                .bind(field)
                .bind(version)
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                Some(row) => match row.try_get::<Option<String>, _>(0)? {
                    Some(text) => parse_json(&text, "field change"),
                    None => Ok(Value::Null),
                },
                None => Ok(current.get(field).cloned().unwrap_or(Value::Null)),
            }
        }

        /// A merge write inside a transaction (see [`Store::merge_write`]).
        async fn merge_in(tx: &mut Tx<'_>, m: &MergeWrite, sync: &SyncSet) -> StoreResult<Merged> {
            let w = &m.write;
            let key = &w.key;
            fence(tx, w).await?;
            // Only an update from an older version of a live record merges
            // (base version 0 included: two clients that created the same
            // record merge from an empty base); everything else is the plain
            // write with its plain checks.
            let stale = match (w.kind, w.base_version) {
                (WriteKind::Update, Some(base)) => {
                    let row = keyed(q::RECORD_FOR_UPDATE, key)
                        .fetch_optional(&mut **tx)
                        .await?;
                    row.as_ref()
                        .map(record_from)
                        .transpose()?
                        .filter(|r| !r.deleted && r.version > base)
                }
                _ => None,
            };
            let Some(current) = stale else {
                let committed = apply(tx, w, sync).await?;
                return Ok(Merged {
                    committed,
                    status: MergeStatus::Applied,
                    conflict: None,
                });
            };
            let base_version = w.base_version.unwrap_or(0);
            let mut base = Map::new();
            for name in w.fields.keys() {
                let value = match m.base.get(name) {
                    Some(v) => v.clone(),
                    None => base_value(tx, key, name, base_version, &current.fields).await?,
                };
                base.insert(name.clone(), value);
            }
            // The remote side is the stored record, narrowed to the fields
            // the writer touched: only those can conflict.
            let remote: Map<String, Value> = w
                .fields
                .keys()
                .map(|k| (k.clone(), current.fields.get(k).cloned().unwrap_or(Value::Null)))
                .collect();
            let stored_at = Some(ms_to_time(current.updated_at));
            // The conflict engine's local side is synchub's: the writer,
            // unless the writer is Zoho (a pull), whose side is remote.
            let (local_side, remote_side) = if m.writer_is_remote {
                (Side::new(&remote, stored_at), Side::new(&w.fields, m.at))
            } else {
                (Side::new(&w.fields, m.at), Side::new(&remote, stored_at))
            };
            let outcome = resolve(&m.rules, &base, local_side, remote_side);
            let (local, remote) = if m.writer_is_remote {
                (remote, w.fields.clone())
            } else {
                (w.fields.clone(), remote)
            };
            let mut patched = w.clone();
            patched.base_version = Some(current.version);
            patched.fields = outcome.changes_against(&current.fields);
            let committed = apply(tx, &patched, sync).await?;
            let open = outcome.has_unresolved();
            let status = if open {
                MergeStatus::Conflict
            } else {
                MergeStatus::Merged
            };
            if outcome.conflicts.is_empty() {
                return Ok(Merged {
                    committed,
                    status,
                    conflict: None,
                });
            }
            let severity = outcome
                .conflicts
                .iter()
                .map(|c| c.severity)
                .max()
                .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "low".to_owned());
            // A conflict every rule decided is history from the start; an
            // open one waits for a person.
            let history = if open {
                Vec::new()
            } else {
                let decided: Map<String, Value> = outcome
                    .conflicts
                    .iter()
                    .filter_map(|c| c.value.clone().map(|v| (c.field.clone(), v)))
                    .collect();
                vec![json!({"at": now_rfc3339(), "by": "rules", "resolution": "rules", "fields": decided})]
            };
            let (client_id, seq) = match &m.origin {
                Some((c, s)) => (Some(c.clone()), Some(*s)),
                None => (None, None),
            };
            let fields_json = serde_json::to_string(&outcome.conflicts)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let status_text = if open { "open" } else { "resolved" };
            let history_json = Value::Array(history.clone()).to_string();
            let row = keyed(q::INSERT_CONFLICT, key)
                .bind(base_version)
                .bind(committed.record.version)
                .bind(w.source.as_str())
                .bind(&w.by)
                .bind(&client_id)
                .bind(seq)
                .bind(Value::Object(base.clone()).to_string())
                .bind(Value::Object(local.clone()).to_string())
                .bind(Value::Object(remote.clone()).to_string())
                .bind(&fields_json)
                .bind(m.rules.strategy.as_str())
                .bind(&severity)
                .bind(status_text)
                .bind(&history_json)
                .fetch_one(&mut **tx)
                .await?;
            let created_at: i64 = row.try_get(1)?;
            let conflict = StoredConflict {
                id: row.try_get(0)?,
                entity: key.entity.clone(),
                record_id: key.id.clone(),
                base_version,
                version: committed.record.version,
                source: w.source.as_str().to_owned(),
                by: w.by.clone(),
                client_id,
                seq,
                base,
                local,
                remote,
                fields: outcome.conflicts.clone(),
                strategy: m.rules.strategy.as_str().to_owned(),
                severity,
                status: status_text.to_owned(),
                history,
                created_at,
                updated_at: created_at,
            };
            if open {
                let payload = events::conflict("conflict.detected", &conflict);
                outbox(tx, &key.tenant, "conflicts", &payload).await?;
                outbox(tx, &key.tenant, &key.record_channel(), &payload).await?;
            }
            Ok(Merged {
                committed,
                status,
                conflict: Some(conflict),
            })
        }

        /// A store error that no retry can cure: the mutation is rejected.
        fn permanent_code(e: &StoreError) -> Option<&'static str> {
            match e {
                StoreError::NotFound => Some("not_found"),
                StoreError::AlreadyExists => Some("already_exists"),
                StoreError::Conflict { .. } => Some("version_conflict"),
                StoreError::LockLost { .. } => Some("lock_lost"),
                StoreError::LockHeld { .. } => Some("lock_held"),
                _ => None,
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
                let row = keyed(q::GET_RECORD, key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row
                    .as_ref()
                    .map(record_from)
                    .transpose()?
                    .filter(|r| !r.deleted))
            }

            async fn write(&self, w: Write) -> StoreResult<Committed> {
                let mut tx = self.pool.begin().await?;
                fence(&mut tx, &w).await?;
                let c = apply(&mut tx, &w, &self.sync).await?;
                tx.commit().await?;
                Ok(c)
            }

            async fn acquire(
                &self,
                key: &RecordKey,
                user: &str,
                client: &str,
                ttl_ms: i64,
                takeover: bool,
            ) -> StoreResult<Acquired> {
                // Two first acquirers may both see no row; the loser of the
                // insert race looks again.
                for _ in 0..5 {
                    let mut tx = self.pool.begin().await?;
                    let existing = lock_row(&mut tx, q::LOCK_FOR_UPDATE, key).await?;
                    let channel = key.record_channel();
                    let (lock, payloads) = match existing {
                        None => {
                            let epoch = next_epoch(&mut tx).await?;
                            match put_lock(&mut tx, true, key, user, client, epoch, ttl_ms).await? {
                                Some(l) => {
                                    let p = vec![events::lock("lock.acquired", &l)];
                                    (l, p)
                                }
                                None => continue,
                            }
                        }
                        Some((old, false)) => {
                            let epoch = next_epoch(&mut tx).await?;
                            let l = put_lock(&mut tx, false, key, user, client, epoch, ttl_ms)
                                .await?
                                .ok_or(StoreError::NotFound)?;
                            let p = vec![
                                events::lock("lock.expired", &old),
                                events::lock("lock.acquired", &l),
                            ];
                            (l, p)
                        }
                        Some((old, true)) if old.holder == user => {
                            let epoch = if old.client == client {
                                old.epoch
                            } else {
                                next_epoch(&mut tx).await?
                            };
                            let l = put_lock(&mut tx, false, key, user, client, epoch, ttl_ms)
                                .await?
                                .ok_or(StoreError::NotFound)?;
                            let kind = if epoch == old.epoch {
                                "lock.renewed"
                            } else {
                                "lock.acquired"
                            };
                            let p = vec![events::lock(kind, &l)];
                            (l, p)
                        }
                        Some((old, true)) if takeover => {
                            let epoch = next_epoch(&mut tx).await?;
                            let l = put_lock(&mut tx, false, key, user, client, epoch, ttl_ms)
                                .await?
                                .ok_or(StoreError::NotFound)?;
                            let p = vec![events::taken_over(&l, &old)];
                            (l, p)
                        }
                        Some((old, true)) => {
                            tx.rollback().await?;
                            return Ok(Acquired::Held(old));
                        }
                    };
                    for p in &payloads {
                        outbox(&mut tx, &key.tenant, &channel, p).await?;
                    }
                    tx.commit().await?;
                    return Ok(Acquired::Granted(lock));
                }
                match self.lock_status(key).await? {
                    Some(l) if l.holder != user => Ok(Acquired::Held(l)),
                    _ => Err(StoreError::Corrupt("lock acquire kept losing races".into())),
                }
            }

            async fn renew(
                &self,
                key: &RecordKey,
                token: i64,
                ttl_ms: i64,
            ) -> StoreResult<Option<Lock>> {
                let mut tx = self.pool.begin().await?;
                let row = keyed(q::RENEW_LOCK, key)
                    .bind(token)
                    .bind(ttl_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let (lock, _) = lock_from(&row)?;
                outbox(
                    &mut tx,
                    &key.tenant,
                    &key.record_channel(),
                    &events::lock("lock.renewed", &lock),
                )
                .await?;
                tx.commit().await?;
                Ok(Some(lock))
            }

            async fn release(
                &self,
                key: &RecordKey,
                token: i64,
                by: &str,
            ) -> StoreResult<Option<Lock>> {
                let mut tx = self.pool.begin().await?;
                let rows = keyed(q::DELETE_LOCK_BY_EPOCH, key)
                    .bind(token)
                    .fetch_all(&mut *tx)
                    .await?;
                let dropped =
                    drop_locks(&mut tx, rows, |l| events::released(l, "released", Some(by)))
                        .await?;
                tx.commit().await?;
                Ok(dropped.into_iter().next().map(|(_, l)| l))
            }

            async fn force_release(&self, key: &RecordKey, by: &str) -> StoreResult<Option<Lock>> {
                let mut tx = self.pool.begin().await?;
                let rows = keyed(q::DELETE_LOCK, key)
                    .fetch_all(&mut *tx)
                    .await?;
                let dropped =
                    drop_locks(&mut tx, rows, |l| events::released(l, "forced", Some(by))).await?;
                tx.commit().await?;
                Ok(dropped.into_iter().next().map(|(_, l)| l))
            }

            async fn lock_status(&self, key: &RecordKey) -> StoreResult<Option<Lock>> {
                let row = keyed(q::LOCK_STATUS, key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row
                    .as_ref()
                    .map(lock_from)
                    .transpose()?
                    .filter(|(_, live)| *live)
                    .map(|(l, _)| l))
            }

            async fn expire_locks(&self) -> StoreResult<Vec<(String, Lock)>> {
                let mut tx = self.pool.begin().await?;
                let rows = sqlx::query(q::EXPIRE_LOCKS).fetch_all(&mut *tx).await?;
                if rows.is_empty() {
                    tx.rollback().await?;
                    return Ok(Vec::new());
                }
                let dropped =
                    drop_locks(&mut tx, rows, |l| events::lock("lock.expired", l)).await?;
                tx.commit().await?;
                Ok(dropped)
            }

            async fn release_abandoned(
                &self,
                grace_ms: i64,
                node_ttl_ms: i64,
            ) -> StoreResult<Vec<(String, Lock)>> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(q::MARK_OFFLINE)
                    .bind(node_ttl_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q::MARK_ONLINE)
                    .bind(node_ttl_ms)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query(q::RELEASE_ABANDONED)
                    .bind(grace_ms)
                    .fetch_all(&mut *tx)
                    .await?;
                let dropped =
                    drop_locks(&mut tx, rows, |l| events::released(l, "disconnected", None))
                        .await?;
                tx.commit().await?;
                Ok(dropped)
            }

            async fn heartbeat(
                &self,
                node_id: &str,
                node_name: &str,
                added: &[(String, String)],
                removed: &[(String, String)],
                node_ttl_ms: i64,
            ) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(q::HEARTBEAT)
                    .bind(node_id)
                    .bind(node_name)
                    .execute(&mut *tx)
                    .await?;
                for (tenant, user) in added {
                    sqlx::query(q::ADD_NODE_USER)
                        .bind(node_id)
                        .bind(tenant)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
                for (tenant, user) in removed {
                    sqlx::query(q::REMOVE_NODE_USER)
                        .bind(node_id)
                        .bind(tenant)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
                // Dead nodes' users stop counting; their rows go after ten lifetimes.
                sqlx::query(q::DROP_DEAD_NODE_USERS)
                    .bind(node_ttl_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q::DROP_DEAD_NODES)
                    .bind(node_ttl_ms * 10)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn forget_node(&self, node_id: &str) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(q::FORGET_NODE_USERS)
                    .bind(node_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q::FORGET_NODE)
                    .bind(node_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn save_draft(
                &self,
                key: &RecordKey,
                user: &str,
                fields: &serde_json::Map<String, serde_json::Value>,
            ) -> StoreResult<i64> {
                let text = serde_json::Value::Object(fields.clone()).to_string();
                Ok(keyed(q::SAVE_DRAFT, key)
                    .bind(user)
                    .bind(text)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?)
            }

            async fn get_draft(
                &self,
                key: &RecordKey,
                user: &str,
            ) -> StoreResult<Option<(serde_json::Map<String, serde_json::Value>, i64)>> {
                let row = keyed(q::GET_DRAFT, key)
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok((
                        parse_fields(&row.try_get::<String, _>(0)?)?,
                        row.try_get(1)?,
                    ))
                })
                .transpose()
            }

            async fn claim_outbox(
                &self,
                limit: i64,
                lease_ms: i64,
            ) -> StoreResult<Vec<OutboxEvent>> {
                let rows = sqlx::query(q::CLAIM_OUTBOX)
                    .bind(limit)
                    .bind(lease_ms)
                    .fetch_all(&self.pool)
                    .await?;
                let mut events = rows
                    .iter()
                    .map(|row| {
                        Ok(OutboxEvent {
                            id: row.try_get(0)?,
                            tenant: row.try_get(1)?,
                            channel: row.try_get(2)?,
                            payload: row.try_get(3)?,
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                events.sort_by_key(|e| e.id);
                Ok(events)
            }

            async fn ack_outbox(&self, ids: &[i64]) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                for id in ids {
                    sqlx::query(q::ACK_OUTBOX)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn retry_outbox(&self, id: i64, delay_ms: i64) -> StoreResult<()> {
                sqlx::query(q::RETRY_OUTBOX)
                    .bind(id)
                    .bind(delay_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn change_version(&self, tenant: &str) -> StoreResult<i64> {
                let row = sqlx::query(q::CHANGE_VERSION)
                    .bind(tenant)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => row.try_get(0)?,
                    None => 0,
                })
            }

            async fn merge_write(&self, m: MergeWrite) -> StoreResult<Merged> {
                let mut tx = self.pool.begin().await?;
                let merged = merge_in(&mut tx, &m, &self.sync).await?;
                tx.commit().await?;
                Ok(merged)
            }

            async fn push_mutation(
                &self,
                tenant: &str,
                client: &str,
                user: &str,
                seq: i64,
                plan: MutationPlan,
            ) -> StoreResult<PushStep> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(q::ENSURE_CLIENT)
                    .bind(tenant)
                    .bind(client)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                // Held until commit: pushes of one client serialise here.
                let row = sqlx::query(q::CLIENT_FOR_UPDATE)
                    .bind(tenant)
                    .bind(client)
                    .fetch_one(&mut *tx)
                    .await?;
                let owner: String = row.try_get(0)?;
                let last: i64 = row.try_get(1)?;
                if owner != user {
                    return Err(StoreError::ClientTaken);
                }
                if seq <= last {
                    let row = sqlx::query(q::STORED_RESULT)
                        .bind(tenant)
                        .bind(client)
                        .bind(seq)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let stored = match row {
                        Some(row) => parse_json(&row.try_get::<String, _>(0)?, "mutation result")?,
                        None => Value::Null,
                    };
                    tx.rollback().await?;
                    return Ok(PushStep::Duplicate(stored));
                }
                if seq != last + 1 {
                    tx.rollback().await?;
                    return Ok(PushStep::Gap { last_seq: last });
                }
                let result = match plan {
                    MutationPlan::Reject { code, message } => rejected_result(seq, &code, &message),
                    MutationPlan::Apply(m) => match merge_in(&mut tx, &m, &self.sync).await {
                        Ok(merged) => mutation_result(seq, &merged),
                        // Permanent failures are found before anything is
                        // written, so the transaction is still clean.
                        Err(e) => match permanent_code(&e) {
                            Some(code) => rejected_result(seq, code, &e.to_string()),
                            None => return Err(e),
                        },
                    },
                };
                let status = result["status"].as_str().unwrap_or("rejected").to_owned();
                sqlx::query(q::INSERT_RESULT)
                    .bind(tenant)
                    .bind(client)
                    .bind(seq)
                    .bind(&status)
                    .bind(result.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q::SET_LAST_SEQ)
                    .bind(tenant)
                    .bind(client)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(PushStep::Done(result))
            }

            async fn last_seq(&self, tenant: &str, client: &str) -> StoreResult<i64> {
                let row = sqlx::query(q::LAST_SEQ)
                    .bind(tenant)
                    .bind(client)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => row.try_get(0)?,
                    None => 0,
                })
            }

            async fn pull(
                &self,
                tenant: &str,
                cursor: i64,
                entities: &[String],
                limit: i64,
            ) -> StoreResult<Pulled> {
                // Every version up to the head is committed (versions are
                // handed out under the tenant row's lock), so a cursor at
                // the head never skips a change still in flight.
                let head = self.change_version(tenant).await?;
                let filter = if entities.is_empty() {
                    None
                } else {
                    Some(Value::from(entities.to_vec()).to_string())
                };
                let rows = sqlx::query(q::PULL)
                    .bind(tenant)
                    .bind(cursor)
                    .bind(head)
                    .bind(filter)
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let mut changes = rows
                    .iter()
                    .map(|row| Ok((record_from(row)?, row.try_get::<i64, _>(8)?)))
                    .collect::<StoreResult<Vec<_>>>()?;
                let more = changes.len() as i64 > limit;
                changes.truncate(limit.max(0) as usize);
                let cursor = if more {
                    changes.last().map_or(cursor, |(_, v)| *v)
                } else {
                    head.max(cursor)
                };
                Ok(Pulled {
                    changes,
                    cursor,
                    more,
                })
            }

            async fn list_conflicts(
                &self,
                tenant: &str,
                filter: &ConflictFilter,
            ) -> StoreResult<Vec<StoredConflict>> {
                let rows = sqlx::query(q::LIST_CONFLICTS)
                    .bind(tenant)
                    .bind(&filter.status)
                    .bind(&filter.entity)
                    .bind(filter.after)
                    .bind(filter.limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(conflict_from).collect()
            }

            async fn get_conflict(
                &self,
                tenant: &str,
                id: i64,
            ) -> StoreResult<Option<StoredConflict>> {
                let row = sqlx::query(q::GET_CONFLICT)
                    .bind(tenant)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(conflict_from).transpose()
            }

            async fn resolve_conflict(
                &self,
                tenant: &str,
                id: i64,
                by: &str,
                resolution: &str,
                patch: Map<String, Value>,
            ) -> StoreResult<(StoredConflict, Option<Committed>)> {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(q::CONFLICT_FOR_UPDATE)
                    .bind(tenant)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let mut c = match row.as_ref().map(conflict_from).transpose()? {
                    Some(c) => c,
                    None => return Err(StoreError::NotFound),
                };
                if c.status != "open" {
                    return Err(StoreError::ConflictClosed);
                }
                let key = RecordKey::new(tenant, c.entity.clone(), c.record_id.clone());
                let committed = if patch.is_empty() {
                    None
                } else {
                    // The person saw both sides: no version check, and no
                    // edit lock stands in the way of a review decision.
                    let w = Write {
                        key: key.clone(),
                        kind: WriteKind::Update,
                        base_version: None,
                        fields: patch.clone(),
                        lock_token: None,
                        respect_locks: false,
                        by: by.to_owned(),
                        source: Source::Local,
                    };
                    Some(apply(&mut tx, &w, &self.sync).await?)
                };
                c.history.push(json!({
                    "at": now_rfc3339(),
                    "by": by,
                    "resolution": resolution,
                    "fields": patch,
                }));
                let updated_at: i64 = sqlx::query(q::SET_CONFLICT_RESOLVED)
                    .bind(tenant)
                    .bind(id)
                    .bind(Value::Array(c.history.clone()).to_string())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                c.status = "resolved".to_owned();
                c.updated_at = updated_at;
                let payload = events::conflict("conflict.resolved", &c);
                outbox(&mut tx, tenant, "conflicts", &payload).await?;
                outbox(&mut tx, tenant, &key.record_channel(), &payload).await?;
                tx.commit().await?;
                Ok((c, committed))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_reports_only_fields_whose_value_changed() {
        let old = json!({"a": 1, "b": "x"}).as_object().cloned().unwrap();
        let patch = json!({"a": 1, "b": "y", "c": null})
            .as_object()
            .cloned()
            .unwrap();
        let (merged, changed) = merge_fields(&old, &patch);
        assert_eq!(changed, vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(Value::Object(merged), json!({"a": 1, "b": "y", "c": null}));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn record_changed_carries_the_contracted_fields() {
        let r = Record {
            entity: "deals".into(),
            id: "1".into(),
            version: 3,
            fields: Map::new(),
            updated_at: 0,
            updated_by: "u".into(),
            deleted: false,
            zoho_id: None,
        };
        let v: Value = serde_json::from_str(&events::record_changed(
            &r,
            &["x".into()],
            Source::Local,
            "u",
        ))
        .unwrap();
        assert_eq!(v["type"], "record.changed");
        assert_eq!(v["fields"], json!(["x"]));
        assert_eq!(v["source"], "local");
        assert_eq!(v["by"], "u");
        assert_eq!(v["version"], 3);
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
    }
}
