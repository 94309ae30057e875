//! synchub to Zoho: a claimed batch of push jobs becomes at most one
//! upsert, one or two updates and one delete per module, each carrying only
//! the fields that differ from the shadow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::session::{Outcome, Session, SessionKind, Tracker};
use super::{EXTERNAL_ID, SyncService, parse_zoho_time, same};
use crate::domain::mapping::{EntityMapping, Flow};
use crate::store::sync::{Job, NewJob, Retry, ShadowPatch, SyncStat};
use crate::store::{Record, RecordKey, StoreError};
use crate::zoho::client::{RecordResult, ZohoClient};
use crate::zoho::error::{ErrorClass, ZohoError};

/// A push session open on this node for one (tenant, module).
pub(crate) struct OpenPush {
    pub tracker: Tracker,
    pub last: Instant,
}

/// What one job asks Zoho to do.
enum Plan {
    /// Nothing to send: finished as it is.
    Done(Job, Outcome),
    Insert(Item),
    Update(Item),
    Delete {
        job: Job,
        zoho_id: String,
    },
}

struct Item {
    job: Job,
    record: Record,
    zoho_id: Option<String>,
    /// The Zoho fields sent.
    fields: Map<String, Value>,
    /// The local values those fields came from (the new shadow).
    local: Map<String, Value>,
    since: Option<OffsetDateTime>,
    /// Fields of the record wait in an open conflict.
    conflicted: bool,
}

/// The retry policy of one failure (DESIGN.md §4 classes).
pub fn retry_for(sync: &SyncService, job: &Job, err: &ZohoError) -> (Retry, &'static str) {
    let s = &sync.settings;
    let backoff = |attempts: i64| {
        let base = s.retry_initial.as_millis() as f64 * 2f64.powi(attempts.clamp(0, 20) as i32);
        let capped = base.min(s.retry_max.as_millis() as f64);
        (capped * rand::rng().random_range(0.8..1.2)) as i64
    };
    let last_try = job.attempts + 1 >= s.max_attempts;
    // Throttling and token trouble wait a while without using an attempt
    // (the client already waited out its own throttle budget).
    let pause = (s.retry_initial * 8).min(s.retry_max).as_millis() as i64;
    match err.class() {
        ErrorClass::RateLimited => {
            let after = match err {
                ZohoError::RateLimited {
                    retry_after: Some(d),
                    ..
                } => d.as_millis() as i64,
                _ => pause,
            };
            (
                Retry::Later {
                    delay_ms: after,
                    counted: false,
                },
                "rate_limited",
            )
        }
        ErrorClass::AuthExpired => (
            Retry::Later {
                delay_ms: pause,
                counted: false,
            },
            "auth",
        ),
        ErrorClass::Timeout | ErrorClass::ServerError if last_try => (
            Retry::Dead,
            if err.class() == ErrorClass::Timeout {
                "timeout"
            } else {
                "server_error"
            },
        ),
        ErrorClass::Timeout => (
            Retry::Later {
                delay_ms: backoff(job.attempts),
                counted: true,
            },
            "timeout",
        ),
        ErrorClass::ServerError => (
            Retry::Later {
                delay_ms: backoff(job.attempts),
                counted: true,
            },
            "server_error",
        ),
        ErrorClass::RecordLocked if job.attempts + 1 >= 3 => (Retry::Dead, "record_locked"),
        ErrorClass::RecordLocked => (
            Retry::Later {
                delay_ms: 300_000 * (1 << job.attempts.clamp(0, 4)),
                counted: true,
            },
            "record_locked",
        ),
        ErrorClass::Validation => (Retry::Dead, "validation"),
        ErrorClass::NotFound => (Retry::Dead, "not_found"),
        ErrorClass::Conflict if last_try => (Retry::Dead, "conflict"),
        ErrorClass::Conflict => (
            Retry::Later {
                delay_ms: 0,
                counted: true,
            },
            "conflict",
        ),
        ErrorClass::Permanent => (Retry::Dead, "permanent"),
    }
}

/// How long jobs of a tenant without a Zoho connection are parked; setting
/// the connection makes them due at once (`Connections::set`).
pub fn no_connection_delay(sync: &SyncService) -> i64 {
    sync.settings
        .retry_max
        .max(Duration::from_secs(3600))
        .as_millis() as i64
}

/// Pushes a claimed batch: grouped per tenant and entity, one group at a time.
pub async fn push_batch(sync: &Arc<SyncService>, jobs: Vec<Job>) {
    let mut groups: BTreeMap<(String, String), Vec<Job>> = BTreeMap::new();
    for job in jobs {
        groups
            .entry((job.tenant.clone(), job.entity.clone()))
            .or_default()
            .push(job);
    }
    for ((tenant, entity), jobs) in groups {
        let Some(mapping) = sync.mappings.entity(&entity).cloned() else {
            for job in &jobs {
                let _ = sync.store.finish_job(job).await;
            }
            continue;
        };
        if let Err(e) = push_group(sync, &tenant, &mapping, jobs).await {
            tracing::warn!(tenant, entity, error = %e, "push batch stopped by the store");
        }
    }
}

async fn push_group(
    sync: &Arc<SyncService>,
    tenant: &str,
    mapping: &EntityMapping,
    jobs: Vec<Job>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let Some(client) = sync.connections.client(tenant).await else {
        for job in &jobs {
            sync.store
                .fail_job(
                    job,
                    Retry::Later {
                        delay_ms: no_connection_delay(sync),
                        counted: false,
                    },
                    "no_connection",
                    "no active Zoho connection for this tenant",
                )
                .await?;
        }
        return Ok(());
    };
    let mut report = Report::default();
    let mut inserts = vec![];
    let mut updates = vec![];
    let mut deletes = vec![];
    for job in jobs {
        match plan(sync, mapping, job).await? {
            Plan::Done(job, outcome) => {
                sync.store.finish_job(&job).await?;
                report.outcomes.push(outcome);
            }
            Plan::Insert(item) => inserts.push(item),
            Plan::Update(item) => updates.push(item),
            Plan::Delete { job, zoho_id } => deletes.push((job, zoho_id)),
        }
    }
    let module = mapping.module();
    if !inserts.is_empty() {
        let body: Vec<Map<String, Value>> = inserts.iter().map(|i| i.fields.clone()).collect();
        report.calls += body.len().div_ceil(crate::zoho::client::MAX_WRITE_BATCH) as u64;
        let results = client.upsert(module, &body, &[EXTERNAL_ID]).await;
        settle(sync, &client, mapping, inserts, results, &mut report).await?;
    }
    // One update per last-synced Modified_Time: each record is guarded by
    // its own version, so one changed in Zoho since its last sync is
    // refused (and pulled), never overwritten, and none is refused because
    // of another's older time. Records synced together share a time, so
    // this is usually one call. Records never read from Zoho go unguarded.
    let mut by_guard: BTreeMap<Option<i64>, Vec<Item>> = BTreeMap::new();
    for item in updates {
        by_guard
            .entry(item.since.map(OffsetDateTime::unix_timestamp))
            .or_default()
            .push(item);
    }
    for (_, group) in by_guard {
        let since = group.first().and_then(|i| i.since);
        let body: Vec<Map<String, Value>> = group.iter().map(|i| i.fields.clone()).collect();
        report.calls += body.len().div_ceil(crate::zoho::client::MAX_WRITE_BATCH) as u64;
        let results = client.update(module, &body, since).await;
        settle(sync, &client, mapping, group, results, &mut report).await?;
    }
    if !deletes.is_empty() {
        let ids: Vec<&str> = deletes.iter().map(|(_, id)| id.as_str()).collect();
        report.calls += 1;
        let results = client.delete(module, &ids).await;
        match results {
            Ok(results) => {
                for (i, (job, _)) in deletes.iter().enumerate() {
                    let outcome = results.iter().find(|r| r.index == i).map(|r| &r.outcome);
                    match outcome {
                        Some(Ok(_)) | Some(Err(ZohoError::NotFound { .. })) => {
                            deleted(sync, job).await?;
                            report.outcomes.push(Outcome::Deleted);
                        }
                        Some(Err(e)) => fail(sync, job, e, &mut report).await?,
                        None => {
                            let e = missing_result();
                            fail(sync, job, &e, &mut report).await?
                        }
                    }
                }
            }
            Err(e) => {
                for (job, _) in &deletes {
                    fail(sync, job, &e, &mut report).await?;
                }
            }
        }
    }
    report.finish(sync, tenant, mapping, started).await;
    Ok(())
}

fn missing_result() -> ZohoError {
    ZohoError::Permanent {
        code: "MISSING_RESULT".into(),
        message: "Zoho's reply had no entry for this record".into(),
    }
}

/// Decides what a job sends.
async fn plan(sync: &SyncService, mapping: &EntityMapping, job: Job) -> Result<Plan, StoreError> {
    let key = job.key();
    let store = &sync.store;
    let shadow = store.shadow(&key).await?.unwrap_or_default();
    let Some(record) = store.get(&key).await? else {
        if let Some(zoho_id) = shadow.zoho_id.clone()
            && mapping.crosses(Flow::ToZoho)
            && shadow.status != "synced"
        {
            return Ok(Plan::Delete { job, zoho_id });
        }
        // Never in Zoho (or deleted there already): nothing to send.
        mark(sync, &key, "synced", None).await?;
        return Ok(Plan::Done(job, Outcome::Unchanged));
    };
    if !mapping.passes_filters(Flow::ToZoho, &record.fields) {
        store
            .patch_shadow(
                &key,
                &ShadowPatch {
                    status: Some("filtered".into()),
                    ..ShadowPatch::default()
                },
            )
            .await?;
        return Ok(Plan::Done(job, Outcome::Skipped));
    }
    let open = store.open_conflict_fields(&key).await?;
    let local: Map<String, Value> = record
        .fields
        .iter()
        .filter(|(k, v)| !open.contains(k) && !same(shadow.local.get(*k), v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Fields waiting for a person keep the record in `conflict`.
    let settled = if open.is_empty() {
        "synced"
    } else {
        "conflict"
    };
    if local.is_empty() && shadow.zoho_id.is_some() {
        mark(sync, &key, settled, None).await?;
        return Ok(Plan::Done(job, Outcome::Unchanged));
    }
    let mapped = match &shadow.zoho_id {
        None => {
            let sendable: Map<String, Value> = record
                .fields
                .iter()
                .filter(|(k, _)| !open.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            mapping.to_zoho(&sendable)
        }
        Some(_) => mapping.to_zoho_changed(&record.fields, local.keys()),
    };
    let mut fields = match mapped {
        Ok(f) => f,
        Err(e) => {
            let message = format!("mapping to Zoho: {e}");
            store
                .fail_job(&job, Retry::Dead, "validation", &message)
                .await?;
            mark(sync, &key, "error", Some(message)).await?;
            return Ok(Plan::Done(job, Outcome::Error));
        }
    };
    fields.retain(|k, _| !super::is_system_field(k));
    if shadow.zoho_id.is_some() {
        fields.retain(|k, v| !same(shadow.remote.get(k), v));
    }
    if fields.is_empty() && shadow.zoho_id.is_some() {
        // Only fields that do not cross changed.
        store
            .patch_shadow(
                &key,
                &ShadowPatch {
                    local,
                    version: Some(record.version),
                    status: Some(settled.into()),
                    synced: true,
                    ..ShadowPatch::default()
                },
            )
            .await?;
        return Ok(Plan::Done(job, Outcome::Unchanged));
    }
    let since = shadow.zoho_modified.as_deref().and_then(parse_zoho_time);
    Ok(match shadow.zoho_id {
        None => {
            fields.insert(EXTERNAL_ID.into(), json!(record.id));
            Plan::Insert(Item {
                job,
                record,
                zoho_id: None,
                fields,
                local,
                since: None,
                conflicted: !open.is_empty(),
            })
        }
        Some(zoho_id) => {
            fields.insert("id".into(), json!(zoho_id));
            Plan::Update(Item {
                job,
                record,
                zoho_id: Some(zoho_id),
                fields,
                local,
                since,
                conflicted: !open.is_empty(),
            })
        }
    })
}

/// Sets a record's sync status (and error).
async fn mark(
    sync: &SyncService,
    key: &RecordKey,
    status: &str,
    error: Option<String>,
) -> Result<(), StoreError> {
    sync.store
        .patch_shadow(
            key,
            &ShadowPatch {
                status: Some(status.into()),
                error: Some(error),
                ..ShadowPatch::default()
            },
        )
        .await?;
    Ok(())
}

async fn deleted(sync: &SyncService, job: &Job) -> Result<(), StoreError> {
    sync.store
        .patch_shadow(
            &job.key(),
            &ShadowPatch {
                status: Some("synced".into()),
                error: Some(None),
                synced: true,
                ..ShadowPatch::default()
            },
        )
        .await?;
    sync.store.finish_job(job).await?;
    Ok(())
}

/// Applies the per-record results of one write call.
async fn settle(
    sync: &SyncService,
    client: &ZohoClient,
    mapping: &EntityMapping,
    items: Vec<Item>,
    results: Result<Vec<RecordResult>, ZohoError>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let results = match results {
        Ok(r) => r,
        // Zoho refuses a whole guarded update with one 412 without saying
        // which record changed: each is read again, so the next guard is
        // its own current version.
        Err(e) if e.class() == ErrorClass::Conflict => {
            for item in &items {
                on_conflict(sync, client, mapping, item, report).await?;
            }
            return Ok(());
        }
        Err(e) => {
            for item in &items {
                fail(sync, &item.job, &e, report).await?;
            }
            return Ok(());
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let outcome = results.iter().find(|r| r.index == i).map(|r| &r.outcome);
        match outcome {
            Some(Ok(success)) => {
                let key = item.job.key();
                let mut remote = item.fields.clone();
                remote.remove("id");
                remote.remove(EXTERNAL_ID);
                let current = sync.store.get(&key).await?;
                // If the record moved on meanwhile, its writer set the
                // status (a local change: pending with a job queued).
                let status = if item.conflicted {
                    Some("conflict")
                } else if current.is_some_and(|c| c.version == item.record.version) {
                    Some("synced")
                } else {
                    None
                };
                sync.store
                    .patch_shadow(
                        &key,
                        &ShadowPatch {
                            zoho_id: Some(success.id.clone()),
                            local: item.local.clone(),
                            remote,
                            version: Some(item.record.version),
                            zoho_modified: success.modified_time.clone(),
                            status: status.map(str::to_owned),
                            error: Some(None),
                            synced: true,
                        },
                    )
                    .await?;
                if item.record.zoho_id.as_deref() != Some(success.id.as_str()) {
                    sync.store.set_zoho_id(&key, &success.id).await?;
                }
                sync.store.finish_job(&item.job).await?;
                report.outcomes.push(if item.zoho_id.is_none() {
                    Outcome::Created
                } else {
                    Outcome::Updated
                });
            }
            Some(Err(e)) if e.class() == ErrorClass::Conflict => {
                on_conflict(sync, client, mapping, &item, report).await?;
            }
            Some(Err(e)) => fail(sync, &item.job, e, report).await?,
            None => {
                let e = missing_result();
                fail(sync, &item.job, &e, report).await?
            }
        }
    }
    Ok(())
}

/// Zoho changed the record since our last sync: read it, let the conflict
/// engine merge, and push what is left (the job runs again at once).
async fn on_conflict(
    sync: &SyncService,
    client: &ZohoClient,
    mapping: &EntityMapping,
    item: &Item,
    report: &mut Report,
) -> Result<(), StoreError> {
    report.calls += 1;
    let zoho_id = item.zoho_id.clone().unwrap_or_default();
    match super::pull::pull_one(sync, &item.job.tenant, client, mapping, &zoho_id).await {
        Ok(outcome) => {
            if outcome == Outcome::Conflict {
                report.outcomes.push(Outcome::Conflict);
            }
            // Counted: a record that keeps changing in Zoho between our
            // pull and our push ends in review instead of looping.
            let conflict = ZohoError::AlreadyModified {
                message: "changed in Zoho too: pulled and merged, pushing the rest".into(),
                details: Value::Null,
            };
            fail(sync, &item.job, &conflict, report).await?;
            sync.wake.notify_waiters();
        }
        Err(super::pull::PullError::Zoho(e)) => fail(sync, &item.job, &e, report).await?,
        Err(super::pull::PullError::Store(e)) => return Err(e),
        Err(other) => {
            let e = ZohoError::Permanent {
                code: "PULL_FAILED".into(),
                message: other.to_string(),
            };
            fail(sync, &item.job, &e, report).await?;
        }
    }
    Ok(())
}

/// Retries or dead-letters a job after a Zoho error.
async fn fail(
    sync: &SyncService,
    job: &Job,
    err: &ZohoError,
    report: &mut Report,
) -> Result<(), StoreError> {
    if let ZohoError::AuthFailed { error } = err {
        sync.connections.pause(&job.tenant, error);
    }
    let (retry, class) = retry_for(sync, job, err);
    let message = err.to_string();
    sync.store
        .fail_job(job, retry.clone(), class, &message)
        .await?;
    report.errors.push(class);
    if retry == Retry::Dead {
        report.outcomes.push(Outcome::Error);
        sync.store
            .patch_shadow(
                &job.key(),
                &ShadowPatch {
                    status: Some("error".into()),
                    error: Some(Some(format!("{class}: {message}"))),
                    ..ShadowPatch::default()
                },
            )
            .await?;
        tracing::warn!(tenant = %job.tenant, entity = %job.entity, id = %job.record_id, class, error = %message, "push dead-lettered");
    } else {
        tracing::debug!(tenant = %job.tenant, entity = %job.entity, id = %job.record_id, class, error = %message, "push will be retried");
    }
    Ok(())
}

/// What a group did, for its session and the analytics.
#[derive(Default)]
struct Report {
    outcomes: Vec<Outcome>,
    errors: Vec<&'static str>,
    calls: u64,
}

impl Report {
    async fn finish(
        self,
        sync: &Arc<SyncService>,
        tenant: &str,
        mapping: &EntityMapping,
        started: Instant,
    ) {
        let failed = self
            .outcomes
            .iter()
            .filter(|o| **o == Outcome::Error)
            .count() as i64;
        let synced = self.outcomes.len() as i64 - failed;
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.errors {
            *codes.entry(e).or_default() += 1;
        }
        let stat = SyncStat {
            module: mapping.module().to_owned(),
            direction: "push".into(),
            synced,
            failed: self.errors.len() as i64,
            duration_ms: started.elapsed().as_millis() as i64,
            api_calls: self.calls as i64,
            error_code: codes
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(c, _)| (*c).to_owned()),
            at: 0,
        };
        super::analytics::record(&stat);
        if let Err(e) = sync.store.add_stat(tenant, &stat).await {
            tracing::debug!(error = %e, "sync stat not recorded");
        }
        if self.outcomes.is_empty() && self.calls == 0 {
            return;
        }
        let mut sessions = sync.push_sessions.lock().await;
        let open = sessions
            .entry((tenant.to_owned(), mapping.module().to_owned()))
            .or_insert_with(|| OpenPush {
                tracker: sync.tracker(
                    tenant,
                    Session::new(
                        SessionKind::Push,
                        mapping.module(),
                        mapping.name(),
                        "worker",
                    ),
                ),
                last: Instant::now(),
            });
        if open.tracker.session.status == "queued" {
            open.tracker.start().await;
        }
        for o in &self.outcomes {
            open.tracker.count(*o);
        }
        open.tracker.add_api_calls(self.calls);
        for class in &self.errors {
            open.tracker
                .session
                .log("warn", format!("a push failed ({class})"));
        }
        open.last = Instant::now();
        open.tracker.progress().await;
    }
}

/// Ends push sessions idle for `idle` whose entity has nothing queued or running.
pub async fn close_idle_sessions(sync: &Arc<SyncService>, idle: Duration) {
    let mut sessions = sync.push_sessions.lock().await;
    let keys: Vec<(String, String)> = sessions.keys().cloned().collect();
    for key in keys {
        let Some(open) = sessions.get_mut(&key) else {
            continue;
        };
        if open.last.elapsed() < idle {
            continue;
        }
        let entity = open.tracker.session.entity.clone();
        let busy = match sync.store.queue_depth(&key.0).await {
            Ok(depth) => depth
                .iter()
                .find(|d| d.entity == entity)
                .map_or(0, |d| d.queued + d.running),
            Err(_) => continue,
        };
        if busy > 0 {
            continue;
        }
        if let Some(mut open) = sessions.remove(&key) {
            if open.tracker.session.status == "queued" {
                open.tracker.start().await;
            }
            open.tracker.finish(None).await;
        }
    }
}

/// `POST /v1/sync/sessions` with kind `push`: queues every local record of
/// the entity that is not in sync and opens (or joins) the push session
/// that reports their progress.
pub async fn start_push_session(
    sync: &Arc<SyncService>,
    tenant: &str,
    mapping: &EntityMapping,
    by: &str,
) -> Result<Session, StoreError> {
    let mut after = String::new();
    let mut queued = 0u64;
    loop {
        let ids = sync
            .store
            .record_ids(tenant, mapping.name(), &after, 500)
            .await?;
        let Some(last) = ids.last().cloned() else {
            break;
        };
        for id in ids {
            let key = RecordKey::new(tenant, mapping.name(), &id);
            let in_sync = sync
                .store
                .shadow(&key)
                .await?
                .is_some_and(|s| s.zoho_id.is_some() && s.status == "synced");
            if !in_sync {
                sync.store.enqueue_job(&NewJob::push(&key)).await?;
                queued += 1;
            }
        }
        after = last;
    }
    let mut sessions = sync.push_sessions.lock().await;
    let open = sessions
        .entry((tenant.to_owned(), mapping.module().to_owned()))
        .or_insert_with(|| OpenPush {
            tracker: sync.tracker(
                tenant,
                Session::new(SessionKind::Push, mapping.module(), mapping.name(), by),
            ),
            last: Instant::now(),
        });
    if open.tracker.session.status == "queued" {
        open.tracker.start().await;
    }
    open.tracker.session.total = open.tracker.session.processed + queued;
    open.tracker
        .session
        .log("info", format!("{queued} records queued for push by {by}"));
    open.last = Instant::now();
    open.tracker.save().await;
    sync.wake.notify_waiters();
    Ok(open.tracker.session.clone())
}
