//! The sync workers of one process: the push loop, the session loop, and
//! the scheduler (incremental syncs on one node only, the Watch channel,
//! idle push sessions, old stats). They run in `synchub serve` unless
//! `sync.workers = false`, and alone in `synchub worker`. On shutdown they
//! stop claiming and finish the batch in hand; a job cut off anyway keeps
//! its lease until it lapses, then another worker takes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::SyncService;
use super::pull::PullError;
use super::session::{Session, SessionKind};
use crate::domain::mapping::{Flow, Schedule};
use crate::shutdown::Shutdown;
use crate::store::sync::{JOB_PUSH, JOB_SESSION, Job, Retry};
use crate::zoho::error::ZohoError;

/// Starts every loop under `shutdown`.
pub fn spawn(shutdown: &Shutdown, sync: &Arc<SyncService>) {
    shutdown.spawn("sync-events", sync.clone().publish_events());
    let token = shutdown.token().clone();
    shutdown.spawn("sync-push", push_loop(sync.clone(), token.clone()));
    shutdown.spawn(
        "sync-sessions",
        session_loop(sync.clone(), shutdown.clone(), token.clone()),
    );
    shutdown.spawn("sync-scheduler", scheduler_loop(sync.clone(), token));
}

fn lease_ms(sync: &SyncService) -> i64 {
    sync.settings.lease.as_millis() as i64
}

/// Waits for a wake-up, the poll interval or shutdown; false on shutdown.
async fn idle(sync: &SyncService, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = sync.wake.notified() => true,
        _ = tokio::time::sleep(sync.settings.poll_interval) => true,
        _ = token.cancelled() => false,
    }
}

/// Runs `work` while renewing the leases of `jobs` every third of the
/// lease. The renewals run beside the work, never in its place: the work
/// may hold the store's only connection (SQLite) mid-transaction. `None`
/// when renewals kept failing for half a lease: the lease may lapse and
/// another worker take the jobs, so this one stops (its work is
/// idempotent; the other worker redoes it).
async fn with_heartbeat<F: std::future::Future>(
    sync: &SyncService,
    jobs: &[Job],
    work: F,
) -> Option<F::Output> {
    let held: Vec<(i64, i64)> = jobs.iter().map(|j| (j.id, j.claims)).collect();
    let every = sync.settings.lease / 3;
    let beat = async {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            match sync
                .store
                .extend_leases(&sync.worker_id, &held, lease_ms(sync))
                .await
            {
                Ok(_) => failing_since = None,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= sync.settings.lease / 2 {
                        return;
                    }
                }
            }
        }
    };
    let mut work = std::pin::pin!(work);
    tokio::select! {
        out = &mut work => Some(out),
        () = beat => {
            tracing::error!("leases could not be renewed; dropping the work in hand");
            None
        }
    }
}

/// Claims push jobs in batches and pushes them until shutdown.
pub async fn push_loop(sync: Arc<SyncService>, token: CancellationToken) {
    let batch = sync.settings.push_batch as i64;
    while !token.is_cancelled() {
        match sync
            .store
            .claim_jobs(&sync.worker_id, JOB_PUSH, batch, lease_ms(&sync))
            .await
        {
            Ok(jobs) if !jobs.is_empty() => {
                with_heartbeat(&sync, &jobs, super::push::push_batch(&sync, jobs.clone())).await;
            }
            Ok(_) => {
                if !idle(&sync, &token).await {
                    break;
                }
                tokio::time::sleep(sync.settings.push_linger).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming push jobs failed");
                if !idle(&sync, &token).await {
                    break;
                }
            }
        }
    }
}

/// Claims session jobs and runs up to `session_concurrency` at once.
pub async fn session_loop(sync: Arc<SyncService>, shutdown: Shutdown, token: CancellationToken) {
    let slots = Arc::new(Semaphore::new(sync.settings.session_concurrency));
    while !token.is_cancelled() {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = token.cancelled() => break,
        };
        match sync
            .store
            .claim_jobs(&sync.worker_id, JOB_SESSION, 1, lease_ms(&sync))
            .await
        {
            Ok(mut jobs) if !jobs.is_empty() => {
                let job = jobs.remove(0);
                let sync = sync.clone();
                shutdown.spawn("sync-session", async move {
                    run_session_job(&sync, job).await;
                    drop(permit);
                });
            }
            Ok(_) => {
                drop(permit);
                if !idle(&sync, &token).await {
                    break;
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "claiming session jobs failed");
                if !idle(&sync, &token).await {
                    break;
                }
            }
        }
    }
}

/// Runs one claimed session job.
pub async fn run_session_job(sync: &Arc<SyncService>, job: Job) {
    let store = &sync.store;
    let session: Option<Session> = match store.get_session(&job.tenant, &job.record_id).await {
        Ok(v) => v.and_then(|v| match serde_json::from_value(v) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(session = %job.record_id, error = %e, "stored session cannot be read; dropped");
                None
            }
        }),
        Err(e) => {
            tracing::warn!(error = %e, "session could not be read");
            let _ = store
                .fail_job(
                    &job,
                    Retry::Later {
                        delay_ms: 5_000,
                        counted: false,
                    },
                    "store",
                    &e.to_string(),
                )
                .await;
            return;
        }
    };
    let Some(mut session) = session.filter(|s| !s.is_finished()) else {
        let _ = store.finish_job(&job).await;
        return;
    };
    let Some(client) = sync.connections.client(&job.tenant).await else {
        let _ = store
            .fail_job(
                &job,
                Retry::Later {
                    delay_ms: super::push::no_connection_delay(sync),
                    counted: false,
                },
                "no_connection",
                "no active Zoho connection for this tenant",
            )
            .await;
        return;
    };
    if session.status == "running" {
        // A worker stopped while running it: start over; applying a record
        // twice changes nothing (the shadow sees it unchanged).
        let log = std::mem::take(&mut session.log);
        let ids = std::mem::take(&mut session.ids);
        let deletions = session.deletions;
        let mut fresh = Session::new(
            session.kind,
            &session.module,
            &session.entity,
            &session.requested_by,
        );
        fresh.id = session.id.clone();
        fresh.created_at = session.created_at.clone();
        fresh.log = log;
        fresh.ids = ids;
        fresh.deletions = deletions;
        fresh.log(
            "warn",
            "resumed from the start: the worker running it stopped",
        );
        session = fresh;
    }
    let mut tracker = sync.tracker(&job.tenant, session);
    tracker.start().await;
    let Some(result) = with_heartbeat(
        sync,
        std::slice::from_ref(&job),
        super::pull::run(sync, &mut tracker, &client),
    )
    .await
    else {
        return;
    };
    match result {
        Ok(()) => {
            tracker.finish(None).await;
            let _ = store.finish_job(&job).await;
        }
        Err(e) => {
            let retry = match &e {
                PullError::Zoho(z) => {
                    if let ZohoError::AuthFailed { error } = z {
                        sync.connections.pause(&job.tenant, error);
                    }
                    super::push::retry_for(sync, &job, z)
                }
                PullError::Store(s) if s.is_transient() => (
                    Retry::Later {
                        delay_ms: 5_000,
                        counted: true,
                    },
                    "store",
                ),
                _ => (Retry::Dead, "permanent"),
            };
            match retry {
                (Retry::Later { delay_ms, counted }, class) => {
                    tracker
                        .session
                        .log("warn", format!("interrupted ({class}): {e}; will resume"));
                    tracker.save().await;
                    let _ = store
                        .fail_job(
                            &job,
                            Retry::Later {
                                delay_ms: delay_ms.max(1_000),
                                counted,
                            },
                            class,
                            &e.to_string(),
                        )
                        .await;
                }
                (Retry::Dead, _) => {
                    tracker.finish(Some(e.to_string())).await;
                    let _ = store.finish_job(&job).await;
                }
            }
        }
    }
}

/// The interval of an entity's scheduled incremental sync.
fn schedule_interval(sync: &SyncService, schedule: Schedule) -> Option<Duration> {
    match schedule {
        Schedule::Realtime => Some(sync.settings.incremental_interval),
        Schedule::Hourly => Some(Duration::from_secs(3600)),
        Schedule::Daily => Some(Duration::from_secs(24 * 3600)),
        Schedule::Manual => None,
    }
}

/// Scheduled incrementals (one node wins each slot), the Watch channel,
/// idle push sessions and stats older than 31 days.
pub async fn scheduler_loop(sync: Arc<SyncService>, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = token.cancelled() => break,
        }
        n += 1;
        super::push::close_idle_sessions(&sync, Duration::from_secs(2)).await;
        for tenant in sync.connections.tenants() {
            let Some(client) = sync.connections.client(&tenant).await else {
                continue;
            };
            schedule_tenant(&sync, &tenant).await;
            if sync.settings.webhook_url.is_some() {
                match sync.store.claim_slot(&tenant, "watch", 600_000, true).await {
                    Ok(true) => {
                        if let Err(e) =
                            super::webhook::ensure_channel(&sync, &tenant, &client).await
                        {
                            tracing::warn!(tenant, error = %e, "Zoho notification channel not set up");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "watch slot"),
                }
            }
        }
        if n % 5 == 1 {
            for tenant in sync.connections.tenants() {
                if let Ok(depth) = sync.store.queue_depth(&tenant).await {
                    super::analytics::queue_gauges(&tenant, &depth);
                }
            }
        }
        if n % 3600 == 1
            && let Ok(now) = sync.store.now_ms().await
        {
            let _ = sync.store.prune_stats(now - 31 * 24 * 3_600_000).await;
        }
    }
    // Drain: close the open push sessions so their final events go out.
    super::push::close_idle_sessions(&sync, Duration::ZERO).await;
}

async fn schedule_tenant(sync: &Arc<SyncService>, tenant: &str) {
    for mapping in sync.mappings.iter() {
        if !mapping.crosses(Flow::FromZoho) {
            continue;
        }
        let Some(every) = schedule_interval(sync, mapping.schedule()) else {
            continue;
        };
        let slot = format!("schedule.{}", mapping.module());
        match sync
            .store
            .claim_slot(tenant, &slot, every.as_millis() as i64, false)
            .await
        {
            Ok(true) => {
                let session = Session::new(
                    SessionKind::Incremental,
                    mapping.module(),
                    mapping.name(),
                    "schedule",
                );
                if let Err(e) = sync.queue_session(tenant, session).await {
                    tracing::warn!(tenant, error = %e, "scheduled sync not queued");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(tenant, error = %e, "schedule slot"),
        }
    }
}
