//! One behaviour suite for every broker implementation. Each backend's test
//! calls [`run_all`] with a factory that returns a fresh, isolated broker
//! (for Redis: a unique key prefix).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::protocol::{ClientInfo, Publication};

#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<(String, String, u64)>>,
}

impl Recorder {
    fn snapshot(&self) -> Vec<(String, String, u64)> {
        self.events.lock().unwrap().clone()
    }
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &ChannelKey, p: Publication, _epoch: &str) {
        self.events.lock().unwrap().push((
            "pub".into(),
            format!("{channel:?}:{}", String::from_utf8_lossy(&p.data)),
            p.offset,
        ));
    }
    fn handle_join(&self, channel: &ChannelKey, info: ClientInfo) {
        self.events.lock().unwrap().push((
            "join".into(),
            format!("{channel:?}:{}", info.client),
            0,
        ));
    }
    fn handle_leave(&self, channel: &ChannelKey, info: ClientInfo) {
        self.events.lock().unwrap().push((
            "leave".into(),
            format!("{channel:?}:{}", info.client),
            0,
        ));
    }
    fn handle_control(&self, message: ControlMessage) {
        self.events
            .lock()
            .unwrap()
            .push(("control".into(), format!("{message:?}"), 0));
    }
    fn handle_resubscribed(&self) {}
}

fn retention(size: usize) -> HistoryRetention {
    HistoryRetention {
        size,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    }
}

fn publication(text: &str) -> Publication {
    Publication {
        data: Bytes::from(format!("\"{text}\"")),
        ..Default::default()
    }
}

/// Waits until `check` holds for the recorder (deliveries may be asynchronous).
async fn eventually(
    rec: &Recorder,
    check: impl Fn(&[(String, String, u64)]) -> bool,
) -> Vec<(String, String, u64)> {
    for _ in 0..200 {
        let events = rec.snapshot();
        if check(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec.snapshot()
}

pub async fn run_all<F>(factory: F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    offsets_grow_and_history_reads_since_limit_and_reverse(&factory).await;
    history_is_trimmed_to_size(&factory).await;
    idempotent_publish_is_delivered_once(&factory).await;
    subscribed_channel_is_delivered_in_order_and_tenants_are_apart(&factory).await;
    join_leave_and_control_reach_the_handler(&factory).await;
    presence_lists_and_counts_clients_and_users(&factory).await;
    removed_history_keeps_the_position(&factory).await;
}

async fn offsets_grow_and_history_reads_since_limit_and_reverse<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let ch = ChannelKey::new("t1", "history");
    let opts = PublishOptions {
        history: Some(retention(100)),
        idempotency_key: None,
    };
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let pos = b
            .publish(&ch, publication(&i.to_string()), &opts)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pos.offset, i);
        if i == 1 {
            epoch = pos.epoch.clone();
        }
        assert_eq!(pos.epoch, epoch, "epoch is stable while the stream lives");
    }
    let r = retention(100);
    let all = b.history(&ch, &HistoryQuery::default(), &r).await.unwrap();
    assert_eq!(
        all.position,
        StreamPosition {
            offset: 5,
            epoch: epoch.clone()
        }
    );
    assert_eq!(
        all.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let since = b
        .history(
            &ch,
            &HistoryQuery {
                since: Some(3),
                limit: None,
                reverse: false,
            },
            &r,
        )
        .await
        .unwrap();
    assert_eq!(
        since
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let limited = b
        .history(
            &ch,
            &HistoryQuery {
                since: None,
                limit: Some(2),
                reverse: false,
            },
            &r,
        )
        .await
        .unwrap();
    assert_eq!(
        limited
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let reversed = b
        .history(
            &ch,
            &HistoryQuery {
                since: None,
                limit: Some(2),
                reverse: true,
            },
            &r,
        )
        .await
        .unwrap();
    assert_eq!(
        reversed
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![5, 4]
    );
    let top_only = b
        .history(
            &ch,
            &HistoryQuery {
                since: None,
                limit: Some(0),
                reverse: false,
            },
            &r,
        )
        .await
        .unwrap();
    assert!(top_only.publications.is_empty());
    assert_eq!(top_only.position.offset, 5);
    assert_eq!(all.publications[2].data.as_ref(), b"\"3\"");
}

async fn history_is_trimmed_to_size<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let ch = ChannelKey::new("t1", "trim");
    let opts = PublishOptions {
        history: Some(retention(3)),
        idempotency_key: None,
    };
    for i in 0..10 {
        b.publish(&ch, publication(&i.to_string()), &opts)
            .await
            .unwrap();
    }
    let page = b
        .history(&ch, &HistoryQuery::default(), &retention(3))
        .await
        .unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
}

async fn idempotent_publish_is_delivered_once<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let rec: Arc<Recorder> = Arc::new(Recorder::default());
    let h: Arc<dyn BrokerEventHandler> = rec.clone();
    b.set_handler(Arc::downgrade(&h));
    let ch = ChannelKey::new("t1", "idem");
    b.subscribe(&ch).await.unwrap();
    let opts = PublishOptions {
        history: Some(retention(10)),
        idempotency_key: Some("k1".into()),
    };
    let a = b.publish(&ch, publication("x"), &opts).await.unwrap();
    let again = b.publish(&ch, publication("x"), &opts).await.unwrap();
    assert_eq!(a, again);
    let events = eventually(&rec, |e| !e.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.snapshot().len(), 1, "{events:?}");
}

async fn subscribed_channel_is_delivered_in_order_and_tenants_are_apart<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let rec: Arc<Recorder> = Arc::new(Recorder::default());
    let h: Arc<dyn BrokerEventHandler> = rec.clone();
    b.set_handler(Arc::downgrade(&h));
    let mine = ChannelKey::new("t1", "same");
    let theirs = ChannelKey::new("t2", "same");
    b.subscribe(&mine).await.unwrap();
    let opts = PublishOptions {
        history: Some(retention(100)),
        idempotency_key: None,
    };
    for i in 0..20 {
        b.publish(&mine, publication(&i.to_string()), &opts)
            .await
            .unwrap();
    }
    b.publish(&theirs, publication("other tenant"), &opts)
        .await
        .unwrap();
    let events = eventually(&rec, |e| e.len() >= 20).await;
    let mine_events: Vec<u64> = events
        .iter()
        .filter(|(_, what, _)| what.starts_with("t1/same"))
        .map(|e| e.2)
        .collect();
    assert_eq!(mine_events, (1..=20).collect::<Vec<_>>());
    let their_page = b
        .history(&theirs, &HistoryQuery::default(), &retention(100))
        .await
        .unwrap();
    assert_eq!(
        their_page.publications.len(),
        1,
        "tenants have separate streams"
    );
    assert_eq!(their_page.position.offset, 1);
}

async fn join_leave_and_control_reach_the_handler<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let rec: Arc<Recorder> = Arc::new(Recorder::default());
    let h: Arc<dyn BrokerEventHandler> = rec.clone();
    b.set_handler(Arc::downgrade(&h));
    let ch = ChannelKey::new("t1", "jl");
    b.subscribe(&ch).await.unwrap();
    let info = ClientInfo {
        user: "u".into(),
        client: "c1".into(),
        ..Default::default()
    };
    b.publish_join(&ch, info.clone()).await.unwrap();
    b.publish_leave(&ch, info).await.unwrap();
    b.publish_control(&ControlMessage::Unsubscribe {
        tenant: "t1".into(),
        user: "u".into(),
        channel: "jl".into(),
        client: None,
    })
    .await
    .unwrap();
    let events = eventually(&rec, |e| e.len() >= 3).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, vec!["join", "leave", "control"]);
}

async fn presence_lists_and_counts_clients_and_users<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (_, p) = factory();
    let ch = ChannelKey::new("t1", "presence");
    for (user, client) in [("u1", "c1"), ("u1", "c2"), ("u2", "c3")] {
        let info = ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: Bytes::from_static(b"{\"a\":1}"),
            ..Default::default()
        };
        p.add_presence(&ch, &info, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let all = p.presence(&ch).await.unwrap();
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        vec!["c1", "c2", "c3"]
    );
    assert_eq!(all["c1"].conn_info.as_ref(), b"{\"a\":1}");
    assert_eq!(p.presence_stats(&ch).await.unwrap(), (3, 2));
    p.remove_presence(&ch, "c2").await.unwrap();
    assert_eq!(p.presence_stats(&ch).await.unwrap(), (2, 2));
    let other = ChannelKey::new("t2", "presence");
    assert!(p.presence(&other).await.unwrap().is_empty());
}

async fn removed_history_keeps_the_position<F>(factory: &F)
where
    F: Fn() -> (Arc<dyn Broker>, Arc<dyn PresenceManager>),
{
    let (b, _) = factory();
    let ch = ChannelKey::new("t1", "removed");
    let opts = PublishOptions {
        history: Some(retention(10)),
        idempotency_key: None,
    };
    let pos = b
        .publish(&ch, publication("a"), &opts)
        .await
        .unwrap()
        .unwrap();
    b.remove_history(&ch).await.unwrap();
    let page = b
        .history(&ch, &HistoryQuery::default(), &retention(10))
        .await
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, pos);
    let next = b
        .publish(&ch, publication("b"), &opts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.offset, 2);
    assert_eq!(next.epoch, pos.epoch);
}
