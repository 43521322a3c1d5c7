//! Listeners: bind the configured addresses and accept MQTT connections (TCP, TLS,
//! WebSocket) under the connection limits; [`crate::server`] runs them.

mod refuse;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{Config, ListenerKind};

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
            redirect: listener.redirect.clone().map(std::sync::Arc::new),
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
