//! The composition root: the only place that picks concrete backends and
//! wires the node together. `Application::build` binds the listener (port 0
//! works, for tests); `run_until_stopped` serves until the stop signal, then
//! drains.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::api::{self, App, AppState};
use crate::auth::{PublicKey, TokenVerifier};
use crate::broker::{Broker, MemoryBroker, PresenceManager, RedisBroker};
use crate::channel::ChannelRules;
use crate::config::{Config, DEFAULT_TENANT, Secret};
use crate::gateway::GatewayContext;
use crate::hub::{Hub, NodeIdentity};
use crate::protocol::Disconnect;
use crate::records::{Liveness, RecordService};
use crate::rpc::{self, RpcRegistry};
use crate::shutdown::Shutdown;

/// Secrets generated on first start, kept in the data directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GeneratedSecrets {
    token_hmac_secret: Option<String>,
    api_key: Option<String>,
    encryption_key: Option<String>,
}

const SECRETS_FILE: &str = "secrets.toml";

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Fills unset secrets from `<data_dir>/secrets.toml`, generating and saving
/// them the first time. Returns the names of secrets generated now.
pub fn resolve_secrets(config: &mut Config) -> anyhow::Result<Vec<&'static str>> {
    let path = config.data_dir.join(SECRETS_FILE);
    let mut stored: GeneratedSecrets = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => GeneratedSecrets::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut generated = Vec::new();
    let mut fill = |slot: &mut Option<Secret>, stored: &mut Option<String>, name: &'static str| {
        if slot.is_some() {
            return;
        }
        let value = stored.get_or_insert_with(|| {
            generated.push(name);
            random_secret()
        });
        *slot = Some(Secret::new(value.clone()));
    };
    if config.auth.token_public_key.is_none() {
        fill(
            &mut config.auth.token_hmac_secret,
            &mut stored.token_hmac_secret,
            "token HMAC secret",
        );
    }
    fill(&mut config.api.key, &mut stored.api_key, "API key");
    fill(
        &mut config.encryption_key,
        &mut stored.encryption_key,
        "encryption key",
    );
    if !generated.is_empty() {
        write_private(&path, &toml::to_string(&stored)?)?;
    }
    Ok(generated)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    /// Secrets generated at this start (their names), for the first-run message.
    pub generated_secrets: Vec<&'static str>,
    pub secrets_file: PathBuf,
}

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let generated_secrets = resolve_secrets(&mut config)?;
        let config = Arc::new(config);
        let shutdown = Shutdown::new();
        let metrics = crate::metrics::install();

        let hub = build_hub(&config, &shutdown).await?;

        let public_key = match &config.auth.token_public_key {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(
                    PublicKey::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let verifier = TokenVerifier::new(
            config.auth.token_hmac_secret.as_ref().map(Secret::expose),
            public_key,
        );

        let store = crate::store::open(&config).await?;
        tracing::info!(backend = store.backend(), "store ready");
        let records = RecordService::new(
            store.clone(),
            config.records.clone(),
            config.conflicts.clone(),
        );
        let liveness = Liveness::new(&hub.node.id, &hub.node.name);

        let mut registry = RpcRegistry::new();
        rpc::register_builtin(&mut registry);
        crate::records::rpc::register(&mut registry, &records);

        let gateway = Arc::new(GatewayContext {
            hub: hub.clone(),
            verifier,
            rules: ChannelRules::new(&config.channels, config.client.channel_max_length),
            rpc: Arc::new(registry),
            limits: config.client.clone(),
            anonymous: config.auth.anonymous,
            presence_ttl: config.client.presence_ttl,
            shutdown: shutdown.clone(),
            observers: vec![liveness.clone()],
        });
        crate::records::tasks::spawn(
            &shutdown,
            &records,
            hub.clone(),
            gateway.rules.clone(),
            liveness,
        );

        let sync = build_sync(&config, store, hub.clone(), gateway.rules.clone())?;
        if config.sync.workers {
            crate::sync::worker::spawn(&shutdown, &sync);
        } else {
            shutdown.spawn("sync-events", sync.clone().publish_events());
        }

        let mut api_keys = HashMap::new();
        if let Some(key) = &config.api.key {
            api_keys.insert(key.expose().to_owned(), DEFAULT_TENANT.to_owned());
        }
        for (tenant, t) in &config.tenants {
            api_keys.insert(t.api_key.expose().to_owned(), tenant.clone());
        }

        let listener = TcpListener::bind(config.listen_addr())
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let secrets_file = config.data_dir.join(SECRETS_FILE);
        let state = AppState(Arc::new(App {
            config,
            hub,
            gateway,
            api_keys,
            api_transport_errors: false,
            metrics,
            shutdown,
            records,
            sync,
        }));
        Ok(Self {
            listener,
            addr,
            state,
            generated_secrets,
            secrets_file,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `stop` resolves, then drains: stop accepting, close every
    /// session with 3001 (reconnect advised), wait for tasks up to the
    /// shutdown timeout.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let shutdown = state.shutdown.clone();
        let router = api::router(state.clone());
        let token = shutdown.token().clone();
        let serve = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await });
        let serving = shutdown.spawn_joinable("http-server", async move { serve.await });
        tracing::info!(addr = %self.addr, node = %state.hub.node.name, "synchub serving");
        stop.await;
        tracing::info!("shutting down: closing sessions");
        shutdown.trigger();
        state.hub.disconnect_all(&Disconnect::shutdown());
        let timeout = state.config.shutdown_timeout;
        if !shutdown.wait(timeout).await {
            tracing::warn!(
                remaining = shutdown.running(),
                "shutdown deadline passed with tasks still running"
            );
        }
        match tokio::time::timeout(timeout, serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e).context("serving HTTP"),
            Ok(Err(e)) => return Err(e).context("HTTP server task"),
            Err(_) => tracing::warn!("HTTP server did not stop within the deadline"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The Zoho sync of this process: each tenant's connection (the stored one,
/// else `[zoho]` for its tenant) and the sync service.
pub fn build_sync(
    config: &Config,
    store: crate::store::SharedStore,
    hub: Arc<crate::hub::Hub>,
    rules: ChannelRules,
) -> anyhow::Result<Arc<crate::sync::SyncService>> {
    use crate::sync::connection::{ClientTuning, Connection, Connections};
    crate::sync::analytics::describe();
    let z = &config.zoho;
    let configured = match (
        &z.accounts_url,
        &z.api_url,
        &z.client_id,
        &z.client_secret,
        &z.refresh_token,
    ) {
        (Some(accounts), Some(api), Some(id), Some(secret), Some(refresh)) => Some((
            z.tenant.clone(),
            Connection {
                client_id: id.clone(),
                client_secret: secret.expose().to_owned(),
                refresh_token: refresh.expose().to_owned(),
                data_centre: None,
                accounts_url: accounts.trim_end_matches('/').to_owned(),
                api_url: api.trim_end_matches('/').to_owned(),
                source: "config".into(),
                updated_at: crate::store::now_rfc3339(),
            },
        )),
        _ => None,
    };
    let tuning = ClientTuning {
        requests_per_second: z.requests_per_second,
        max_concurrency: z.max_concurrency,
        daily_credits: z.daily_credits,
        request_timeout: z.request_timeout,
        max_attempts: z.max_attempts,
        backoff_initial: std::time::Duration::from_millis(500),
        throttle_budget: z.throttle_budget,
    };
    let connections = Connections::new(
        store.clone(),
        config.encryption_key.as_ref().map(Secret::expose),
        tuning,
        configured,
    );
    crate::sync::SyncService::new(config, store, hub, rules, connections)
}

/// The node's hub over the configured broker (Redis, else in memory), with
/// its background tasks under `shutdown`.
pub async fn build_hub(config: &Config, shutdown: &Shutdown) -> anyhow::Result<Arc<Hub>> {
    let node = NodeIdentity {
        id: uuid::Uuid::new_v4().to_string(),
        name: config.node_name.clone(),
        started: Instant::now(),
    };
    let (broker, presence, redis): (
        Arc<dyn Broker>,
        Arc<dyn PresenceManager>,
        Option<RedisBroker>,
    ) = match &config.redis.url {
        Some(url) => {
            let mut redis_config = crate::broker::redis::config_from(
                url.expose(),
                config.redis.cluster,
                config.redis.sharded,
                config.redis.prefix.as_deref(),
                config.redis.pool_size,
                &node.id,
            );
            redis_config.sentinel_master = config.redis.sentinel_master.clone();
            let redis = RedisBroker::connect(redis_config)
                .await
                .context("connecting to Redis (SYNCHUB_REDIS_URL)")?;
            (
                Arc::new(redis.clone()),
                Arc::new(redis.clone()),
                Some(redis),
            )
        }
        None => {
            let memory = Arc::new(MemoryBroker::new());
            (memory.clone(), memory, None)
        }
    };
    let hub = Hub::new(node, broker, presence);
    if let Some(redis) = redis {
        // The hub is registered as the handler before the first subscription.
        shutdown.spawn("redis-pubsub", redis.clone().run(shutdown.token().clone()));
        if !redis.wait_healthy(std::time::Duration::from_secs(5)).await {
            tracing::warn!("Redis pub/sub is not connected yet; the node reports not ready");
        }
    }
    shutdown.spawn(
        "node-announce",
        hub.clone()
            .announce_loop(std::time::Duration::from_secs(3), shutdown.token().clone()),
    );

    Ok(hub)
}

/// `synchub worker`: the sync workers alone (no HTTP, no WebSocket), until
/// `stop` resolves; then they drain.
pub async fn run_worker(
    mut config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    resolve_secrets(&mut config)?;
    let shutdown = Shutdown::new();
    crate::metrics::install();
    let hub = build_hub(&config, &shutdown).await?;
    let store = crate::store::open(&config).await?;
    let rules = ChannelRules::new(&config.channels, config.client.channel_max_length);
    let sync = build_sync(&config, store, hub, rules)?;
    crate::sync::worker::spawn(&shutdown, &sync);
    tracing::info!(worker = %sync.worker_id, "sync worker running");
    stop.await;
    tracing::info!("stopping: finishing the jobs in hand");
    shutdown.trigger();
    if !shutdown.wait(config.shutdown_timeout).await {
        tracing::warn!(
            remaining = shutdown.running(),
            "shutdown deadline passed; unfinished jobs return when their leases lapse"
        );
    }
    Ok(())
}

/// `synchub sync <kind> --module M`: runs one session in this process,
/// reporting through `sink` as well as `sync:sessions`.
pub async fn run_session(
    mut config: Config,
    kind: crate::sync::SessionKind,
    module: &str,
    sink: crate::sync::SessionSink,
) -> anyhow::Result<crate::sync::Session> {
    resolve_secrets(&mut config)?;
    let shutdown = Shutdown::new();
    let hub = build_hub(&config, &shutdown).await?;
    let store = crate::store::open(&config).await?;
    let rules = ChannelRules::new(&config.channels, config.client.channel_max_length);
    let sync = build_sync(&config, store, hub, rules)?;
    shutdown.spawn("sync-events", sync.clone().publish_events());
    let mapping = sync
        .mapping(module)
        .with_context(|| format!("`{module}` is not a synced module or entity"))?
        .clone();
    let tenant = config.zoho.tenant.clone();
    let client = sync.connections.client(&tenant).await.with_context(|| {
        format!("tenant `{tenant}` has no Zoho connection ([zoho] or POST /v1/zoho/connection)")
    })?;
    sync.add_sink(sink);
    let session = crate::sync::Session::new(kind, mapping.module(), mapping.name(), "cli");
    let mut tracker = sync.tracker(&tenant, session);
    tracker.start().await;
    let result = crate::sync::pull::run(&sync, &mut tracker, &client).await;
    tracker.finish(result.err().map(|e| e.to_string())).await;
    // Let the last events reach the broker.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    shutdown.trigger();
    shutdown.wait(std::time::Duration::from_secs(2)).await;
    Ok(tracker.session)
}
