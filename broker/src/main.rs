//! The `tern` binary: parses arguments and configuration, sets up logging, installs the
//! signal handlers and runs the broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use tern_broker::config::{Config, LogFormat};

use tern_broker::http::bridge::Bridges;
use tern_broker::listener;

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
        #[arg(long, conflicts_with = "scram")]
        pbkdf2: bool,
        /// Store SCRAM-SHA-256 credentials (salted StoredKey and ServerKey, 4096
        /// iterations), for MQTT 5 enhanced authentication; plain passwords work too.
        #[arg(long)]
        scram: bool,
    },
    /// Check a configuration file (and the password, ACL and certificate files it names)
    /// without starting the broker. Exits 0 when valid, 1 with the reason otherwise.
    CheckConfig {
        /// The configuration file.
        path: PathBuf,
    },
    /// Talk to a running broker through its admin API (`[admin]`): list and kick clients,
    /// sessions, retained messages, publish, reload.
    Ctl(tern_broker::ctl::CtlArgs),
    /// Convert a Mosquitto 2.x configuration (mosquitto.conf and the files its include_dir
    /// names) to a commented Tern configuration. What cannot be converted is listed at the
    /// top of the output and printed as warnings on stderr.
    Convert {
        /// The Mosquitto configuration file.
        path: PathBuf,
        /// Where to write the Tern configuration (default: standard output).
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

/// jemalloc, chosen by measurement: frames are allocated by the task that reads them and
/// freed by whichever worker delivers them last, and glibc's malloc serialised those
/// cross-thread frees on its arena locks (futex waits in `perf`). p2p QoS 1 (100 pairs,
/// `tern-bench`): about 1.35x the messages/s at two thirds of the p99, and a slightly smaller
/// idle connection. The numbers are in bench/README.md ("Observations").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Passwd {
        file,
        user,
        pbkdf2,
        scram,
    }) = &args.command
    {
        use tern_broker::auth::password::{passwd_command, HashKind};
        let kind = match (pbkdf2, scram) {
            (true, _) => HashKind::Pbkdf2,
            (_, true) => HashKind::Scram,
            _ => HashKind::Argon2id,
        };
        passwd_command(file, user, kind).with_context(|| format!("updating {}", file.display()))?;
        return Ok(());
    }
    if let Some(Command::CheckConfig { path }) = &args.command {
        return check_config(path);
    }
    if let Some(Command::Ctl(ctl)) = &args.command {
        return run_ctl(ctl);
    }
    if let Some(Command::Convert { path, output }) = &args.command {
        return convert(path, output.as_deref());
    }
    let config = Config::load(args.config.as_deref())?;
    let log = init_tracing(&config, args.log_level.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Signals are caught from the start: a SIGTERM during recovery or right after the
        // listeners open still stops the broker gracefully (final checkpoint).
        let shutdown = shutdown_signal().context("installing the SIGTERM/SIGINT handlers")?;
        // Recovery first: a data directory locked by another broker stops us before we
        // bind, and no client is accepted before the state is back.
        let opened = tern_broker::checkpointer::open_broker(config.clone())?;
        let listeners = listener::bind_all(&config).await?;
        for bound in &listeners {
            tracing::info!(kind = ?bound.kind, addr = %bound.local_addr()?, "listening");
        }
        let http = listener::bind_http(&config).await?;
        if let Some(http) = &http {
            tracing::info!(addr = %http.local_addr()?, "HTTP listening (/health, /metrics)");
        }
        let bridges = tern_broker::http::bridge::Bridges::new(opened.broker);
        tokio::spawn(reload_on_sighup(bridges.clone(), args.config.clone(), log));
        tokio::spawn(drain_on_sigusr1(bridges.broker().clone()));
        tern_broker::server::run(bridges, listeners, http, opened.failed, shutdown).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Changes the log filter at run time.
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs the log subscriber: `RUST_LOG`, else `--log-level`, else `[log] level`; text or
/// JSON lines on stderr. Returns the handle that SIGHUP uses to change the level.
fn init_tracing(config: &Config, cli_level: Option<&str>) -> LogHandle {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cli_level.unwrap_or(&config.log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    handle
}

/// `tern check-config PATH`.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let result = Config::load(Some(path))
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            tern_broker::auth::AuthState::load(&config.auth)?;
            tern_broker::http::admin::load_token(&config.admin)?;
            for listener in config.listeners.iter().filter(|l| l.kind.is_tls()) {
                tern_broker::listener::tls::acceptor(listener)?;
            }
            for bridge in &config.mqtt_bridges {
                tern_broker::mqtt_bridge::check_tls(bridge)?;
            }
            tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| {
                anyhow::anyhow!(
                    "{}: log.level = {:?}: {e}",
                    path.display(),
                    config.log.level
                )
            })?;
            Ok(())
        });
    match result {
        Ok(()) => {
            println!("{}: configuration is valid", path.display());
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: invalid configuration: {e:#}", path.display());
            std::process::exit(1);
        }
    }
}

/// `tern ctl ...`: one admin API request; prints the answer, exits 1 on failure.
fn run_ctl(ctl: &tern_broker::ctl::CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match runtime.block_on(tern_broker::ctl::run(ctl)) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(e) => {
            eprintln!("tern ctl: {e}");
            std::process::exit(1);
        }
    }
}

/// `tern convert PATH [-o OUTPUT]`: the Tern configuration on stdout or in OUTPUT, one
/// warning per finding on stderr. Exits 1 only when the input cannot be read or the output
/// written.
fn convert(path: &std::path::Path, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    let conversion = tern_broker::convert::convert_file(path)?;
    if let Some(output) = output {
        let same = |a: &std::path::Path| {
            std::fs::canonicalize(a).ok() == std::fs::canonicalize(output).ok()
        };
        if output.exists() && conversion.files.iter().any(|f| same(f)) {
            anyhow::bail!(
                "{} is one of the Mosquitto files being converted; choose another output",
                output.display()
            );
        }
    }
    for finding in &conversion.findings {
        eprintln!("warning: {finding}");
    }
    match output {
        Some(output) => {
            std::fs::write(output, &conversion.toml)
                .with_context(|| format!("writing {}", output.display()))?;
            // A converted file that Tern itself refuses is a bug of the converter.
            Config::load(Some(output))?;
            eprintln!(
                "wrote {} ({} not converted as written, listed at its top); check it with \
                 `tern check-config {}`",
                output.display(),
                conversion.findings.len(),
                output.display()
            );
        }
        None => print!("{}", conversion.toml),
    }
    Ok(())
}

/// Reloads the configuration on every SIGHUP and every admin API reload request; an
/// invalid one keeps the old in force.
async fn reload_on_sighup(bridges: Arc<Bridges>, path: Option<PathBuf>, log: LogHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload disabled");
            return;
        }
    };
    let set_level = |level: &str| -> Result<(), String> {
        if std::env::var_os("RUST_LOG").is_some() {
            return Ok(()); // RUST_LOG wins over the file, as at startup
        }
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        log.reload(filter).map_err(|e| e.to_string())
    };
    let (hook, mut requests) = tokio::sync::mpsc::channel(4);
    bridges.admin().set_reload_hook(hook);
    loop {
        let reply = tokio::select! {
            signal = hangups.recv() => match signal {
                Some(()) => None,
                None => return,
            },
            request = requests.recv() => match request {
                Some(reply) => Some(reply),
                None => return,
            },
        };
        let result = tern_broker::reload::reload(&bridges, path.as_deref(), &set_level);
        if let Some(reply) = reply {
            let _ = reply.send(match &result {
                Ok(report) => Ok(format!(
                    "{} sessions re-checked; needs restart: {:?}",
                    report.sessions_rechecked, report.needs_restart
                )),
                Err(e) => Err(e.to_string()),
            });
        }
        match result {
            Ok(report) => {
                tracing::info!(
                    sessions_rechecked = report.sessions_rechecked,
                    bridge_rings_rechecked = report.bridges.rings,
                    bridge_entries_blanked = report.bridges.entries_blanked,
                    redirected = report.redirected,
                    mqtt_bridges_started = ?report.mqtt_bridges.started,
                    mqtt_bridges_restarted = ?report.mqtt_bridges.restarted,
                    mqtt_bridges_stopped = ?report.mqtt_bridges.stopped,
                    "configuration reloaded"
                );
                if !report.needs_restart.is_empty() {
                    tracing::warn!(changed = ?report.needs_restart, "these settings changed but take effect only after a restart");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the previous configuration stays in force")
            }
        }
    }
}

/// Drains the broker on every SIGUSR1: connected clients are sent elsewhere (DISCONNECT
/// 0x9C or 0x9D with `[mqtt] server_reference`) and new ones are redirected, until a
/// reload with `redirect = "none"`.
async fn drain_on_sigusr1(broker: tern_broker::Broker) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1: drain disabled");
            return;
        }
    };
    while signals.recv().await.is_some() {
        let redirected = broker.drain();
        tracing::info!(
            redirected,
            "draining: clients are sent to the server reference"
        );
    }
}

/// Completes on SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
