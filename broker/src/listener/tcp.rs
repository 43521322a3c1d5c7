//! The accept loop shared by every listener kind: connection limit, TCP_NODELAY, back-off on
//! accept errors, then the transport's handshake (TLS, WebSocket, both or neither) in the
//! connection's own task, bounded by the connect timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use tern_codec::ReasonCode;

use super::{refuse, tls, ws};
use crate::broker::Broker;
use crate::config::ListenerKind;
use crate::connection::{self, PeerInfo};
use crate::metrics::Metrics;

/// What a listener does with an accepted socket.
#[derive(Clone)]
pub struct Transport {
    /// The listener kind.
    pub kind: ListenerKind,
    /// TLS acceptor for tls and wss.
    pub tls: Option<TlsAcceptor>,
    /// Take the user name from the client certificate's Common Name.
    pub use_identity_as_username: bool,
    /// This listener's redirection, if it has one.
    pub redirect: Option<Arc<crate::config::ListenerRedirect>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Accepts connections until the task is aborted.
pub async fn accept_loop(broker: Broker, listener: TcpListener, transport: Arc<Transport>) {
    let mut backoff = Duration::from_millis(5);
    let refusals = Arc::new(tokio::sync::Semaphore::new(refuse::REFUSAL_BUDGET));
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
        Metrics::add(&broker.metrics().connections_accepted, 1);
        let now = tokio::time::Instant::now();
        let admission = match broker.ip_limits().admit(peer.ip(), now) {
            Ok(admission) => admission,
            Err(refusal) => {
                Metrics::add(refusal.counter(broker.metrics()), 1);
                tracing::debug!(%peer, ?refusal, "per-IP limit: connection refused");
                refuse::refuse(stream, &transport, ReasonCode::QUOTA_EXCEEDED, &refusals);
                continue;
            }
        };
        let Ok(permit) = broker.connection_slots().clone().try_acquire_owned() else {
            Metrics::add(&broker.metrics().connections_refused_limit, 1);
            tracing::debug!(%peer, "max_connections reached: connection refused");
            refuse::refuse(stream, &transport, ReasonCode::SERVER_BUSY, &refusals);
            continue;
        };
        let send_buffer = broker.limits().socket_send_buffer_bytes;
        if send_buffer > 0 {
            // A bounded kernel send buffer keeps what waits for a slow reader in our
            // SharedWriter, where back-pressure and the slow-consumer policy can see it,
            // instead of megabytes of autotuned kernel buffer (seconds of latency).
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer) {
                tracing::debug!(%peer, error = %e, "cannot set SO_SNDBUF");
            }
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let broker = broker.clone();
        let transport = transport.clone();
        // Plain TCP gets a task whose future is just the connection: the TLS and WebSocket
        // states would otherwise make every connection's task as large as theirs.
        if transport.kind == ListenerKind::Tcp {
            let (reader, writer) = stream.into_split();
            let info = PeerInfo {
                addr: peer,
                cert_username: None,
                redirect: transport.redirect.clone(),
            };
            tokio::spawn(connection::serve_guarded(
                broker,
                reader,
                writer,
                info,
                (permit, admission),
            ));
        } else {
            tokio::spawn(async move {
                handle(broker, stream, peer, &transport).await;
                drop(permit);
                drop(admission);
            });
        }
    }
}

async fn handle(broker: Broker, stream: TcpStream, peer: SocketAddr, transport: &Transport) {
    let limits = broker.limits();
    let timeout = Duration::from_millis(limits.connect_timeout_ms);
    let max_packet = limits.max_packet_size_bytes;
    let info = PeerInfo {
        addr: peer,
        cert_username: None,
        redirect: transport.redirect.clone(),
    };
    match (transport.kind, &transport.tls) {
        (ListenerKind::Tcp, _) => {
            let (reader, writer) = stream.into_split();
            Box::pin(connection::serve_with(broker, reader, writer, info)).await;
        }
        (ListenerKind::Ws, _) => {
            match tokio::time::timeout(timeout, ws::accept(stream, max_packet)).await {
                Ok(Ok(ws)) => {
                    let (reader, writer) = tokio::io::split(ws);
                    connection::serve_with(broker, reader, writer, info).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
                Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
            }
        }
        (ListenerKind::Tls | ListenerKind::Wss, Some(acceptor)) => {
            let tls_stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    Metrics::add(&broker.metrics().tls_handshake_failures, 1);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    Metrics::add(&broker.metrics().tls_handshake_failures, 1);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert_username = if transport.use_identity_as_username {
                let name = tls_stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| tls::common_name(c));
                if name.is_none() {
                    tracing::debug!(%peer, "client certificate has no Common Name: connection closed");
                    return;
                }
                name
            } else {
                None
            };
            let info = PeerInfo {
                addr: peer,
                cert_username,
                redirect: transport.redirect.clone(),
            };
            if transport.kind == ListenerKind::Tls {
                let (reader, writer) = tokio::io::split(tls_stream);
                connection::serve_with(broker, reader, writer, info).await;
            } else {
                match tokio::time::timeout(timeout, ws::accept(tls_stream, max_packet)).await {
                    Ok(Ok(ws)) => {
                        let (reader, writer) = tokio::io::split(ws);
                        connection::serve_with(broker, reader, writer, info).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
                    Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
                }
            }
        }
        (ListenerKind::Tls | ListenerKind::Wss, None) => {
            tracing::error!(%peer, "TLS listener without an acceptor: connection closed");
        }
    }
}
