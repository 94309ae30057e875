//! Zoho sync throughput against the emulator with simulated API latency.
//! Starts the emulator (`--latency-ms` added to every API request) and a
//! synchub node in this process (SQLite in a temporary data dir, or
//! PostgreSQL with `--database-url`), then measures
//!
//! 1. pull: a full sync session of `--records` Zoho deals (records/s, API calls);
//! 2. push of new records: `--records` local deals created while the
//!    workers are stopped, then the workers start; the time until the last
//!    one is in Zoho (records/s, API calls per 100 records);
//! 3. push of changes: one field of every one of those deals changed while
//!    the workers run; the time from the first change until the queue is
//!    empty (records/s, API calls per 100 changed records).
//!
//! Prints one JSON line per phase. Run in release:
//! `cargo run --release -p synchub-load-tests --bin sync-load -- --records 2000 --latency-ms 100`

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Map, Value, json};
use synchub::config::{Config, Secret};
use synchub::records::Caller;
use synchub::startup::Application;
use synchub::zoho::sim::{Sim, SimConfig, SimHandle};

#[derive(Parser, Clone)]
struct Args {
    /// Records per phase.
    #[arg(long, default_value_t = 2000)]
    records: usize,
    /// Latency the emulator adds to every API request.
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// Client-side request rate toward Zoho.
    #[arg(long, default_value_t = 20)]
    requests_per_second: u32,
    /// `postgres://...`; unset: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
}

fn deal(i: usize) -> Map<String, Value> {
    json!({"Deal_Name": format!("Load {i}"), "Stage": "Qualification", "Amount": i as f64})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// API requests (not token refreshes) the emulator has seen.
fn api_calls(sim: &SimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.starts_with("/crm/"))
        .count()
}

async fn drained(
    app: &Application,
    want_in_zoho: Option<(&SimHandle, usize)>,
) -> anyhow::Result<()> {
    let store = &app.state().sync.store;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let depth = store.queue_depth("default").await?;
        let busy: i64 = depth.iter().map(|d| d.queued + d.running).sum();
        let dead: i64 = depth.iter().map(|d| d.dead).sum();
        if dead > 0 {
            bail!("{dead} jobs were dead-lettered");
        }
        let zoho_ok = want_in_zoho.is_none_or(|(sim, n)| sim.record_count("Deals") >= n);
        if busy == 0 && zoho_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queue did not drain");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sim_config = SimConfig {
        token_throttle: None,
        ..SimConfig::default()
    };
    sim_config.faults.latency = Duration::from_millis(args.latency_ms);
    let sim = Sim::start(sim_config).await?;
    let (id, secret, refresh) = sim.credentials().context("emulator credentials")?;
    let seeded = sim.record_count("Deals");
    sim.insert_raw("Deals", (0..args.records).map(deal).collect());

    let dir = std::env::temp_dir().join(format!("synchub-sync-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        ..Config::default()
    };
    config.api.key = Some(Secret::new("sync-load-key"));
    config.database_url = args.database_url.clone().map(Secret::new);
    config.zoho.accounts_url = Some(sim.base_url.clone());
    config.zoho.api_url = Some(sim.base_url.clone());
    config.zoho.client_id = Some(id);
    config.zoho.client_secret = Some(Secret::new(secret));
    config.zoho.refresh_token = Some(Secret::new(refresh));
    config.zoho.requests_per_second = args.requests_per_second;
    config.sync.workers = false;
    config.sync.incremental_interval = Duration::from_secs(24 * 3600);
    let app = Application::build(config).await?;
    let state = app.state().clone();
    let sync = state.sync.clone();

    // 1. Pull.
    let calls_before = api_calls(&sim);
    let started = Instant::now();
    let session =
        synchub::sync::Session::new(synchub::sync::SessionKind::Full, "Deals", "deals", "load");
    let mut tracker = sync.tracker("default", session);
    let client = sync
        .connections
        .client("default")
        .await
        .context("the Zoho client")?;
    tracker.start().await;
    synchub::sync::pull::run(&sync, &mut tracker, &client)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracker.finish(None).await;
    let secs = started.elapsed().as_secs_f64();
    let pulled = tracker.session.processed as usize;
    if pulled != args.records + seeded {
        bail!("pulled {pulled}, expected {}", args.records + seeded);
    }
    println!(
        "{}",
        json!({
            "phase": "pull_full",
            "records": pulled,
            "seconds": secs,
            "records_per_second": pulled as f64 / secs,
            "api_calls": api_calls(&sim) - calls_before,
            "latency_ms": args.latency_ms,
        })
    );

    // 2. Push of new records.
    let caller = Caller::backend("default");
    for i in 0..args.records {
        state
            .records
            .create(&caller, "deals", Some(&format!("local-{i}")), deal(i))
            .await
            .map_err(|e| anyhow::anyhow!("create: {e}"))?;
    }
    let calls_before = api_calls(&sim);
    let started = Instant::now();
    synchub::sync::worker::spawn(&state.shutdown, &sync);
    drained(&app, Some((&sim, seeded + 2 * args.records))).await?;
    let secs = started.elapsed().as_secs_f64();
    let calls = api_calls(&sim) - calls_before;
    println!(
        "{}",
        json!({
            "phase": "push_new",
            "records": args.records,
            "seconds": secs,
            "records_per_second": args.records as f64 / secs,
            "api_calls": calls,
            "api_calls_per_100_records": calls as f64 * 100.0 / args.records as f64,
            "latency_ms": args.latency_ms,
        })
    );

    // 3. Push of changes (the workers run while the changes are made).
    let calls_before = api_calls(&sim);
    let started = Instant::now();
    for i in 0..args.records {
        let key = format!("local-{i}");
        let mut fields = Map::new();
        fields.insert("Amount".into(), json!(i as f64 + 0.5));
        state
            .records
            .update(&caller, "deals", &key, 1, fields, None)
            .await
            .map_err(|e| anyhow::anyhow!("update: {e}"))?;
    }
    drained(&app, None).await?;
    let secs = started.elapsed().as_secs_f64();
    let calls = api_calls(&sim) - calls_before;
    println!(
        "{}",
        json!({
            "phase": "push_changes",
            "records": args.records,
            "seconds": secs,
            "records_per_second": args.records as f64 / secs,
            "api_calls": calls,
            "api_calls_per_100_records": calls as f64 * 100.0 / args.records as f64,
            "latency_ms": args.latency_ms,
        })
    );
    state.shutdown.trigger();
    let _ = state.shutdown.wait(Duration::from_secs(5)).await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
