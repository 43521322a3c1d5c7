//! Enhanced authentication (section 4.12) with SCRAM-SHA-256 ([`crate::auth::scram`]):
//! the exchange at CONNECT, before CONNACK, and re-authentication (AUTH 0x19) on a live
//! connection.
//!
//! At CONNECT: client-first in CONNECT's Authentication Data, server-first in AUTH 0x18
//! ([MQTT-4.12.0-2]), client-final in AUTH 0x18 ([MQTT-4.12.0-3]), server-final in the
//! CONNACK, which names the method again ([MQTT-4.12.0-5]). An unknown method (or SCRAM
//! without a password file) is CONNACK 0x8C ([MQTT-4.12.0-1]); a wrong proof, an unknown
//! user or a malformed message 0x86; anything but AUTH or DISCONNECT meanwhile 0x82. The
//! CONNECT timeout bounds the whole exchange (the handshake's deadline).
//!
//! Re-authentication: the same exchange in AUTH packets, AUTH 0x00 with server-final at the
//! end. It must name the same method ([MQTT-4.12.1-1]) and the same user; the connection
//! goes on meanwhile, and a failure ends it with DISCONNECT 0x87 ([MQTT-4.12.1-2]). Only a
//! client that authenticated with a method at CONNECT may send AUTH ([MQTT-4.12.0-7]).
//!
//! Nothing here logs authentication data.

use bytes::Bytes;
use tern_codec::{Auth, ByteStr, Connect, Packet, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::handshake::refuse;
use super::io::PacketReader;
use super::output::Output;
use super::Connection;
use crate::auth::scram::{self, ScramError, ServerExchange};
use crate::auth::AuthState;
use crate::broker::Broker;
use crate::delivery::shared_writer::SharedWriter;
use crate::error::{Close, ProtocolError};
use crate::metrics::Metrics;

/// A successful exchange at CONNECT.
#[derive(Debug)]
pub(super) struct Authenticated {
    /// The server-final message, for the CONNACK's Authentication Data.
    pub(super) server_final: Bytes,
}

/// Why an exchange failed: the CONNACK code at CONNECT (5.0 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExchangeError {
    /// Not a method we offer: 0x8C.
    Method,
    /// The SCRAM exchange failed: 0x86.
    Scram(ScramError),
    /// The client broke the exchange's packet order: 0x82.
    Protocol,
    /// No randomness for the nonce: 0x88.
    Unavailable,
}

impl ExchangeError {
    fn reason_code(self) -> ReasonCode {
        match self {
            ExchangeError::Method => ReasonCode::BAD_AUTHENTICATION_METHOD,
            ExchangeError::Scram(_) => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ExchangeError::Protocol => ReasonCode::PROTOCOL_ERROR,
            ExchangeError::Unavailable => ReasonCode::SERVER_UNAVAILABLE,
        }
    }
}

/// An AUTH packet with the method, `code` and `data`.
fn auth_packet(code: ReasonCode, data: String) -> Auth {
    let mut auth = Auth {
        reason_code: code,
        ..Auth::default()
    };
    auth.properties.authentication_method = Some(ByteStr::from(scram::METHOD));
    auth.properties.authentication_data = Some(Bytes::from(data));
    auth
}

/// Starts a SCRAM exchange from a client-first message: the exchange and server-first.
fn start(
    state: &AuthState,
    method: Option<&str>,
    client_first: Option<&Bytes>,
) -> Result<(ServerExchange, String), ExchangeError> {
    if method != Some(scram::METHOD) || !state.offers_scram() {
        return Err(ExchangeError::Method);
    }
    let client_first = client_first.ok_or(ExchangeError::Scram(ScramError::Malformed))?;
    let nonce = scram::random_nonce().map_err(|_| ExchangeError::Unavailable)?;
    ServerExchange::start(client_first, |user| state.scram_credentials(user), &nonce)
        .map_err(ExchangeError::Scram)
}

/// Runs the exchange of a CONNECT that names an Authentication Method. On success the
/// CONNECT's user name is the one SCRAM authenticated (a different one in CONNECT fails)
/// and its password is dropped. The caller bounds it with the CONNECT deadline.
///
/// # Errors
/// The [`Close`] that ends the connection; a refusing CONNACK has been queued on `out`.
pub(super) async fn authenticate<R, W>(
    broker: &Broker,
    reader: &mut PacketReader<R>,
    output: &mut Output<W>,
    out: &SharedWriter,
    connect: &mut Connect,
) -> Result<Authenticated, Close>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = connect.protocol;
    let fail = |error: ExchangeError| {
        Metrics::add(&broker.metrics().auth_failures, 1);
        tracing::debug!(client_id = %connect.client_id, ?error, "enhanced authentication failed");
        refuse(out, version, error.reason_code())
    };
    let state = broker.auth().current();
    let properties = &connect.properties;
    let (exchange, server_first) = match start(
        &state,
        properties.authentication_method.as_deref(),
        properties.authentication_data.as_ref(),
    ) {
        Ok(started) => started,
        Err(error) => return Err(fail(error)),
    };
    let continue_auth = auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, server_first);
    Packet::Auth(Box::new(continue_auth)).encode(version, out.lock().buf());
    flush(broker, output, out).await?;
    let client_final = match reader.next_packet().await?.0 {
        Packet::Auth(auth)
            if auth.reason_code == ReasonCode::CONTINUE_AUTHENTICATION
                && auth.properties.authentication_method.as_deref() == Some(scram::METHOD) =>
        {
            auth.properties.authentication_data.unwrap_or_default()
        }
        Packet::Disconnect(d) => return Err(Close::ClientDisconnect(d.reason_code)),
        _ => return Err(fail(ExchangeError::Protocol)),
    };
    let server_final = match exchange.finish(&client_final) {
        Ok(server_final) => server_final,
        Err(error) => return Err(fail(ExchangeError::Scram(error))),
    };
    if connect
        .username
        .as_deref()
        .is_some_and(|name| name != exchange.username())
    {
        return Err(fail(ExchangeError::Scram(ScramError::Authzid)));
    }
    connect.username = Some(ByteStr::from(exchange.username()));
    connect.password = None;
    Metrics::add(&broker.metrics().enhanced_auth_successes, 1);
    Ok(Authenticated {
        server_final: Bytes::from(server_final),
    })
}

/// Writes what `out` holds now (the AUTH of an exchange, before the connection's loop runs).
async fn flush<W: AsyncWrite + Unpin>(
    broker: &Broker,
    output: &mut Output<W>,
    out: &SharedWriter,
) -> Result<(), Close> {
    // Nothing before CONNACK waits for the journal: durable "everywhere".
    while let Ok(true) = output.refill(out, crate::delivery::shared_writer::Reached::ALL) {
        let written = output.progress().await?;
        Metrics::add(&broker.metrics().bytes_sent, written as u64);
    }
    Ok(())
}

impl Connection {
    /// Handles an AUTH packet on a live connection (re-authentication).
    ///
    /// # Errors
    /// [`ProtocolError::UnexpectedAuth`] (0x82) for an AUTH the client may not send now;
    /// [`Close::ReauthFailed`] (0x87) when the exchange fails.
    pub(super) fn handle_auth(&mut self, auth: Auth) -> Result<(), Close> {
        let username = self.machine.username().map(str::to_owned);
        let Some(slot) = self.machine.reauth_slot() else {
            return Err(ProtocolError::UnexpectedAuth.into()); // [MQTT-4.12.0-7]
        };
        let properties = &auth.properties;
        if properties.authentication_method.as_deref() != Some(scram::METHOD) {
            return Err(ProtocolError::UnexpectedAuth.into()); // [MQTT-4.12.1-1]
        }
        let pending = slot.take();
        let reply = match (auth.reason_code, pending) {
            (ReasonCode::RE_AUTHENTICATE, None) => {
                let state = self.broker.auth().current();
                let method = properties.authentication_method.as_deref();
                match start(&state, method, properties.authentication_data.as_ref()) {
                    Ok((exchange, server_first)) => {
                        *slot = Some(exchange);
                        auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, server_first)
                    }
                    Err(_) => return Err(self.reauth_failed()),
                }
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(exchange)) => {
                let data = properties.authentication_data.as_deref().unwrap_or(&[]);
                let same_user = Some(exchange.username()) == username.as_deref();
                match exchange.finish(data) {
                    Ok(server_final) if same_user => {
                        Metrics::add(&self.broker.metrics().enhanced_auth_successes, 1);
                        auth_packet(ReasonCode::SUCCESS, server_final)
                    }
                    _ => return Err(self.reauth_failed()),
                }
            }
            _ => return Err(ProtocolError::UnexpectedAuth.into()),
        };
        let mut guard = self.out.lock();
        if !guard.is_closed() {
            Packet::Auth(Box::new(reply)).encode(self.machine.version(), guard.buf());
        }
        Ok(())
    }

    fn reauth_failed(&self) -> Close {
        Metrics::add(&self.broker.metrics().auth_failures, 1);
        let client_id = &self.machine.session().client_id;
        tracing::debug!(%client_id, "re-authentication failed");
        Close::ReauthFailed
    }
}
