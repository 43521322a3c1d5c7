//! The MQTT client side of the generator.
//!
//! Connection set-up (CONNECT/CONNACK, SUBSCRIBE/SUBACK) goes through `tern-codec`. The hot
//! path does not: a PUBLISH is written by copying a pre-encoded [`PublishFrame`] and patching
//! the packet identifier and the payload header in place, and incoming frames are split with
//! [`frame_header`] and [`publish_payload`] over the read buffer, with no allocation and no
//! validation beyond what is needed to find the payload.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use tern_codec::{Connect, Decoder, Packet, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::payload::{Stamp, HEADER_BYTES, HEX_BYTES};

/// Packet type numbers used on the hot path.
pub(crate) mod kind {
    /// PUBLISH.
    pub(crate) const PUBLISH: u8 = 3;
    /// PUBACK.
    pub(crate) const PUBACK: u8 = 4;
    /// PUBREC.
    pub(crate) const PUBREC: u8 = 5;
    /// PUBREL.
    pub(crate) const PUBREL: u8 = 6;
    /// PUBCOMP.
    pub(crate) const PUBCOMP: u8 = 7;
}

/// Keep Alive sent in CONNECT. Subscribers at QoS 0 send nothing for a whole run, so this
/// must exceed the longest run by half (brokers close after 1.5 x Keep Alive); 0 is refused
/// by rumqttd.
pub(crate) const KEEP_ALIVE_SECS: u16 = 900;

/// How long set-up waits for CONNACK or SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest packet the generator accepts.
const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;

/// An established MQTT connection, before it is handed to a scenario task.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The socket (TCP_NODELAY set).
    pub(crate) stream: TcpStream,
    /// Bytes read but not yet parsed (whole or partial frames after the handshake).
    pub(crate) rbuf: BytesMut,
    /// Protocol version of the connection.
    pub(crate) version: ProtocolVersion,
    /// The broker's Receive Maximum (65,535 for 3.1.1 and when absent).
    pub(crate) receive_maximum: u16,
    decoder: Decoder,
}

/// Parses `3.1.1` / `4` / `5` / `5.0`.
pub(crate) fn parse_protocol(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "3.1.1" | "4" | "311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        other => Err(format!("unknown protocol {other:?}: use 3.1.1 or 5")),
    }
}

/// The QoS value for 0, 1 or 2.
pub(crate) fn qos(level: u8) -> Result<QoS> {
    QoS::from_u8(level).map_err(|e| anyhow!("bad QoS {level}: {e}"))
}

/// Session Expiry Interval of every connection (0: clean sessions); see `--session-expiry-secs`.
static SESSION_EXPIRY_SECS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Makes every later connection open a persistent session with `secs` (0: clean sessions).
pub(crate) fn set_session_expiry_secs(secs: u32) {
    SESSION_EXPIRY_SECS.store(secs, std::sync::atomic::Ordering::Relaxed);
}

impl Conn {
    /// Opens a TCP connection, sends CONNECT (clean start, or a persistent session with
    /// `--session-expiry-secs`) and waits for a successful CONNACK.
    pub(crate) async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
    ) -> Result<Conn> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // TERN_BENCH_RCVBUF_BYTES: bound the kernel receive buffer of every client (set
        // before connecting, so the window is negotiated with it). Without it the kernel
        // autotunes up to several MiB per socket, and at maximum rate that backlog, not the
        // broker, decides the latency.
        let rcvbuf = std::env::var("TERN_BENCH_RCVBUF_BYTES")
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(bytes) = rcvbuf.filter(|&b| b > 0) {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            version,
            receive_maximum: u16::MAX,
            decoder: Decoder::with_version(version, MAX_PACKET_BYTES),
        };
        let mut connect = Connect::new(version, client_id);
        connect.keep_alive_secs = KEEP_ALIVE_SECS;
        let expiry_secs = SESSION_EXPIRY_SECS.load(std::sync::atomic::Ordering::Relaxed);
        if expiry_secs > 0 {
            connect.clean_start = false;
            if version.is_v5() {
                connect.properties.session_expiry_interval_secs = Some(expiry_secs);
            }
        }
        let mut out = BytesMut::with_capacity(64);
        connect.encode(&mut out);
        conn.stream.write_all(&out).await?;
        let packet = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next_packet())
            .await
            .map_err(|_| anyhow!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"))??;
        match packet {
            Packet::ConnAck(ack) if ack.code.0 == 0 => {
                conn.receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(conn)
            }
            Packet::ConnAck(ack) => bail!("CONNACK refused with code {:#04x}", ack.code.0),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Subscribes to one filter and waits for a granting SUBACK.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let sub = Subscribe {
            packet_id: NonZeroU16::MIN,
            properties: Default::default(),
            filters: vec![(filter.into(), SubscriptionOptions::with_qos(qos))],
        };
        let mut out = BytesMut::with_capacity(64);
        sub.encode(self.version, &mut out);
        self.stream.write_all(&out).await?;
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let packet = tokio::time::timeout_at(deadline, self.next_packet())
                .await
                .map_err(|_| anyhow!("no SUBACK within {HANDSHAKE_TIMEOUT:?}"))??;
            if let Packet::SubAck(ack) = packet {
                return match ack.reason_codes.first() {
                    Some(code) if code.0 < 0x80 => Ok(()),
                    Some(code) => bail!("SUBACK refused {filter:?} with {:#04x}", code.0),
                    None => bail!("empty SUBACK"),
                };
            }
        }
    }

    /// Reads until one whole packet is decoded.
    async fn next_packet(&mut self) -> Result<Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by the broker during the handshake");
            }
        }
    }
}

/// The fixed header at the front of `buf`: `(byte0, header length, whole frame length)`, or
/// `None` while the frame is incomplete.
pub(crate) fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&byte0) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + len;
            return Ok((buf.len() >= total).then_some((byte0, 2 + i, total)));
        }
    }
    bail!("malformed remaining length from the broker")
}

/// The QoS, packet identifier (0 at QoS 0) and payload of a whole PUBLISH frame.
pub(crate) fn publish_payload(
    frame: &[u8],
    header_len: usize,
    v5: bool,
) -> Option<(u8, u16, &[u8])> {
    let qos = (frame[0] >> 1) & 3;
    let body = frame.get(header_len..)?;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    if v5 {
        let mut props = 0usize;
        let mut i = 0;
        loop {
            let b = *body.get(at + i)?;
            props |= usize::from(b & 0x7F) << (7 * i);
            i += 1;
            if b & 0x80 == 0 || i == 4 {
                break;
            }
        }
        at += i + props;
    }
    Some((qos, packet_id, body.get(at..)?))
}

/// The packet identifier at the front of an acknowledgement body.
pub(crate) fn ack_packet_id(frame: &[u8], header_len: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *frame.get(header_len)?,
        *frame.get(header_len + 1)?,
    ]))
}

/// Appends a two-byte-body acknowledgement (PUBACK, PUBREC, PUBREL or PUBCOMP) with reason
/// Success; in 5.0 the reason code may be left out when it is Success.
pub(crate) fn put_ack(dst: &mut Vec<u8>, packet_type: u8, packet_id: u16) {
    let flags = if packet_type == kind::PUBREL {
        0b0010
    } else {
        0
    };
    let [hi, lo] = packet_id.to_be_bytes();
    dst.extend_from_slice(&[packet_type << 4 | flags, 2, hi, lo]);
}

/// A PUBLISH encoded once per publisher; each message copies it and patches the packet
/// identifier and the payload header.
#[derive(Debug, Clone)]
pub(crate) struct PublishFrame {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
    /// The header goes as hex text ([`Stamp::write_hex`]), the rest of the payload is `.`.
    text: bool,
}

impl PublishFrame {
    /// Encodes a PUBLISH on `topic` with a zeroed payload of `payload_bytes` (at least
    /// [`HEADER_BYTES`]).
    pub(crate) fn new(topic: &str, qos: u8, v5: bool, payload_bytes: usize) -> PublishFrame {
        let payload_bytes = payload_bytes.max(HEADER_BYTES);
        let mut remaining = 2 + topic.len() + payload_bytes;
        if qos > 0 {
            remaining += 2;
        }
        if v5 {
            remaining += 1;
        }
        let mut bytes = Vec::with_capacity(remaining + 5);
        bytes.push(kind::PUBLISH << 4 | qos << 1);
        let mut len = remaining;
        loop {
            let mut b = (len & 0x7F) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            bytes.push(b);
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        bytes.extend_from_slice(topic.as_bytes());
        let packet_id_at = (qos > 0).then(|| {
            bytes.extend_from_slice(&[0, 1]);
            bytes.len() - 2
        });
        if v5 {
            bytes.push(0);
        }
        let payload_at = bytes.len();
        bytes.resize(payload_at + payload_bytes, 0);
        PublishFrame {
            bytes,
            packet_id_at,
            payload_at,
            text: false,
        }
    }

    /// Like [`PublishFrame::new`] but with a text payload (for the SSE and WebSocket JSON
    /// bridges): the header as [`HEX_BYTES`] hex digits, padded with `.` to `payload_bytes`.
    pub(crate) fn new_text(topic: &str, qos: u8, v5: bool, payload_bytes: usize) -> PublishFrame {
        let payload_bytes = payload_bytes.max(HEX_BYTES);
        let mut frame = PublishFrame::new(topic, qos, v5, payload_bytes);
        frame.bytes[frame.payload_at..].fill(b'.');
        frame.text = true;
        frame
    }

    /// Sets the RETAIN flag.
    pub(crate) fn set_retain(&mut self) {
        self.bytes[0] |= 1;
    }

    /// Length of one encoded PUBLISH.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH with `packet_id` (ignored at QoS 0) and `stamp`.
    pub(crate) fn put(&self, dst: &mut Vec<u8>, packet_id: u16, stamp: &Stamp) {
        let start = dst.len();
        dst.extend_from_slice(&self.bytes);
        let frame = &mut dst[start..];
        if let Some(at) = self.packet_id_at {
            frame[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if self.text {
            stamp.write_hex(&mut frame[self.payload_at..self.payload_at + HEX_BYTES]);
        } else {
            stamp.write(&mut frame[self.payload_at..self.payload_at + HEADER_BYTES]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frame_decodes_with_the_codec() -> Result<()> {
        for (qos, version) in [
            (0, ProtocolVersion::V3_1_1),
            (1, ProtocolVersion::V3_1_1),
            (2, ProtocolVersion::V5),
        ] {
            let frame = PublishFrame::new("a/b", qos, version.is_v5(), 200);
            let stamp = Stamp {
                sent_ns: 5,
                seq: 6,
                publisher: 7,
            };
            let mut out = Vec::new();
            frame.put(&mut out, 0x1234, &stamp);
            let (_, header_len, total) = frame_header(&out)?.ok_or(anyhow!("incomplete"))?;
            assert_eq!(total, out.len());
            let (q, id, payload) =
                publish_payload(&out, header_len, version.is_v5()).ok_or(anyhow!("short"))?;
            assert_eq!(q, qos);
            assert_eq!(Stamp::read(payload), Some(stamp));
            assert_eq!(payload.len(), 200);
            let mut buf = BytesMut::from(&out[..]);
            let decoded = Decoder::with_version(version, MAX_PACKET_BYTES).decode(&mut buf)?;
            let Some(Packet::Publish(p)) = decoded else {
                bail!("not a PUBLISH");
            };
            assert_eq!(p.topic(), "a/b");
            assert_eq!(p.payload().len(), 200);
            if qos > 0 {
                assert_eq!(id, 0x1234);
                assert_eq!(p.packet_id().map(|i| i.get()), Some(0x1234));
            }
        }
        Ok(())
    }
}
