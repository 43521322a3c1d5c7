//! Running a broker: the MQTT listeners, the HTTP listener with its bridges and the `$SYS`
//! publisher, until a shutdown signal; then the drain. The only module that knows every
//! part; `main` and the tests start brokers through it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::checkpointer::{self, Opened};
use crate::config::Config;
use crate::http::bridge::Bridges;
use crate::listener::{self, tcp, Bound};
use crate::sys;

/// How long shutdown waits for connections to say goodbye and flush.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the broker on `listeners` until `shutdown` completes; then stops accepting, tells
/// every connection to close (DISCONNECT 0x8B for 5.0), and waits for them to flush.
pub async fn run(
    bridges: Arc<Bridges>,
    listeners: Vec<Bound>,
    http: Option<TcpListener>,
    failed: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    let broker = bridges.broker().clone();
    let cluster = &broker.cluster_config().clone();
    if cluster.enabled {
        // Joined before the listeners open: the first SUBSCRIBE already takes interest.
        if let Err(e) = crate::cluster::start(&broker, cluster).await {
            tracing::error!(error = %e, "cannot join the cluster; stopping");
            broker.shutdown();
            checkpointer::finish(&broker).await;
            return;
        }
    }
    // Then the MQTT bridges: their local sessions are subscribed before a client can
    // publish (the listeners are bound, but nothing is accepted until their loops run).
    let mqtt_bridges = crate::mqtt_bridge::MqttBridges::start(broker.clone()).await;
    bridges.set_mqtt_bridges(mqtt_bridges.clone());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let checkpoints = tokio::spawn(checkpointer::run(broker.clone(), failed));
    if let Some(http) = http {
        tasks.push(tokio::spawn(crate::http::accept_loop(bridges, http)));
    }
    for bound in listeners {
        tasks.push(tokio::spawn(tcp::accept_loop(
            broker.clone(),
            bound.listener,
            bound.transport,
        )));
    }
    tasks.push(tokio::spawn(sys::run(broker.clone())));
    // A failed journal stops the broker like a signal (the checkpointer shuts it down).
    let mut stopped = broker.shutdown_signal();
    tokio::select! {
        () = shutdown => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
    tracing::info!("shutting down");
    // The bridges first: their local sessions are kept (with what they still queue).
    mqtt_bridges.stop().await;
    broker.shutdown();
    let _ = checkpoints.await;
    for task in &tasks {
        task.abort();
    }
    let slots = broker.connection_slots().clone();
    let all = broker.connection_slot_count();
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
    }
    checkpointer::finish(&broker).await;
}

/// A broker started in the background (tests, embedding).
#[derive(Debug)]
pub struct Running {
    /// The broker.
    pub broker: Broker,
    /// Its HTTP bridges (SSE, WebSocket JSON).
    pub bridges: Arc<Bridges>,
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
    let listeners = listener::bind_all(&config).await?;
    let addrs = listeners
        .iter()
        .map(Bound::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let http = listener::bind_http(&config).await?;
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let Opened { broker, failed } = checkpointer::open_broker(config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bridges = Bridges::new(broker.clone());
    let task = tokio::spawn(run(bridges.clone(), listeners, http, failed, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        broker,
        bridges,
        addrs,
        http_addr,
        task,
        stop: Some(stop),
    })
}
