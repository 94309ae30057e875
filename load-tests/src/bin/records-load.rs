//! Records and edit-lock load: starts a synchub node in this process (SQLite
//! in a temporary data dir, or PostgreSQL with `--database-url`), connects
//! `--clients` protocol clients over real WebSockets (JSON), and measures
//!
//! 1. `lock.acquire` and `lock.release` round trips (each client locks and
//!    releases its own record in a loop): p50/p99/max latency and ops/s;
//! 2. `record.update` throughput: each client saves its own record in a loop
//!    with the right base version: commits/s and p50/p99 latency;
//! 3. `offline.push` throughput: each client drains its own offline queue in
//!    batches of `--batch` mutations over 100 records (the first touch of a
//!    record creates it, `applied`; every later one is from a stale base
//!    version with the client's base value, so it goes through the
//!    three-way merge, `merged`): mutations/s and per-batch latency.
//!
//! Prints one JSON line per phase. Run in release:
//! `cargo run --release -p synchub-load-tests --bin records-load -- --clients 8 --seconds 10`

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use synchub::auth::{ConnectClaims, mint, now_unix};
use synchub::config::{Config, Secret};
use synchub::startup::Application;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "records-load-hmac-secret-0123456789";

#[derive(Parser, Clone)]
struct Args {
    /// Concurrent protocol clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Mutations per `offline.push` call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// `postgres://...`; unset: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal JSON-protocol client: one command at a time.
struct Client {
    ws: Ws,
    next_id: u64,
}

impl Client {
    async fn connect(url: &str, user: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("websocket connect")?;
        let mut c = Self { ws, next_id: 0 };
        let token = mint(
            SECRET,
            &ConnectClaims {
                sub: user.into(),
                exp: Some(now_unix() + 3600),
                ..Default::default()
            },
        )?;
        c.command(json!({"connect": {"token": token}})).await?;
        Ok(c)
    }

    /// Sends a command and waits for its reply (answering server pings).
    async fn command(&mut self, mut body: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        body["id"] = json!(id);
        self.ws.send(Message::Text(body.to_string().into())).await?;
        loop {
            let msg = self.ws.next().await.context("connection ended")??;
            let Message::Text(text) = msg else { continue };
            for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                let reply: Value = serde_json::from_str(line)?;
                if reply.as_object().is_some_and(|o| o.is_empty()) {
                    self.ws.send(Message::Text("{}".into())).await?;
                    continue;
                }
                if reply["id"] == json!(id) {
                    if let Some(e) = reply.get("error") {
                        bail!("error reply: {e}");
                    }
                    return Ok(reply);
                }
            }
        }
    }

    async fn rpc(&mut self, method: &str, data: Value) -> anyhow::Result<Value> {
        let r = self
            .command(json!({"rpc": {"method": method, "data": data}}))
            .await?;
        Ok(r["rpc"]["data"].clone())
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn us(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
    })
}

async fn lock_phase(
    url: String,
    n: usize,
    until: Instant,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut c = Client::connect(&url, &format!("locker{n}")).await?;
    let (mut acquire, mut release) = (hist(), hist());
    let id = format!("lock-{n}");
    while Instant::now() < until {
        let t = Instant::now();
        let r = c
            .rpc("lock.acquire", json!({"entity": "deals", "id": id}))
            .await?;
        acquire.record(us(t.elapsed()))?;
        let token = r["lock"]["token"].as_i64().context("no token")?;
        let t = Instant::now();
        c.rpc(
            "lock.release",
            json!({"entity": "deals", "id": id, "token": token}),
        )
        .await?;
        release.record(us(t.elapsed()))?;
    }
    Ok((acquire, release))
}

async fn update_phase(url: String, n: usize, until: Instant) -> anyhow::Result<Histogram<u64>> {
    let mut c = Client::connect(&url, &format!("writer{n}")).await?;
    let mut h = hist();
    let id = format!("rec-{n}");
    let mut version = 0;
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let t = Instant::now();
        let r = c
            .rpc(
                "record.update",
                json!({"entity": "deals", "id": id, "base_version": version,
                       "fields": {"Amount": i, "Stage": "negotiation", "Owner": format!("writer{n}")}}),
            )
            .await?;
        h.record(us(t.elapsed()))?;
        version = r["record"]["version"].as_i64().context("no version")?;
    }
    Ok(h)
}

async fn push_phase(
    url: String,
    n: usize,
    batch: usize,
    until: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut c = Client::connect(&url, &format!("phone{n}")).await?;
    let mut h = hist();
    let mut seq = 0u64;
    while Instant::now() < until {
        let mutations: Vec<Value> = (0..batch)
            .map(|_| {
                seq += 1;
                let base = if seq > 100 {
                    json!({"Amount": seq - 100})
                } else {
                    json!({})
                };
                json!({"seq": seq, "entity": "deals", "id": format!("off-{n}-{}", seq % 100),
                       "base_version": 0, "base": base, "fields": {"Amount": seq}})
            })
            .collect();
        let t = Instant::now();
        let r = c
            .rpc(
                "offline.push",
                json!({"client_id": format!("phone{n}"), "mutations": mutations}),
            )
            .await?;
        h.record(us(t.elapsed()))?;
        if r["last_seq"] != json!(seq) {
            bail!("push stopped early: {r}");
        }
    }
    Ok((h, seq))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("synchub-records-load-{}", std::process::id()));
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        ..Config::default()
    };
    config.auth.token_hmac_secret = Some(Secret::new(SECRET));
    config.api.key = Some(Secret::new("records-load-api-key-0123456789"));
    config.database_url = args.database_url.clone().map(Secret::new);
    config.client.command_rate = 1_000_000;
    config.client.command_burst = 1_000_000;
    config.validate()?;
    let backend = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let app = Application::build(config).await?;
    let url = format!("ws://{}/connection/websocket", app.addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let seconds = Duration::from_secs(args.seconds);

    let until = Instant::now() + seconds;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(lock_phase(url.clone(), n, until)))
        .collect();
    let (mut acquire, mut release) = (hist(), hist());
    for t in tasks {
        let (a, r) = t.await??;
        acquire.add(a)?;
        release.add(r)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "lock.acquire+release", "backend": backend, "clients": args.clients,
               "seconds": elapsed, "pairs_per_s": (acquire.len() as f64 / elapsed).round(),
               "acquire": summary(&acquire), "release": summary(&release)})
    );

    let until = Instant::now() + seconds;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(update_phase(url.clone(), n, until)))
        .collect();
    let mut updates = hist();
    for t in tasks {
        updates.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "record.update", "backend": backend, "clients": args.clients,
               "seconds": elapsed, "commits_per_s": (updates.len() as f64 / elapsed).round(),
               "latency": summary(&updates)})
    );

    let until = Instant::now() + seconds;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(push_phase(url.clone(), n, args.batch, until)))
        .collect();
    let mut batches = hist();
    let mut mutations = 0;
    for t in tasks {
        let (h, m) = t.await??;
        batches.add(h)?;
        mutations += m;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "offline.push", "backend": backend, "clients": args.clients,
               "batch": args.batch, "seconds": elapsed, "mutations": mutations,
               "mutations_per_s": (mutations as f64 / elapsed).round(),
               "batch_latency": summary(&batches)})
    );

    let _ = stop_tx.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
