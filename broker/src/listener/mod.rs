//! Listeners: bind the configured addresses, accept connections under the connection limit,
//! and run the broker until a shutdown signal, then drain.

pub mod ip_limits;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::{Config, ListenerKind};
use crate::sys;

/// How long shutdown waits for connections to say goodbye and flush.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener, ready to accept.
#[derive(Debug)]
pub struct Bound {
    /// Transport.
    pub kind: ListenerKind,
    /// What to do with accepted sockets.
    pub transport: std::sync::Arc<tcp::Transport>,
    /// The socket.
    pub listener: TcpListener,
}

impl Bound {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds every configured listener.
///
/// # Errors
/// The first address that cannot be bound, with the address in the message.
pub async fn bind_all(config: &Config) -> std::io::Result<Vec<Bound>> {
    tls::install_crypto_provider();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let tls = if listener.kind.is_tls() {
            let acceptor = tls::acceptor(listener).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{:?} listener on {}: {e}", listener.kind, listener.bind),
                )
            })?;
            Some(acceptor)
        } else {
            None
        };
        let socket = TcpListener::bind(listener.bind).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot bind {:?} listener on {}: {e}",
                    listener.kind, listener.bind
                ),
            )
        })?;
        let transport = tcp::Transport {
            kind: listener.kind,
            tls,
            use_identity_as_username: listener.use_identity_as_username,
        };
        bound.push(Bound {
            kind: listener.kind,
            transport: std::sync::Arc::new(transport),
            listener: socket,
        });
    }
    Ok(bound)
}

/// Binds the HTTP listener, when enabled.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind_http(config: &Config) -> std::io::Result<Option<TcpListener>> {
    if !config.http.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(config.http.bind).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the HTTP listener on {}: {e}", config.http.bind),
        )
    })?;
    Ok(Some(listener))
}

/// Runs the broker on `listeners` until `shutdown` completes; then stops accepting, tells
/// every connection to close (DISCONNECT 0x8B for 5.0), and waits for them to flush.
pub async fn run(
    broker: Broker,
    listeners: Vec<Bound>,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if let Some(http) = http {
        tasks.push(tokio::spawn(crate::http::accept_loop(broker.clone(), http)));
    }
    for bound in listeners {
        tasks.push(tokio::spawn(tcp::accept_loop(
            broker.clone(),
            bound.listener,
            bound.transport,
        )));
    }
    tasks.push(tokio::spawn(sys::run(broker.clone())));
    shutdown.await;
    tracing::info!("shutting down");
    broker.shutdown();
    for task in &tasks {
        task.abort();
    }
    let slots = broker.connection_slots.clone();
    let all = u32::try_from(
        broker
            .config
            .limits
            .max_connections
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    )
    .unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
    }
}

/// A broker started in the background (tests, embedding).
#[derive(Debug)]
pub struct Running {
    /// The broker.
    pub broker: Broker,
    /// The bound addresses, in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// The HTTP listener's address, when enabled.
    pub http_addr: Option<SocketAddr>,
    /// Completes after shutdown and drain.
    pub task: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Triggers a graceful shutdown and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Binds and runs a broker in the background.
///
/// # Errors
/// Binding failed, or an `[auth]` file could not be loaded (`InvalidInput`).
pub async fn start(config: Config) -> std::io::Result<Running> {
    let listeners = bind_all(&config).await?;
    let addrs = listeners
        .iter()
        .map(Bound::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let http = bind_http(&config).await?;
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let broker = Broker::try_new(config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(broker.clone(), listeners, http, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        broker,
        addrs,
        http_addr,
        task,
        stop: Some(stop),
    })
}
