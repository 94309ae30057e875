//! Two-way sync with Zoho CRM (DESIGN.md §4): the workers that push local
//! changes and pull Zoho's, sync sessions with live progress, the Watch
//! webhook, health analytics and each tenant's Zoho connection.
//!
//! - `push`: a claimed batch of push jobs becomes one upsert (new records,
//!   by the `Synchub_Id` external id) and one update (known records, with
//!   `If-Unmodified-Since`) per module, carrying only the fields that differ
//!   from the last-synced shadow. `ALREADY_MODIFIED` pulls the record and
//!   runs the conflict engine before the push is tried again.
//! - `pull`: full, incremental (`If-Modified-Since` on a `Modified_Time`
//!   cursor, then `/deleted`) and webhook-targeted reads; each Zoho record
//!   is compared with the shadow field by field, so our own writes coming
//!   back change nothing (no echo) and only fields changed on both sides
//!   reach the conflict rules.
//! - `worker`: the loops (push, sessions, schedule, watch renewal) with
//!   leases, heartbeats, backoff by error class and drain on shutdown.

pub mod analytics;
pub mod connection;
pub mod pull;
pub mod push;
pub mod session;
pub mod webhook;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

use crate::channel::ChannelRules;
use crate::config::{Config, SyncConfig};
use crate::domain::conflict::ConflictRules;
use crate::domain::mapping::{EntityMapping, SyncMappings};
use crate::hub::Hub;
use crate::store::SharedStore;
use crate::store::sync::{JOB_SESSION, NewJob};

pub use connection::Connections;
pub use session::{Session, SessionKind, SessionSink, Tracker};

/// Zoho fields that are Zoho's bookkeeping, never data that crosses.
pub const SYSTEM_FIELDS: &[&str] = &[
    "id",
    "Modified_Time",
    "Created_Time",
    "Modified_By",
    "Created_By",
    "Owner",
    "Layout",
    "Tag",
    "Locked__s",
    "Record_Status__s",
    EXTERNAL_ID,
];

/// The unique Zoho field holding the local id: the upsert key, so a retry
/// after a lost reply finds the record instead of creating it twice.
pub const EXTERNAL_ID: &str = "Synchub_Id";

/// Whether a Zoho field is bookkeeping (system or `$`-prefixed).
pub fn is_system_field(name: &str) -> bool {
    name.starts_with('$') || SYSTEM_FIELDS.contains(&name)
}

/// The sync of every tenant on this node.
pub struct SyncService {
    pub store: SharedStore,
    pub hub: Arc<Hub>,
    pub rules: ChannelRules,
    pub mappings: Arc<SyncMappings>,
    pub conflicts: ConflictRules,
    pub connections: Arc<Connections>,
    pub settings: SyncConfig,
    /// Identifies this node's claims.
    pub worker_id: String,
    /// Wakes the workers when a job is queued on this node.
    pub wake: Arc<Notify>,
    /// Zoho field names per (tenant, module), read once.
    fields: Mutex<HashMap<(String, String), Vec<String>>>,
    events: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>>,
    /// Extra session sinks (the CLI's progress bar).
    sinks: Mutex<Vec<SessionSink>>,
    /// The open push session of each (tenant, module) on this node.
    pub(crate) push_sessions: tokio::sync::Mutex<HashMap<(String, String), push::OpenPush>>,
}

impl SyncService {
    pub fn new(
        config: &Config,
        store: SharedStore,
        hub: Arc<Hub>,
        rules: ChannelRules,
        connections: Arc<Connections>,
    ) -> anyhow::Result<Arc<Self>> {
        let mappings = config
            .sync
            .entities
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            events,
            events_rx: Mutex::new(Some(events_rx)),
            store,
            hub,
            rules,
            mappings: Arc::new(mappings),
            conflicts: config.conflicts.clone(),
            connections,
            settings: config.sync.clone(),
            worker_id: format!("{}:{}", config.node_name, uuid::Uuid::new_v4()),
            wake: Arc::new(Notify::new()),
            fields: Mutex::new(HashMap::new()),
            sinks: Mutex::new(Vec::new()),
            push_sessions: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Adds a sink that sees every session event of this node.
    pub fn add_sink(&self, sink: SessionSink) {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// The mapping of a module or entity name.
    pub fn mapping(&self, name: &str) -> Option<&EntityMapping> {
        self.mappings
            .by_module(name)
            .or_else(|| self.mappings.entity(name))
            .or_else(|| {
                self.mappings
                    .iter()
                    .find(|m| m.module().eq_ignore_ascii_case(name))
            })
    }

    /// The sinks of a new session: the hub's `sync:sessions` (through the
    /// event publisher task) and any extra.
    pub fn session_sinks(&self) -> Vec<SessionSink> {
        let events = self.events.clone();
        // Events are fire-and-forget: a slow broker must not stall a sync.
        let to_hub: SessionSink = Arc::new(move |tenant: &str, payload: &Value| {
            let _ = events.send((tenant.to_owned(), payload.to_string()));
        });
        let mut out = vec![to_hub];
        out.extend(
            self.sinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        out
    }

    /// Publishes session events in order until the queue closes.
    pub async fn publish_events(self: Arc<Self>) {
        let Some(mut rx) = self
            .events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        while let Some((tenant, payload)) = rx.recv().await {
            if let Err(e) = crate::records::tasks::publish_json(
                &self.hub,
                &self.rules,
                &tenant,
                session::SESSIONS_CHANNEL,
                payload,
                None,
            )
            .await
            {
                tracing::debug!(error = %e, "session event not published");
            }
        }
    }

    pub fn tracker(&self, tenant: &str, session: Session) -> Tracker {
        Tracker::new(tenant, session, self.store.clone(), self.session_sinks())
    }

    /// Creates a session and queues its job; the workers run it.
    pub async fn queue_session(
        &self,
        tenant: &str,
        session: Session,
    ) -> Result<Session, crate::store::StoreError> {
        let body = serde_json::to_value(&session).unwrap_or(Value::Null);
        self.store
            .save_session(
                tenant,
                &session.id,
                session.kind.as_str(),
                &session.module,
                &session.status,
                &body,
            )
            .await?;
        self.store
            .enqueue_job(&NewJob {
                tenant: tenant.to_owned(),
                kind: JOB_SESSION.into(),
                entity: session.entity.clone(),
                record_id: session.id.clone(),
                serial_key: format!("session\u{1f}{tenant}\u{1f}{}", session.id),
                delay_ms: 0,
            })
            .await?;
        self.wake.notify_waiters();
        Ok(session)
    }

    /// The Zoho fields a pull of `mapping` requests: what the mapping reads
    /// and writes, and (unless only named fields cross) every data field of
    /// the module, at most 50 with `Modified_Time` and the external id.
    pub async fn pull_fields(
        &self,
        tenant: &str,
        client: &crate::zoho::client::ZohoClient,
        mapping: &EntityMapping,
    ) -> Result<Vec<String>, crate::zoho::error::ZohoError> {
        let cache_key = (tenant.to_owned(), mapping.module().to_owned());
        if let Some(f) = self
            .fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
        {
            return Ok(f.clone());
        }
        let meta = client.fields(mapping.module()).await?;
        let names: Vec<String> = meta.iter().map(|f| f.api_name.clone()).collect();
        let mut fields: Vec<String> = mapping
            .zoho_fields_to_request(names.iter())
            .into_iter()
            .filter(|f| !is_system_field(f) && names.contains(f))
            .collect();
        fields.truncate(crate::zoho::client::MAX_FIELDS - 2);
        fields.push("Modified_Time".into());
        if names.iter().any(|n| n == EXTERNAL_ID) {
            fields.push(EXTERNAL_ID.into());
        }
        self.fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cache_key, fields.clone());
        Ok(fields)
    }
}

/// Whether a stored value (absent counts as `null`) equals `v`.
pub(crate) fn same(stored: Option<&Value>, v: &Value) -> bool {
    crate::domain::conflict::same_value(stored.unwrap_or(&Value::Null), v)
}

/// `record.zoho_id`-style lookup helpers shared by push and pull.
pub(crate) fn zoho_text(record: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses Zoho's `Modified_Time`.
pub(crate) fn parse_zoho_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}
