//! Zoho to synchub: applying Zoho records through the shadow and the
//! conflict engine, and the full, incremental and webhook sessions that
//! read them.

use std::time::Instant;

use serde_json::{Map, Value};

use super::session::{Outcome, SessionKind, Tracker};
use super::{EXTERNAL_ID, SyncService, is_system_field, parse_zoho_time, same, zoho_text};
use crate::domain::mapping::{EntityMapping, Flow};
use crate::store::sync::{NewJob, ShadowPatch, SyncStat};
use crate::store::{MergeStatus, MergeWrite, RecordKey, Source, StoreError, Write, WriteKind};
use crate::zoho::client::{ListRequest, PageCursor, SortBy, ZohoClient};
use crate::zoho::error::ZohoError;

/// Who Zoho-sourced writes are attributed to.
pub const ZOHO_USER: &str = "zoho";

/// Why a session step stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Zoho(#[from] ZohoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// The name under which an incremental pull keeps its cursor.
fn cursor_name(module: &str) -> String {
    format!("pull.{module}.cursor")
}

/// The data fields of a Zoho record (bookkeeping removed).
pub fn data_fields(zoho: &Map<String, Value>) -> Map<String, Value> {
    zoho.iter()
        .filter(|(k, _)| !is_system_field(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Applies one Zoho record: finds its local record (by the external id,
/// else the Zoho id), compares each field with the shadow, and writes only
/// what Zoho changed since the last sync, through the conflict engine when
/// the local record changed too. Our own pushes coming back compare equal
/// to the shadow and change nothing.
pub async fn apply_remote(
    sync: &SyncService,
    tenant: &str,
    mapping: &EntityMapping,
    zoho: &Map<String, Value>,
) -> Result<Outcome, StoreError> {
    let Some(zoho_id) = zoho_text(zoho, "id") else {
        return Ok(Outcome::Skipped);
    };
    let store = &sync.store;
    let local_id = match zoho_text(zoho, EXTERNAL_ID) {
        Some(id) => id,
        None => store
            .find_by_zoho_id(tenant, mapping.name(), &zoho_id)
            .await?
            .unwrap_or_else(|| zoho_id.clone()),
    };
    let key = RecordKey::new(tenant, mapping.name(), &local_id);
    let shadow = store.shadow(&key).await?.unwrap_or_default();
    let modified = zoho_text(zoho, "Modified_Time");
    let values = data_fields(zoho);
    let changed: Vec<String> = values
        .iter()
        .filter(|(k, v)| !same(shadow.remote.get(*k), v))
        .map(|(k, _)| k.clone())
        .collect();
    let touch = ShadowPatch {
        zoho_id: Some(zoho_id.clone()),
        zoho_modified: modified.clone(),
        ..ShadowPatch::default()
    };
    if changed.is_empty() {
        // Nothing new: our own write coming back, or an overlap of the cursor.
        if shadow.zoho_id.as_deref() != Some(&zoho_id) || shadow.zoho_modified != modified {
            store.patch_shadow(&key, &touch).await?;
        }
        return Ok(Outcome::Unchanged);
    }
    if !mapping.crosses(Flow::FromZoho) {
        // Zoho's side is not taken, but its version is known now: a push
        // guarded by it is not refused again and again.
        store.patch_shadow(&key, &touch).await?;
        return Ok(Outcome::Skipped);
    }
    let patch = match mapping.from_zoho_changed(&values, &changed) {
        Ok(p) => p,
        Err(e) => {
            store
                .patch_shadow(
                    &key,
                    &ShadowPatch {
                        status: Some("error".into()),
                        error: Some(Some(format!("mapping from Zoho: {e}"))),
                        ..touch
                    },
                )
                .await?;
            return Ok(Outcome::Error);
        }
    };
    let current = store.get(&key).await?;
    if current.is_none() && shadow.version > 0 {
        // Deleted here since the last sync: the delete's push decides.
        return Ok(Outcome::Skipped);
    }
    let mut judged = current
        .as_ref()
        .map(|r| r.fields.clone())
        .unwrap_or_default();
    judged.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !mapping.passes_filters(Flow::FromZoho, &judged) {
        store.patch_shadow(&key, &touch).await?;
        return Ok(Outcome::Skipped);
    }
    let remote_patch = ShadowPatch {
        remote: values.clone(),
        ..touch.clone()
    };
    if patch.is_empty() {
        store.patch_shadow(&key, &remote_patch).await?;
        return Ok(Outcome::Unchanged);
    }
    let base_version = match &current {
        Some(r) if shadow.version > 0 => shadow.version.min(r.version),
        Some(r) => r.version,
        None => 0,
    };
    let base: Map<String, Value> = patch
        .keys()
        .filter_map(|k| shadow.local.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    let merged = store
        .merge_write(MergeWrite {
            write: Write {
                key: key.clone(),
                kind: WriteKind::Update,
                base_version: Some(base_version),
                fields: patch.clone(),
                lock_token: None,
                respect_locks: false,
                by: ZOHO_USER.into(),
                source: Source::Zoho,
            },
            base,
            at: modified.as_deref().and_then(parse_zoho_time),
            rules: sync.conflicts.for_entity(mapping.name()).into_owned(),
            origin: None,
            writer_is_remote: true,
        })
        .await?;
    let record = &merged.committed.record;
    // What a local-wins or still-unsynced field must send back.
    let differs = patch.iter().any(|(k, v)| !same(record.fields.get(k), v));
    let status = match merged.status {
        MergeStatus::Conflict => "conflict",
        _ if differs => "pending",
        _ if shadow.status == "pending" => "pending",
        _ => "synced",
    };
    store
        .patch_shadow(
            &key,
            &ShadowPatch {
                local: patch,
                version: Some(record.version),
                status: Some(status.into()),
                error: Some(None),
                synced: true,
                ..remote_patch
            },
        )
        .await?;
    if record.zoho_id.as_deref() != Some(&zoho_id) {
        store.set_zoho_id(&key, &zoho_id).await?;
    }
    if differs && merged.status != MergeStatus::Conflict {
        store.enqueue_job(&NewJob::push(&key)).await?;
        sync.wake.notify_waiters();
    }
    Ok(match merged.status {
        MergeStatus::Conflict => Outcome::Conflict,
        _ if current.is_none() => Outcome::Created,
        _ if merged.committed.changed.is_empty() => Outcome::Unchanged,
        _ => Outcome::Updated,
    })
}

/// Applies a Zoho deletion: the local record is deleted unless it has
/// changes not yet in Zoho; then it is kept and marked for review.
pub async fn apply_remote_delete(
    sync: &SyncService,
    tenant: &str,
    mapping: &EntityMapping,
    zoho_id: &str,
) -> Result<Outcome, StoreError> {
    if !mapping.crosses(Flow::FromZoho) {
        return Ok(Outcome::Skipped);
    }
    let store = &sync.store;
    let Some(local_id) = store
        .find_by_zoho_id(tenant, mapping.name(), zoho_id)
        .await?
    else {
        return Ok(Outcome::Skipped);
    };
    let key = RecordKey::new(tenant, mapping.name(), &local_id);
    let Some(record) = store.get(&key).await? else {
        return Ok(Outcome::Unchanged);
    };
    let shadow = store.shadow(&key).await?.unwrap_or_default();
    let unsynced = record
        .fields
        .iter()
        .any(|(k, v)| mapping.zoho_name_of(k).is_some() && !same(shadow.local.get(k), v));
    if unsynced {
        store
            .patch_shadow(
                &key,
                &ShadowPatch {
                    status: Some("error".into()),
                    error: Some(Some(
                        "deleted in Zoho while changed here: review (restore or delete)".into(),
                    )),
                    ..ShadowPatch::default()
                },
            )
            .await?;
        return Ok(Outcome::Conflict);
    }
    store
        .write(Write {
            key: key.clone(),
            kind: WriteKind::Delete,
            base_version: None,
            fields: Map::new(),
            lock_token: None,
            respect_locks: false,
            by: ZOHO_USER.into(),
            source: Source::Zoho,
        })
        .await?;
    store
        .patch_shadow(
            &key,
            &ShadowPatch {
                status: Some("synced".into()),
                error: Some(None),
                synced: true,
                ..ShadowPatch::default()
            },
        )
        .await?;
    Ok(Outcome::Deleted)
}

/// Counts one applied record; a store error stops the session.
async fn step(
    tracker: &mut Tracker,
    result: Result<Outcome, StoreError>,
) -> Result<Outcome, PullError> {
    match result {
        Ok(outcome) => {
            tracker.count(outcome);
            Ok(outcome)
        }
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => {
            tracker.count(Outcome::Error);
            tracker
                .session
                .log("error", format!("record not applied: {e}"));
            Ok(Outcome::Error)
        }
    }
}

async fn stat(
    sync: &SyncService,
    tenant: &str,
    module: &str,
    synced: i64,
    failed: i64,
    started: Instant,
    api_calls: i64,
) {
    let stat = SyncStat {
        module: module.to_owned(),
        direction: "pull".into(),
        synced,
        failed,
        duration_ms: started.elapsed().as_millis() as i64,
        api_calls,
        error_code: None,
        at: 0,
    };
    super::analytics::record(&stat);
    if let Err(e) = sync.store.add_stat(tenant, &stat).await {
        tracing::debug!(error = %e, "sync stat not recorded");
    }
}

/// Applies one page of Zoho records, counting and announcing progress.
async fn apply_page(
    sync: &SyncService,
    tracker: &mut Tracker,
    mapping: &EntityMapping,
    records: &[Map<String, Value>],
    started: Instant,
) -> Result<Option<String>, PullError> {
    let tenant = tracker.tenant().to_owned();
    let mut newest: Option<String> = None;
    let (mut ok, mut failed) = (0, 0);
    for record in records {
        let outcome = step(tracker, apply_remote(sync, &tenant, mapping, record).await).await?;
        if outcome == Outcome::Error {
            failed += 1;
        } else {
            ok += 1;
        }
        if let Some(m) = zoho_text(record, "Modified_Time")
            && newest
                .as_deref()
                .and_then(parse_zoho_time)
                .zip(parse_zoho_time(&m))
                .is_none_or(|(a, b)| b > a)
        {
            newest = Some(m);
        }
        tracker.progress().await;
    }
    stat(sync, &tenant, mapping.module(), ok, failed, started, 1).await;
    Ok(newest)
}

/// Runs a pull session (full, incremental or webhook) to its end.
pub async fn run(
    sync: &SyncService,
    tracker: &mut Tracker,
    client: &ZohoClient,
) -> Result<(), PullError> {
    let mapping = sync
        .mapping(&tracker.session.module)
        .ok_or_else(|| {
            PullError::Other(format!("module {} is not synced", tracker.session.module))
        })?
        .clone();
    match tracker.session.kind {
        SessionKind::Full => full(sync, tracker, client, &mapping).await,
        SessionKind::Incremental => incremental(sync, tracker, client, &mapping).await,
        SessionKind::Webhook => targeted(sync, tracker, client, &mapping).await,
        SessionKind::Push => Err(PullError::Other("a push session is not a pull".into())),
    }
}

/// Every Zoho record of the module in id order (page tokens past 2,000),
/// then every local record Zoho does not have yet is queued for push.
async fn full(
    sync: &SyncService,
    tracker: &mut Tracker,
    client: &ZohoClient,
    mapping: &EntityMapping,
) -> Result<(), PullError> {
    let tenant = tracker.tenant().to_owned();
    let module = mapping.module().to_owned();
    let fields = sync.pull_fields(&tenant, client, mapping).await?;
    tracker.add_api_calls(1);
    tracker.session.total = client.count(&module).await?;
    tracker.add_api_calls(1);
    // The next incremental starts at the newest change Zoho had before this
    // read began (inclusive): whatever changes while it reads is newer.
    let mut newest_first = ListRequest::new(&module, &["Modified_Time"]);
    newest_first.sort_by = SortBy::ModifiedTime;
    newest_first.ascending = false;
    newest_first.per_page = 1;
    let start = client
        .list_page(&newest_first, &PageCursor::Page(1))
        .await?
        .records
        .first()
        .and_then(|r| zoho_text(r, "Modified_Time"));
    tracker.add_api_calls(1);
    tracker.progress().await;
    let mut request = ListRequest::new(&module, &[]);
    request.fields = fields;
    request.sort_by = SortBy::Id;
    let mut cursor = PageCursor::Page(1);
    loop {
        let started = Instant::now();
        let page = client.list_page(&request, &cursor).await?;
        tracker.add_api_calls(1);
        apply_page(sync, tracker, mapping, &page.records, started).await?;
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    if mapping.crosses(Flow::ToZoho) {
        let queued = queue_unlinked(sync, &tenant, mapping).await?;
        if queued > 0 {
            tracker
                .session
                .log("info", format!("{queued} local records queued for push"));
        }
    }
    if let Some(n) = start {
        sync.store
            .put_state(&tenant, &cursor_name(&module), &n)
            .await?;
    }
    Ok(())
}

/// Queues a push for every local record of the entity that has no Zoho id.
async fn queue_unlinked(
    sync: &SyncService,
    tenant: &str,
    mapping: &EntityMapping,
) -> Result<u64, StoreError> {
    let mut after = String::new();
    let mut queued = 0;
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
            let linked = sync
                .store
                .shadow(&key)
                .await?
                .is_some_and(|s| s.zoho_id.is_some());
            if !linked && sync.store.enqueue_job(&NewJob::push(&key)).await? {
                queued += 1;
            }
        }
        after = last;
    }
    if queued > 0 {
        sync.wake.notify_waiters();
    }
    Ok(queued)
}

/// Deletions since the cursor, then records modified since it, oldest
/// first. The filter is inclusive, so a record at the cursor is read again
/// and found unchanged by the shadow. Pages are keyed by time: each query
/// starts at the newest `Modified_Time` of the page before (page numbers
/// only within one second), so a record edited while the pull runs moves
/// to the end of the window instead of shifting another out of it. The
/// cursor advances only past what was applied. Without a cursor it is a
/// full sync.
async fn incremental(
    sync: &SyncService,
    tracker: &mut Tracker,
    client: &ZohoClient,
    mapping: &EntityMapping,
) -> Result<(), PullError> {
    let tenant = tracker.tenant().to_owned();
    let module = mapping.module().to_owned();
    let Some(since_text) = sync.store.get_state(&tenant, &cursor_name(&module)).await? else {
        tracker
            .session
            .log("info", "no cursor yet: reading everything once");
        return full(sync, tracker, client, mapping).await;
    };
    let mut since = parse_zoho_time(&since_text)
        .ok_or_else(|| PullError::Other(format!("stored cursor `{since_text}` is not a time")))?;
    let deleted = client.deleted_records(&module, Some(since)).await?;
    tracker.add_api_calls(1);
    tracker.session.total += deleted.len() as u64;
    for d in deleted {
        step(
            tracker,
            apply_remote_delete(sync, &tenant, mapping, &d.id).await,
        )
        .await?;
        tracker.progress().await;
    }
    let fields = sync.pull_fields(&tenant, client, mapping).await?;
    let mut request = ListRequest::new(&module, &[]);
    request.fields = fields;
    request.sort_by = SortBy::ModifiedTime;
    let mut cursor = PageCursor::Page(1);
    loop {
        request.modified_since = Some(since);
        let started = Instant::now();
        let page = client.list_page(&request, &cursor).await?;
        tracker.add_api_calls(1);
        tracker.session.total += page.records.len() as u64;
        let newest = apply_page(sync, tracker, mapping, &page.records, started)
            .await?
            .and_then(|t| parse_zoho_time(&t).map(|at| (t, at)));
        if let Some((text, _)) = &newest {
            sync.store
                .put_state(&tenant, &cursor_name(&module), text)
                .await?;
        }
        match (page.next, newest) {
            (None, _) => break,
            (Some(_), Some((_, at))) if at > since => {
                since = at;
                cursor = PageCursor::Page(1);
            }
            (Some(next), _) => cursor = next,
        }
    }
    Ok(())
}

/// The records a notification named: each read by id (or, for a delete,
/// applied as a deletion).
async fn targeted(
    sync: &SyncService,
    tracker: &mut Tracker,
    client: &ZohoClient,
    mapping: &EntityMapping,
) -> Result<(), PullError> {
    let tenant = tracker.tenant().to_owned();
    let module = mapping.module().to_owned();
    let ids = tracker.session.ids.clone();
    tracker.session.total = ids.len() as u64;
    let fields = sync.pull_fields(&tenant, client, mapping).await?;
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    for id in &ids {
        let started = Instant::now();
        let result = if tracker.session.deletions {
            apply_remote_delete(sync, &tenant, mapping, id).await
        } else {
            let record = client.get_record(&module, id, Some(&fields)).await?;
            tracker.add_api_calls(1);
            match record {
                Some(r) => apply_remote(sync, &tenant, mapping, &r).await,
                // Gone meanwhile: a deletion.
                None => apply_remote_delete(sync, &tenant, mapping, id).await,
            }
        };
        let outcome = step(tracker, result).await?;
        stat(
            sync,
            &tenant,
            &module,
            i64::from(outcome != Outcome::Error),
            i64::from(outcome == Outcome::Error),
            started,
            1,
        )
        .await;
        tracker.progress().await;
    }
    Ok(())
}

/// Reads one record by Zoho id and applies it (after `ALREADY_MODIFIED`).
pub async fn pull_one(
    sync: &SyncService,
    tenant: &str,
    client: &ZohoClient,
    mapping: &EntityMapping,
    zoho_id: &str,
) -> Result<Outcome, PullError> {
    let fields = sync.pull_fields(tenant, client, mapping).await?;
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    match client
        .get_record(mapping.module(), zoho_id, Some(&fields))
        .await?
    {
        Some(r) => Ok(apply_remote(sync, tenant, mapping, &r).await?),
        None => Ok(apply_remote_delete(sync, tenant, mapping, zoho_id).await?),
    }
}
