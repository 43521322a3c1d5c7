//! Opening a bridge's MQTT session on the remote: CONNECT (with Mosquitto's bridge bit for
//! 3.1.1 when `try_private`), CONNACK, and the SUBSCRIBE of the in rules. What flows after
//! that is [`super::forward`]'s.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    ByteStr, Connect, Packet, PacketId, ProtocolVersion, QoS, RetainHandling, Subscribe,
    SubscriptionOptions,
};

use super::transport::{self, Tls, TransportError};
use super::wire::{PacketReader, PacketWriter, WireError};
use crate::config::mqtt_bridges::{BridgeProtocol, MqttBridgeConfig};

/// The largest packet accepted from a remote.
const MAX_PACKET_SIZE_BYTES: u32 = 16 * 1024 * 1024;

/// Mosquitto's bridge bit: added to the protocol level of a 3.1.1 CONNECT by a bridge
/// (`try_private`), so that the remote treats the client as a bridge and does not send it
/// the messages it published itself.
const BRIDGE_BIT: u8 = 0x80;

/// Why a connect to a remote failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// No byte stream.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream failed during the handshake.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The remote refused CONNECT.
    #[error("CONNACK refused: {name} (0x{code:02x})")]
    Refused {
        /// The return or reason code.
        code: u8,
        /// What it means.
        name: &'static str,
    },
    /// No CONNACK in time.
    #[error("no CONNACK within {0:?}")]
    Timeout(Duration),
    /// The remote answered CONNECT with something else.
    #[error("expected CONNACK, got {0}")]
    Unexpected(&'static str),
}

impl ConnectError {
    /// Whether a remote refused the bridge bit (then a plain CONNECT is tried): it answered
    /// "unacceptable protocol version" or hung up on the CONNECT.
    pub(crate) fn may_be_bridge_bit(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { code: 0x01, .. }
                | ConnectError::Wire(WireError::Closed)
                | ConnectError::Wire(WireError::Io(_))
        )
    }
}

/// A connected remote session.
pub(crate) struct RemoteLink {
    /// Packets from the remote.
    pub(crate) reader: PacketReader,
    /// Packets to the remote.
    pub(crate) writer: PacketWriter,
    /// CONNACK's Session Present: whether the remote kept what was in flight.
    pub(crate) session_present: bool,
    /// How many QoS 1/2 messages the remote takes unacknowledged.
    pub(crate) receive_maximum: u16,
    /// The keep alive in force (the remote's Server Keep Alive, if it set one).
    pub(crate) keep_alive_secs: u16,
    /// Packets the remote sent before SUBACK (its queued messages): handled first.
    pub(crate) early: Vec<Packet>,
    /// The largest packet the remote accepts (its CONNACK Maximum Packet Size).
    pub(crate) maximum_packet_size_bytes: u32,
    /// Whether the remote accepted Mosquitto's bridge bit (3.1.1): it then does not send
    /// back what the bridge published.
    pub(crate) bridge_bit: bool,
}

/// The version of `protocol`.
pub(crate) fn version_of(protocol: BridgeProtocol) -> ProtocolVersion {
    match protocol {
        BridgeProtocol::V5 => ProtocolVersion::V5,
        BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
    }
}

/// The CONNECT of `config` (the password is put in here and nowhere else).
fn connect_packet(
    config: &MqttBridgeConfig,
    receive_maximum: u16,
    max_packet_bytes: u32,
) -> Connect {
    let version = version_of(config.protocol);
    let mut connect = Connect::new(version, config.client_id.as_str());
    connect.clean_start = config.clean_start;
    connect.keep_alive_secs = config.keep_alive_secs;
    connect.username = config.username.as_deref().map(ByteStr::from);
    connect.password = config
        .password
        .as_ref()
        .map(|p| Bytes::copy_from_slice(p.0.as_bytes()));
    if version.is_v5() {
        let p = &mut connect.properties;
        p.session_expiry_interval_secs = Some(config.session_expiry_secs);
        p.receive_maximum = Some(receive_maximum);
        // What this broker takes from the bridge's local client: a larger message from the
        // remote could not be published here ([MQTT-3.1.2-24]: the remote must not send one).
        p.maximum_packet_size_bytes = Some(max_packet_bytes);
    }
    connect
}

/// The CONNECT bytes, with the bridge bit set in the protocol level when `private`.
fn encode_connect(connect: &Connect, private: bool) -> Bytes {
    let mut bytes = BytesMut::new();
    connect.encode(&mut bytes);
    if private {
        // Fixed header (1 byte + the remaining length), then "\0\x04MQTT", then the level.
        let len_bytes = bytes[1..].iter().take_while(|b| **b & 0x80 != 0).count() + 1;
        let level_at = 1 + len_bytes + 6;
        if let Some(level) = bytes.get_mut(level_at) {
            *level |= BRIDGE_BIT;
        }
    }
    bytes.freeze()
}

/// Connects to `remote` for `config`, subscribes to `filters`, and returns the session.
/// `private`: set the bridge bit (3.1.1 only); `local`: the local broker's Receive
/// Maximum and Maximum Packet Size, asked of the remote in turn (5.0).
///
/// # Errors
/// [`ConnectError`]; nothing is kept of a failed attempt.
pub(crate) async fn connect(
    config: &MqttBridgeConfig,
    tls: Option<&Tls>,
    remote: &str,
    private: bool,
    local: (u16, u32),
    filters: &[(String, QoS)],
) -> Result<RemoteLink, ConnectError> {
    let (receive_maximum, max_packet_bytes) = local;
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let (read, write) = transport::open(remote, tls, timeout).await?;
    let version = version_of(config.protocol);
    let mut reader = PacketReader::new(read, version, MAX_PACKET_SIZE_BYTES);
    let writer = PacketWriter::spawn(write, version);
    let connect = connect_packet(config, receive_maximum, max_packet_bytes);
    writer
        .send_bytes(encode_connect(&connect, private && !version.is_v5()))
        .await?;
    let connack = match tokio::time::timeout(timeout, reader.next()).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(packet) => match packet? {
            Packet::ConnAck(connack) => connack,
            other => return Err(ConnectError::Unexpected(other.name())),
        },
    };
    if connack.code.0 != 0 {
        return Err(ConnectError::Refused {
            code: connack.code.0,
            name: refusal_name(version, connack.code.0),
        });
    }
    let p = &connack.properties;
    let mut link = RemoteLink {
        reader,
        writer,
        session_present: connack.session_present,
        receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
        keep_alive_secs: p.server_keep_alive_secs.unwrap_or(config.keep_alive_secs),
        early: Vec::new(),
        maximum_packet_size_bytes: p.maximum_packet_size_bytes.unwrap_or(u32::MAX),
        bridge_bit: private && !version.is_v5(),
    };
    if !filters.is_empty() {
        subscribe(&mut link, filters, timeout).await?;
    }
    Ok(link)
}

/// Sends one SUBSCRIBE for `filters` (5.0: No Local, Retain As Published, retained only
/// for a new subscription) and waits for its SUBACK, keeping what arrives before it.
async fn subscribe(
    link: &mut RemoteLink,
    filters: &[(String, QoS)],
    timeout: Duration,
) -> Result<(), ConnectError> {
    // The SUBSCRIBE's id: the remote's own packet ids are separate ([MQTT-2.2.1-3] only
    // forbids reusing one of ours in flight; none are yet).
    let packet_id = PacketId::MIN;
    let subscribe = Subscribe {
        packet_id,
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|(filter, qos)| {
                let mut options = SubscriptionOptions::with_qos(*qos);
                // [MQTT-3.8.3-3]: with No Local the remote does not send back what the
                // bridge itself published there.
                options.no_local = true;
                options.retain_as_published = true;
                options.retain_handling = RetainHandling::SendIfNew;
                (ByteStr::from(filter.as_str()), options)
            })
            .collect(),
    };
    link.writer
        .send(&Packet::Subscribe(Box::new(subscribe)))
        .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let packet = tokio::time::timeout_at(deadline, link.reader.next())
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        match packet {
            Packet::SubAck(suback) if suback.packet_id == packet_id => {
                if let Some(bad) = suback.reason_codes.iter().find(|c| c.0 >= 0x80) {
                    tracing::warn!(code = bad.0, "remote refused a bridge subscription");
                }
                return Ok(());
            }
            other => link.early.push(other),
        }
    }
}

/// What a CONNACK refusal code means.
fn refusal_name(version: ProtocolVersion, code: u8) -> &'static str {
    if !version.is_v5() {
        return match code {
            1 => "unacceptable protocol version",
            2 => "identifier rejected",
            3 => "server unavailable",
            4 => "bad user name or password",
            5 => "not authorized",
            _ => "refused",
        };
    }
    match code {
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8C => "bad authentication method",
        0x9C | 0x9D => "use another server",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_bit_is_set_in_the_protocol_level() {
        let connect = Connect::new(ProtocolVersion::V3_1_1, "b");
        let plain = encode_connect(&connect, false);
        let private = encode_connect(&connect, true);
        assert_eq!(plain[8], 4);
        assert_eq!(private[8], 0x84);
        assert_eq!(plain.len(), private.len());
    }
}
