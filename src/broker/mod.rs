//! Cross-node delivery: publications with history streams, presence, and
//! node-to-node control messages.
//!
//! The broker knows nothing about sessions. It delivers what this node is
//! subscribed to (channel, publication, position) to one
//! [`BrokerEventHandler`] — the hub — which fans out to local sessions.
//! `memory` keeps everything in this process (one node); a Redis broker
//! implements the same traits for many nodes.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelKey;
use crate::protocol::{ClientInfo, Publication};

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisBrokerConfig};

#[derive(Debug, thiserror::Error, Clone)]
pub enum BrokerError {
    /// The backend is unreachable; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend refused.
    #[error("broker error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A position in a channel's history stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// How a channel keeps history (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// `None` publishes without history (no offset).
    pub history: Option<HistoryRetention>,
    /// A repeated publish with the same key within five minutes is answered
    /// with the first one's position and not delivered again.
    pub idempotency_key: Option<String>,
}

/// Which part of the stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications after this offset (or, with `reverse`, before it).
    pub since: Option<u64>,
    /// `None` returns every matching publication; `Some(0)` only the position.
    pub limit: Option<usize>,
    pub reverse: bool,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Publication>,
    /// The stream's top: last offset and current epoch.
    pub position: StreamPosition,
}

/// Messages between nodes: server API actions that must reach whichever
/// node holds a user's connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Disconnect {
        tenant: String,
        user: String,
        #[serde(default)]
        client: Option<String>,
        #[serde(default)]
        whitelist: Vec<String>,
        code: u16,
        reason: String,
    },
    Unsubscribe {
        tenant: String,
        user: String,
        channel: String,
        #[serde(default)]
        client: Option<String>,
    },
    Subscribe {
        tenant: String,
        user: String,
        channel: String,
        #[serde(default)]
        client: Option<String>,
        #[serde(default, with = "opt_bytes")]
        data: Option<Bytes>,
    },
    Refresh {
        tenant: String,
        user: String,
        #[serde(default)]
        client: Option<String>,
        #[serde(default)]
        expired: bool,
        #[serde(default)]
        expire_at: Option<i64>,
    },
}

mod opt_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Bytes::from))
    }
}

/// Receives what the broker delivers to this node. Calls for one channel
/// arrive in publication order; implementations must not block (fan-out uses
/// non-blocking queues).
pub trait BrokerEventHandler: Send + Sync {
    /// `epoch` is the stream's epoch (empty for a publication without history).
    fn handle_publication(&self, channel: &ChannelKey, publication: Publication, epoch: &str);
    fn handle_join(&self, channel: &ChannelKey, info: ClientInfo);
    fn handle_leave(&self, channel: &ChannelKey, info: ClientInfo);
    fn handle_control(&self, message: ControlMessage);
    /// The node lost its subscriptions for a while (the backend reconnected):
    /// deliveries may have been missed, so positioned subscribers must recover.
    fn handle_resubscribed(&self);
}

/// Publish/subscribe with history streams.
///
/// Delivery to subscribers is at most once; history with offsets and epochs
/// lets a client detect and repair what it missed (recovery).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sets the receiver of deliveries. Called once, before any subscribe.
    fn set_handler(&self, handler: std::sync::Weak<dyn BrokerEventHandler>);

    /// Starts delivering `channel` to this node. Idempotent.
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Stops delivering `channel` to this node. Idempotent.
    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Publishes to every node subscribed to `channel`. With history, the
    /// publication gets the next offset of the channel's stream, is appended
    /// (trimmed to `size`, expiring after `ttl`), and the returned position
    /// is the publication's. Publications of one channel are delivered in
    /// offset order.
    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<Option<StreamPosition>, BrokerError>;

    /// Tells every node that a client joined (`join`) or left a channel.
    async fn publish_join(&self, channel: &ChannelKey, info: ClientInfo)
    -> Result<(), BrokerError>;
    async fn publish_leave(
        &self,
        channel: &ChannelKey,
        info: ClientInfo,
    ) -> Result<(), BrokerError>;

    /// Reads the stream. The epoch in the returned position is created when
    /// the stream has none, so a lost stream shows up as a new epoch.
    async fn history(
        &self,
        channel: &ChannelKey,
        query: &HistoryQuery,
        retention: &HistoryRetention,
    ) -> Result<HistoryPage, BrokerError>;

    /// Drops the publications of a stream; its position and epoch stay.
    async fn remove_history(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Sends a control message to every node, this one included.
    async fn publish_control(&self, message: &ControlMessage) -> Result<(), BrokerError>;

    /// False while the backend is unreachable (`/readyz`).
    fn is_healthy(&self) -> bool;

    /// Announces this node (called every few seconds); nodes that stop
    /// announcing drop out of [`Broker::nodes`].
    async fn announce_node(&self, info: &NodeInfo) -> Result<(), BrokerError>;

    /// Every live node, this one included.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
}

/// What a node tells the others about itself (`/api/info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u32,
    pub num_users: u32,
    pub num_channels: u32,
    pub num_subs: u32,
    pub uptime: u64,
}

/// Who is in a channel. Entries expire after `ttl` unless refreshed, so a
/// crashed node's clients disappear on their own.
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    async fn add_presence(
        &self,
        channel: &ChannelKey,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError>;
    async fn remove_presence(&self, channel: &ChannelKey, client: &str) -> Result<(), BrokerError>;
    async fn presence(
        &self,
        channel: &ChannelKey,
    ) -> Result<BTreeMap<String, ClientInfo>, BrokerError>;
    /// (number of clients, number of unique users).
    async fn presence_stats(&self, channel: &ChannelKey) -> Result<(u32, u32), BrokerError> {
        let all = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> =
            all.values().map(|i| i.user.as_str()).collect();
        Ok((all.len() as u32, users.len() as u32))
    }
}

/// A fresh random epoch: 8 ASCII letters.
pub fn new_epoch() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| {
            let n = rng.random_range(0..52u8);
            if n < 26 {
                (b'a' + n) as char
            } else {
                (b'A' + n - 26) as char
            }
        })
        .collect()
}

pub type SharedBroker = Arc<dyn Broker>;
pub type SharedPresence = Arc<dyn PresenceManager>;

#[cfg(test)]
pub(crate) mod suite;
