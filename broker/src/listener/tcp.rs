//! The TCP accept loop: connection limit, TCP_NODELAY, back-off on accept errors.

use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::connection;
use crate::metrics::Metrics;

/// Accepts connections until the task is aborted.
pub async fn accept_loop(broker: Broker, listener: TcpListener) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        Metrics::add(&broker.metrics.connections_accepted, 1);
        let Ok(permit) = broker.connection_slots.clone().try_acquire_owned() else {
            Metrics::add(&broker.metrics.connections_refused_limit, 1);
            tracing::debug!(%peer, "max_connections reached: connection closed");
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            connection::serve(broker, reader, writer, peer).await;
            drop(permit);
        });
    }
}
