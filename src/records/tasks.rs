//! The records service's background work, each a task under `Shutdown`:
//!
//! - the outbox relay publishes committed events through the hub (and so the
//!   broker) and deletes them; a failed publish leaves the event for a retry,
//!   so an event is published at least once, deduplicated by the broker's
//!   idempotency key `outbox:<id>`;
//! - the lease watch deletes leases that ended by the database clock
//!   (`lock.expired`) and locks whose holder has had no connection for the
//!   grace period (`lock.released`), every `lease_scan_interval`;
//! - the liveness task reports this node and the users connected to it to
//!   the store, so whether a holder is still connected is decided by the
//!   database across every node, not by one node's memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::RecordService;
use crate::broker::PublishOptions;
use crate::channel::{ChannelKey, ChannelRules};
use crate::gateway::SessionObserver;
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use crate::store::{OutboxEvent, SharedStore};

const RELAY_BATCH: i64 = 100;
/// A claimed event not acknowledged within this time is claimed again.
const RELAY_LEASE_MS: i64 = 30_000;
const RELAY_RETRY_MS: i64 = 1_000;

/// Starts the relay, the lease watch and the liveness task.
pub fn spawn(
    shutdown: &Shutdown,
    service: &Arc<RecordService>,
    hub: Arc<Hub>,
    rules: ChannelRules,
    liveness: Arc<Liveness>,
) {
    let config = service.config().clone();
    let store = service.store().clone();
    let wake = service.relay_signal();
    let token = shutdown.token().clone();
    {
        let (store, wake, token) = (store.clone(), wake.clone(), token.clone());
        let poll = config.outbox_poll;
        shutdown.spawn("records-outbox-relay", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                relay_once(&store, &hub, &rules).await;
            }
            // Events committed during the drain still go out.
            relay_once(&store, &hub, &rules).await;
        });
    }
    {
        let (store, wake, token) = (store.clone(), wake.clone(), token.clone());
        let every = config.lease_scan_interval;
        let grace = config.lock_grace_period.as_millis() as i64;
        let node_ttl = config.node_ttl.as_millis() as i64;
        shutdown.spawn("records-lease-watch", async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if scan_leases(&store, grace, node_ttl).await {
                    wake.notify_one();
                }
            }
        });
    }
    {
        let every = config.node_heartbeat;
        let node_ttl = config.node_ttl.as_millis() as i64;
        shutdown.spawn("records-liveness", async move {
            let mut synced: HashSet<(String, String)> = HashSet::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = liveness.changed.notified() => {}
                    _ = tick.tick() => {}
                }
                let now = liveness.users();
                let added: Vec<_> = now.difference(&synced).cloned().collect();
                let removed: Vec<_> = synced.difference(&now).cloned().collect();
                match store
                    .heartbeat(
                        &liveness.node_id,
                        &liveness.node_name,
                        &added,
                        &removed,
                        node_ttl,
                    )
                    .await
                {
                    Ok(()) => synced = now,
                    Err(e) => tracing::warn!(error = %e, "liveness heartbeat failed; retrying"),
                }
            }
            // A clean stop: this node's users count as disconnected from now,
            // so the grace period starts while they reconnect elsewhere.
            if let Err(e) = store.forget_node(&liveness.node_id).await {
                tracing::warn!(error = %e, "could not remove this node's liveness rows");
            }
        });
    }
}

/// Publishes every ready outbox event, oldest first; returns how many left
/// the queue. Stops at the first publish that may succeed later (the rest of
/// the batch is returned to the queue) so one record's events never
/// overtake each other on this node; an event that can never be published
/// is logged and dropped.
pub async fn relay_once(store: &SharedStore, hub: &Hub, rules: &ChannelRules) -> usize {
    let mut published = 0;
    loop {
        let batch = match store.claim_outbox(RELAY_BATCH, RELAY_LEASE_MS).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "outbox claim failed");
                return published;
            }
        };
        let full = batch.len() as i64 == RELAY_BATCH;
        let mut done = Vec::with_capacity(batch.len());
        let mut failed_at = None;
        for (i, event) in batch.iter().enumerate() {
            match publish(hub, rules, event).await {
                Ok(()) => {}
                Err(Failure::Retry(e)) => {
                    tracing::warn!(error = %e, channel = %event.channel, "event publish failed; will retry");
                    failed_at = Some(i);
                    break;
                }
                // A poison event must not block the queue behind it forever.
                Err(Failure::Drop(e)) => {
                    tracing::error!(error = %e, channel = %event.channel, id = event.id, "event can never be published; dropped");
                }
            }
            done.push(event.id);
        }
        if let Err(e) = store.ack_outbox(&done).await {
            // Not lost: the claim lapses and the broker drops the repeat.
            tracing::warn!(error = %e, "outbox acknowledge failed");
        }
        published += done.len();
        if let Some(i) = failed_at {
            for event in &batch[i..] {
                let _ = store.retry_outbox(event.id, RELAY_RETRY_MS).await;
            }
            return published;
        }
        if !full {
            return published;
        }
    }
}

/// Why an event did not go out.
#[derive(Debug)]
pub enum Failure {
    /// The broker is unreachable: keep the event and try again.
    Retry(crate::broker::BrokerError),
    /// The event can never be published (its channel is no longer
    /// configured, the broker refuses it).
    Drop(String),
}

async fn publish(hub: &Hub, rules: &ChannelRules, event: &OutboxEvent) -> Result<(), Failure> {
    publish_json(
        hub,
        rules,
        &event.tenant,
        &event.channel,
        event.payload.clone(),
        Some(format!("outbox:{}", event.id)),
    )
    .await
}

/// Publishes a JSON event to a tenant's channel with the channel's history
/// settings (the outbox relay and the sync's session events).
pub async fn publish_json(
    hub: &Hub,
    rules: &ChannelRules,
    tenant: &str,
    channel: &str,
    payload: String,
    idempotency_key: Option<String>,
) -> Result<(), Failure> {
    let resolved = rules
        .resolve(channel)
        .map_err(|c| Failure::Drop(format!("channel does not resolve: {c:?}")))?;
    let options = PublishOptions {
        history: resolved
            .options
            .history_enabled()
            .then(|| resolved.retention()),
        idempotency_key,
    };
    hub.publish(
        &ChannelKey::new(tenant, channel),
        Bytes::from(payload),
        None,
        Default::default(),
        &options,
        "records",
    )
    .await
    .map_err(|e| {
        if e.is_retryable() {
            Failure::Retry(e)
        } else {
            Failure::Drop(e.to_string())
        }
    })?;
    Ok(())
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(e) => write!(f, "{e}"),
            Failure::Drop(e) => write!(f, "{e}"),
        }
    }
}

/// One lease scan; true when it wrote events.
async fn scan_leases(store: &SharedStore, grace_ms: i64, node_ttl_ms: i64) -> bool {
    let mut wrote = false;
    match store.expire_locks().await {
        Ok(expired) => wrote |= !expired.is_empty(),
        Err(e) => tracing::warn!(error = %e, "lease expiry scan failed"),
    }
    match store.release_abandoned(grace_ms, node_ttl_ms).await {
        Ok(released) => wrote |= !released.is_empty(),
        Err(e) => tracing::warn!(error = %e, "abandoned lock scan failed"),
    }
    wrote
}

/// Which users are connected to this node: counted by the gateway's
/// session callbacks, written to the store by the liveness task.
pub struct Liveness {
    node_id: String,
    node_name: String,
    users: Mutex<HashMap<(String, String), usize>>,
    changed: Notify,
}

impl Liveness {
    pub fn new(node_id: &str, node_name: &str) -> Arc<Self> {
        Arc::new(Self {
            node_id: node_id.to_owned(),
            node_name: node_name.to_owned(),
            users: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The (tenant, user) pairs with at least one connection here.
    pub fn users(&self) -> HashSet<(String, String)> {
        self.lock().keys().cloned().collect()
    }
}

impl SessionObserver for Liveness {
    fn connected(&self, tenant: &str, user: &str, _client: &str) {
        if user.is_empty() {
            return;
        }
        let first = {
            let mut users = self.lock();
            let n = users
                .entry((tenant.to_owned(), user.to_owned()))
                .or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.changed.notify_one();
        }
    }

    fn disconnected(&self, tenant: &str, user: &str, _client: &str) {
        let key = (tenant.to_owned(), user.to_owned());
        let last = {
            let mut users = self.lock();
            match users.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    users.remove(&key);
                    true
                }
                None => false,
            }
        };
        if last {
            self.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{
        Broker, BrokerError, BrokerEventHandler, ControlMessage, HistoryPage, HistoryQuery,
        HistoryRetention, MemoryBroker, NodeInfo, StreamPosition,
    };
    use crate::protocol::{ClientInfo, Publication};
    use crate::store::{RecordKey, Source, Write, WriteKind};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The memory broker, except that `publish` fails while `down` is set.
    struct Flaky {
        inner: MemoryBroker,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Broker for Flaky {
        fn set_handler(&self, handler: std::sync::Weak<dyn BrokerEventHandler>) {
            self.inner.set_handler(handler)
        }
        async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
            self.inner.subscribe(channel).await
        }
        async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
            self.inner.unsubscribe(channel).await
        }
        async fn publish(
            &self,
            channel: &ChannelKey,
            publication: Publication,
            options: &PublishOptions,
        ) -> Result<Option<StreamPosition>, BrokerError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(BrokerError::Unavailable("down for the test".into()));
            }
            self.inner.publish(channel, publication, options).await
        }
        async fn publish_join(&self, c: &ChannelKey, i: ClientInfo) -> Result<(), BrokerError> {
            self.inner.publish_join(c, i).await
        }
        async fn publish_leave(&self, c: &ChannelKey, i: ClientInfo) -> Result<(), BrokerError> {
            self.inner.publish_leave(c, i).await
        }
        async fn history(
            &self,
            channel: &ChannelKey,
            query: &HistoryQuery,
            retention: &HistoryRetention,
        ) -> Result<HistoryPage, BrokerError> {
            self.inner.history(channel, query, retention).await
        }
        async fn remove_history(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
            self.inner.remove_history(channel).await
        }
        async fn publish_control(&self, message: &ControlMessage) -> Result<(), BrokerError> {
            self.inner.publish_control(message).await
        }
        fn is_healthy(&self) -> bool {
            !self.down.load(Ordering::SeqCst)
        }
        async fn announce_node(&self, info: &NodeInfo) -> Result<(), BrokerError> {
            self.inner.announce_node(info).await
        }
        async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
            self.inner.nodes().await
        }
    }

    #[tokio::test]
    async fn an_event_that_can_never_be_published_does_not_block_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        sqlite.migrate().await.unwrap();
        let store: SharedStore = Arc::new(sqlite);
        let memory = Arc::new(MemoryBroker::new());
        let hub = Hub::new(
            crate::hub::NodeIdentity {
                id: "n".into(),
                name: "n".into(),
                started: std::time::Instant::now(),
            },
            memory.clone(),
            memory,
        );
        // A node whose configuration no longer has the `changes` namespace.
        let mut channels = crate::config::ChannelsConfig::default();
        channels.namespaces.remove("changes");
        let rules = ChannelRules::new(&channels, 255);
        store
            .write(Write {
                key: RecordKey::new("t", "deals", "1"),
                kind: WriteKind::Update,
                base_version: Some(0),
                fields: serde_json::json!({"a": 1}).as_object().cloned().unwrap(),
                lock_token: None,
                respect_locks: true,
                by: "ann".into(),
                source: Source::Local,
            })
            .await
            .unwrap();
        // changes:deals is dropped; record:deals:1 behind it still goes out.
        assert_eq!(relay_once(&store, &hub, &rules).await, 2);
        assert!(store.claim_outbox(10, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn events_survive_a_failed_publish_and_go_out_once_the_broker_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        sqlite.migrate().await.unwrap();
        let store: SharedStore = Arc::new(sqlite);
        let broker = Arc::new(Flaky {
            inner: MemoryBroker::new(),
            down: AtomicBool::new(true),
        });
        let presence = Arc::new(MemoryBroker::new());
        let hub = Hub::new(
            crate::hub::NodeIdentity {
                id: "n".into(),
                name: "n".into(),
                started: std::time::Instant::now(),
            },
            broker.clone(),
            presence,
        );
        let rules = ChannelRules::new(&crate::config::ChannelsConfig::default(), 255);
        store
            .write(Write {
                key: RecordKey::new("t", "deals", "1"),
                kind: WriteKind::Update,
                base_version: Some(0),
                fields: serde_json::json!({"a": 1}).as_object().cloned().unwrap(),
                lock_token: None,
                respect_locks: true,
                by: "ann".into(),
                source: Source::Local,
            })
            .await
            .unwrap();
        assert_eq!(relay_once(&store, &hub, &rules).await, 0);
        broker.down.store(false, Ordering::SeqCst);
        // Returned to the queue with a delay, not dropped.
        assert_eq!(relay_once(&store, &hub, &rules).await, 0);
        store.retry_outbox(1, 0).await.unwrap();
        store.retry_outbox(2, 0).await.unwrap();
        assert_eq!(relay_once(&store, &hub, &rules).await, 2);
        assert_eq!(relay_once(&store, &hub, &rules).await, 0);
        let page = hub
            .broker()
            .history(
                &ChannelKey::new("t", "changes:deals"),
                &HistoryQuery {
                    limit: None,
                    ..Default::default()
                },
                &rules.resolve("changes:deals").unwrap().retention(),
            )
            .await
            .unwrap();
        assert_eq!(page.publications.len(), 1);
    }

    #[test]
    fn a_user_stays_live_until_their_last_connection_closes() {
        let l = Liveness::new("n", "node");
        l.connected("t", "ann", "c1");
        l.connected("t", "ann", "c2");
        l.disconnected("t", "ann", "c1");
        assert!(l.users().contains(&("t".into(), "ann".into())));
        l.disconnected("t", "ann", "c2");
        assert!(l.users().is_empty());
    }

    #[test]
    fn anonymous_connections_are_not_counted() {
        let l = Liveness::new("n", "node");
        l.connected("t", "", "c1");
        assert!(l.users().is_empty());
        l.disconnected("t", "", "c1");
    }
}
