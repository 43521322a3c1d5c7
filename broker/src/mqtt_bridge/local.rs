//! The bridge's client on this broker: an MQTT 5.0 connection over an in-memory stream,
//! served by the broker's own connection code like any client. Its session is the
//! bridge's queue towards the remote (persistent: no Clean Start, an expiry that never
//! ends, so it survives a remote outage, a reload and, with `[persistence]`, a restart).
//! Its user name is the bridge's `local_username` (given by the transport, as a verified
//! certificate's name is, so no password is needed) and the ACL applies to it.

use std::net::SocketAddr;

use tern_codec::{
    ByteStr, Connect, Packet, PacketId, ProtocolVersion, QoS, Subscribe, SubscriptionOptions,
    Unsubscribe,
};

use super::wire::{PacketReader, PacketWriter, WireError};
use crate::broker::Broker;
use crate::connection::PeerInfo;
use crate::mqtt_bridge::remote::ConnectError;

/// Bytes buffered each way between the bridge and its local connection.
const DUPLEX_BYTES: usize = 1 << 20;

/// The address the bridge's local connection shows in logs.
const LOCAL_PEER: &str = "127.0.0.1:0";

/// A connected local session.
pub(crate) struct LocalLink {
    /// What the broker delivers to the bridge.
    pub(crate) reader: PacketReader,
    /// What the bridge publishes and acknowledges.
    pub(crate) writer: PacketWriter,
    /// The broker's Receive Maximum.
    pub(crate) receive_maximum: u16,
    /// The broker's Server Keep Alive (0: none).
    pub(crate) keep_alive_secs: u16,
    /// The largest packet the broker takes from the bridge.
    pub(crate) maximum_packet_size_bytes: u32,
    /// What the broker sent before the SUBACK (a resumed session's messages): handled
    /// first.
    pub(crate) early: Vec<Packet>,
}

/// The identifiers of the local UNSUBSCRIBE and SUBSCRIBE (one of each at most, both
/// answered before any other packet is sent, so they never collide with the PUBLISH
/// identifiers of the bridge's loop).
const UNSUBSCRIBE_ID: PacketId = PacketId::MIN;
/// See [`UNSUBSCRIBE_ID`].
const SUBSCRIBE_ID: PacketId = match PacketId::new(2) {
    Some(id) => id,
    None => PacketId::MIN,
};

/// How long the broker may take to answer the bridge's SUBSCRIBE.
const SUBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects the bridge's local client `client_id` as user `username`, with a window of
/// `max_inflight`, and makes its subscriptions exactly `filters` (filters of an older
/// definition kept by the session are removed).
///
/// # Errors
/// The broker refused or closed the connection (it is shutting down).
pub(crate) async fn connect(
    broker: &Broker,
    client_id: &str,
    username: &str,
    max_inflight: u16,
    filters: &[(String, QoS)],
) -> Result<LocalLink, ConnectError> {
    let (bridge_side, broker_side) = tokio::io::duplex(DUPLEX_BYTES);
    let (read, write) = tokio::io::split(broker_side);
    let addr: SocketAddr = LOCAL_PEER
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let info = PeerInfo {
        addr,
        cert_username: Some(username.to_string()),
        redirect: None,
    };
    tokio::spawn(crate::connection::serve_with(
        broker.clone(),
        read,
        write,
        info,
    ));
    let (read, write) = tokio::io::split(bridge_side);
    let version = ProtocolVersion::V5;
    let mut reader = PacketReader::new(Box::new(read), version, u32::MAX);
    let writer = PacketWriter::spawn(Box::new(write), version);
    let mut connect = Connect::new(version, client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(u32::MAX);
    connect.properties.receive_maximum = Some(max_inflight);
    writer.send(&Packet::Connect(Box::new(connect))).await?;
    let connack = match reader.next().await? {
        Packet::ConnAck(connack) => connack,
        other => return Err(ConnectError::Unexpected(other.name())),
    };
    if connack.code.0 != 0 {
        return Err(ConnectError::Refused {
            code: connack.code.0,
            name: "refused by this broker",
        });
    }
    let p = &connack.properties;
    let mut link = LocalLink {
        reader,
        writer,
        receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
        keep_alive_secs: p.server_keep_alive_secs.unwrap_or(0),
        maximum_packet_size_bytes: p.maximum_packet_size_bytes.unwrap_or(u32::MAX),
        early: Vec::new(),
    };
    let mut waiting = sync_subscriptions(broker, client_id, &link.writer, filters).await?;
    // The subscriptions are in the trie once answered: only then is the bridge ready
    // (a message published before that would not reach it).
    let deadline = tokio::time::Instant::now() + SUBACK_TIMEOUT;
    while waiting > 0 {
        let packet = tokio::time::timeout_at(deadline, link.reader.next())
            .await
            .map_err(|_| ConnectError::Timeout(SUBACK_TIMEOUT))??;
        match packet {
            Packet::SubAck(ack) if ack.packet_id == SUBSCRIBE_ID => {
                if ack.reason_codes.iter().any(|c| c.0 >= 0x80) {
                    tracing::warn!(codes = ?ack.reason_codes, "bridge's local subscription refused (ACL?)");
                }
                waiting -= 1;
            }
            Packet::UnsubAck(ack) if ack.packet_id == UNSUBSCRIBE_ID => waiting -= 1,
            other => link.early.push(other),
        }
    }
    Ok(link)
}

/// Subscribes to `filters` (No Local: what the bridge publishes here is not sent back to
/// it; Retain As Published: RETAIN crosses the bridge) and unsubscribes what else the
/// session holds. Returns how many answers (SUBACK, UNSUBACK) to wait for.
async fn sync_subscriptions(
    broker: &Broker,
    client_id: &str,
    writer: &PacketWriter,
    filters: &[(String, QoS)],
) -> Result<usize, WireError> {
    let mut waiting = 0;
    let stale: Vec<ByteStr> = broker
        .session(client_id)
        .map(|s| s.subscription_snapshot())
        .unwrap_or_default()
        .into_iter()
        .filter(|(f, _)| !filters.iter().any(|(g, _)| g.as_str() == &**f))
        .map(|(f, _)| ByteStr::from(&*f))
        .collect();
    if !stale.is_empty() {
        let unsubscribe = Unsubscribe {
            packet_id: UNSUBSCRIBE_ID,
            properties: Default::default(),
            filters: stale,
        };
        writer
            .send(&Packet::Unsubscribe(Box::new(unsubscribe)))
            .await?;
        waiting += 1;
    }
    if filters.is_empty() {
        return Ok(waiting);
    }
    let subscribe = Subscribe {
        packet_id: SUBSCRIBE_ID,
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|(filter, qos)| {
                let mut options = SubscriptionOptions::with_qos(*qos);
                options.no_local = true;
                options.retain_as_published = true;
                // Retained messages once, when the subscription is new (not again at every
                // start of a bridge whose session kept it).
                options.retain_handling = tern_codec::RetainHandling::SendIfNew;
                (ByteStr::from(filter.as_str()), options)
            })
            .collect(),
    };
    writer.send(&Packet::Subscribe(Box::new(subscribe))).await?;
    Ok(waiting + 1)
}
