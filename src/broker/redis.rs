//! The Redis broker: many nodes behave as one hub.
//!
//! - Publish with history is one Lua script: the next offset comes from the
//!   channel's meta hash (which also holds the epoch; a lost meta hash means
//!   a new epoch), the publication is appended to a stream trimmed to the
//!   history size, both keys get their TTLs, and the publication is
//!   PUBLISHed with its offset and epoch in a small header.
//! - One pub/sub connection per node subscribes per channel on demand (first
//!   local subscriber) and unsubscribes after the last. It also carries
//!   control messages and this node's liveness probe.
//! - Presence is a hash per channel plus a sorted set of expiry times judged
//!   by the Redis clock, so a crashed node's clients expire by themselves.
//! - Node registry: every node announces itself in a hash with a timestamp
//!   (Redis clock); nodes silent for longer than `NODE_TTL` drop out.
//!
//! Failures: commands time out instead of hanging; while the pub/sub
//! connection is down the broker reports unhealthy; on reconnect it
//! resubscribes every channel and tells the hub, which makes positioned
//! subscribers recover from the streams (unsubscribe 2500), so publications
//! missed during the gap come back through history.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, BrokerEventHandler, ControlMessage, HistoryPage, HistoryQuery,
    HistoryRetention, NodeInfo, PresenceManager, PublishOptions, StreamPosition, new_epoch,
};
use crate::channel::ChannelKey;
use crate::protocol::{ClientInfo, Publication};

/// How long an idempotent publish is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 300;
/// A node that has not announced itself for this long is gone.
const NODE_TTL_MS: u64 = 10_000;
/// Channels per SUBSCRIBE command when resubscribing everything.
const SUBSCRIBE_BATCH: usize = 512;
/// Pending subscribe/unsubscribe requests to the pub/sub task.
const PUBSUB_REQUESTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`; with `cluster`, the
    /// seed nodes of a Redis Cluster (one is enough, several are safer).
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster: commands are routed by slot (every script's
    /// keys share one slot through a hash tag), pub/sub uses the cluster-wide
    /// PUBLISH and a pub/sub connection to any node.
    pub cluster: bool,
    /// With `cluster`: sharded pub/sub (SPUBLISH/SSUBSCRIBE), so each
    /// publication travels only within its channel's shard instead of being
    /// broadcast to every cluster node.
    pub sharded: bool,
    /// Redis Sentinel: `urls` are the sentinels and this is the name of the
    /// monitored master; the master is looked up at connect, on every pub/sub
    /// reconnect and after a command fails the way a failover makes it fail.
    pub sentinel_master: Option<String>,
    /// Key and channel prefix; several deployments can share one Redis.
    pub prefix: String,
    /// Multiplexed command connections used round-robin.
    pub pool_size: usize,
    /// A command that takes longer fails (the API answers a retryable error).
    pub command_timeout: Duration,
    /// This node's id (for its liveness probe channel).
    pub node_id: String,
}

const PUBLISH_SCRIPT: &str = r"
-- KEYS: stream, meta, result (same slot; used only when ARGV[8] is '1')
-- ARGV: payload, size, stream ttl, pubsub channel, meta ttl, new epoch, result ttl, idempotent,
--       publish command (publish | spublish)
local idempotent = ARGV[8] == '1'
if idempotent then
  local cached = redis.call('hmget', KEYS[3], 'e', 's')
  if cached[1] then return {tonumber(cached[2]), cached[1], 1} end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local top = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[5])
if top == 1 then redis.call('del', KEYS[1]) end
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], top .. '-0', 'd', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call(ARGV[9], ARGV[4], '__p1:' .. top .. ':' .. epoch .. '__' .. ARGV[1])
if idempotent then
  redis.call('hset', KEYS[3], 'e', epoch, 's', top)
  redis.call('expire', KEYS[3], ARGV[7])
end
return {top, epoch, 0}
";

const HISTORY_SCRIPT: &str = r"
-- KEYS: stream, meta
-- ARGV: new epoch, meta ttl, since ('' = none), limit (-1 = all, 0 = none), reverse ('1')
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
redis.call('expire', KEYS[2], ARGV[2])
local limit = tonumber(ARGV[4])
local entries = {}
if limit ~= 0 then
  local count = {}
  if limit > 0 then count = {'COUNT', limit} end
  if ARGV[5] == '1' then
    local upper = '+'
    if ARGV[3] ~= '' then upper = '(' .. ARGV[3] .. '-0' end
    entries = redis.call('xrevrange', KEYS[1], upper, '-', unpack(count))
  else
    local lower = '-'
    if ARGV[3] ~= '' then lower = '(' .. ARGV[3] .. '-0' end
    entries = redis.call('xrange', KEYS[1], lower, '+', unpack(count))
  end
end
return {top, epoch, entries}
";

const PRESENCE_ADD_SCRIPT: &str = r"
-- KEYS: data, expire; ARGV: client, info, ttl seconds
local now = redis.call('time')
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], tonumber(now[1]) + tonumber(ARGV[3]), ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[3])
return 1
";

const PRESENCE_GET_SCRIPT: &str = r"
-- KEYS: data, expire
local now = redis.call('time')
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now[1])
if #expired > 0 then
  redis.call('hdel', KEYS[1], unpack(expired))
  redis.call('zremrangebyscore', KEYS[2], '-inf', now[1])
end
return redis.call('hgetall', KEYS[1])
";

const NODE_ANNOUNCE_SCRIPT: &str = r"
-- KEYS: nodes hash, nodes seen zset; ARGV: id, info json
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], ms, ARGV[1])
return 1
";

const NODES_SCRIPT: &str = r"
-- KEYS: nodes hash, nodes seen zset; ARGV: ttl ms
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gone = redis.call('zrangebyscore', KEYS[2], '-inf', ms - tonumber(ARGV[1]))
if #gone > 0 then
  redis.call('hdel', KEYS[1], unpack(gone))
  redis.call('zrem', KEYS[2], unpack(gone))
end
return redis.call('hvals', KEYS[1])
";

enum PubSubRequest {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), BrokerError>>),
}

struct Keys {
    prefix: String,
}

/// Every key of one channel carries the channel in a hash tag (`{...}`), so
/// that in a Redis Cluster the keys a script touches share one slot.
impl Keys {
    fn stream(&self, ch: &ChannelKey) -> String {
        format!("{}.stream.{{{}}}", self.prefix, ch.flat())
    }
    fn meta(&self, ch: &ChannelKey) -> String {
        format!("{}.meta.{{{}}}", self.prefix, ch.flat())
    }
    fn result(&self, ch: &ChannelKey, key: &str) -> String {
        format!("{}.result.{{{}}}.{}", self.prefix, ch.flat(), key)
    }
    fn client_channel(&self, ch: &ChannelKey) -> String {
        format!("{}.client.{{{}}}", self.prefix, ch.flat())
    }
    /// The channel key of a pub/sub channel name made by `client_channel`.
    fn channel_of(&self, pubsub_channel: &str) -> Option<ChannelKey> {
        let tagged = pubsub_channel.strip_prefix(&format!("{}.client.", self.prefix))?;
        let flat = tagged.strip_prefix('{')?.strip_suffix('}')?;
        ChannelKey::from_flat(flat)
    }
    fn presence_data(&self, ch: &ChannelKey) -> String {
        format!("{}.presence.data.{{{}}}", self.prefix, ch.flat())
    }
    fn presence_expire(&self, ch: &ChannelKey) -> String {
        format!("{}.presence.expire.{{{}}}", self.prefix, ch.flat())
    }
    fn control(&self) -> String {
        format!("{{{}.control}}", self.prefix)
    }
    fn probe(&self, node: &str) -> String {
        format!("{}.node.{node}.probe", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{{{}.nodes}}", self.prefix)
    }
    fn nodes_seen(&self) -> String {
        format!("{{{}.nodes}}.seen", self.prefix)
    }
}

struct Scripts {
    publish: Script,
    history: Script,
    presence_add: Script,
    presence_get: Script,
    node_announce: Script,
    nodes: Script,
}

/// A command connection: one Redis (auto-reconnecting, multiplexed) or a
/// Redis Cluster (routed by slot).
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the Redis to talk to comes from.
enum Source {
    /// The configured URLs themselves (one Redis, or cluster seeds).
    Direct(Vec<redis::Client>),
    /// Ask the sentinels for the current master.
    Sentinel(Box<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

struct Inner {
    config: RedisBrokerConfig,
    source: Source,
    /// Replaced as a whole after a failover (Sentinel).
    connections: std::sync::RwLock<Vec<Commands>>,
    /// One master lookup at a time.
    resolving: tokio::sync::Mutex<()>,
    next: AtomicUsize,
    keys: Keys,
    scripts: Scripts,
    handler: OnceLock<Weak<dyn BrokerEventHandler>>,
    healthy: AtomicBool,
    requests: mpsc::Sender<PubSubRequest>,
    /// Taken by the pub/sub task when it starts.
    requests_rx: Mutex<Option<mpsc::Receiver<PubSubRequest>>>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: &redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Internal(e.to_string())
    }
}

impl RedisBroker {
    /// Connects the command connections. The pub/sub connection is made by
    /// [`RedisBroker::run`], which must be spawned next.
    pub async fn connect(config: RedisBrokerConfig) -> Result<Self, BrokerError> {
        let source = match &config.sentinel_master {
            Some(master) => {
                let sentinel = redis::sentinel::SentinelClient::build(
                    config.urls.clone(),
                    master.as_str(),
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| {
                    BrokerError::Internal(format!("invalid Redis Sentinel configuration: {e}"))
                })?;
                Source::Sentinel(Box::new(tokio::sync::Mutex::new(sentinel)))
            }
            None => Source::Direct(
                config
                    .urls
                    .iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?,
            ),
        };
        if config.urls.is_empty() {
            return Err(BrokerError::Internal("no Redis URL configured".into()));
        }
        let connections = if config.cluster {
            let cluster =
                redis::cluster::ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
                    .connection_timeout(config.command_timeout)
                    .response_timeout(config.command_timeout)
                    .build()
                    .map_err(|e| {
                        BrokerError::Internal(format!("invalid Redis Cluster seeds: {e}"))
                    })?;
            // The cluster connection multiplexes and follows slot moves itself.
            let c = cluster
                .get_async_connection()
                .await
                .map_err(|e| unavailable(&e))?;
            vec![Commands::Cluster(c)]
        } else {
            let master = master_client(&source, 0)
                .await
                .map_err(|e| unavailable(&e))?;
            managers(&master, &config)
                .await
                .map_err(|e| unavailable(&e))?
        };
        let (tx, rx) = mpsc::channel(PUBSUB_REQUESTS);
        let keys = Keys {
            prefix: config.prefix.clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                source,
                connections: std::sync::RwLock::new(connections),
                resolving: tokio::sync::Mutex::new(()),
                next: AtomicUsize::new(0),
                keys,
                scripts: Scripts {
                    publish: Script::new(PUBLISH_SCRIPT),
                    history: Script::new(HISTORY_SCRIPT),
                    presence_add: Script::new(PRESENCE_ADD_SCRIPT),
                    presence_get: Script::new(PRESENCE_GET_SCRIPT),
                    node_announce: Script::new(NODE_ANNOUNCE_SCRIPT),
                    nodes: Script::new(NODES_SCRIPT),
                },
                handler: OnceLock::new(),
                healthy: AtomicBool::new(false),
                requests: tx,
                requests_rx: Mutex::new(Some(rx)),
            }),
        })
    }

    fn conn(&self) -> Commands {
        let connections = self
            .inner
            .connections
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        connections[i].clone()
    }

    /// Awaits a Redis call and classifies its failure. Behind Sentinel, a
    /// failure that a failover causes (the old master is gone, or now a
    /// read-only replica) looks the master up again for the next calls.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match fut.await {
            Ok(v) => Ok(v),
            Err(e) => {
                let failover = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.code() == Some("READONLY");
                if failover && matches!(self.inner.source, Source::Sentinel(_)) {
                    self.follow_master().await;
                    return Err(BrokerError::Unavailable(format!(
                        "Redis master changed: {e}"
                    )));
                }
                Err(unavailable(&e))
            }
        }
    }

    /// Replaces the command connections with ones to the current master.
    async fn follow_master(&self) {
        let Ok(_one_at_a_time) = self.inner.resolving.try_lock() else {
            return;
        };
        let rebuilt = async {
            let master = master_client(&self.inner.source, 0).await?;
            managers(&master, &self.inner.config).await
        };
        match rebuilt.await {
            Ok(fresh) => {
                *self
                    .inner
                    .connections
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tracing::info!("following the Redis master Sentinel reports");
            }
            Err(e) => tracing::warn!(error = %e, "Redis master lookup failed"),
        }
    }

    fn handler(&self) -> Option<Arc<dyn BrokerEventHandler>> {
        self.inner.handler.get().and_then(Weak::upgrade)
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let mut c = self.conn();
        self.call(cmd.query_async(&mut c)).await
    }

    /// `PUBLISH`, or `SPUBLISH` with sharded pub/sub.
    fn publish_command(&self) -> &'static str {
        if self.inner.config.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    async fn connect_subscriber(&self, attempt: usize) -> redis::RedisResult<Subscriber> {
        if self.inner.config.sharded {
            let (tx, rx) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(
                self.inner.config.urls.iter().map(String::as_str),
            )
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(self.inner.config.command_timeout)
            .response_timeout(self.inner.config.command_timeout)
            .build()?;
            let conn = client.get_async_connection().await?;
            return Ok(Subscriber::Sharded { conn, pushes: rx });
        }
        // Any node will do: in a cluster PUBLISH reaches every node's
        // subscribers. Behind Sentinel, whichever is the master now.
        let client = master_client(&self.inner.source, attempt).await?;
        let (sink, stream) = client.get_async_pubsub().await?.split();
        Ok(Subscriber::Classic { sink, stream })
    }

    /// Waits until the pub/sub connection is up (tests and start-up).
    pub async fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.inner.healthy.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The pub/sub loop: connect, subscribe the control and probe channels
    /// and every channel wanted, deliver messages in order, reconnect with
    /// backoff when the connection is lost. Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(mut requests) = self
            .inner
            .requests_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut wanted: HashSet<String> = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut lost_once = false;
        let control = self.inner.keys.control();
        let probe = self.inner.keys.probe(&self.inner.config.node_id);
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                c = self.connect_subscriber(attempt) => c,
            };
            let mut subscriber = match connected {
                Ok(p) => p,
                Err(e) => {
                    self.set_healthy(false, Some(&e.to_string()));
                    lost_once = true;
                    // Refuse waiting subscribes at once rather than letting them hang.
                    while let Ok(req) = requests.try_recv() {
                        refuse(req);
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let mut all: Vec<String> = vec![control.clone(), probe.clone()];
            all.extend(wanted.iter().cloned());
            let mut ok = true;
            for batch in all.chunks(SUBSCRIBE_BATCH) {
                if subscriber.subscribe(batch).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            backoff = Duration::from_millis(100);
            self.set_healthy(true, None);
            if lost_once {
                // Deliveries may have been missed while we were away.
                if let Some(h) = self.handler() {
                    h.handle_resubscribed();
                }
            }
            let mut probe_interval = tokio::time::interval(Duration::from_secs(3));
            let mut probes_missing = 0u32;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    req = requests.recv() => {
                        let Some(req) = req else { return };
                        match req {
                            PubSubRequest::Subscribe(ch, reply) => {
                                let r = subscriber
                                    .subscribe(std::slice::from_ref(&ch))
                                    .await
                                    .map_err(|e| unavailable(&e));
                                if r.is_ok() {
                                    wanted.insert(ch);
                                }
                                let _ = reply.send(r);
                            }
                            PubSubRequest::Unsubscribe(ch, reply) => {
                                wanted.remove(&ch);
                                let r = subscriber.unsubscribe(&ch).await.map_err(|e| unavailable(&e));
                                let _ = reply.send(r);
                            }
                        }
                    }
                    _ = probe_interval.tick() => {
                        // A connection can stay open yet deliver nothing (after a
                        // failover): our own probe must come back.
                        probes_missing += 1;
                        if probes_missing > 3 {
                            tracing::warn!("Redis pub/sub connection delivers nothing; reconnecting");
                            break;
                        }
                        let cmd = redis::cmd(self.publish_command()).arg(&probe).arg("probe").clone();
                        let _ = self.command::<i64>(&cmd).await;
                    }
                    msg = subscriber.next() => {
                        let Some((channel, payload)) = msg else { break };
                        if channel == probe {
                            probes_missing = 0;
                            continue;
                        }
                        self.dispatch(&channel, &payload);
                    }
                }
            }
            self.set_healthy(false, Some("pub/sub connection lost"));
            lost_once = true;
        }
    }

    fn set_healthy(&self, healthy: bool, reason: Option<&str>) {
        let was = self.inner.healthy.swap(healthy, Ordering::SeqCst);
        if was != healthy {
            metrics::gauge!("synchub_broker_redis_connected").set(if healthy { 1.0 } else { 0.0 });
            if healthy {
                tracing::info!("Redis connection regained; subscriptions restored");
            } else {
                metrics::counter!("synchub_broker_redis_disconnects_total").increment(1);
                tracing::error!(reason = reason.unwrap_or(""), "lost Redis connection");
            }
        }
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some(handler) = self.handler() else {
            return;
        };
        if channel == self.inner.keys.control() {
            match serde_json::from_slice::<ControlMessage>(payload) {
                Ok(m) => handler.handle_control(m),
                Err(e) => tracing::warn!(error = %e, "malformed control message"),
            }
            return;
        }
        let Some(key) = self.inner.keys.channel_of(channel) else {
            return;
        };
        match decode_message(payload) {
            Some(Delivery::Publication(p, epoch)) => handler.handle_publication(&key, p, &epoch),
            Some(Delivery::Join(info)) => handler.handle_join(&key, info),
            Some(Delivery::Leave(info)) => handler.handle_leave(&key, info),
            None => tracing::warn!(channel, "malformed message from Redis"),
        }
    }

    async fn pubsub(
        &self,
        req: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> PubSubRequest,
    ) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .requests
            .try_send(req(tx))
            .map_err(|_| BrokerError::Unavailable("pub/sub request queue is full".into()))?;
        match tokio::time::timeout(self.inner.config.command_timeout * 2, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(BrokerError::Unavailable(
                "Redis pub/sub did not answer".into(),
            )),
        }
    }
}

impl RedisBroker {
    /// PUBLISHes a join (`__j__`) or leave (`__l__`) to every node.
    async fn publish_presence_event(
        &self,
        channel: &ChannelKey,
        tag: &[u8],
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let cmd = redis::cmd(self.publish_command())
            .arg(self.inner.keys.client_channel(channel))
            .arg(prefixed(tag, info.encode_to_vec()))
            .clone();
        self.command::<i64>(&cmd).await.map(|_| ())
    }
}

/// The client for the Redis to talk to: the configured one (round-robin over
/// several by `attempt`), or the master Sentinel names now.
async fn master_client(source: &Source, attempt: usize) -> redis::RedisResult<redis::Client> {
    match source {
        Source::Direct(clients) => Ok(clients[attempt % clients.len()].clone()),
        Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
    }
}

/// `pool_size` auto-reconnecting multiplexed connections to one Redis.
async fn managers(
    client: &redis::Client,
    config: &RedisBrokerConfig,
) -> redis::RedisResult<Vec<Commands>> {
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.command_timeout))
        .set_response_timeout(Some(config.command_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let mut out = Vec::new();
    for _ in 0..config.pool_size.max(1) {
        out.push(Commands::Single(
            client
                .get_connection_manager_with_config(manager_config.clone())
                .await?,
        ));
    }
    Ok(out)
}

/// The subscribing connection: classic pub/sub on one node, or sharded pub/sub
/// through the cluster connection (RESP3 pushes).
enum Subscriber {
    Classic {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    Sharded {
        conn: redis::cluster_async::ClusterConnection,
        /// redis-rs delivers pushes through an unbounded channel; this task
        /// drains it continuously, so it stays short.
        pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

impl Subscriber {
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Classic { sink, .. } => sink.subscribe(channels).await,
            // One SSUBSCRIBE may only name channels of one slot.
            Subscriber::Sharded { conn, .. } => {
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Subscriber::Classic { sink, .. } => sink.unsubscribe(channel).await,
            Subscriber::Sharded { conn, .. } => conn.sunsubscribe(channel).await,
        }
    }

    /// The next (channel, payload); `None` when the connection is lost.
    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            Subscriber::Classic { stream, .. } => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Subscriber::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        let channel = push.data.first().and_then(as_string)?;
                        let payload = match push.data.get(1) {
                            Some(Value::BulkString(b)) => b.clone(),
                            _ => continue,
                        };
                        return Some((channel, payload));
                    }
                    // A shard connection dropped: what it carried meanwhile is lost.
                    redis::PushKind::Disconnection => return None,
                    _ => continue,
                }
            },
        }
    }
}

fn refuse(req: PubSubRequest) {
    let (PubSubRequest::Subscribe(_, reply) | PubSubRequest::Unsubscribe(_, reply)) = req;
    let _ = reply.send(Err(BrokerError::Unavailable("Redis is unreachable".into())));
}

enum Delivery {
    Publication(Publication, String),
    Join(ClientInfo),
    Leave(ClientInfo),
}

/// Parses what the publish script and join/leave send: `__p1:<offset>:<epoch>__<pb>`
/// (with history), `__p0__<pb>` (without), `__j__<pb>`, `__l__<pb>`.
fn decode_message(payload: &[u8]) -> Option<Delivery> {
    if let Some(rest) = payload.strip_prefix(b"__p1:") {
        let end = rest.windows(2).position(|w| w == b"__")?;
        let header = std::str::from_utf8(&rest[..end]).ok()?;
        let (offset, epoch) = header.split_once(':')?;
        let mut p = Publication::decode(&rest[end + 2..]).ok()?;
        p.offset = offset.parse().ok()?;
        return Some(Delivery::Publication(p, epoch.to_owned()));
    }
    if let Some(rest) = payload.strip_prefix(b"__p0__") {
        return Some(Delivery::Publication(
            Publication::decode(rest).ok()?,
            String::new(),
        ));
    }
    if let Some(rest) = payload.strip_prefix(b"__j__") {
        return Some(Delivery::Join(ClientInfo::decode(rest).ok()?));
    }
    if let Some(rest) = payload.strip_prefix(b"__l__") {
        return Some(Delivery::Leave(ClientInfo::decode(rest).ok()?));
    }
    None
}

fn prefixed(prefix: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&body);
    out
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn malformed(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected Redis reply to {what}"))
}

/// Parses XRANGE entries `[[id, [field, value]], ...]` into publications.
fn parse_entries(v: &Value) -> Result<Vec<Publication>, BrokerError> {
    let Value::Array(entries) = v else {
        return Err(malformed("history"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(parts) = e else {
            return Err(malformed("history entry"));
        };
        let id = parts
            .first()
            .and_then(as_string)
            .ok_or_else(|| malformed("history id"))?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| malformed("history id"))?;
        let Some(Value::Array(fields)) = parts.get(1) else {
            return Err(malformed("history fields"));
        };
        let data = match fields.get(1) {
            Some(Value::BulkString(b)) => b.as_slice(),
            _ => return Err(malformed("history payload")),
        };
        let mut p = Publication::decode(data).map_err(|_| malformed("history payload"))?;
        p.offset = offset;
        out.push(p);
    }
    Ok(out)
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let ch = self.inner.keys.client_channel(channel);
        self.pubsub(|tx| PubSubRequest::Subscribe(ch, tx)).await
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let ch = self.inner.keys.client_channel(channel);
        self.pubsub(|tx| PubSubRequest::Unsubscribe(ch, tx)).await
    }

    async fn publish(
        &self,
        channel: &ChannelKey,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let keys = &self.inner.keys;
        let payload = publication.encode_to_vec();
        let Some(retention) = options.history else {
            let cmd = redis::cmd(self.publish_command())
                .arg(keys.client_channel(channel))
                .arg(prefixed(b"__p0__", payload))
                .clone();
            self.command::<i64>(&cmd).await?;
            return Ok(None);
        };
        // The result key is always named (a script's keys must share one
        // cluster slot); the script touches it only for an idempotent publish.
        let result_key = keys.result(channel, options.idempotency_key.as_deref().unwrap_or(""));
        let mut invocation = self.inner.scripts.publish.key(keys.stream(channel));
        invocation
            .key(keys.meta(channel))
            .key(result_key)
            .arg(payload)
            .arg(retention.size)
            .arg(retention.ttl.as_secs().max(1))
            .arg(keys.client_channel(channel))
            .arg(retention.meta_ttl.as_secs().max(1))
            .arg(new_epoch())
            .arg(IDEMPOTENCY_TTL_SECS)
            .arg(if options.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(self.publish_command().to_ascii_lowercase());
        let mut c = self.conn();
        let (offset, epoch, _cached): (u64, String, i64) =
            self.call(invocation.invoke_async(&mut c)).await?;
        Ok(Some(StreamPosition { offset, epoch }))
    }

    async fn publish_join(
        &self,
        channel: &ChannelKey,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, b"__j__", &info).await
    }

    async fn publish_leave(
        &self,
        channel: &ChannelKey,
        info: ClientInfo,
    ) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, b"__l__", &info).await
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        query: &HistoryQuery,
        retention: &HistoryRetention,
    ) -> Result<HistoryPage, BrokerError> {
        let keys = &self.inner.keys;
        let limit: i64 = match query.limit {
            None => -1,
            Some(l) => i64::try_from(l).unwrap_or(i64::MAX),
        };
        let mut invocation = self.inner.scripts.history.key(keys.stream(channel));
        invocation
            .key(keys.meta(channel))
            .arg(new_epoch())
            .arg(retention.meta_ttl.as_secs().max(1))
            .arg(query.since.map(|s| s.to_string()).unwrap_or_default())
            .arg(limit)
            .arg(if query.reverse { "1" } else { "0" });
        let mut c = self.conn();
        let v: Value = self.call(invocation.invoke_async(&mut c)).await?;
        let Value::Array(parts) = v else {
            return Err(malformed("history"));
        };
        let top = parts
            .first()
            .and_then(as_u64)
            .ok_or_else(|| malformed("history top"))?;
        let epoch = parts
            .get(1)
            .and_then(as_string)
            .ok_or_else(|| malformed("history epoch"))?;
        let publications = match parts.get(2) {
            Some(v) => parse_entries(v)?,
            None => Vec::new(),
        };
        Ok(HistoryPage {
            publications,
            position: StreamPosition { offset: top, epoch },
        })
    }

    async fn remove_history(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let cmd = redis::cmd("DEL")
            .arg(self.inner.keys.stream(channel))
            .clone();
        self.command::<i64>(&cmd).await.map(|_| ())
    }

    async fn publish_control(&self, message: &ControlMessage) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(message).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let cmd = redis::cmd(self.publish_command())
            .arg(self.inner.keys.control())
            .arg(body)
            .clone();
        self.command::<i64>(&cmd).await.map(|_| ())
    }

    fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst)
    }

    async fn announce_node(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        let body = serde_json::to_string(info).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.node_announce.key(keys.nodes());
        invocation.key(keys.nodes_seen()).arg(&info.uid).arg(body);
        let mut c = self.conn();
        invocation
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.nodes.key(keys.nodes());
        invocation.key(keys.nodes_seen()).arg(NODE_TTL_MS);
        let mut c = self.conn();
        let values: Vec<String> = self.call(invocation.invoke_async(&mut c)).await?;
        let mut nodes: Vec<NodeInfo> = values
            .iter()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }
}

#[async_trait]
impl PresenceManager for RedisBroker {
    async fn add_presence(
        &self,
        channel: &ChannelKey,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let mut invocation = self
            .inner
            .scripts
            .presence_add
            .key(keys.presence_data(channel));
        invocation
            .key(keys.presence_expire(channel))
            .arg(&info.client)
            .arg(info.encode_to_vec())
            .arg(ttl.as_secs().max(1));
        let mut c = self.conn();
        invocation
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }

    async fn remove_presence(&self, channel: &ChannelKey, client: &str) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(keys.presence_data(channel))
            .arg(client)
            .ignore()
            .cmd("ZREM")
            .arg(keys.presence_expire(channel))
            .arg(client)
            .ignore();
        let mut c = self.conn();
        self.call(pipe.query_async::<()>(&mut c)).await
    }

    async fn presence(
        &self,
        channel: &ChannelKey,
    ) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        let keys = &self.inner.keys;
        let mut invocation = self
            .inner
            .scripts
            .presence_get
            .key(keys.presence_data(channel));
        invocation.key(keys.presence_expire(channel));
        let mut c = self.conn();
        let pairs: Vec<(String, Vec<u8>)> = self.call(invocation.invoke_async(&mut c)).await?;
        let mut out = BTreeMap::new();
        for (client, raw) in pairs {
            match ClientInfo::decode(Bytes::from(raw)) {
                Ok(info) => {
                    out.insert(client, info);
                }
                Err(_) => tracing::warn!("malformed presence entry in Redis"),
            }
        }
        Ok(out)
    }
}

/// Builds the broker from configuration values; used by the composition root.
/// `urls` may hold several comma-separated seeds (for a cluster).
pub fn config_from(
    urls: &str,
    cluster: bool,
    sharded: bool,
    prefix: Option<&str>,
    pool_size: usize,
    node_id: &str,
) -> RedisBrokerConfig {
    RedisBrokerConfig {
        urls: urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        cluster,
        sharded: cluster && sharded,
        sentinel_master: None,
        prefix: prefix.unwrap_or("synchub").to_owned(),
        pool_size,
        command_timeout: Duration::from_secs(2),
        node_id: node_id.to_owned(),
    }
}

/// A throwaway Redis Cluster for tests (this crate's and the integration
/// tests'): three masters on free ports, killed and removed on drop.
#[doc(hidden)]
pub mod local_cluster {
    use std::time::Duration;

    /// A three-master Redis Cluster on free ports, torn down on drop.
    pub struct LocalCluster {
        pub seeds: String,
        _servers: Vec<tokio::process::Child>,
        dir: std::path::PathBuf,
    }

    impl LocalCluster {
        /// `None` (after a loud message) when redis-server or redis-cli is
        /// missing; with `required` (tests under CI) that is a panic instead.
        pub async fn start(required: bool) -> Option<LocalCluster> {
            let have = |bin: &str| {
                std::process::Command::new(bin)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if !have("redis-server") || !have("redis-cli") {
                assert!(!required, "redis-server/redis-cli missing and CI is set");
                eprintln!("\n!!! SKIPPED: redis-server or redis-cli not found\n");
                return None;
            }
            let dir = std::env::temp_dir()
                .join(format!("synchub-cluster-{}", uuid::Uuid::new_v4().simple()));
            let mut ports = Vec::new();
            let mut servers = Vec::new();
            for _ in 0..3 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("free port")
                    .port();
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).expect("node dir");
                let child = tokio::process::Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                    ])
                    .args([
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                    ])
                    .arg(&node_dir)
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("redis-server starts");
                servers.push(child);
                ports.push(port);
            }
            for port in &ports {
                let url = format!("redis://127.0.0.1:{port}");
                let mut up = false;
                for _ in 0..100 {
                    if let Ok(c) = redis::Client::open(url.as_str())
                        && c.get_multiplexed_async_connection().await.is_ok()
                    {
                        up = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(up, "cluster node {port} did not start");
            }
            let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let created = tokio::process::Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .await
                .expect("redis-cli runs");
            assert!(
                created.status.success(),
                "cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
            // Wait until every node agrees the cluster is up.
            for port in &ports {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
                let mut ok = false;
                for _ in 0..200 {
                    let mut c = client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("conn");
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    if info.contains("cluster_state:ok") {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(ok, "cluster never became ok");
            }
            Some(LocalCluster {
                seeds: ports
                    .iter()
                    .map(|p| format!("redis://127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(","),
                _servers: servers,
                dir,
            })
        }
    }

    impl Drop for LocalCluster {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_header_round_trips() {
        let p = Publication {
            data: Bytes::from_static(b"{\"a\":1}"),
            ..Default::default()
        };
        let mut msg = b"__p1:42:AbCdEfGh__".to_vec();
        msg.extend(p.encode_to_vec());
        match decode_message(&msg) {
            Some(Delivery::Publication(got, epoch)) => {
                assert_eq!(got.offset, 42);
                assert_eq!(epoch, "AbCdEfGh");
                assert_eq!(got.data, p.data);
            }
            _ => panic!("not decoded"),
        }
        assert!(decode_message(b"garbage").is_none());
        assert!(decode_message(b"__p1:x__").is_none());
    }

    /// Redis on 127.0.0.1:6379: fails under CI when missing, skips loudly otherwise.
    pub(crate) async fn redis_or_skip() -> Option<String> {
        let url = "redis://127.0.0.1:6379".to_owned();
        let ok = match redis::Client::open(url.as_str()) {
            Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            return Some(url);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis is not reachable at {url} and CI is set"
        );
        eprintln!("\n!!! SKIPPED: Redis not reachable at {url}\n");
        None
    }

    async fn fresh(url: &str) -> RedisBroker {
        let prefix = format!("test{}", uuid::Uuid::new_v4().simple());
        let b = RedisBroker::connect(config_from(
            url,
            false,
            false,
            Some(&prefix),
            1,
            "node-test",
        ))
        .await
        .unwrap();
        let runner = b.clone();
        let token = CancellationToken::new();
        tokio::spawn(runner.run(token));
        assert!(b.wait_healthy(Duration::from_secs(5)).await);
        b
    }

    #[tokio::test]
    async fn redis_broker_passes_the_behaviour_suite() {
        let Some(url) = redis_or_skip().await else {
            return;
        };
        let mut brokers = Vec::new();
        for _ in 0..7 {
            brokers.push(fresh(&url).await);
        }
        let brokers = Mutex::new(brokers);
        crate::broker::suite::run_all(|| {
            let b = brokers.lock().unwrap().pop().expect("enough brokers");
            (
                Arc::new(b.clone()) as Arc<dyn Broker>,
                Arc::new(b) as Arc<dyn PresenceManager>,
            )
        })
        .await;
    }

    #[tokio::test]
    async fn redis_cluster_broker_passes_the_behaviour_suite_classic_and_sharded() {
        let Some(cluster) =
            super::local_cluster::LocalCluster::start(std::env::var_os("CI").is_some()).await
        else {
            return;
        };
        for sharded in [false, true] {
            let mut brokers = Vec::new();
            for i in 0..7 {
                let prefix = format!("c{i}{sharded}");
                let node = format!("n{i}{sharded}");
                let b = RedisBroker::connect(config_from(
                    &cluster.seeds,
                    true,
                    sharded,
                    Some(&prefix),
                    1,
                    &node,
                ))
                .await
                .expect("cluster broker connects");
                tokio::spawn(b.clone().run(CancellationToken::new()));
                assert!(
                    b.wait_healthy(Duration::from_secs(5)).await,
                    "sharded: {sharded}"
                );
                brokers.push(b);
            }
            let brokers = Mutex::new(brokers);
            crate::broker::suite::run_all(|| {
                let b = brokers.lock().unwrap().pop().expect("enough brokers");
                (
                    Arc::new(b.clone()) as Arc<dyn Broker>,
                    Arc::new(b) as Arc<dyn PresenceManager>,
                )
            })
            .await;
        }
    }

    #[tokio::test]
    async fn lost_stream_meta_gives_a_new_epoch_in_redis() {
        let Some(url) = redis_or_skip().await else {
            return;
        };
        let b = fresh(&url).await;
        let ch = ChannelKey::new("t", "c");
        let retention = HistoryRetention {
            size: 10,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(60),
        };
        let opts = PublishOptions {
            history: Some(retention),
            idempotency_key: None,
        };
        let first = b
            .publish(&ch, Publication::default(), &opts)
            .await
            .unwrap()
            .unwrap();
        let cmd = redis::cmd("DEL").arg(b.inner.keys.meta(&ch)).clone();
        b.command::<i64>(&cmd).await.unwrap();
        let next = b
            .publish(&ch, Publication::default(), &opts)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(next.epoch, first.epoch);
        assert_eq!(next.offset, 1);
        let page = b
            .history(&ch, &HistoryQuery::default(), &retention)
            .await
            .unwrap();
        assert_eq!(page.publications.len(), 1, "the stale stream was dropped");
    }

    #[tokio::test]
    async fn nodes_announce_and_list() {
        let Some(url) = redis_or_skip().await else {
            return;
        };
        let b = fresh(&url).await;
        let info = NodeInfo {
            uid: "n1".into(),
            name: "one".into(),
            version: "x".into(),
            num_clients: 3,
            num_users: 2,
            num_channels: 1,
            num_subs: 3,
            uptime: 5,
        };
        b.announce_node(&info).await.unwrap();
        assert_eq!(b.nodes().await.unwrap(), vec![info]);
    }
}
