//! The node-local registry of sessions and subscriptions, and fan-out.
//!
//! The hub receives everything the broker delivers to this node and queues
//! it on each local subscriber's session, encoding each message once per
//! encoding. It tracks every positioned subscriber's stream position: a gap
//! or an epoch change ends that subscription with 2500 so the SDK
//! resubscribes and recovers from history. It never blocks on a client and
//! never touches a socket.

pub mod session;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;

use crate::broker::{
    BrokerError, BrokerEventHandler, ControlMessage, HistoryQuery, HistoryRetention,
    PublishOptions, SharedBroker, SharedPresence, StreamPosition,
};
use crate::channel::ChannelKey;
use crate::protocol::{
    ClientInfo, Disconnect, Encoding, ErrorCode, HistoryResult, Join, Leave, Publication, Push,
    Reply, UnsubscribeCode,
};
pub use session::{SessionEvent, SessionHandle};

/// Where a subscriber is in the subscribe sequence.
enum Phase {
    /// Subscribed in the hub, reply not yet sent: live publications wait here.
    Buffering(Vec<(Publication, String)>),
    /// Reply sent: publications go straight to the session.
    Live,
    /// Gap seen: nothing more is delivered; the session is ending the subscription.
    Ended,
}

struct Position {
    phase: Phase,
    offset: u64,
    epoch: String,
}

/// One session's subscription to one channel, as the fan-out sees it.
pub struct Subscriber {
    pub session: SessionHandle,
    /// The name the client knows (without tenant).
    pub channel: Arc<str>,
    pub join_leave: bool,
    positioned: bool,
    position: Mutex<Position>,
}

impl Subscriber {
    /// A subscriber that buffers live publications until [`Subscriber::go_live`].
    pub fn new(
        session: SessionHandle,
        channel: Arc<str>,
        join_leave: bool,
        positioned: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            session,
            channel,
            join_leave,
            positioned,
            position: Mutex::new(Position {
                phase: Phase::Buffering(Vec::new()),
                offset: 0,
                epoch: String::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Position> {
        self.position
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks position and queues, under the position lock so that the
    /// subscribe reply, buffered and live publications keep their order.
    fn deliver(&self, publication: &Publication, epoch: &str, cache: &mut PushCache) {
        let mut pos = self.lock();
        match &mut pos.phase {
            Phase::Buffering(buffer) => buffer.push((publication.clone(), epoch.to_owned())),
            Phase::Ended => {}
            Phase::Live => {
                if self.positioned && publication.offset > 0 {
                    if epoch != pos.epoch || publication.offset > pos.offset + 1 {
                        pos.phase = Phase::Ended;
                        drop(pos);
                        self.lost_position();
                        return;
                    }
                    if publication.offset <= pos.offset {
                        // Already delivered (through recovery): skip the duplicate.
                        return;
                    }
                    pos.offset = publication.offset;
                }
                if let Some(bytes) = cache.get(self.session.encoding, &self.session) {
                    let _ = self.session.send(bytes);
                }
            }
        }
    }

    fn lost_position(&self) {
        self.session.notify(SessionEvent::Unsubscribe {
            channel: self.channel.clone(),
            code: UnsubscribeCode::InsufficientState,
        });
    }

    /// Sends the subscribe reply, then the publications that arrived while
    /// subscribing and are newer than `position` (the last one the reply
    /// covered), then lets live publications through.
    pub fn go_live(&self, reply: Bytes, position: &StreamPosition) {
        let mut pos = self.lock();
        let _ = self.session.send(reply);
        pos.offset = position.offset;
        pos.epoch = position.epoch.clone();
        let buffered = match std::mem::replace(&mut pos.phase, Phase::Live) {
            Phase::Buffering(b) => b,
            other => {
                pos.phase = other;
                return;
            }
        };
        for (publication, epoch) in buffered {
            if self.positioned && publication.offset > 0 {
                if epoch != pos.epoch || publication.offset > pos.offset + 1 {
                    pos.phase = Phase::Ended;
                    drop(pos);
                    self.lost_position();
                    return;
                }
                if publication.offset <= pos.offset {
                    continue;
                }
                pos.offset = publication.offset;
            }
            let mut cache = PushCache::publication(&self.channel, publication);
            if let Some(bytes) = cache.get(self.session.encoding, &self.session) {
                let _ = self.session.send(bytes);
            }
        }
    }

    /// The last offset delivered to this subscriber.
    pub fn offset(&self) -> u64 {
        self.lock().offset
    }
}

/// One push, encoded at most once per encoding however many subscribers get it.
pub struct PushCache {
    reply: Reply,
    json: Option<Option<Bytes>>,
    protobuf: Option<Bytes>,
}

impl PushCache {
    pub fn new(reply: Reply) -> Self {
        Self {
            reply,
            json: None,
            protobuf: None,
        }
    }

    pub fn publication(channel: &str, publication: Publication) -> Self {
        Self::new(Reply::push(Push {
            channel: channel.to_owned(),
            r#pub: Some(publication),
            ..Default::default()
        }))
    }

    /// The encoded push, or `None` when it cannot be sent in this encoding
    /// (binary data to a JSON client: that session is closed with 3506, as
    /// Centrifugo does).
    pub fn get(&mut self, encoding: Encoding, session: &SessionHandle) -> Option<Bytes> {
        match encoding {
            Encoding::Protobuf => Some(
                self.protobuf
                    .get_or_insert_with(|| {
                        Encoding::Protobuf
                            .encode_reply(&self.reply)
                            .unwrap_or_default()
                    })
                    .clone(),
            ),
            Encoding::Json => {
                let encoded = self
                    .json
                    .get_or_insert_with(|| Encoding::Json.encode_reply(&self.reply).ok())
                    .clone();
                if encoded.is_none() {
                    session.disconnect(Disconnect::inappropriate_protocol());
                }
                encoded
            }
        }
    }
}

/// Identity of this node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: String,
    pub name: String,
    pub started: Instant,
}

/// Counts shown in `/api/info`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeCounts {
    pub num_clients: u32,
    pub num_users: u32,
    pub num_channels: u32,
    pub num_subs: u32,
}

pub struct Hub {
    pub node: NodeIdentity,
    broker: SharedBroker,
    presence: SharedPresence,
    channels: DashMap<ChannelKey, HashMap<Arc<str>, Arc<Subscriber>>>,
    sessions: DashMap<Arc<str>, SessionHandle>,
    users: DashMap<UserKey, HashSet<Arc<str>>>,
    /// Serialises broker subscribe/unsubscribe per channel (striped), so the
    /// first-subscriber/last-subscriber decisions cannot interleave.
    broker_locks: Vec<tokio::sync::Mutex<()>>,
}

const BROKER_LOCK_STRIPES: usize = 128;

/// (tenant, user).
type UserKey = (Arc<str>, Arc<str>);

impl Hub {
    pub fn new(node: NodeIdentity, broker: SharedBroker, presence: SharedPresence) -> Arc<Self> {
        let hub = Arc::new(Self {
            node,
            broker: broker.clone(),
            presence,
            channels: DashMap::new(),
            sessions: DashMap::new(),
            users: DashMap::new(),
            broker_locks: (0..BROKER_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let handler: Arc<dyn BrokerEventHandler> = hub.clone();
        let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&handler);
        broker.set_handler(weak);
        hub
    }

    pub fn broker(&self) -> &SharedBroker {
        &self.broker
    }

    pub fn presence(&self) -> &SharedPresence {
        &self.presence
    }

    fn broker_lock(&self, channel: &ChannelKey) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher as _;
        // A fixed (unseeded) hasher keeps a channel on the same stripe.
        let h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(channel);
        &self.broker_locks[(h as usize) % BROKER_LOCK_STRIPES]
    }

    pub fn register_session(&self, session: SessionHandle) {
        self.users
            .entry((session.tenant.clone(), session.user.clone()))
            .or_default()
            .insert(session.client.clone());
        self.sessions.insert(session.client.clone(), session);
        metrics::gauge!(crate::metrics::CONNECTIONS).set(self.sessions.len() as f64);
    }

    pub fn unregister_session(&self, session: &SessionHandle) {
        self.sessions
            .remove_if(&session.client, |_, s| s.same(session));
        let key = (session.tenant.clone(), session.user.clone());
        if let Some(mut clients) = self.users.get_mut(&key) {
            clients.remove(&session.client);
        }
        self.users.remove_if(&key, |_, c| c.is_empty());
        metrics::gauge!(crate::metrics::CONNECTIONS).set(self.sessions.len() as f64);
    }

    /// Sessions of one user in one tenant on this node.
    pub fn user_sessions(&self, tenant: &str, user: &str) -> Vec<SessionHandle> {
        let key: UserKey = (Arc::from(tenant), Arc::from(user));
        let Some(clients) = self.users.get(&key) else {
            return Vec::new();
        };
        clients
            .iter()
            .filter_map(|c| self.sessions.get(c).map(|s| s.clone()))
            .collect()
    }

    /// Adds a subscriber; the first one on this node subscribes the node to
    /// the channel in the broker. On a broker error nothing is left behind.
    pub async fn add_subscriber(
        &self,
        channel: &ChannelKey,
        subscriber: Arc<Subscriber>,
    ) -> Result<(), BrokerError> {
        let _guard = self.broker_lock(channel).lock().await;
        let first = {
            let mut entry = self.channels.entry(channel.clone()).or_default();
            let first = entry.is_empty();
            entry.insert(subscriber.session.client.clone(), subscriber.clone());
            first
        };
        if first && let Err(e) = self.broker.subscribe(channel).await {
            self.remove_entry(channel, &subscriber.session.client);
            return Err(e);
        }
        metrics::gauge!(crate::metrics::SUBSCRIPTIONS).increment(1.0);
        Ok(())
    }

    fn remove_entry(&self, channel: &ChannelKey, client: &str) -> (bool, bool) {
        let mut removed = false;
        if let Some(mut entry) = self.channels.get_mut(channel) {
            removed = entry.remove(client).is_some();
        }
        let last = self
            .channels
            .remove_if(channel, |_, subs| subs.is_empty())
            .is_some();
        (removed, last)
    }

    /// Removes a subscriber; the last one on this node unsubscribes the node.
    pub async fn remove_subscriber(&self, channel: &ChannelKey, client: &str) {
        let _guard = self.broker_lock(channel).lock().await;
        let (removed, last) = self.remove_entry(channel, client);
        if removed {
            metrics::gauge!(crate::metrics::SUBSCRIPTIONS).decrement(1.0);
        }
        if last && let Err(e) = self.broker.unsubscribe(channel).await {
            tracing::warn!(channel = ?channel, error = %e, "broker unsubscribe failed");
        }
    }

    /// Publishes through the broker; returns the stream position when the
    /// channel keeps history.
    pub async fn publish(
        &self,
        channel: &ChannelKey,
        data: Bytes,
        info: Option<ClientInfo>,
        tags: BTreeMap<String, String>,
        options: &PublishOptions,
        source: &'static str,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let publication = Publication {
            data,
            info,
            tags,
            ..Default::default()
        };
        let r = self.broker.publish(channel, publication, options).await;
        if r.is_ok() {
            metrics::counter!(crate::metrics::PUBLICATIONS, "source" => source).increment(1);
        }
        r
    }

    /// Reads a channel's history for the `history` command and the server API:
    /// `limit` 0 gives only the position, a negative limit everything (up to
    /// `max`); `since` reads after an offset (before it with `reverse`) and
    /// must name the current epoch, else 112.
    pub async fn read_history(
        &self,
        channel: &ChannelKey,
        retention: &HistoryRetention,
        limit: i32,
        since: Option<(u64, String)>,
        reverse: bool,
        max: usize,
    ) -> Result<HistoryResult, ErrorCode> {
        if reverse && since.as_ref().is_some_and(|(offset, _)| *offset == 0) {
            return Err(ErrorCode::BadRequest);
        }
        let limit = match limit {
            0 => Some(0),
            l if l < 0 => Some(max),
            l => Some((l as usize).min(max)),
        };
        let query = HistoryQuery {
            since: since.as_ref().map(|(offset, _)| *offset),
            limit,
            reverse,
        };
        let page = self
            .broker
            .history(channel, &query, retention)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "history read failed");
                ErrorCode::Internal
            })?;
        if let Some((_, epoch)) = &since
            && !epoch.is_empty()
            && *epoch != page.position.epoch
        {
            return Err(ErrorCode::UnrecoverablePosition);
        }
        Ok(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        })
    }

    /// Closes every session (shutdown).
    pub fn disconnect_all(&self, disconnect: &Disconnect) {
        for s in self.sessions.iter() {
            s.disconnect(disconnect.clone());
        }
    }

    pub fn counts(&self) -> NodeCounts {
        NodeCounts {
            num_clients: self.sessions.len() as u32,
            num_users: self.users.len() as u32,
            num_channels: self.channels.len() as u32,
            num_subs: self.channels.iter().map(|e| e.len() as u32).sum(),
        }
    }

    /// Channels of one tenant with local subscribers, and how many.
    pub fn channels(&self, tenant: &str, pattern: Option<&str>) -> BTreeMap<String, u32> {
        let matcher = pattern
            .filter(|p| !p.is_empty())
            .map(wildmatch::WildMatch::new);
        self.channels
            .iter()
            .filter(|e| e.key().tenant() == tenant)
            .filter(|e| matcher.as_ref().is_none_or(|m| m.matches(e.key().name())))
            .map(|e| (e.key().name().to_owned(), e.len() as u32))
            .collect()
    }

    fn subscribers(&self, channel: &ChannelKey) -> Vec<Arc<Subscriber>> {
        self.channels
            .get(channel)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }

    fn sessions_for(&self, tenant: &str, user: &str, client: Option<&str>) -> Vec<SessionHandle> {
        self.user_sessions(tenant, user)
            .into_iter()
            .filter(|s| client.is_none_or(|c| c.is_empty() || &*s.client == c))
            .collect()
    }
}

impl Hub {
    /// What this node announces to the others.
    pub fn node_info(&self) -> crate::broker::NodeInfo {
        let counts = self.counts();
        crate::broker::NodeInfo {
            uid: self.node.id.clone(),
            name: self.node.name.clone(),
            version: crate::gateway::SERVER_VERSION.to_owned(),
            num_clients: counts.num_clients,
            num_users: counts.num_users,
            num_channels: counts.num_channels,
            num_subs: counts.num_subs,
            uptime: self.node.started.elapsed().as_secs(),
        }
    }

    /// Announces this node every `every` until cancelled.
    pub async fn announce_loop(
        self: Arc<Self>,
        every: std::time::Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.broker.announce_node(&self.node_info()).await {
                        tracing::debug!(error = %e, "node announce failed");
                    }
                }
            }
        }
    }
}

impl Hub {
    /// Queues a join or leave push on the subscribers that asked for them.
    fn push_join_leave(&self, channel: &ChannelKey, push: Push) {
        let mut cache = PushCache::new(Reply::push(push));
        for s in self
            .subscribers(channel)
            .into_iter()
            .filter(|s| s.join_leave)
        {
            if let Some(bytes) = cache.get(s.session.encoding, &s.session) {
                let _ = s.session.send(bytes);
            }
        }
    }
}

impl BrokerEventHandler for Hub {
    fn handle_resubscribed(&self) {
        // Publications may have been lost while the node was not subscribed:
        // every positioned subscriber resubscribes and recovers from history.
        let mut affected = 0usize;
        for entry in self.channels.iter() {
            for s in entry.values().filter(|s| s.positioned) {
                let mut pos = s.lock();
                if matches!(pos.phase, Phase::Live) {
                    pos.phase = Phase::Ended;
                    drop(pos);
                    s.lost_position();
                    affected += 1;
                }
            }
        }
        tracing::info!(
            affected,
            "broker resubscribed: positioned subscribers asked to recover"
        );
    }

    fn handle_publication(&self, channel: &ChannelKey, publication: Publication, epoch: &str) {
        let subscribers = self.subscribers(channel);
        if subscribers.is_empty() {
            return;
        }
        let mut cache = PushCache::publication(channel.name(), publication.clone());
        for s in subscribers {
            s.deliver(&publication, epoch, &mut cache);
        }
    }

    fn handle_join(&self, channel: &ChannelKey, info: ClientInfo) {
        self.push_join_leave(
            channel,
            Push {
                channel: channel.name().to_owned(),
                join: Some(Join { info: Some(info) }),
                ..Default::default()
            },
        );
    }

    fn handle_leave(&self, channel: &ChannelKey, info: ClientInfo) {
        self.push_join_leave(
            channel,
            Push {
                channel: channel.name().to_owned(),
                leave: Some(Leave { info: Some(info) }),
                ..Default::default()
            },
        );
    }

    fn handle_control(&self, message: ControlMessage) {
        match message {
            ControlMessage::Disconnect {
                tenant,
                user,
                client,
                whitelist,
                code,
                reason,
            } => {
                for s in self.sessions_for(&tenant, &user, client.as_deref()) {
                    if !whitelist.iter().any(|w| **w == *s.client) {
                        s.disconnect(Disconnect::new(code, reason.clone()));
                    }
                }
            }
            ControlMessage::Unsubscribe {
                tenant,
                user,
                channel,
                client,
            } => {
                let channel: Arc<str> = Arc::from(channel);
                for s in self.sessions_for(&tenant, &user, client.as_deref()) {
                    s.notify(SessionEvent::Unsubscribe {
                        channel: channel.clone(),
                        code: UnsubscribeCode::Server,
                    });
                }
            }
            ControlMessage::Subscribe {
                tenant,
                user,
                channel,
                client,
                data,
            } => {
                for s in self.sessions_for(&tenant, &user, client.as_deref()) {
                    s.notify(SessionEvent::Subscribe {
                        channel: channel.clone(),
                        data: data.clone(),
                    });
                }
            }
            ControlMessage::Refresh {
                tenant,
                user,
                client,
                expired,
                expire_at,
            } => {
                for s in self.sessions_for(&tenant, &user, client.as_deref()) {
                    s.notify(SessionEvent::Refresh { expired, expire_at });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::session::Outbound;

    fn subscriber() -> (
        Arc<Subscriber>,
        Arc<Outbound>,
        tokio::sync::mpsc::Receiver<SessionEvent>,
    ) {
        let outbound = Arc::new(Outbound::new(1 << 20));
        let (handle, events) = SessionHandle::new(
            "c1".into(),
            "t".into(),
            "u".into(),
            Encoding::Json,
            outbound.clone(),
        );
        (
            Subscriber::new(handle, "ch".into(), false, true),
            outbound,
            events,
        )
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            data: Bytes::from(format!("{offset}")),
            offset,
            ..Default::default()
        }
    }

    fn deliver(s: &Subscriber, offset: u64, epoch: &str) {
        let p = publication(offset);
        s.deliver(&p, epoch, &mut PushCache::publication("ch", p.clone()));
    }

    fn offsets_queued(outbound: &Outbound) -> Vec<u64> {
        let drained = futures::executor::block_on(outbound.next());
        drained
            .messages
            .iter()
            .filter_map(|m| Encoding::Json.decode_replies(m).ok())
            .flatten()
            .filter_map(|r| r.push.and_then(|p| p.r#pub).map(|p| p.offset))
            .collect()
    }

    #[test]
    fn reply_comes_first_then_newer_buffered_publications_in_order() {
        let (s, outbound, _events) = subscriber();
        deliver(&s, 5, "E");
        deliver(&s, 6, "E");
        deliver(&s, 7, "E");
        let position = StreamPosition {
            offset: 5,
            epoch: "E".into(),
        };
        s.go_live(
            Bytes::from_static(b"{\"id\":1,\"subscribe\":{}}"),
            &position,
        );
        let drained = futures::executor::block_on(outbound.next());
        assert_eq!(drained.messages[0].as_ref(), b"{\"id\":1,\"subscribe\":{}}");
        let later: Vec<u64> = drained.messages[1..]
            .iter()
            .flat_map(|m| Encoding::Json.decode_replies(m).unwrap())
            .map(|r| r.push.unwrap().r#pub.unwrap().offset)
            .collect();
        assert_eq!(later, vec![6, 7], "5 was covered by the reply");
        assert_eq!(s.offset(), 7);
    }

    #[test]
    fn duplicate_publication_is_skipped() {
        let (s, outbound, mut events) = subscriber();
        s.go_live(
            Bytes::from_static(b"{}"),
            &StreamPosition {
                offset: 3,
                epoch: "E".into(),
            },
        );
        let _reply = futures::executor::block_on(outbound.next());
        deliver(&s, 4, "E");
        deliver(&s, 4, "E");
        deliver(&s, 2, "E");
        assert_eq!(offsets_queued(&outbound), vec![4]);
        assert!(events.try_recv().is_err());
    }

    #[test]
    fn gap_ends_the_subscription_with_2500() {
        let (s, outbound, mut events) = subscriber();
        s.go_live(
            Bytes::from_static(b"{}"),
            &StreamPosition {
                offset: 3,
                epoch: "E".into(),
            },
        );
        let _reply = futures::executor::block_on(outbound.next());
        deliver(&s, 5, "E");
        match events.try_recv() {
            Ok(SessionEvent::Unsubscribe { code, .. }) => {
                assert_eq!(code, UnsubscribeCode::InsufficientState)
            }
            other => panic!("expected an unsubscribe, got {other:?}"),
        }
        deliver(&s, 6, "E");
        assert!(!outbound.is_closing());
        assert_eq!(
            outbound.queued_bytes(),
            0,
            "nothing is delivered after a gap"
        );
    }

    #[test]
    fn new_epoch_ends_the_subscription_with_2500() {
        let (s, outbound, mut events) = subscriber();
        s.go_live(
            Bytes::from_static(b"{}"),
            &StreamPosition {
                offset: 3,
                epoch: "E".into(),
            },
        );
        let _reply = futures::executor::block_on(outbound.next());
        deliver(&s, 4, "F");
        assert!(matches!(
            events.try_recv(),
            Ok(SessionEvent::Unsubscribe { .. })
        ));
    }
}
