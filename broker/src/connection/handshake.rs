//! The CONNECT handshake: read CONNECT within the connect timeout, validate it, open or
//! resume the session (taking it over from an older connection), answer CONNACK and attach.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{
    ByteStr, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::enhanced_auth::{self, Authenticated};
use super::io::PacketReader;
use super::output::Output;
use super::{Connection, PeerInfo};
use crate::auth::scram;
use crate::broker::Broker;
use crate::config::Limits;
use crate::delivery::shared_writer::SharedWriter;
use crate::error::{Close, ProtocolError};
use crate::metrics::Metrics;
use crate::session::delivery::{Link, OutboundAliases};
use crate::session::machine::{Machine, Start};
use crate::session::Session;

/// Reads CONNECT and establishes the connection.
///
/// # Errors
/// A [`Close`] when the client sends nothing in time, something other than CONNECT
/// ([MQTT-3.1.0-1]), a malformed CONNECT, or is refused (CONNACK with an error code sent).
pub(crate) async fn connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    broker: &Broker,
    reader: &mut PacketReader<R>,
    output: &mut Output<W>,
    out: &Arc<SharedWriter>,
    info: &PeerInfo,
) -> Result<Connection, Close> {
    let peer = info.addr;
    let timeout = Duration::from_millis(broker.limits().connect_timeout_ms);
    // One deadline for CONNECT and any enhanced authentication exchange after it.
    let deadline = Instant::now() + timeout;
    let first = match tokio::time::timeout_at(deadline, reader.next_packet()).await {
        Err(_) => return Err(Close::ConnectTimeout),
        Ok(Err(Close::Protocol(ProtocolError::Decode(
            DecodeError::UnsupportedProtocolVersion(level),
        )))) => {
            // [MQTT-3.1.2-2]: answer CONNACK 0x01 (3.1.1 encoding: the client's version is
            // unknown to us) and close.
            let connack = ConnAck {
                code: ReasonCode(0x01),
                ..ConnAck::default()
            };
            let mut guard = out.lock();
            connack.encode(ProtocolVersion::V3_1_1, guard.buf());
            tracing::debug!(%peer, level, "unsupported protocol level");
            return Err(Close::Refused(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION));
        }
        Ok(Err(Close::Protocol(ProtocolError::Decode(e)))) => {
            return Err(refuse_undecodable(reader, out, e, peer));
        }
        Ok(Err(close)) => return Err(close),
        Ok(Ok((packet, read))) => {
            Metrics::add(&broker.metrics().bytes_received, read as u64);
            packet
        }
    };
    let Packet::Connect(mut connect) = first else {
        return Err(Close::Protocol(ProtocolError::ServerOnlyPacket(
            "non-CONNECT first packet",
        )));
    };
    let version = connect.protocol;
    if let Some(close) = redirect(broker, out, version, info) {
        return Err(close);
    }
    let features = broker.features();
    if let Some(will) = &connect.will {
        // [MQTT-3.2.2-12] 0x9B, [MQTT-3.2.2-13] 0x9A.
        let checked = features
            .capabilities()
            .check_will(will.qos as u8, will.retain);
        if let Err(code) = checked {
            return Err(refuse(out, version, code));
        }
    }
    let mut expires_at = None;
    let authenticated = if connect.properties.authentication_method.is_some() {
        let exchange = enhanced_auth::authenticate(broker, reader, output, out, &mut connect);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => Some(result?),
            Err(_) => return Err(Close::ConnectTimeout),
        }
    } else {
        let granted = match super::auth_hooks::login(broker, &connect, info).await {
            Ok(granted) => granted,
            Err(code) => return Err(refuse(out, version, code)),
        };
        if let Some(name) = granted.username {
            // A token's user name claim is who the client is (ACL sections, `%u`).
            connect.username = Some(ByteStr::from(name));
        }
        expires_at = granted.expires_at;
        None
    };
    let connection = claim_and_establish(broker, *connect, out, info, authenticated).await?;
    expires_at.inspect(|&at| super::auth_hooks::close_at_expiry(out, at));
    Ok(connection)
}

/// A client of a redirecting listener or broker ([`Broker::redirect`]): CONNACK 0x9C or
/// 0x9D with the Server Reference (5.0; section 4.11), 0x03 Server unavailable (3.1.1).
fn redirect(
    broker: &Broker,
    out: &SharedWriter,
    version: ProtocolVersion,
    info: &PeerInfo,
) -> Option<Close> {
    let features = broker.features();
    let (mode, reference) = match &info.redirect {
        Some(listener) => (listener.redirect, listener.server_reference.as_str()),
        None => (broker.redirect(), features.server_reference.as_str()),
    };
    let code = mode.reason_code()?;
    let mut connack = ConnAck {
        code,
        ..ConnAck::default()
    };
    if version.is_v5() {
        if !reference.is_empty() {
            connack.properties.server_reference = Some(ByteStr::from(reference));
        }
    } else {
        connack.code = ReasonCode(code.to_v3_connack());
    }
    connack.encode(version, out.lock().buf());
    Metrics::add(&broker.metrics().connections_redirected, 1);
    tracing::debug!(peer = %info.addr, ?code, "connection redirected");
    Some(Close::Refused(code))
}

/// A first packet that failed to decode. When it was a CONNECT whose protocol name and
/// level came through, a 5.0 client gets CONNACK with the reason code of the error (0x81
/// malformed, 0x82 protocol error, 0x90 will topic, 0x95 too large: [MQTT-4.13.1-1] lets
/// the server send it before closing). 3.1.1 has no return code for these and closes
/// ([MQTT-4.8.0-1]); neither version answers what was not a CONNECT ([MQTT-3.1.0-1]).
fn refuse_undecodable<R: AsyncRead + Unpin>(
    reader: &PacketReader<R>,
    out: &SharedWriter,
    error: DecodeError,
    peer: std::net::SocketAddr,
) -> Close {
    let close = Close::Protocol(ProtocolError::Decode(error));
    if reader.decoder().version() != Some(ProtocolVersion::V5) {
        return close;
    }
    tracing::debug!(%peer, %error, "CONNECT refused");
    let connack = ConnAck {
        code: error.reason_code(),
        ..ConnAck::default()
    };
    connack.encode(ProtocolVersion::V5, out.lock().buf());
    Close::RefusedMalformed(error)
}

/// Answers CONNACK with `code` (5.0 numbering; the nearest 3.1.1 return code for 3.1.1).
pub(super) fn refuse(out: &SharedWriter, version: ProtocolVersion, code: ReasonCode) -> Close {
    let wire_code = if version.is_v5() {
        code
    } else {
        ReasonCode(code.to_v3_connack())
    };
    let connack = ConnAck {
        code: wire_code,
        ..ConnAck::default()
    };
    connack.encode(version, out.lock().buf());
    Close::Refused(code)
}

/// What CONNECT negotiated: the session expiry and keep alive in force, and the CONNACK
/// (not yet sent) that says so.
struct Negotiated {
    requested_expiry_secs: u32,
    expiry_secs: u32,
    keep_alive_secs: u16,
    connack: ConnAck,
}

/// In a cluster, makes the client id this node's first (another node holding it closes
/// that connection with 0x8E and hands the session over when the CONNECT `resume`s), and
/// returns it for [`Broker::cluster_attached`]. An empty id gets a fresh one here: nobody
/// holds it.
async fn claim_in_cluster(broker: &Broker, client_id: &str, resume: bool) -> Option<String> {
    if client_id.is_empty() {
        return None;
    }
    let claim = broker.claim_client(client_id, resume)?;
    claim.await;
    Some(client_id.to_string())
}

/// [`establish`], in a cluster after claiming the client id ([`claim_in_cluster`]) and
/// checking, once attached, that no other node took it over meanwhile.
async fn claim_and_establish(
    broker: &Broker,
    connect: Connect,
    out: &Arc<SharedWriter>,
    info: &PeerInfo,
    authenticated: Option<Authenticated>,
) -> Result<Connection, Close> {
    let claimed = claim_in_cluster(broker, &connect.client_id, !connect.clean_start).await;
    let connection = establish(broker, connect, out, info, authenticated)?;
    if let Some(client_id) = claimed {
        broker.cluster_attached(&client_id);
    }
    Ok(connection)
}

fn establish(
    broker: &Broker,
    connect: Connect,
    out: &Arc<SharedWriter>,
    info: &PeerInfo,
    authenticated: Option<Authenticated>,
) -> Result<Connection, Close> {
    let mut connect = connect;
    if let Some(name) = &info.cert_username {
        // use_identity_as_username: the verified certificate names the user.
        connect.username = Some(ByteStr::from(name.as_str()));
    }
    let version = connect.protocol;
    if broker.is_shutting_down() {
        return Err(refuse(out, version, ReasonCode::SERVER_UNAVAILABLE));
    }
    let (client_id, assigned) =
        client_identifier(broker, &connect).map_err(|code| refuse(out, version, code))?;
    // Kept by the connection and its session link: copied, since a slice would keep the
    // whole read buffer the CONNECT arrived in alive.
    connect.username = connect.username.as_deref().map(ByteStr::from);
    let acl_generation = broker.auth().generation();
    let acl = super::auth_hooks::client_acl(broker, &client_id, &mut connect);
    let limits = broker.limits();
    let features = broker.features();
    let mut negotiated = negotiate(&connect, &limits);
    if version.is_v5() {
        let p = &mut negotiated.connack.properties;
        p.assigned_client_identifier = assigned;
        features.capabilities().announce(p);
        // [MQTT-3.1.2-28]: Response Information only when asked for.
        if connect.properties.request_response_information == Some(true) {
            p.response_information = features.response_information(&client_id).map(ByteStr::from);
        }
        if let Some(authenticated) = &authenticated {
            // [MQTT-4.12.0-5]: the method again, with the server-final message.
            p.authentication_method = Some(ByteStr::from(scram::METHOD));
            p.authentication_data = Some(authenticated.server_final.clone());
        }
    }
    let (session, resumed, generation) = attach(
        broker,
        &client_id,
        &connect,
        (out, info),
        &limits,
        &mut negotiated,
    );
    Metrics::add(&broker.metrics().clients_connected, 1);
    tracing::debug!(%client_id, peer = %info.addr, ?version, resumed, "client connected");
    if resumed {
        broker.reapply_acl(&session, acl.as_ref());
    }
    let keep_alive_secs = negotiated.keep_alive_secs;
    let machine = Machine::new(Start {
        session,
        generation,
        version,
        will: connect.will,
        acl,
        acl_generation,
        username: connect.username,
        connect_expiry_was_zero: negotiated.requested_expiry_secs == 0,
        limits,
        capabilities: features.capabilities(),
        enhanced_auth: authenticated.is_some(),
    });
    Ok(Connection {
        broker: broker.clone(),
        out: out.clone(),
        machine,
        // At most 65,535 s x 1,500: fits.
        keep_alive_timeout_ms: NonZeroU32::new(u32::from(keep_alive_secs) * 1500),
        routing: None,
        pending_suback: None,
    })
}

/// The client identifier: CONNECT's, or one assigned for an empty one (returned second,
/// for the CONNACK).
fn client_identifier(
    broker: &Broker,
    connect: &Connect,
) -> Result<(ByteStr, Option<ByteStr>), ReasonCode> {
    if !connect.client_id.is_empty() {
        // Only borrowed from here on: the session keeps its own copy.
        return Ok((connect.client_id.clone(), None));
    }
    // [MQTT-3.1.3-8] (3.1.1): an empty id needs Clean Session 1. In 5.0 the server may
    // refuse a client id ([MQTT-3.1.3-8]: 0x85); we refuse an empty one with Clean Start 0
    // too, as the issue asks: its session could never be resumed under a name the client
    // chose, and an assigned one is meant for a session of one connection.
    if !connect.clean_start || !broker.session_config().allow_empty_client_id {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    let id = broker.assign_client_id();
    Ok((id.clone(), Some(id)))
}

/// Session expiry and keep alive as the limits allow, and the CONNACK with the 5.0
/// properties that tell the client.
fn negotiate(connect: &Connect, limits: &Limits) -> Negotiated {
    let v5 = connect.protocol.is_v5();
    let requested_expiry_secs = if v5 {
        connect.properties.session_expiry_interval_secs.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry_secs = requested_expiry_secs.min(limits.max_session_expiry_secs);
    let mut keep_alive_secs = connect.keep_alive_secs;
    let mut server_keep_alive = None;
    if v5
        && limits.max_keep_alive_secs > 0
        && (keep_alive_secs == 0 || keep_alive_secs > limits.max_keep_alive_secs)
    {
        keep_alive_secs = limits.max_keep_alive_secs;
        server_keep_alive = Some(keep_alive_secs);
    }
    let mut connack = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS,
        properties: ConnAckProperties::default(),
    };
    if v5 {
        let p = &mut connack.properties;
        p.session_expiry_interval_secs =
            (expiry_secs != requested_expiry_secs).then_some(expiry_secs);
        p.server_keep_alive_secs = server_keep_alive;
        p.receive_maximum = Some(limits.receive_maximum);
        p.maximum_packet_size_bytes = Some(limits.max_packet_size_bytes);
        p.topic_alias_maximum = Some(limits.topic_alias_maximum);
    }
    Negotiated {
        requested_expiry_secs,
        expiry_secs,
        keep_alive_secs,
        connack,
    }
}

/// Opens (or resumes) the session, takes it over and attaches in one step under its
/// delivery lock, sending CONNACK before anything a publisher may append. The close of an
/// older connection (ending a session with expiry 0) or a Clean Start elsewhere (ending the
/// old session) then either came first, and is seen here (the session is opened again), or
/// comes after and sees this connection's generation: a connection is never left attached
/// to an ended, unregistered session. Returns the session, whether it was resumed, and this
/// connection's generation.
fn attach(
    broker: &Broker,
    client_id: &str,
    connect: &Connect,
    (out, info): (&Arc<SharedWriter>, &PeerInfo),
    limits: &Limits,
    negotiated: &mut Negotiated,
) -> (Arc<Session>, bool, u64) {
    let version = connect.protocol;
    let client_props = &connect.properties;
    let window = client_props
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(limits.max_inflight_messages);
    loop {
        let (session, resumed) = broker.open_session(client_id, connect.clean_start);
        let mut delivery = session.delivery();
        if session.is_ended() {
            drop(delivery);
            continue;
        }
        if let Some(old) = delivery.take_link() {
            // [MQTT-3.1.4-3]: the existing connection gets DISCONNECT 0x8E and is closed.
            Metrics::add(&broker.metrics().session_takeovers, 1);
            old.writer.control().kick(crate::error::Kick::TakenOver);
        }
        let generation = session.next_generation();
        session.reset_bytes();
        broker.session_resumed(&session);
        session.set_expiry_secs(negotiated.expiry_secs);
        broker.log_attached(
            &session,
            &mut delivery,
            negotiated.expiry_secs,
            connect.will.as_ref(),
        );
        negotiated.connack.session_present = resumed;
        negotiated.connack.encode(version, out.lock().buf());
        let link = Link {
            writer: out.clone(),
            version,
            max_packet_size_bytes: client_props.maximum_packet_size_bytes.unwrap_or(u32::MAX),
            aliases: OutboundAliases::new(
                client_props
                    .topic_alias_maximum
                    .unwrap_or(0)
                    .min(limits.topic_alias_maximum),
            ),
            generation,
            username: connect.username.as_deref().map(Arc::from),
            peer: info.addr,
            keep_alive_secs: negotiated.keep_alive_secs,
            connected_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let ctx = broker.deliver_ctx(Instant::now());
        delivery.attach(link, usize::from(window), ctx);
        drop(delivery);
        return (session, resumed, generation);
    }
}
