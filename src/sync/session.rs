//! Sync sessions: one run of a full, incremental, push or webhook sync of
//! one module, with its counters, timings and log, kept in the store and
//! announced on `sync:sessions` (`session.started`, `session.progress` at
//! most ten times a second, then `session.completed` or `session.failed`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{SharedStore, now_rfc3339};

/// `sync:sessions`: where session events go.
pub const SESSIONS_CHANNEL: &str = "sync:sessions";
/// At most this many progress events a second per session.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Progress is saved to the store at most this often (and at the end).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Log lines kept per session.
const MAX_LOG: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// Every Zoho record of the module, then every local record not yet in Zoho.
    Full,
    /// Zoho records modified since the cursor, and deletions.
    Incremental,
    /// Local changes going to Zoho.
    Push,
    /// The records a Zoho notification named.
    Webhook,
}

impl SessionKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(Self::Full),
            "incremental" => Some(Self::Incremental),
            "push" => Some(Self::Push),
            "webhook" => Some(Self::Webhook),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
            Self::Push => "push",
            Self::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub at: String,
    pub level: String,
    pub message: String,
}

/// A session as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub id: String,
    pub kind: SessionKind,
    /// The Zoho module (`Deals`).
    pub module: String,
    /// The local entity (`deals`).
    pub entity: String,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: String,
    pub processed: u64,
    /// 0 while unknown.
    pub total: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub conflicts: u64,
    pub skipped: u64,
    pub errors: u64,
    pub api_calls: u64,
    pub requested_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// Webhook sessions: the Zoho ids to pull, and whether they were deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletions: bool,
    pub log: Vec<LogLine>,
}

impl Session {
    pub fn new(kind: SessionKind, module: &str, entity: &str, by: &str) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            module: module.to_owned(),
            entity: entity.to_owned(),
            status: "queued".into(),
            processed: 0,
            total: 0,
            created: 0,
            updated: 0,
            deleted: 0,
            unchanged: 0,
            conflicts: 0,
            skipped: 0,
            errors: 0,
            api_calls: 0,
            requested_by: by.to_owned(),
            created_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            error: None,
            ids: Vec::new(),
            deletions: false,
            log: Vec::new(),
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed")
    }

    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            return if self.is_finished() { 100.0 } else { 0.0 };
        }
        ((self.processed as f64 / self.total as f64) * 1000.0).round() / 10.0
    }

    /// The session as events carry it (DESIGN.md §2), with its counters.
    pub fn event_view(&self, eta_ms: Option<u64>) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind,
            "module": self.module,
            "entity": self.entity,
            "status": self.status,
            "processed": self.processed,
            "total": self.total,
            "percent": self.percent(),
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "conflicts": self.conflicts,
            "skipped": self.skipped,
            "api_calls": self.api_calls,
            "errors": self.errors,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "eta_ms": eta_ms,
        })
    }

    pub fn log(&mut self, level: &str, message: impl Into<String>) {
        if self.log.len() >= MAX_LOG {
            self.log.remove(0);
        }
        self.log.push(LogLine {
            at: now_rfc3339(),
            level: level.to_owned(),
            message: message.into(),
        });
    }
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Deleted,
    Unchanged,
    Conflict,
    Skipped,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Unchanged => "unchanged",
            Self::Conflict => "conflict",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }
}

/// Where session events go: the hub (through `sync:sessions`) and, for
/// `synchub sync`, a progress bar.
pub type SessionSink = Arc<dyn Fn(&str, &Value) + Send + Sync>;

/// A running session: counts, throttled events, periodic saves.
pub struct Tracker {
    pub session: Session,
    tenant: String,
    store: SharedStore,
    sinks: Vec<SessionSink>,
    started: Instant,
    last_event: Option<Instant>,
    last_save: Instant,
}

impl Tracker {
    pub fn new(
        tenant: &str,
        session: Session,
        store: SharedStore,
        sinks: Vec<SessionSink>,
    ) -> Self {
        Self {
            session,
            tenant: tenant.to_owned(),
            store,
            sinks,
            started: Instant::now(),
            last_event: None,
            last_save: Instant::now(),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    fn emit(&mut self, kind: &str) {
        let eta = self.eta_ms();
        let payload = json!({
            "type": kind,
            "at": now_rfc3339(),
            "session": self.session.event_view(eta),
        });
        for sink in &self.sinks {
            sink(&self.tenant, &payload);
        }
        self.last_event = Some(Instant::now());
    }

    fn eta_ms(&self) -> Option<u64> {
        let s = &self.session;
        if s.is_finished() {
            return Some(0);
        }
        if s.processed == 0 || s.total == 0 || s.total < s.processed {
            return None;
        }
        let per = self.started.elapsed().as_secs_f64() / s.processed as f64;
        Some(((s.total - s.processed) as f64 * per * 1000.0) as u64)
    }

    pub async fn save(&mut self) {
        let s = &self.session;
        let body = serde_json::to_value(s).unwrap_or(Value::Null);
        if let Err(e) = self
            .store
            .save_session(
                &self.tenant,
                &s.id,
                s.kind.as_str(),
                &s.module,
                &s.status,
                &body,
            )
            .await
        {
            tracing::warn!(session = %s.id, error = %e, "session could not be saved");
        }
        self.last_save = Instant::now();
    }

    /// Marks the session running and announces it.
    pub async fn start(&mut self) {
        self.started = Instant::now();
        self.session.status = "running".into();
        self.session.started_at = Some(now_rfc3339());
        self.session.log("info", "started");
        self.save().await;
        self.emit("session.started");
    }

    /// Counts one record.
    pub fn count(&mut self, outcome: Outcome) {
        let s = &mut self.session;
        s.processed += 1;
        match outcome {
            Outcome::Created => s.created += 1,
            Outcome::Updated => s.updated += 1,
            Outcome::Deleted => s.deleted += 1,
            Outcome::Unchanged => s.unchanged += 1,
            Outcome::Conflict => s.conflicts += 1,
            Outcome::Skipped => s.skipped += 1,
            Outcome::Error => s.errors += 1,
        }
        if s.total > 0 && s.processed > s.total {
            s.total = s.processed;
        }
    }

    pub fn add_api_calls(&mut self, n: u64) {
        self.session.api_calls += n;
    }

    /// Announces progress unless one went out less than 100 ms ago; saves
    /// at most once a second.
    pub async fn progress(&mut self) {
        if self
            .last_event
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
        {
            self.emit("session.progress");
        }
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save().await;
        }
    }

    /// Ends the session: `error` fails it. Always announced and saved.
    pub async fn finish(&mut self, error: Option<String>) {
        let s = &mut self.session;
        s.finished_at = Some(now_rfc3339());
        s.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        if s.total < s.processed || error.is_none() {
            s.total = s.total.max(s.processed);
        }
        match error {
            None => {
                s.status = "completed".into();
                let line = format!(
                    "completed: {} processed ({} created, {} updated, {} deleted, {} unchanged, {} conflicts, {} skipped, {} errors), {} API calls",
                    s.processed,
                    s.created,
                    s.updated,
                    s.deleted,
                    s.unchanged,
                    s.conflicts,
                    s.skipped,
                    s.errors,
                    s.api_calls
                );
                s.log("info", line);
            }
            Some(e) => {
                s.status = "failed".into();
                s.log("error", format!("failed: {e}"));
                s.error = Some(e);
            }
        }
        // The last progress always goes out, then the final event.
        self.emit("session.progress");
        self.save().await;
        let kind = if self.session.status == "completed" {
            "session.completed"
        } else {
            "session.failed"
        };
        self.emit(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_views() {
        let mut s = Session::new(SessionKind::Full, "Deals", "deals", "admin");
        assert_eq!(s.percent(), 0.0);
        s.total = 3;
        s.processed = 1;
        assert_eq!(s.percent(), 33.3);
        s.processed = 3;
        assert_eq!(s.percent(), 100.0);
        let v = s.event_view(Some(5));
        assert_eq!(v["kind"], "full");
        assert_eq!(v["eta_ms"], 5);
        let back: Session = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_log_keeps_the_newest_lines() {
        let mut s = Session::new(SessionKind::Push, "Deals", "deals", "w");
        for i in 0..(MAX_LOG + 5) {
            s.log("info", format!("line {i}"));
        }
        assert_eq!(s.log.len(), MAX_LOG);
        assert_eq!(s.log[0].message, "line 5");
    }
}
