//! `synchub-load`: load scenarios against a running synchub hub.
//!
//! Module map:
//! - `fanout`: the fanout scenario, its options and phases.
//! - `connection`: one WebSocket subscriber (connect, subscribe, pong, record).
//! - `publisher`: the fixed-rate HTTP publisher pool.
//! - `schedule`: fixed-rate due times (ramp and publishing).
//! - `accounting`: expected, delivered, lost and duplicated deliveries.
//! - `latency`: batching samples into one HdrHistogram.
//! - `token`: HS256 connection JWTs.
//! - `report`: the human summary and the JSON result line.

mod accounting;
mod connection;
mod fanout;
mod latency;
#[cfg(test)]
mod mock_hub;
mod publisher;
mod report;
mod schedule;
mod token;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Load generator for synchub.
#[derive(Parser)]
#[command(name = "synchub-load", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N subscribers over C channels, publishes at a fixed rate through the
    /// HTTP API; reports deliveries/s, latency percentiles, loss, duplicates.
    Fanout(fanout::FanoutArgs),
}

/// Exit status of a run that completed but was not clean (loss, duplicates,
/// errors, failures, disconnects), so scripts can tell it from a crash (1).
const EXIT_NOT_OK: u8 = 3;

fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let threads = match &cli.scenario {
        Scenario::Fanout(args) => args.threads,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let ok = runtime.block_on(async {
        match cli.scenario {
            Scenario::Fanout(args) => fanout::run(args).await.map(|r| r.ok),
        }
    })?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_OK)
    })
}
