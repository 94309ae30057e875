//! The `fanout` scenario: N WebSocket subscribers over C channels, publishes
//! at a fixed rate through the server HTTP API, and an exact account of what
//! reached whom and how fast.
//!
//! Phases: preflight (one publish, so a wrong URL or key fails in a second,
//! not after the ramp), ramp (connections dialled at `--connect-rate`, each
//! sends connect+subscribe), publishing (warmup, then the measured window),
//! grace (late deliveries still count), stop and tally. This module wires
//! the phases together; the pieces live in `connection`, `publisher`,
//! `latency`, `accounting` and `report`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use synchub::protocol::Encoding;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::accounting::{SeqSpace, tally};
use crate::connection::{self, ConnParams, ConnReport, Ready};
use crate::latency::{self, unix_nanos};
use crate::publisher::{self, ApiTarget, LoadData, PublishCounters};
use crate::report::{self, LatencyMs, RunResult};
use crate::schedule::Schedule;
use crate::token::TokenMinter;

/// From dialling to the subscribe reply, per connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Latency batches in flight from connections to the aggregator.
const LATENCY_QUEUE: usize = 4096;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    fn encoding(self) -> Encoding {
        match self {
            Self::Json => Encoding::Json,
            Self::Protobuf => Encoding::Protobuf,
        }
    }
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// WebSocket endpoint of the hub; several, comma separated, spread the
    /// connections round-robin over nodes (connection k uses URL k mod n).
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub ws_url: String,
    /// Base URL of the server HTTP API (`/api/publish` is appended).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub api_url: String,
    /// The hub's server API key (SYNCHUB_API_KEY).
    #[arg(long, env = "SYNCHUB_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// The hub's HS256 secret (SYNCHUB_TOKEN_HMAC_SECRET), to mint connection tokens.
    #[arg(long, env = "SYNCHUB_TOKEN_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 2000)]
    pub connections: u64,
    /// Channels; connection k subscribes to channel k % channels.
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Publishes per second, in total, round-robin over the channels.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of measured publishing.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of publishing before the measured window; its deliveries are
    /// checked for loss but kept out of the latency figures.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Wire format of the subscribers.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u64,
    /// Concurrent HTTP publish requests.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// Seconds to wait after the last publish before counting losses.
    #[arg(long, default_value_t = 3)]
    pub grace: u64,
    /// Runtime worker threads for the generator (default: one per core).
    /// Lower it to leave CPU to a hub running on the same machine.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs the scenario; returns the result (already printed).
pub async fn run(args: FanoutArgs) -> Result<RunResult> {
    validate(&args)?;
    let run_id = format!("{:x}", unix_nanos() / 1000);
    let channels: Arc<Vec<String>> = Arc::new(
        (0..args.channels)
            .map(|i| format!("load_{run_id}_{i}"))
            .collect(),
    );
    let encoding = args.format.encoding();
    let ws_urls: Vec<&str> = args
        .ws_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    anyhow::ensure!(!ws_urls.is_empty(), "--ws-url names no endpoint");
    let space = SeqSpace {
        channels: args.channels,
        total: args.rate * (args.warmup + args.duration),
        warmup: args.rate * args.warmup,
    };

    let interrupt = CancellationToken::new();
    {
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupt.cancel();
            }
        });
    }

    // Preflight: fail fast on a wrong URL or key.
    let target = ApiTarget::new(&args.api_url, &args.api_key, args.publishers)?;
    target
        .publish(
            &format!("load_{run_id}_preflight"),
            LoadData {
                seq: u64::MAX,
                ts: unix_nanos(),
            },
        )
        .await
        .context("preflight publish failed: is the hub up at --api-url, and --api-key right?")?;

    // Ramp.
    let ramp = Schedule::new(args.connect_rate, args.connections);
    let lifetime = ramp.last_due()
        + HANDSHAKE_TIMEOUT
        + Duration::from_secs(args.warmup + args.duration + args.grace + 3600);
    let minter = TokenMinter::new(&args.hmac_secret, lifetime)?;
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<Ready>(args.connections as usize);
    let (latency_tx, latency_rx) = mpsc::channel(LATENCY_QUEUE);
    let delivered_live = Arc::new(AtomicU64::new(0));
    let aggregator = tokio::spawn(latency::aggregate(latency_rx, delivered_live.clone()));
    let mut conns: JoinSet<ConnReport> = JoinSet::new();

    let bar = ProgressBar::new(args.connections);
    bar.set_style(style("connect   {bar:40} {pos}/{len} subscribed {msg}"));
    let mut ramp_tally = RampTally::default();
    let ramp_start = tokio::time::Instant::now();
    for k in 0..args.connections {
        let at = ramp_start + ramp.due_at(k);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => break,
                Some(ready) = ready_rx.recv() => ramp_tally.on(ready, &bar),
                _ = interrupt.cancelled() => break,
            }
        }
        if interrupt.is_cancelled() {
            break;
        }
        let params = ConnParams {
            ws_url: ws_urls[(k as usize) % ws_urls.len()].to_owned(),
            encoding,
            token: minter.mint(&format!("load-{k}"))?,
            channel_name: channels[(k % args.channels) as usize].clone(),
            channel: k % args.channels,
            space,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        conns.spawn(connection::run(
            params,
            ready_tx.clone(),
            latency_tx.clone(),
            stop.clone(),
        ));
    }
    drop(ready_tx);
    drop(latency_tx);
    // Every connection reports exactly once (its handshake has a timeout).
    let launched = conns.len() as u64;
    while ramp_tally.subscribed + ramp_tally.failed < launched {
        tokio::select! {
            ready = ready_rx.recv() => match ready {
                Some(ready) => ramp_tally.on(ready, &bar),
                None => break,
            },
            _ = interrupt.cancelled() => break,
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "ramp: {} subscribed, {} failed in {:.1} s",
        ramp_tally.subscribed,
        ramp_tally.failed,
        ramp_start.elapsed().as_secs_f64()
    );
    if ramp_tally.subscribed == 0 {
        stop.cancel();
        while conns.join_next().await.is_some() {}
        bail!(
            "no connection could subscribe; first failure: {}",
            ramp_tally.first_failure.as_deref().unwrap_or("none")
        );
    }

    // Publishing.
    let schedule = Schedule::new(args.rate, space.total);
    let counters = Arc::new(PublishCounters::default());
    let mut publishing = tokio::spawn(publisher::run(
        target,
        channels.clone(),
        space,
        schedule,
        args.publishers,
        counters.clone(),
        interrupt.clone(),
    ));
    let bar = ProgressBar::new(space.total);
    bar.set_style(style("publish   {bar:40} {pos}/{len} {msg}"));
    let mut progress = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    let outcome = loop {
        tokio::select! {
            done = &mut publishing => break done.context("the publisher panicked")??,
            _ = progress.tick() => {
                let acked = counters.acked.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                let delivered = delivered_live.load(Ordering::Relaxed);
                let per_sec = (delivered - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
                last = (Instant::now(), delivered);
                bar.set_position(acked + errors);
                bar.set_message(format!("{errors} errors, {delivered} delivered ({per_sec:.0}/s)"));
            }
        }
    };
    bar.finish_and_clear();

    // Grace: deliveries still in flight count.
    let bar = ProgressBar::new_spinner();
    bar.set_style(style("grace     {spinner} {msg}"));
    bar.set_message(format!("waiting {} s for late deliveries", args.grace));
    bar.enable_steady_tick(Duration::from_millis(120));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.grace)) => {}
        _ = interrupt.cancelled() => {}
    }
    bar.finish_and_clear();

    stop.cancel();
    let mut reports = Vec::with_capacity(launched as usize);
    while let Some(report) = conns.join_next().await {
        reports.push(report.context("a connection task panicked")?);
    }
    let latency = aggregator
        .await
        .context("the latency aggregator panicked")?;

    let t = tally(
        &outcome.acked,
        space,
        reports.iter().filter(|r| r.subscribed).map(|r| &r.received),
    );
    let mut disconnect_codes = BTreeMap::new();
    for dropped in reports.iter().filter_map(|r| r.dropped.as_ref()) {
        let code = dropped
            .code
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        *disconnect_codes.entry(code).or_insert(0u64) += 1;
    }
    let measured_s = outcome.measured_elapsed.as_secs_f64().max(1e-3);
    let achieved_rate = round1(outcome.acked_measured as f64 / measured_s);
    let mut result = RunResult {
        scenario: "fanout",
        format: encoding.name(),
        connections: args.connections,
        channels: args.channels,
        rate: args.rate,
        duration_s: args.duration,
        warmup_s: args.warmup,
        published: outcome.acked.total(),
        publish_errors: outcome.errors,
        achieved_rate,
        rate_met: report::rate_met(achieved_rate, args.rate),
        max_publish_lag_ms: round1(outcome.max_lag.as_secs_f64() * 1000.0),
        subscribed: reports.iter().filter(|r| r.subscribed).count() as u64,
        connect_failures: reports.iter().filter(|r| r.failure.is_some()).count() as u64
            + (args.connections - launched),
        expected_deliveries: t.expected,
        delivered: t.delivered,
        lost: t.lost,
        duplicated: t.duplicated,
        unexpected: t.unexpected,
        deliveries_per_sec: round1(t.delivered_measured as f64 / measured_s),
        latency_ms: LatencyMs::from_histogram_us(&latency.histogram),
        latency_samples_dropped: latency.dropped,
        disconnects: reports.iter().filter(|r| r.dropped.is_some()).count() as u64,
        disconnect_codes,
        unsubscribes: reports.iter().filter(|r| r.unsubscribed.is_some()).count() as u64,
        decode_errors: reports.iter().map(|r| r.decode_errors).sum(),
        generator_cpu_s: report::own_cpu_seconds(),
        completed: outcome.completed && !interrupt.is_cancelled(),
        ok: false,
        run_id,
    };
    result.ok = result.verdict();

    let mut notes = Vec::new();
    if let Some(failure) = reports.iter().find_map(|r| r.failure.as_ref()) {
        notes.push(format!("first connection failure: {failure}"));
    }
    if let Some(dropped) = reports.iter().find_map(|r| r.dropped.as_ref()) {
        notes.push(format!(
            "first disconnect: code {:?}, {}",
            dropped.code, dropped.reason
        ));
    }
    for sample in &outcome.error_samples {
        notes.push(format!("publish error: {sample}"));
    }
    eprintln!("{}", result.human(&notes));
    println!("{}", result.json_line());
    Ok(result)
}

/// Handshake outcomes seen so far, for the ramp progress bar.
#[derive(Default)]
struct RampTally {
    subscribed: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl RampTally {
    fn on(&mut self, ready: Ready, bar: &ProgressBar) {
        match ready {
            Ready::Subscribed => {
                self.subscribed += 1;
                bar.set_position(self.subscribed);
            }
            Ready::Failed(reason) => {
                self.failed += 1;
                self.first_failure.get_or_insert(reason);
                bar.set_message(format!("({} failed)", self.failed));
            }
        }
    }
}

fn validate(args: &FanoutArgs) -> Result<()> {
    for (name, value) in [
        ("--connections", args.connections),
        ("--channels", args.channels),
        ("--rate", args.rate),
        ("--duration", args.duration),
        ("--connect-rate", args.connect_rate),
    ] {
        if value == 0 {
            bail!("{name} must be at least 1");
        }
    }
    if args.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if args.channels > args.connections {
        eprintln!(
            "note: {} channels but only {} connections; some channels have no subscriber",
            args.channels, args.connections
        );
    }
    Ok(())
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_hub::{self, Faults};

    fn args(addr: std::net::SocketAddr, format: Format) -> FanoutArgs {
        FanoutArgs {
            ws_url: format!("ws://{addr}/connection/websocket"),
            api_url: format!("http://{addr}"),
            api_key: mock_hub::API_KEY.to_owned(),
            hmac_secret: "secret".to_owned(),
            connections: 20,
            channels: 3,
            rate: 300,
            duration: 1,
            warmup: 1,
            format,
            connect_rate: 200,
            publishers: 8,
            grace: 1,
            threads: None,
        }
    }

    async fn clean_run_is_exact(format: Format) {
        let (addr, hub) = mock_hub::start(Faults::default()).await;
        let r = run(args(addr, format)).await.unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.published, 600);
        // 20 connections over 3 channels: 7, 7 and 6 subscribers; 200 publishes each.
        assert_eq!(r.expected_deliveries, 200 * 20);
        assert_eq!(r.delivered, r.expected_deliveries);
        assert_eq!((r.lost, r.duplicated, r.unexpected), (0, 0, 0));
        assert_eq!(r.latency_ms.samples, 100 * 20, "warmup kept out of latency");
        assert_eq!(hub.pongs.load(Ordering::Relaxed), 20, "every ping answered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_json_run_delivers_every_acknowledged_publish_exactly_once() {
        clean_run_is_exact(Format::Json).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_protobuf_run_delivers_every_acknowledged_publish_exactly_once() {
        clean_run_is_exact(Format::Protobuf).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_and_doubled_publishes_are_counted_per_subscriber() {
        let faults = Faults {
            // Seq 4 is on channel 1 (7 subscribers), seq 8 on channel 2 (6).
            drop_seqs: [4].into(),
            duplicate_seqs: [8].into(),
            close_at_seq: None,
        };
        let (addr, _hub) = mock_hub::start(faults).await;
        let r = run(args(addr, Format::Json)).await.unwrap();
        assert!(!r.ok);
        assert_eq!(r.lost, 7);
        assert_eq!(r.duplicated, 6);
        assert_eq!(r.delivered + r.lost, r.expected_deliveries);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disconnect_mid_run_is_reported_with_its_code_and_its_losses() {
        let faults = Faults {
            // Seq 300 (channel 0, 7 subscribers) is half way through.
            close_at_seq: Some(300),
            ..Faults::default()
        };
        let (addr, _hub) = mock_hub::start(faults).await;
        let mut a = args(addr, Format::Protobuf);
        // One request in flight keeps publishes in seq order, so nothing
        // after seq 300 can overtake the close.
        a.publishers = 1;
        let r = run(a).await.unwrap();
        assert!(!r.ok);
        assert_eq!(r.disconnects, 7);
        assert_eq!(r.disconnect_codes.get("3008"), Some(&7));
        assert_eq!(
            r.subscribed, 20,
            "a later disconnect is not a connect failure"
        );
        // Channel 0 holds seqs 0, 3, .., 597: those from 300 on never arrive.
        assert_eq!(r.lost, 7 * 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_api_key_fails_before_any_connection_is_made() {
        let (addr, _hub) = mock_hub::start(Faults::default()).await;
        let mut a = args(addr, Format::Json);
        a.api_key = "wrong".to_owned();
        let err = run(a).await.unwrap_err();
        assert!(format!("{err:#}").contains("401"), "{err:#}");
    }
}
