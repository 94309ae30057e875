//! Sync health: per module, what synced and failed, how fast, what it cost
//! in API credits, what waits in the queue and which errors lead, over the
//! last hour, day, week or month (`GET /v1/analytics/health`); the same
//! figures as Prometheus metrics.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::SyncService;
use crate::store::StoreError;
use crate::store::sync::SyncStat;

pub const RECORDS: &str = "synchub_sync_records_total";
pub const API_CALLS: &str = "synchub_sync_api_calls_total";
pub const BATCH_SECONDS: &str = "synchub_sync_batch_seconds";
pub const QUEUE: &str = "synchub_sync_queue_jobs";
pub const ERRORS: &str = "synchub_sync_errors_total";

/// Registers the metric descriptions.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECORDS,
        "Records synced or failed, by module, direction and outcome"
    );
    describe_counter!(API_CALLS, "Zoho API calls made by the sync, by module");
    describe_histogram!(BATCH_SECONDS, "Time per push batch or pull page");
    describe_gauge!(QUEUE, "Sync jobs by tenant, entity and state");
    describe_counter!(ERRORS, "Sync failures by module and error class");
}

/// Counts one batch in the metrics.
pub fn record(stat: &SyncStat) {
    let labels = |outcome: &'static str| {
        [
            ("module", stat.module.clone()),
            ("direction", stat.direction.clone()),
            ("outcome", outcome.to_owned()),
        ]
    };
    metrics::counter!(RECORDS, &labels("synced")).increment(stat.synced.max(0) as u64);
    metrics::counter!(RECORDS, &labels("failed")).increment(stat.failed.max(0) as u64);
    metrics::counter!(API_CALLS, "module" => stat.module.clone())
        .increment(stat.api_calls.max(0) as u64);
    metrics::histogram!(BATCH_SECONDS, "direction" => stat.direction.clone())
        .record(stat.duration_ms as f64 / 1000.0);
    if let Some(code) = &stat.error_code {
        metrics::counter!(ERRORS, "module" => stat.module.clone(), "class" => code.clone())
            .increment(1);
    }
}

/// Sets the queue gauges of a tenant.
pub fn queue_gauges(tenant: &str, depth: &[crate::store::sync::QueueDepth]) {
    for d in depth {
        for (state, n) in [
            ("queued", d.queued),
            ("running", d.running),
            ("dead", d.dead),
        ] {
            metrics::gauge!(QUEUE, "tenant" => tenant.to_owned(), "entity" => d.entity.clone(), "state" => state)
                .set(n as f64);
        }
    }
}

/// A `range` query value in milliseconds.
pub fn parse_range(range: &str) -> Option<i64> {
    match range {
        "1h" => Some(3_600_000),
        "24h" => Some(24 * 3_600_000),
        "7d" => Some(7 * 24 * 3_600_000),
        "30d" => Some(30 * 24 * 3_600_000),
        _ => None,
    }
}

#[derive(Default)]
struct ModuleHealth {
    synced: i64,
    failed: i64,
    batches: i64,
    duration_ms: i64,
    api_calls: i64,
    errors: BTreeMap<String, i64>,
    /// Records per sync status (synced, pending, conflict, error, filtered).
    records: BTreeMap<String, i64>,
}

/// The health report of a tenant over `range_ms`.
pub async fn health(sync: &SyncService, tenant: &str, range: &str) -> Result<Value, StoreError> {
    let range_ms = parse_range(range).unwrap_or(3_600_000);
    let now = sync.store.now_ms().await?;
    let stats = sync.store.stats_since(tenant, now - range_ms).await?;
    let depth = sync.store.queue_depth(tenant).await?;
    let mut modules: BTreeMap<String, ModuleHealth> = BTreeMap::new();
    for m in sync.mappings.iter() {
        modules.entry(m.module().to_owned()).or_default();
    }
    for s in &stats {
        let h = modules.entry(s.module.clone()).or_default();
        h.synced += s.synced;
        h.failed += s.failed;
        h.batches += 1;
        h.duration_ms += s.duration_ms;
        h.api_calls += s.api_calls;
        if let Some(code) = &s.error_code {
            *h.errors.entry(code.clone()).or_default() += s.failed.max(1);
        }
    }
    for (entity, status, n) in sync.store.status_counts(tenant).await? {
        if let Some(m) = sync.mappings.entity(&entity) {
            let h = modules.entry(m.module().to_owned()).or_default();
            *h.records.entry(status).or_default() += n;
        }
    }
    let minutes = (range_ms as f64 / 60_000.0).max(1.0);
    let client = sync.connections.client(tenant).await;
    let credits_remaining = client.as_ref().and_then(|c| c.credits_remaining());
    let credit_limit = client
        .as_ref()
        .and_then(|c| c.config().daily_credits)
        .map(|n| n.get() as i64);
    let mut out = serde_json::Map::new();
    let mut total_calls = 0;
    for (module, h) in &modules {
        let entity = sync.mapping(module).map(|m| m.name().to_owned());
        let queue = entity
            .as_ref()
            .and_then(|e| depth.iter().find(|d| &d.entity == e))
            .cloned()
            .unwrap_or_default();
        let attempts = h.synced + h.failed;
        let mut top: Vec<(&String, &i64)> = h.errors.iter().filter(|(_, n)| **n > 0).collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        total_calls += h.api_calls;
        out.insert(
            module.clone(),
            json!({
                "entity": entity,
                "synced": h.synced,
                "failed": h.failed,
                "success_rate": if attempts == 0 { 1.0 } else { h.synced as f64 / attempts as f64 },
                "error_rate": if attempts == 0 { 0.0 } else { h.failed as f64 / attempts as f64 },
                "avg_duration_ms": if h.batches == 0 { 0.0 } else { h.duration_ms as f64 / h.batches as f64 },
                "records_per_minute": h.synced as f64 / minutes,
                "api_calls": h.api_calls,
                "records": h.records,
                "queue": {"queued": queue.queued, "running": queue.running, "dead": queue.dead},
                "top_errors": top.iter().take(5).map(|(c, n)| json!({"code": c, "count": n})).collect::<Vec<_>>(),
            }),
        );
    }
    queue_gauges(tenant, &depth);
    Ok(json!({
        "range": range,
        "modules": out,
        "api": {
            "calls": total_calls,
            "credits_remaining": credits_remaining,
            "credit_limit": credit_limit,
        },
        "generated_at": crate::store::now_rfc3339(),
    }))
}
