//! Two-way Zoho sync against the emulator: full, incremental and webhook
//! pulls, delta pushes, no echo, conflicts, faults, dead letters, mapping
//! and filters, the connection API and health analytics.

mod convergence;
mod faults;
mod flows;
mod interop;
mod nodes;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use synchub::zoho::sim::{SimConfig, SimHandle};

use crate::support::*;
use crate::zoho::{client_config, client_with, fast_sim_config, start_sim};

/// An emulator and a node syncing with it (SQLite or PostgreSQL).
pub struct Env {
    pub sim: SimHandle,
    pub app: TestApp,
    pub schema: Option<String>,
}

/// Where the emulator is and how to sign in: for a node's `[zoho]`
/// configuration or a `synchub` process's environment.
#[derive(Clone)]
pub struct ZohoAccess {
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

impl ZohoAccess {
    pub fn of(sim: &SimHandle) -> Self {
        let (client_id, client_secret, refresh_token) =
            sim.credentials().expect("the seed has an OAuth client");
        Self {
            base: sim.base_url.clone(),
            client_id,
            client_secret,
            refresh_token,
        }
    }

    /// The connection, with a client tuned for fast tests.
    pub fn configure(&self, c: &mut synchub::config::Config) {
        c.zoho.accounts_url = Some(self.base.clone());
        c.zoho.api_url = Some(self.base.clone());
        c.zoho.client_id = Some(self.client_id.clone());
        c.zoho.client_secret = Some(synchub::config::Secret::new(&self.client_secret));
        c.zoho.refresh_token = Some(synchub::config::Secret::new(&self.refresh_token));
        c.zoho.requests_per_second = 10_000;
        c.zoho.max_concurrency = 8;
        c.zoho.request_timeout = Duration::from_secs(2);
        c.zoho.max_attempts = 2;
        c.zoho.throttle_budget = Duration::from_millis(300);
    }

    /// The same connection for a `synchub` process (a clean environment).
    pub fn command(&self, args: &[&str], data_dir: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_synchub"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SYNCHUB_DATA_DIR", data_dir)
            .env("SYNCHUB_ZOHO_ACCOUNTS_URL", &self.base)
            .env("SYNCHUB_ZOHO_API_URL", &self.base)
            .env("SYNCHUB_ZOHO_CLIENT_ID", &self.client_id)
            .env("SYNCHUB_ZOHO_CLIENT_SECRET", &self.client_secret)
            .env("SYNCHUB_ZOHO_REFRESH_TOKEN", &self.refresh_token)
            .kill_on_drop(true);
        cmd
    }
}

/// Short leases, fast polls and retries, no scheduled incremental in the way.
pub fn fast_sync(s: &mut synchub::config::SyncConfig) {
    s.lease = Duration::from_secs(2);
    s.poll_interval = Duration::from_millis(50);
    s.retry_initial = Duration::from_millis(50);
    s.retry_max = Duration::from_millis(400);
    s.incremental_interval = Duration::from_secs(3600);
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(fast_sim_config(), false, |_| {})
            .await
            .expect("SQLite needs no service")
    }

    /// `None` when PostgreSQL was asked for and is missing (skipped loudly).
    pub async fn start_with(
        sim_config: SimConfig,
        postgres: bool,
        tweak: impl FnOnce(&mut synchub::config::Config),
    ) -> Option<Self> {
        if let Ok(filter) = std::env::var("SYNCHUB_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let sim = start_sim(sim_config).await;
        let zoho = ZohoAccess::of(&sim);
        let (app, schema) = crate::records::app_with(postgres, move |c| {
            zoho.configure(c);
            fast_sync(&mut c.sync);
            tweak(c);
        })
        .await?;
        Some(Self { sim, app, schema })
    }

    pub async fn finish(self) {
        crate::records::finish(self.app, self.schema).await;
        self.sim.stop().await;
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .app
            .http
            .get(self.app.url(path))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .app
            .http
            .post(self.app.url(path))
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a local record over HTTP.
    pub async fn create(&self, entity: &str, id: &str, fields: Value) -> Value {
        let (status, v) = self
            .post(
                &format!("/v1/records/{entity}"),
                json!({"id": id, "fields": fields}),
            )
            .await;
        assert!(status == 200 || status == 201, "create: {status} {v}");
        v["record"].clone()
    }

    /// Changes a local record over HTTP (its current version as If-Match).
    pub async fn update(&self, entity: &str, id: &str, fields: Value) -> Value {
        let (_, current) = self.get(&format!("/v1/records/{entity}/{id}")).await;
        let version = current["record"]["version"].as_i64().expect("version");
        let r = self
            .app
            .http
            .patch(self.app.url(&format!("/v1/records/{entity}/{id}")))
            .header("x-api-key", API_KEY)
            .header("if-match", format!("\"{version}\""))
            .json(&json!({ "fields": fields }))
            .send()
            .await
            .expect("patch");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "update: {v}");
        v["record"].clone()
    }

    pub async fn record(&self, entity: &str, id: &str) -> Option<Value> {
        let (status, v) = self.get(&format!("/v1/records/{entity}/{id}")).await;
        (status == 200).then(|| v["record"].clone())
    }

    /// Starts a session and waits for it to end.
    pub async fn session(&self, kind: &str, module: &str) -> Value {
        let (status, v) = self
            .post("/v1/sync/sessions", json!({"kind": kind, "module": module}))
            .await;
        assert_eq!(status, 202, "start session: {v}");
        let id = v["session"]["id"].as_str().expect("id").to_owned();
        self.wait_session(&id).await
    }

    pub async fn wait_session(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, v) = self.get(&format!("/v1/sync/sessions/{id}")).await;
            let s = &v["session"];
            if s["status"] == "completed" || s["status"] == "failed" {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "session {id} did not end: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no push job is queued or running.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, v) = self.get("/v1/sync/jobs?limit=1").await;
            let busy: i64 = v["depth"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|e| {
                            e["queued"].as_i64().unwrap_or(0) + e["running"].as_i64().unwrap_or(0)
                        })
                        .sum()
                })
                .unwrap_or(0);
            if busy == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the queue did not drain: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Zoho client of its own: a person editing in Zoho.
    pub fn zoho_user(&self) -> synchub::zoho::ZohoClient {
        client_with(&self.sim, client_config(&self.sim))
    }

    /// The Zoho records whose external id is `local_id`.
    pub fn in_zoho(&self, module: &str, local_id: &str) -> Vec<Map<String, Value>> {
        self.sim
            .find(module, "Synchub_Id", &json!(local_id))
            .iter()
            .filter_map(|id| self.sim.record(module, id))
            .collect()
    }
}

/// Waits for `check` to hold, up to `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deal fields that pass the emulator's validation.
pub fn deal(name: &str, amount: f64) -> Value {
    json!({"Deal_Name": name, "Stage": "Qualification", "Amount": amount})
}
