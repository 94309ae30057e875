//! `zoho-sim`: an in-memory Zoho CRM v8 emulator, faithful enough for Zoho's
//! official Node SDK, for synchub's tests, demos and local development.
//!
//! It owns the emulated org (OAuth, metadata, records, search, COQL, Watch,
//! mass update, bulk jobs, limits and record locks; see ZOHO-API.md §12) and
//! the knobs tests turn: time zone, token lifetime, credits, concurrency,
//! latency and scripted faults. It must never be mistaken for a data store:
//! nothing is persisted, and a restart starts again from the seed.
//!
//! Entry points: [`run`] for the `synchub zoho-sim` subcommand, [`Sim::start`]
//! for tests (binds `127.0.0.1:0` and returns a [`SimHandle`]).

mod coql;
mod criteria;
pub mod faults;
mod http;
mod jobs;
mod meta;
pub mod model;
mod oauth;
mod records;
pub mod seed;
mod state;
mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use time::UtcOffset;
use tokio_util::sync::CancellationToken;

pub use faults::{Fault, FaultConfig, FaultRule};
pub use seed::{Seed, SeedError};
pub use state::LoggedRequest;

use state::SimState;

/// Zoho CRM editions, which set the default credits and concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Edition {
    Free,
    Standard,
    Professional,
    Enterprise,
    Ultimate,
}

impl Edition {
    /// Concurrent calls per org and app (ZOHO-API.md §9).
    pub fn concurrency(self) -> usize {
        match self {
            Self::Free => 5,
            Self::Standard => 10,
            Self::Professional => 15,
            Self::Enterprise => 20,
            Self::Ultimate => 25,
        }
    }

    /// Credits per rolling 24 hours for `users` licences, capped per edition.
    pub fn daily_credits(self, users: u64) -> u64 {
        let (per_user, cap) = match self {
            Self::Free => return 5_000,
            Self::Standard => (250, 100_000),
            Self::Professional => (500, 3_000_000),
            Self::Enterprise => (1_000, 5_000_000),
            Self::Ultimate => (2_000, u64::MAX),
        };
        (50_000 + users * per_user).min(cap)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Standard => "standard",
            Self::Professional => "professional",
            Self::Enterprise => "enterprise",
            Self::Ultimate => "ultimate",
        }
    }
}

/// Everything the emulator can be told at start.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub seed: Seed,
    /// The API user's time zone: every datetime goes out in it.
    pub time_zone: UtcOffset,
    pub token_lifetime: Duration,
    pub edition: Edition,
    /// Overrides the edition's credits per rolling 24 hours.
    pub daily_credits: Option<u64>,
    /// Overrides the edition's concurrency.
    pub concurrency: Option<usize>,
    /// Concurrency of the "complex" APIs (COQL, mass update, bulk, sorted lists).
    pub sub_concurrency: usize,
    /// Refreshes allowed per refresh token per ten minutes; `None` disables.
    pub token_throttle: Option<u32>,
    pub faults: FaultConfig,
    /// How long mass-update and bulk jobs stay queued before they run.
    pub job_delay: Duration,
    /// How long a record list `page_token` stays valid.
    pub page_token_ttl: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: Seed::default_seed(),
            time_zone: UtcOffset::from_hms(5, 30, 0).unwrap_or(UtcOffset::UTC),
            token_lifetime: Duration::from_secs(3600),
            edition: Edition::Enterprise,
            daily_credits: None,
            concurrency: None,
            sub_concurrency: 10,
            token_throttle: Some(10),
            faults: FaultConfig {
                stall_for: Duration::from_secs(60),
                ..FaultConfig::default()
            },
            job_delay: Duration::from_secs(1),
            page_token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl SimConfig {
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.unwrap_or(self.edition.concurrency())
    }

    pub fn credit_limit(&self) -> u64 {
        let users = self.seed.users.len() as u64;
        self.daily_credits
            .unwrap_or(self.edition.daily_credits(users))
    }
}

/// `synchub zoho-sim` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Seed file (JSON, see src/zoho/README.md); the built-in demo org when omitted.
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// The API user's time zone offset, e.g. +05:30 or -07:00.
    #[arg(long, default_value = "+05:30", value_parser = parse_zone, allow_hyphen_values = true)]
    pub time_zone: UtcOffset,
    /// Access token lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_lifetime: Duration,
    /// Edition: sets credits per 24 h and concurrency.
    #[arg(long, value_enum, default_value_t = Edition::Enterprise)]
    pub edition: Edition,
    /// Credits per rolling 24 hours (overrides the edition).
    #[arg(long)]
    pub credits: Option<u64>,
    /// Concurrent requests allowed (overrides the edition).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Concurrency of the complex APIs.
    #[arg(long, default_value_t = 10)]
    pub sub_concurrency: usize,
    /// Turn off the 10-refreshes-per-10-minutes throttle of the token endpoint.
    #[arg(long)]
    pub no_token_throttle: bool,
    /// Latency added to every API request.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share (0..1) of API requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share (0..1) of API requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Share (0..1) of API requests that stall.
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// How long a stall lasts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub stall_for: Duration,
    /// How long mass-update and bulk jobs wait before running.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub job_delay: Duration,
}

fn parse_zone(raw: &str) -> Result<UtcOffset, String> {
    wire::parse_offset(raw).ok_or_else(|| format!("not a ±HH:MM offset: {raw}"))
}

impl SimArgs {
    pub fn into_config(self) -> anyhow::Result<SimConfig> {
        let seed = match &self.seed {
            Some(path) => Seed::load(path).context("loading the Zoho emulator seed")?,
            None => Seed::default_seed(),
        };
        for (name, rate) in [
            ("--error-rate", self.error_rate),
            ("--rate-limit-rate", self.rate_limit_rate),
            ("--stall-rate", self.stall_rate),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&rate), "{name} must be within 0..1");
        }
        Ok(SimConfig {
            listen: self.listen,
            seed,
            time_zone: self.time_zone,
            token_lifetime: self.token_lifetime,
            edition: self.edition,
            daily_credits: self.credits,
            concurrency: self.concurrency,
            sub_concurrency: self.sub_concurrency,
            token_throttle: (!self.no_token_throttle).then_some(10),
            faults: FaultConfig {
                latency: self.latency,
                error_rate: self.error_rate,
                rate_limit_rate: self.rate_limit_rate,
                stall_rate: self.stall_rate,
                stall_for: self.stall_for,
            },
            job_delay: self.job_delay,
            page_token_ttl: Duration::from_secs(24 * 3600),
        })
    }
}

/// Runs the emulator until `shutdown` is cancelled.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = args.into_config()?;
    // A child token: dropping the handle must never cancel the caller's token.
    let handle = Sim::start_with_shutdown(config, shutdown.child_token()).await?;
    tracing::info!(base_url = %handle.base_url, "Zoho CRM emulator listening");
    shutdown.cancelled().await;
    handle.stop().await;
    Ok(())
}

/// The emulator as a library.
pub struct Sim;

impl Sim {
    /// Starts an emulator on `config.listen` (use port 0 in tests).
    pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        Self::start_with_shutdown(config, CancellationToken::new()).await
    }

    async fn start_with_shutdown(
        config: SimConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the Zoho emulator to {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let base_url = format!("http://{addr}");
        let (tx, rx) = tokio::sync::mpsc::channel(watch::DELIVERY_QUEUE);
        let state = Arc::new(SimState::new(
            config,
            base_url.clone(),
            tx,
            shutdown.clone(),
        ));
        state.tasks.spawn(watch::deliver(state.clone(), rx));
        let app = http::router(state.clone());
        let stop = shutdown.clone();
        state.tasks.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(%err, "the Zoho emulator stopped");
            }
        });
        Ok(SimHandle {
            base_url,
            addr,
            state,
        })
    }
}

/// A running emulator: where it listens, and the knobs and counters tests use.
pub struct SimHandle {
    /// `http://127.0.0.1:PORT`: the API base and the accounts server.
    pub base_url: String,
    pub addr: SocketAddr,
    state: Arc<SimState>,
}

impl SimHandle {
    /// The token endpoint (`{base}/oauth/v2/token`).
    pub fn token_url(&self) -> String {
        format!("{}/oauth/v2/token", self.base_url)
    }

    /// The first seeded OAuth client: `(client_id, client_secret, refresh_token)`.
    pub fn credentials(&self) -> Option<(String, String, String)> {
        let client = self.state.config.seed.oauth_clients.first()?;
        Some((
            client.client_id.clone(),
            client.client_secret.clone(),
            client.refresh_tokens.first()?.clone(),
        ))
    }

    /// Queues a scripted fault.
    pub fn inject(&self, rule: FaultRule) {
        self.faults().push(rule);
    }

    /// Replaces the background fault rates and drops queued faults.
    pub fn set_faults(&self, config: FaultConfig) {
        let mut faults = self.faults();
        faults.config = config;
        faults.clear();
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, faults::FaultState> {
        self.state.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Invalidates every access token, as if they had all expired.
    pub fn expire_access_tokens(&self) {
        let mut world = self.state.world();
        world.access_tokens.clear();
        for grant in world.refresh_tokens.values_mut() {
            grant.access.clear();
        }
    }

    /// Moves the emulator's clock forward (token expiry, credit window, Modified_Time).
    pub fn advance_clock(&self, by: Duration) {
        *self
            .state
            .clock_skew
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// Requests seen so far (API and token endpoint), oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let log = self.state.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().map(|(_, r)| r.clone()).collect()
    }

    /// How many requests matched `method` and a path containing `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        let log = self.state.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|(_, r)| r.method == method && r.path.contains(fragment))
            .count()
    }

    /// Token endpoint calls so far.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Watch callbacks delivered (2xx) and failed so far.
    pub fn callbacks(&self) -> (u64, u64) {
        (
            self.state.callbacks_sent.load(Ordering::SeqCst),
            self.state.callbacks_failed.load(Ordering::SeqCst),
        )
    }

    /// Number of live records in a module.
    pub fn record_count(&self, module: &str) -> usize {
        self.state
            .world()
            .module(module)
            .map_or(0, |m| m.records.len())
    }

    /// Inserts records directly (no API call, no credits), returning their ids.
    /// Values are stored as given, without validation.
    pub fn insert_raw(
        &self,
        module: &str,
        records: Vec<serde_json::Map<String, serde_json::Value>>,
    ) -> Vec<String> {
        let now = self.state.now();
        let mut world = self.state.world();
        let user = world
            .users
            .first()
            .map(|u| u.id.clone())
            .unwrap_or_default();
        let mut ids = Vec::with_capacity(records.len());
        for values in records {
            let id = world.next_id();
            if let Some(m) = world.module_mut(module) {
                m.insert(
                    id,
                    values,
                    model::Stamp {
                        user: &user,
                        at: now,
                        zone: UtcOffset::UTC,
                    },
                );
                ids.push(id.to_string());
            }
        }
        ids
    }

    /// Locks a record as a Zoho user would (writes then fail RECORD_LOCKED).
    pub fn lock_record(&self, module: &str, id: &str) -> bool {
        let now = self.state.now();
        let mut world = self.state.world();
        let lock_id = world.next_id();
        let user = world
            .users
            .first()
            .map(|u| u.id.clone())
            .unwrap_or_default();
        let Ok(record_id) = id.parse::<u64>() else {
            return false;
        };
        match world.module_mut(module) {
            Some(m) if m.records.contains_key(&record_id) => {
                m.locks.insert(
                    record_id,
                    model::Lock {
                        lock_id,
                        reason: "locked by a test".into(),
                        by: user,
                        at: now,
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// A record as `GET /crm/v8/{module}/{id}` would render it.
    pub fn record(
        &self,
        module: &str,
        id: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let world = self.state.world();
        let m = world.module(module)?;
        let rec = m.records.get(&id.parse::<u64>().ok()?)?;
        Some(m.render(
            rec,
            None,
            &world.users,
            self.state.config.time_zone,
            &|module, id| world.display_name(module, id),
        ))
    }

    /// Records in a module whose field equals `value` (text ignoring case).
    pub fn find(&self, module: &str, field: &str, value: &serde_json::Value) -> Vec<String> {
        let world = self.state.world();
        world
            .module(module)
            .map(|m| {
                m.records
                    .values()
                    .filter(|r| {
                        r.values
                            .get(field)
                            .is_some_and(|v| model::same_value(v, value))
                    })
                    .map(|r| r.id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops serving and waits for in-flight work and callbacks to end.
    pub async fn stop(&self) {
        self.state.shutdown.cancel();
        self.state.tasks.close();
        self.state.tasks.wait().await;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // A test that forgets `stop` must not leave a server running.
        self.state.shutdown.cancel();
    }
}
