//! One connection of the checker (MQTT 5.0, or 3.1.1 for some publishers, so that messages
//! stored as 3.x frames are checked too): connect with a persistent session, send a packet,
//! receive the next one. Every step is fallible (the broker may be killed at any
//! moment) and returns an error instead of panicking; what the packets mean is up to the
//! publisher and subscriber.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Decoder, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Session Expiry Interval of every checker session: far longer than a run.
pub(crate) const SESSION_EXPIRY_SECS: u32 = 3600;
/// How long a connect (TCP and CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the broker.
pub(crate) struct Wire {
    stream: TcpStream,
    version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
}

impl Wire {
    /// Connects `client_id` with `version`, Clean Start 0 (`clean_start` false) or 1 and
    /// (5.0) a Session Expiry of [`SESSION_EXPIRY_SECS`]; returns the connection and
    /// Session Present.
    ///
    /// # Errors
    /// The TCP connect failed, the broker closed or timed out, or refused the CONNECT.
    pub(crate) async fn connect(
        addr: SocketAddr,
        client_id: &str,
        clean_start: bool,
        version: ProtocolVersion,
    ) -> io::Result<(Wire, bool)> {
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut wire = Wire {
                stream,
                version,
                decoder: Decoder::with_version(version, u32::MAX),
                buf: BytesMut::new(),
            };
            let mut connect = Connect::new(version, client_id);
            connect.clean_start = clean_start;
            connect.properties.session_expiry_interval_secs = Some(SESSION_EXPIRY_SECS);
            wire.send(&Packet::Connect(Box::new(connect))).await?;
            match wire.recv().await? {
                Packet::ConnAck(connack) if connack.code.0 == 0 => {
                    Ok((wire, connack.session_present))
                }
                other => Err(io::Error::other(format!("CONNECT refused: {other:?}"))),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Sends one packet.
    ///
    /// # Errors
    /// The connection failed.
    pub(crate) async fn send(&mut self, packet: &Packet) -> io::Result<()> {
        self.stream.write_all(&packet.to_bytes(self.version)).await
    }

    /// The next packet.
    ///
    /// # Errors
    /// The connection ended or failed, or the broker sent something that does not decode.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read stay buffered for the next call (so it can run under
    /// `tokio::time::timeout`).
    pub(crate) async fn recv(&mut self) -> io::Result<Packet> {
        loop {
            let decoded = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
            if let Some(packet) = decoded {
                return Ok(packet);
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends DISCONNECT (normal) and closes.
    pub(crate) async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}
