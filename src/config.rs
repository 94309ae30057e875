//! Typed, layered configuration: defaults, then a TOML file, then `SYNCHUB_*`
//! environment variables. Validated once at start; everything else receives
//! the typed struct. This is the only module that reads the environment.
//!
//! Secrets (`Secret`) never appear in logs or in `check-config` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::conflict::ConflictRules;

/// A secret value: printed as `***`, compared in constant time by its users.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of one synchub node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address for WebSocket, API, dashboard and metrics (`SYNCHUB_LISTEN`).
    pub listen: String,
    /// SQLite file and generated secrets live here (`SYNCHUB_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Node name in `/api/info` and metrics (`SYNCHUB_NODE_NAME`; default the hostname).
    pub node_name: String,
    /// `postgres://...` selects PostgreSQL; unset means SQLite in the data dir.
    pub database_url: Option<Secret>,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    /// Tenants and their server API keys (`[tenants.<name>] api_key = "..."`).
    pub tenants: BTreeMap<String, TenantConfig>,
    pub client: ClientConfig,
    pub channels: ChannelsConfig,
    /// How long a graceful shutdown may take before remaining work is abandoned.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Key that encrypts Zoho tokens at rest (`SYNCHUB_ENCRYPTION_KEY`; generated).
    pub encryption_key: Option<Secret>,
    pub zoho: ZohoConfig,
    pub records: RecordsConfig,
    /// Conflict rules per entity (`[conflicts.<entity>]`; see
    /// [`ConflictRules`] for the shape). An entity without a table merges
    /// one-sided changes and sends true conflicts to review.
    pub conflicts: ConflictRules,
    /// What crosses between local entities and Zoho modules.
    pub sync: SyncConfig,
}

/// `[sync]`: field mapping, transformations and filters per entity
/// (`[sync.entities.<entity>]`; see [`crate::domain::mapping`] for the
/// shape). Validated at start; the sync workers apply it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    pub entities: crate::domain::mapping::EntitiesConfig,
    /// Run sync workers in this process (`synchub worker` runs them alone).
    pub workers: bool,
    /// Records per push batch (Zoho takes at most 100 per call).
    pub push_batch: usize,
    /// After an idle push worker wakes, it waits this long so a burst of
    /// changes goes out in full batches (fewer API calls, a little latency).
    #[serde(with = "humantime_serde")]
    pub push_linger: Duration,
    /// How long a claimed job is leased; renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle worker looks for jobs another node queued.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Counted failures (server errors, timeouts) before a job is dead-lettered.
    pub max_attempts: i64,
    /// First retry delay; doubles per attempt up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The scheduled incremental sync of `realtime` entities (one node runs it).
    #[serde(with = "humantime_serde")]
    pub incremental_interval: Duration,
    /// Sessions one node runs at once.
    pub session_concurrency: usize,
    /// Public URL of `POST /v1/webhooks/zoho`; set it to receive Zoho
    /// notifications (Watch API). The channel is renewed before it expires.
    pub webhook_url: Option<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            entities: Default::default(),
            workers: true,
            push_batch: 100,
            push_linger: Duration::from_millis(100),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            max_attempts: 8,
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            incremental_interval: Duration::from_secs(300),
            session_concurrency: 2,
            webhook_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://...` selects the Redis broker (scale-out); unset means in-memory.
    pub url: Option<Secret>,
    /// Key prefix, so several deployments can share one Redis (default `synchub`).
    pub prefix: Option<String>,
    /// Multiplexed command connections per node (single Redis).
    pub pool_size: usize,
    /// `url` names the seed nodes (comma separated) of a Redis Cluster.
    pub cluster: bool,
    /// With `cluster`: sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    pub sharded: bool,
    /// Redis Sentinel: `url` lists the sentinels; this names the master.
    pub sentinel_master: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: None,
            pool_size: 2,
            cluster: false,
            sharded: false,
            sentinel_master: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256/384/512 secret for connection and subscription JWTs (generated when unset).
    pub token_hmac_secret: Option<Secret>,
    /// PEM file with an RSA or EC public key for RS256/ES256 tokens.
    pub token_public_key: Option<PathBuf>,
    /// Accept connections without a token (user "" in tenant `default`).
    pub anonymous: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Server API key of tenant `default` (`SYNCHUB_API_KEY`; generated when unset).
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub api_key: Secret,
}

/// Per-connection limits and timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Server ping interval; sent to clients as `ping` in the connect reply.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client must answer a ping within this time, or it is closed with 3012.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// A connection that has not sent `connect` within this time is closed with 3502.
    #[serde(with = "humantime_serde")]
    pub stale_close_delay: Duration,
    /// Grace after a token's expiry before the connection is closed with 3005
    /// (or a subscription is ended with 2501).
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Largest inbound WebSocket message in bytes; larger ones close the connection with 1009.
    pub max_message_size: usize,
    /// Outgoing queue bound per connection, in bytes; overflow closes with 3008 (slow).
    pub queue_max_bytes: usize,
    /// Largest frame the writer builds when it batches queued messages.
    pub max_frame_bytes: usize,
    /// A frame write that takes longer than this closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Channels one connection may hold (106 above).
    pub max_channels: usize,
    /// Longest channel name (107 above).
    pub channel_max_length: usize,
    /// Commands per second one connection may send before getting 111.
    pub command_rate: u32,
    /// Burst allowance above `command_rate`.
    pub command_burst: u32,
    /// Most publications a `history` call returns.
    pub history_max_publications: usize,
    /// Most publications a recovery returns; beyond that the client gets `recovered: false`.
    pub recovery_max_publications: usize,
    /// How often a session refreshes its presence entries.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// Presence entries not refreshed for this long disappear (a crashed node's clients).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            stale_close_delay: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            max_message_size: 65_536,
            queue_max_bytes: 1 << 20,
            max_frame_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(1),
            max_channels: 128,
            channel_max_length: 255,
            command_rate: 100,
            command_burst: 200,
            history_max_publications: 1000,
            recovery_max_publications: 1000,
            presence_update_interval: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
        }
    }
}

/// Channel namespaces: options for `ns:rest` channels and for channels without a namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    pub without_namespace: NamespaceOptions,
    /// A namespace defined in the file replaces the built-in one of the same name.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        let ns = |presence: bool, size: usize, ttl: u64, publish: bool| NamespaceOptions {
            presence,
            join_leave: presence,
            history_size: size,
            history_ttl: Duration::from_secs(ttl),
            allow_publish: publish,
            ..NamespaceOptions::default()
        };
        let mut namespaces = BTreeMap::new();
        namespaces.insert("record".to_owned(), ns(true, 100, 3600, false));
        namespaces.insert("changes".to_owned(), ns(false, 1000, 24 * 3600, false));
        namespaces.insert("sync".to_owned(), ns(false, 100, 3600, false));
        namespaces.insert("conflicts".to_owned(), ns(false, 100, 24 * 3600, false));
        Self {
            without_namespace: ns(true, 100, 600, true),
            namespaces,
        }
    }
}

/// What one namespace allows and keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Keep presence for subscribers.
    pub presence: bool,
    /// Publish join/leave events (pushed to subscribers that ask with `join_leave`).
    pub join_leave: bool,
    /// Push join/leave to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    /// Publications kept per channel (0 turns history off).
    pub history_size: usize,
    /// How long a channel's history lives after its last publication (0 turns history off).
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long the stream position (offset and epoch) outlives the last publication.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Offer positioning and recovery when history is on.
    pub recovery: bool,
    /// Subscribers may publish from the client.
    pub allow_publish: bool,
    /// Subscribers may ask for presence and presence stats.
    pub allow_presence: bool,
    /// Subscribers may read history.
    pub allow_history: bool,
    /// `name#42,43` channels are limited to the listed users.
    pub allow_user_limited_channels: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            recovery: true,
            allow_publish: false,
            allow_presence: true,
            allow_history: true,
            allow_user_limited_channels: true,
        }
    }
}

impl NamespaceOptions {
    /// History is on only when both size and ttl are set.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// Subscriptions are positioned and recoverable.
    pub fn recoverable(&self) -> bool {
        self.recovery && self.history_enabled()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZohoConfig {
    /// Zoho token endpoint base (real Zoho or the emulator); unset turns sync off.
    pub accounts_url: Option<String>,
    /// Zoho API base.
    pub api_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// The tenant whose records sync with this Zoho org.
    pub tenant: String,
    /// Client-side request rate.
    pub requests_per_second: u32,
    /// Requests in flight at once (keep below the edition's concurrency).
    pub max_concurrency: usize,
    /// API credits the hub may spend per 24 hours (unset: the edition's).
    pub daily_credits: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per call for 5xx and timeouts (idempotent calls only).
    pub max_attempts: u32,
    /// How long one call may wait out 429s before the job is retried later.
    #[serde(with = "humantime_serde")]
    pub throttle_budget: Duration,
}

impl Default for ZohoConfig {
    fn default() -> Self {
        Self {
            accounts_url: None,
            api_url: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
            tenant: DEFAULT_TENANT.to_owned(),
            requests_per_second: 10,
            max_concurrency: 10,
            daily_credits: None,
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            throttle_budget: Duration::from_secs(60),
        }
    }
}

/// Records and edit locks (`[records]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordsConfig {
    /// Entity names clients may address (`record:<entity>:<id>`, `/v1/records/<entity>`).
    pub entities: Vec<String>,
    /// Lock lease when `lock.acquire` names no `ttl_ms`.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Shortest and longest lease a client may ask for.
    #[serde(with = "humantime_serde")]
    pub lock_min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_max_ttl: Duration,
    /// A lock whose holder has no connection left is released after this long.
    #[serde(with = "humantime_serde")]
    pub lock_grace_period: Duration,
    /// How often expired leases and abandoned locks are looked for.
    #[serde(with = "humantime_serde")]
    pub lease_scan_interval: Duration,
    /// How often this node reports itself (and its connected users) live.
    #[serde(with = "humantime_serde")]
    pub node_heartbeat: Duration,
    /// A node silent for this long no longer vouches for its users.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How often the outbox relay looks for events it was not woken for.
    #[serde(with = "humantime_serde")]
    pub outbox_poll: Duration,
    /// Longest record id.
    pub max_id_length: usize,
    /// Largest `fields` object, serialised, in bytes.
    pub max_fields_bytes: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        Self {
            entities: ["deals", "contacts", "accounts", "leads"]
                .map(str::to_owned)
                .to_vec(),
            lock_ttl: Duration::from_secs(120),
            lock_min_ttl: Duration::from_secs(1),
            lock_max_ttl: Duration::from_secs(3600),
            lock_grace_period: Duration::from_secs(30),
            lease_scan_interval: Duration::from_millis(250),
            node_heartbeat: Duration::from_secs(5),
            node_ttl: Duration::from_secs(20),
            outbox_poll: Duration::from_millis(500),
            max_id_length: 128,
            max_fields_bytes: 256 * 1024,
        }
    }
}

/// Entity names: part of channel names and URLs.
pub fn valid_entity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The tenant of tokens without a `tenant` claim and of `SYNCHUB_API_KEY`.
pub const DEFAULT_TENANT: &str = "default";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".to_owned(),
            data_dir: PathBuf::from("./data"),
            node_name: default_node_name(),
            database_url: None,
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            tenants: BTreeMap::new(),
            client: ClientConfig::default(),
            channels: ChannelsConfig::default(),
            shutdown_timeout: Duration::from_secs(10),
            encryption_key: None,
            zoho: ZohoConfig::default(),
            records: RecordsConfig::default(),
            conflicts: ConflictRules::default(),
            sync: SyncConfig::default(),
        }
    }
}

fn default_node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "synchub".to_owned())
}

/// Tenant names: they become part of broker keys, so they are kept simple.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Config {
    /// Loads the configuration from the process: `--config` file (or
    /// `SYNCHUB_CONFIG`), then `SYNCHUB_*` variables. Validates it.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SYNCHUB_"))
            .collect();
        Self::load_from(file, &env)
    }

    /// Same as [`Config::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("SYNCHUB_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = get("SYNCHUB_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("SYNCHUB_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("SYNCHUB_NODE_NAME") {
            self.node_name = v;
        }
        if let Some(v) = get("SYNCHUB_DATABASE_URL") {
            self.database_url = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_REDIS_URL") {
            self.redis.url = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_REDIS_PREFIX") {
            self.redis.prefix = Some(v);
        }
        if let Some(v) = get("SYNCHUB_REDIS_CLUSTER") {
            self.redis.cluster = parse_bool("SYNCHUB_REDIS_CLUSTER", &v)?;
        }
        if let Some(v) = get("SYNCHUB_REDIS_SENTINEL_MASTER") {
            self.redis.sentinel_master = Some(v);
        }
        if let Some(v) = get("SYNCHUB_REDIS_SHARDED") {
            self.redis.sharded = parse_bool("SYNCHUB_REDIS_SHARDED", &v)?;
        }
        if let Some(v) = get("SYNCHUB_REDIS_POOL_SIZE") {
            self.redis.pool_size = v.parse().map_err(|_| ConfigError::Env {
                name: "SYNCHUB_REDIS_POOL_SIZE".into(),
                message: format!("`{v}` is not a number"),
            })?;
        }
        if let Some(v) = get("SYNCHUB_PRESENCE_TTL") {
            self.client.presence_ttl =
                humantime::parse_duration(&v).map_err(|e| ConfigError::Env {
                    name: "SYNCHUB_PRESENCE_TTL".into(),
                    message: e.to_string(),
                })?;
            if self.client.presence_update_interval >= self.client.presence_ttl {
                self.client.presence_update_interval = self.client.presence_ttl / 3;
            }
        }
        if let Some(v) = get("SYNCHUB_TOKEN_HMAC_SECRET") {
            self.auth.token_hmac_secret = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_TOKEN_PUBLIC_KEY") {
            self.auth.token_public_key = Some(PathBuf::from(v));
        }
        if let Some(v) = get("SYNCHUB_API_KEY") {
            self.api.key = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_ENCRYPTION_KEY") {
            self.encryption_key = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_ZOHO_ACCOUNTS_URL") {
            self.zoho.accounts_url = Some(v);
        }
        if let Some(v) = get("SYNCHUB_ZOHO_API_URL") {
            self.zoho.api_url = Some(v);
        }
        if let Some(v) = get("SYNCHUB_ZOHO_CLIENT_ID") {
            self.zoho.client_id = Some(v);
        }
        if let Some(v) = get("SYNCHUB_ZOHO_CLIENT_SECRET") {
            self.zoho.client_secret = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_ZOHO_REFRESH_TOKEN") {
            self.zoho.refresh_token = Some(Secret::new(v));
        }
        if let Some(v) = get("SYNCHUB_ZOHO_TENANT") {
            self.zoho.tenant = v;
        }
        if let Some(v) = get("SYNCHUB_SYNC_WORKERS") {
            self.sync.workers = parse_bool("SYNCHUB_SYNC_WORKERS", &v)?;
        }
        if let Some(v) = get("SYNCHUB_SYNC_WEBHOOK_URL") {
            self.sync.webhook_url = Some(v);
        }
        if let Some(v) = get("SYNCHUB_SYNC_LEASE") {
            self.sync.lease = parse_duration("SYNCHUB_SYNC_LEASE", &v)?;
        }
        if let Some(v) = get("SYNCHUB_SYNC_INCREMENTAL_INTERVAL") {
            self.sync.incremental_interval =
                parse_duration("SYNCHUB_SYNC_INCREMENTAL_INTERVAL", &v)?;
        }
        if let Some(v) = get("SYNCHUB_ANONYMOUS") {
            self.auth.anonymous = parse_bool("SYNCHUB_ANONYMOUS", &v)?;
        }
        Ok(())
    }

    /// Checks everything that can be checked without I/O beyond reading the key file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "listen: `{}` is not an address like 127.0.0.1:8000",
                self.listen
            ));
        }
        if self.node_name.trim().is_empty() {
            return bad("node_name must not be empty".into());
        }
        let c = &self.client;
        if c.ping_interval.is_zero()
            || c.pong_timeout.is_zero()
            || c.pong_timeout >= c.ping_interval
        {
            return bad(
                "client.pong_timeout must be positive and below client.ping_interval".into(),
            );
        }
        if c.max_message_size < 1024 {
            return bad("client.max_message_size must be at least 1024 bytes".into());
        }
        if c.queue_max_bytes < c.max_message_size.min(64 * 1024) {
            return bad("client.queue_max_bytes is too small to hold one message".into());
        }
        if c.max_frame_bytes == 0 || c.max_channels == 0 || c.channel_max_length == 0 {
            return bad(
                "client.max_frame_bytes, max_channels and channel_max_length must be positive"
                    .into(),
            );
        }
        if let Some(urls) = &self.redis.url {
            let urls: Vec<&str> = urls.expose().split(',').map(str::trim).collect();
            for u in &urls {
                if !(u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://"))
                {
                    return bad(
                        "each redis url must start with redis://, rediss:// or redis+unix://"
                            .into(),
                    );
                }
            }
            if self.redis.sentinel_master.is_some() && self.redis.cluster {
                return bad("redis.sentinel_master and redis.cluster exclude each other".into());
            }
            if self.redis.sentinel_master.as_deref() == Some("") {
                return bad("redis.sentinel_master must name the monitored master".into());
            }
            if self.redis.sharded && !self.redis.cluster {
                return bad("redis.sharded needs redis.cluster".into());
            }
            if urls.len() > 1 && !self.redis.cluster && self.redis.sentinel_master.is_none() {
                return bad(
                    "several redis urls are the seeds of a cluster: set redis.cluster = true"
                        .into(),
                );
            }
        }
        if self.redis.pool_size == 0 || self.redis.pool_size > 64 {
            return bad("redis.pool_size must be between 1 and 64".into());
        }
        if let Some(prefix) = &self.redis.prefix
            && (prefix.is_empty() || prefix.contains(char::is_whitespace))
        {
            return bad("redis.prefix must be non-empty without spaces".into());
        }
        if c.presence_ttl < Duration::from_secs(10) || c.presence_update_interval >= c.presence_ttl
        {
            return bad("client.presence_ttl must be at least 10s and above client.presence_update_interval".into());
        }
        if c.command_rate == 0 || c.command_burst == 0 {
            return bad("client.command_rate and command_burst must be positive".into());
        }
        for (name, ns) in &self.channels.namespaces {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(format!(
                    "namespace name `{name}` may only hold letters, digits, `_` and `-`"
                ));
            }
            validate_namespace(name, ns)?;
        }
        validate_namespace("(without namespace)", &self.channels.without_namespace)?;
        let mut keys = HashMap::new();
        if let Some(key) = &self.api.key {
            keys.insert(key.expose().to_owned(), DEFAULT_TENANT.to_owned());
        }
        for (tenant, t) in &self.tenants {
            if !valid_tenant_name(tenant) {
                return bad(format!(
                    "tenant name `{tenant}` may only hold letters, digits, `_` and `-` (at most 64)"
                ));
            }
            if t.api_key.expose().len() < 16 {
                return bad(format!(
                    "tenants.{tenant}.api_key must be at least 16 characters"
                ));
            }
            if let Some(other) = keys.insert(t.api_key.expose().to_owned(), tenant.clone())
                && &other != tenant
            {
                return bad(format!(
                    "tenants `{other}` and `{tenant}` share one api_key"
                ));
            }
        }
        if !valid_tenant_name(&self.zoho.tenant) {
            return bad(format!(
                "zoho tenant `{}` is not a valid tenant name",
                self.zoho.tenant
            ));
        }
        let r = &self.records;
        if r.entities.is_empty() {
            return bad("records.entities must name at least one entity".into());
        }
        for e in &r.entities {
            if !valid_entity_name(e) {
                return bad(format!(
                    "records.entities: `{e}` may only hold lowercase letters, digits, `_` and `-` (at most 64)"
                ));
            }
        }
        if r.lock_min_ttl.is_zero() || r.lock_min_ttl > r.lock_ttl || r.lock_ttl > r.lock_max_ttl {
            return bad("records: need 0 < lock_min_ttl <= lock_ttl <= lock_max_ttl".into());
        }
        if r.lease_scan_interval.is_zero() || r.lease_scan_interval > Duration::from_secs(1) {
            return bad("records.lease_scan_interval must be between 1ms and 1s (expiry is published within a second)".into());
        }
        if r.node_heartbeat.is_zero() || r.node_ttl < r.node_heartbeat * 2 {
            return bad("records.node_ttl must be at least twice records.node_heartbeat".into());
        }
        if r.outbox_poll.is_zero() || r.max_id_length == 0 || r.max_fields_bytes < 1024 {
            return bad("records.outbox_poll and max_id_length must be positive, max_fields_bytes at least 1024".into());
        }
        self.conflicts
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(entity) = self
            .conflicts
            .entities
            .keys()
            .find(|e| !r.entities.contains(e))
        {
            return bad(format!(
                "conflicts.{entity}: not one of records.entities, so its rules could never apply"
            ));
        }
        self.sync
            .entities
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(entity) = self
            .sync
            .entities
            .0
            .keys()
            .find(|e| !r.entities.contains(e))
        {
            return bad(format!(
                "sync.entities.{entity}: not one of records.entities, so nothing could sync"
            ));
        }
        let sync = &self.sync;
        if !(1..=100).contains(&sync.push_batch) {
            return bad("sync.push_batch must be 1 to 100 (Zoho's limit per write)".into());
        }
        if sync.lease < Duration::from_secs(1) || sync.poll_interval.is_zero() {
            return bad("sync.lease must be at least 1s and sync.poll_interval positive".into());
        }
        if sync.max_attempts < 1 || sync.session_concurrency < 1 {
            return bad("sync.max_attempts and sync.session_concurrency must be at least 1".into());
        }
        if sync.incremental_interval < Duration::from_secs(1) {
            return bad("sync.incremental_interval must be at least 1s".into());
        }
        if let Some(url) = &sync.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return bad(format!("sync.webhook_url: `{url}` is not an http(s) URL"));
        }
        if self.zoho.requests_per_second == 0 || self.zoho.max_concurrency == 0 {
            return bad(
                "zoho.requests_per_second and zoho.max_concurrency must be positive".into(),
            );
        }
        if let Some(path) = &self.auth.token_public_key {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::Invalid(format!("auth.token_public_key {}: {e}", path.display()))
            })?;
            crate::auth::PublicKey::from_pem(&pem).map_err(|e| {
                ConfigError::Invalid(format!("auth.token_public_key {}: {e}", path.display()))
            })?;
        }
        if let Some(secret) = &self.auth.token_hmac_secret
            && secret.expose().len() < 16
        {
            return bad("the token HMAC secret must be at least 16 characters".into());
        }
        Ok(())
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        // validate() guarantees this parses.
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8000)))
    }

    /// Renders the effective configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn validate_namespace(name: &str, ns: &NamespaceOptions) -> Result<(), ConfigError> {
    if (ns.history_size > 0) == ns.history_ttl.is_zero() {
        return Err(ConfigError::Invalid(format!(
            "namespace {name}: history_size and history_ttl must both be set or both be zero"
        )));
    }
    if ns.join_leave && !ns.presence {
        return Err(ConfigError::Invalid(format!(
            "namespace {name}: join_leave needs presence"
        )));
    }
    if ns.history_enabled() && ns.history_meta_ttl < ns.history_ttl {
        return Err(ConfigError::Invalid(format!(
            "namespace {name}: history_meta_ttl must not be shorter than history_ttl"
        )));
    }
    Ok(())
}

fn parse_duration(name: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| ConfigError::Env {
        name: name.into(),
        message: e.to_string(),
    })
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Env {
            name: name.to_owned(),
            message: format!("`{value}` is not a boolean"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_have_the_design_namespaces() {
        let c = Config::load_from(None, &env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8000");
        let record = &c.channels.namespaces["record"];
        assert!(record.presence && record.join_leave && !record.allow_publish);
        assert_eq!(record.history_size, 100);
        assert_eq!(record.history_ttl, Duration::from_secs(3600));
        let changes = &c.channels.namespaces["changes"];
        assert!(!changes.presence);
        assert_eq!(changes.history_size, 1000);
        assert!(c.channels.without_namespace.allow_publish);
        assert_eq!(
            c.channels.without_namespace.history_ttl,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("synchub-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[client]\nmax_channels = 7\n[tenants.acme]\napi_key = \"acme-key-0123456789\"\n",
        )
        .unwrap();
        let c =
            Config::load_from(Some(&path), &env(&[("SYNCHUB_LISTEN", "127.0.0.1:9100")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9100");
        assert_eq!(c.client.max_channels, 7);
        assert_eq!(c.tenants["acme"].api_key.expose(), "acme-key-0123456789");
    }

    fn from_file(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("synchub-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_from(Some(&path), &env(&[]))
    }

    #[test]
    fn conflict_rules_are_read_per_entity_from_the_file() {
        let c = from_file(
            "[conflicts.deals]\nstrategy = \"last_write_wins\"\nfallback = \"remote_wins\"\ncritical_fields = [\"Amount\"]\n[conflicts.deals.fields]\nNotes = \"merge_text\"\n",
        )
        .unwrap();
        let deals = c.conflicts.for_entity("deals");
        assert_eq!(
            deals.strategy_for("Stage"),
            crate::domain::conflict::Strategy::LastWriteWins
        );
        assert_eq!(
            deals.strategy_for("Notes"),
            crate::domain::conflict::Strategy::MergeText
        );
        assert!(deals.is_critical("Amount"));
    }

    #[test]
    fn conflict_rules_that_cannot_mean_anything_are_refused_at_start() {
        let bad_fallback = from_file("[conflicts.deals]\nfallback = \"merge\"\n");
        assert!(matches!(bad_fallback, Err(ConfigError::Invalid(m)) if m.contains("fallback")));
        let unknown_strategy = from_file("[conflicts.deals]\nstrategy = \"coin_flip\"\n");
        assert!(matches!(unknown_strategy, Err(ConfigError::Parse { .. })));
        let unknown_entity = from_file("[conflicts.widgets]\nstrategy = \"manual\"\n");
        assert!(
            matches!(unknown_entity, Err(ConfigError::Invalid(m)) if m.contains("conflicts.widgets"))
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("synchub-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "lsten = \"x\"\n").unwrap();
        assert!(matches!(
            Config::load_from(Some(&path), &env(&[])),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn sync_mappings_are_read_and_validated_at_start() {
        let dir = std::env::temp_dir().join(format!("synchub-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[sync.entities.deals]\nschedule = \"hourly\"\n[[sync.entities.deals.fields]]\nlocal = \"status\"\nzoho = \"Stage\"\nvalues = { open = \"Qualification\", won = \"Closed Won\" }\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&good), &env(&[])).unwrap();
        let mappings = c.sync.entities.validate().unwrap();
        assert_eq!(
            mappings.entity("deals").unwrap().zoho_name_of("status"),
            Some("Stage")
        );
        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "[[sync.entities.deals.filters]]\nconditions = [{ field = \"x\", op = \"roughly\", value = 1 }]\n",
        )
        .unwrap();
        assert!(Config::load_from(Some(&bad), &env(&[])).is_err());
        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "[sync.entities.widgets]\nmodule = \"Widgets\"\n").unwrap();
        assert!(Config::load_from(Some(&unknown), &env(&[])).is_err());
    }

    #[test]
    fn pong_timeout_must_be_below_ping_interval() {
        let mut c = Config::default();
        c.client.pong_timeout = c.client.ping_interval;
        assert!(c.validate().is_err());
    }

    #[test]
    fn history_size_without_ttl_is_refused() {
        let mut c = Config::default();
        c.channels.namespaces.insert(
            "x".into(),
            NamespaceOptions {
                history_size: 5,
                ..NamespaceOptions::default()
            },
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn bad_listen_and_bad_bool_are_refused() {
        assert!(Config::load_from(None, &env(&[("SYNCHUB_LISTEN", "nowhere")])).is_err());
        assert!(Config::load_from(None, &env(&[("SYNCHUB_ANONYMOUS", "maybe")])).is_err());
    }

    #[test]
    fn secrets_are_masked_in_rendered_config() {
        let c =
            Config::load_from(None, &env(&[("SYNCHUB_API_KEY", "super-secret-api-key")])).unwrap();
        let text = c.to_toml();
        assert!(!text.contains("super-secret-api-key"));
        assert!(text.contains("***"));
        assert!(!format!("{c:?}").contains("super-secret-api-key"));
    }

    #[test]
    fn record_entities_default_to_the_crm_modules_and_are_validated() {
        let c = Config::default();
        assert_eq!(
            c.records.entities,
            ["deals", "contacts", "accounts", "leads"]
        );
        let mut bad = Config::default();
        bad.records.entities = vec!["Deals:x".into()];
        assert!(bad.validate().is_err());
        let mut bad = Config::default();
        bad.records.entities.clear();
        assert!(bad.validate().is_err());
        let mut bad = Config::default();
        bad.records.lock_min_ttl = Duration::from_secs(600);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn two_tenants_cannot_share_an_api_key() {
        let mut c = Config::default();
        for t in ["a", "b"] {
            c.tenants.insert(
                t.into(),
                TenantConfig {
                    api_key: Secret::new("same-key-0123456789"),
                },
            );
        }
        assert!(c.validate().is_err());
    }
}
