//! The `synchub` binary: subcommands only; the work lives in the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use synchub::auth::{ConnectClaims, SubscribeClaims, mint, now_unix};
use synchub::config::Config;
use synchub::startup::{Application, resolve_secrets};

#[derive(Parser)]
#[command(
    name = "synchub",
    version,
    about = "Real-time collaboration hub (Centrifugo protocol v2)"
)]
struct Cli {
    /// TOML configuration file (also `SYNCHUB_CONFIG`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway and the API (the default).
    Serve,
    /// Mint a connection token (or, with --channel, a subscription token).
    Token {
        #[arg(long, default_value = "")]
        sub: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Comma-separated roles, e.g. `admin`.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m`, `0` for no expiry.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Mint a subscription token for this channel instead.
        #[arg(long)]
        channel: Option<String>,
        /// JSON connection info (shown to others in presence).
        #[arg(long)]
        info: Option<String>,
    },
    /// Validate the configuration and print the effective values (secrets masked).
    CheckConfig,
    /// Run the Zoho CRM v8 emulator (for tests, demos and local development).
    ZohoSim(synchub::zoho::sim::SimArgs),
    /// Apply pending database migrations (SQLite in the data dir, or SYNCHUB_DATABASE_URL) and exit.
    Migrate,
    /// Run the Zoho sync workers alone (no HTTP or WebSocket), until stopped.
    Worker,
    /// Run one sync session now, in this process, with a progress bar.
    Sync {
        /// `full` or `incremental` (push sessions run in the workers: use the API).
        #[arg(value_parser = ["full", "incremental"])]
        kind: String,
        /// The Zoho module (`Deals`) or local entity (`deals`).
        #[arg(long)]
        module: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(cli.config)),
        Command::ZohoSim(args) => runtime.block_on(async {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("SYNCHUB_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let cancel = tokio_util::sync::CancellationToken::new();
            let sim = synchub::zoho::sim::run(args, cancel.clone());
            tokio::pin!(sim);
            tokio::select! {
                r = &mut sim => r,
                () = synchub::shutdown::signal() => {
                    cancel.cancel();
                    sim.await
                }
            }
        }),
        Command::Worker => runtime.block_on(async {
            init_logs();
            let config = Config::load(cli.config.as_deref())?;
            synchub::startup::run_worker(config, synchub::shutdown::signal()).await
        }),
        Command::Sync { kind, module } => runtime.block_on(sync_now(cli.config, &kind, &module)),
        Command::Migrate => {
            let config = Config::load(cli.config.as_deref())?;
            let backend = runtime.block_on(synchub::store::migrate(&config))?;
            eprintln!("{backend} database is up to date");
            Ok(())
        }
        Command::CheckConfig => {
            let config = Config::load(cli.config.as_deref())?;
            println!("{}", config.to_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Token {
            sub,
            tenant,
            roles,
            ttl,
            channel,
            info,
        } => {
            let mut config = Config::load(cli.config.as_deref())?;
            resolve_secrets(&mut config)?;
            let secret = config
                .auth
                .token_hmac_secret
                .as_ref()
                .context("no HMAC secret configured (tokens are signed with the RS/ES private key elsewhere)")?;
            let ttl = humantime::parse_duration(&ttl)
                .or_else(|e| {
                    if ttl == "0" {
                        Ok(std::time::Duration::ZERO)
                    } else {
                        Err(e)
                    }
                })
                .context("--ttl")?;
            let exp = (!ttl.is_zero()).then(|| now_unix() + ttl.as_secs() as i64);
            let info = info
                .map(|i| serde_json::value::RawValue::from_string(i).context("--info must be JSON"))
                .transpose()?;
            let token = match channel {
                Some(channel) => mint(
                    secret.expose(),
                    &SubscribeClaims {
                        sub,
                        channel,
                        exp,
                        info,
                        ..Default::default()
                    },
                )?,
                None => mint(
                    secret.expose(),
                    &ConnectClaims {
                        sub,
                        exp,
                        tenant,
                        roles,
                        info,
                        ..Default::default()
                    },
                )?,
            };
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCHUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::load(config_file.as_deref())?;
    let app = Application::build(config).await?;
    let addr = app.addr();
    println!(
        "synchub {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "  WebSocket: ws://{addr}/connection/websocket   server API: http://{addr}/api/<method>"
    );
    if !app.generated_secrets.is_empty() {
        println!(
            "  generated {} into {}",
            app.generated_secrets.join(", "),
            app.secrets_file.display()
        );
    }
    println!(
        "  mint a connection token:  synchub token --sub alice   (add --tenant, --roles admin, --ttl 1h)"
    );
    println!(
        "  the server API key (tenant `default`) is `api_key` in {}",
        app.secrets_file.display()
    );
    app.run_until_stopped(synchub::shutdown::signal()).await
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCHUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `synchub sync full --module Deals`: one session with a progress bar.
async fn sync_now(config_file: Option<PathBuf>, kind: &str, module: &str) -> anyhow::Result<()> {
    use std::sync::Arc;
    init_logs();
    let config = Config::load(config_file.as_deref())?;
    let kind = synchub::sync::SessionKind::parse(kind).context("kind")?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} [{bar:40}] {pos}/{len} ({percent}%) {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(module.to_owned());
    let shown = bar.clone();
    let sink: synchub::sync::SessionSink = Arc::new(move |_tenant, event| {
        let s = &event["session"];
        if let Some(total) = s["total"].as_u64() {
            shown.set_length(total);
        }
        if let Some(done) = s["processed"].as_u64() {
            shown.set_position(done);
        }
    });
    let session = synchub::startup::run_session(config, kind, module, sink).await?;
    bar.finish();
    println!(
        "{} sync of {}: {} - {} processed, {} created, {} updated, {} deleted, {} unchanged, {} conflicts, {} skipped, {} errors, {} API calls, {} ms",
        session.kind.as_str(),
        session.module,
        session.status,
        session.processed,
        session.created,
        session.updated,
        session.deleted,
        session.unchanged,
        session.conflicts,
        session.skipped,
        session.errors,
        session.api_calls,
        session.duration_ms.unwrap_or(0)
    );
    match session.error {
        Some(e) => anyhow::bail!("the session failed: {e}"),
        None => Ok(()),
    }
}
