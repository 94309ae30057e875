//! The embedded broker: history streams, presence and control messages in
//! this process, for a single node.
//!
//! Each channel's stream has its own lock. A publication takes the next
//! offset and is handed to the hub while that lock is held, so deliveries of
//! one channel leave in offset order. The hub's fan-out never blocks (it only
//! fills bounded queues), so holding the lock through it is cheap.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::time::Instant;

use super::{
    Broker, BrokerError, BrokerEventHandler, ControlMessage, HistoryPage, HistoryQuery,
    HistoryRetention, PresenceManager, PublishOptions, StreamPosition, new_epoch,
};
use crate::channel::ChannelKey;
use crate::protocol::{ClientInfo, Publication};

/// How long an idempotent publish is remembered.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Stream {
    epoch: String,
    top: u64,
    publications: VecDeque<Publication>,
    /// The publications expire together, `ttl` after the last publish.
    expires_at: Option<Instant>,
    /// Position and epoch expire `meta_ttl` after the last publish or read.
    meta_expires_at: Option<Instant>,
    results: HashMap<String, (StreamPosition, Instant)>,
}

impl Stream {
    /// Applies expiry as Redis would: lost meta means a new epoch.
    fn refresh(&mut self, now: Instant) {
        if self.meta_expires_at.is_some_and(|t| t <= now) || self.epoch.is_empty() {
            self.epoch = new_epoch();
            self.top = 0;
            self.publications.clear();
            self.expires_at = None;
            self.results.clear();
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            self.publications.clear();
            self.expires_at = None;
        }
    }
}

#[derive(Default)]
pub struct MemoryBroker {
    handler: OnceLock<Weak<dyn BrokerEventHandler>>,
    streams: DashMap<ChannelKey, Arc<Mutex<Stream>>>,
    node: Mutex<Option<super::NodeInfo>>,
    presence: DashMap<ChannelKey, HashMap<String, (ClientInfo, Instant)>>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn handler(&self) -> Option<Arc<dyn BrokerEventHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    fn stream(&self, channel: &ChannelKey) -> Arc<Mutex<Stream>> {
        self.streams.entry(channel.clone()).or_default().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a stream half-written in a
    // way later readers would misread, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        // Every publication in this process reaches the hub; the hub drops
        // channels it has no subscribers for.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelKey,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let handler = self.handler();
        let Some(retention) = options.history else {
            let stream = self.stream(channel);
            let _order = lock(&stream);
            if let Some(h) = handler {
                h.handle_publication(channel, publication, "");
            }
            return Ok(None);
        };
        let stream = self.stream(channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.refresh(now);
        if let Some(key) = &options.idempotency_key {
            s.results.retain(|_, (_, at)| *at > now);
            if let Some((pos, _)) = s.results.get(key) {
                return Ok(Some(pos.clone()));
            }
        }
        s.top += 1;
        publication.offset = s.top;
        s.publications.push_back(publication.clone());
        while s.publications.len() > retention.size {
            s.publications.pop_front();
        }
        s.expires_at = Some(now + retention.ttl);
        s.meta_expires_at = Some(now + retention.meta_ttl);
        let position = StreamPosition {
            offset: s.top,
            epoch: s.epoch.clone(),
        };
        if let Some(key) = &options.idempotency_key {
            s.results
                .insert(key.clone(), (position.clone(), now + IDEMPOTENCY_WINDOW));
        }
        if let Some(h) = handler {
            h.handle_publication(channel, publication, &position.epoch);
        }
        Ok(Some(position))
    }

    async fn publish_join(
        &self,
        channel: &ChannelKey,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_join(channel, info);
        }
        Ok(())
    }

    async fn publish_leave(
        &self,
        channel: &ChannelKey,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_leave(channel, info);
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        query: &HistoryQuery,
        retention: &HistoryRetention,
    ) -> Result<HistoryPage, BrokerError> {
        let stream = self.stream(channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.refresh(now);
        s.meta_expires_at = Some(now + retention.meta_ttl);
        let position = StreamPosition {
            offset: s.top,
            epoch: s.epoch.clone(),
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        let publications: Vec<Publication> = if limit == 0 {
            Vec::new()
        } else if query.reverse {
            let before = query.since.unwrap_or(u64::MAX);
            s.publications
                .iter()
                .rev()
                .filter(|p| p.offset < before)
                .take(limit)
                .cloned()
                .collect()
        } else {
            let after = query.since.unwrap_or(0);
            s.publications
                .iter()
                .filter(|p| p.offset > after)
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove_history(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let stream = self.stream(channel);
        let mut s = lock(&stream);
        s.publications.clear();
        s.expires_at = None;
        Ok(())
    }

    async fn publish_control(&self, message: &ControlMessage) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_control(message.clone());
        }
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        true
    }

    async fn announce_node(&self, info: &super::NodeInfo) -> Result<(), BrokerError> {
        *lock(&self.node) = Some(info.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<super::NodeInfo>, BrokerError> {
        Ok(lock(&self.node).iter().cloned().collect())
    }
}

#[async_trait]
impl PresenceManager for MemoryBroker {
    async fn add_presence(
        &self,
        channel: &ChannelKey,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.presence
            .entry(channel.clone())
            .or_default()
            .insert(info.client.clone(), (info.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn remove_presence(&self, channel: &ChannelKey, client: &str) -> Result<(), BrokerError> {
        if let Some(mut entry) = self.presence.get_mut(channel) {
            entry.remove(client);
        }
        self.presence.remove_if(channel, |_, m| m.is_empty());
        Ok(())
    }

    async fn presence(
        &self,
        channel: &ChannelKey,
    ) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        let now = Instant::now();
        let Some(mut entry) = self.presence.get_mut(channel) else {
            return Ok(BTreeMap::new());
        };
        entry.retain(|_, (_, expires)| *expires > now);
        Ok(entry
            .iter()
            .map(|(client, (info, _))| (client.clone(), info.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_broker_passes_the_behaviour_suite() {
        crate::broker::suite::run_all(|| {
            let b = Arc::new(MemoryBroker::new());
            (b.clone() as Arc<dyn Broker>, b as Arc<dyn PresenceManager>)
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn history_expires_after_ttl_but_the_position_stays() {
        let b = MemoryBroker::new();
        let ch = ChannelKey::new("t", "c");
        let r = HistoryRetention {
            size: 10,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(3600),
        };
        let opts = PublishOptions {
            history: Some(r),
            idempotency_key: None,
        };
        let first = b
            .publish(&ch, Publication::default(), &opts)
            .await
            .unwrap()
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let page = b.history(&ch, &HistoryQuery::default(), &r).await.unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position, first);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_stream_meta_gives_a_new_epoch() {
        let b = MemoryBroker::new();
        let ch = ChannelKey::new("t", "c");
        let r = HistoryRetention {
            size: 10,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(120),
        };
        let opts = PublishOptions {
            history: Some(r),
            idempotency_key: None,
        };
        let first = b
            .publish(&ch, Publication::default(), &opts)
            .await
            .unwrap()
            .unwrap();
        tokio::time::advance(Duration::from_secs(121)).await;
        let page = b.history(&ch, &HistoryQuery::default(), &r).await.unwrap();
        assert_ne!(page.position.epoch, first.epoch);
        assert_eq!(page.position.offset, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn presence_entries_expire_unless_refreshed() {
        let b = MemoryBroker::new();
        let ch = ChannelKey::new("t", "c");
        let info = ClientInfo {
            user: "u".into(),
            client: "c1".into(),
            ..Default::default()
        };
        b.add_presence(&ch, &info, Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.presence(&ch).await.unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.presence(&ch).await.unwrap().is_empty());
    }
}
