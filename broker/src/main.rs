//! The `tern` binary: parses arguments and configuration, sets up logging, installs the
//! signal handlers and runs the broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tern_broker::config::{Config, LogFormat};
use tern_broker::{listener, Broker};

/// Tern: an MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it the embedded defaults are used.
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or an env-filter directive). Overrides
    /// the config file; RUST_LOG overrides both.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// A command to run instead of the broker.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands other than running the broker.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add a user to a password file, or change their password. The password is read from
    /// standard input (one line) when it is not a terminal, else asked for twice.
    Passwd {
        /// The password file (mosquitto_passwd format); created if missing.
        file: PathBuf,
        /// The user name.
        user: String,
        /// Hash with PBKDF2-SHA512 ($7$, as mosquitto_passwd) instead of Argon2id, for a
        /// file Mosquitto must read too.
        #[arg(long)]
        pbkdf2: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Passwd { file, user, pbkdf2 }) = &args.command {
        tern_broker::auth::password::passwd_command(file, user, *pbkdf2)
            .with_context(|| format!("updating {}", file.display()))?;
        return Ok(());
    }
    let config = Config::load(args.config.as_deref())?;
    init_tracing(&config, args.log_level.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listeners = listener::bind_all(&config).await?;
        for bound in &listeners {
            tracing::info!(kind = ?bound.kind, addr = %bound.local_addr()?, "listening");
        }
        let http = listener::bind_http(&config).await?;
        if let Some(http) = &http {
            tracing::info!(addr = %http.local_addr()?, "HTTP listening (/health, /metrics)");
        }
        let broker = Broker::try_new(config).context("loading the [auth] files")?;
        listener::run(broker, listeners, http, shutdown_signal()).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn init_tracing(config: &Config, cli_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cli_level.unwrap_or(&config.log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
