//! The bridge's two MQTT client connections at the byte level: a packet reader over any
//! `AsyncRead` (cancel-safe, for `select!`) and a writer task fed by a bounded channel, so
//! that the bridge's loop never waits on a slow socket while the other side waits on it.

use bytes::{Bytes, BytesMut};
use tern_codec::{DecodeError, Decoder, Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// How a link to one side failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer sent something that is not MQTT.
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// The writer task ended (its socket failed).
    #[error("connection writer ended")]
    WriterGone,
}

/// Boxed halves of a transport (TCP, TLS, the in-memory local link).
pub(crate) type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
/// See [`BoxRead`].
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Reads packets from one side.
pub(crate) struct PacketReader {
    read: BoxRead,
    decoder: Decoder,
    buf: BytesMut,
}

impl PacketReader {
    /// A reader of `version` packets no larger than `max_packet_size_bytes`.
    pub(crate) fn new(read: BoxRead, version: ProtocolVersion, max_packet_size_bytes: u32) -> Self {
        PacketReader {
            read,
            decoder: Decoder::with_version(version, max_packet_size_bytes),
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// The next packet.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read stay in the buffer for the next call.
    ///
    /// # Errors
    /// [`WireError`]: the connection is unusable afterwards.
    pub(crate) async fn next(&mut self) -> Result<Packet, WireError> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf)? {
                return Ok(packet);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }
}

/// Sends encoded packets to one side through its writer task.
#[derive(Debug, Clone)]
pub(crate) struct PacketWriter {
    tx: mpsc::Sender<Bytes>,
    version: ProtocolVersion,
}

/// Packets queued for one writer task. Every packet the bridge sends is bounded by a
/// protocol window (the remote's Receive Maximum, the local broker's) except QoS 0
/// messages, which are dropped when this is full ([`PacketWriter::try_send`]).
const WRITER_QUEUE: usize = 4096;

impl PacketWriter {
    /// Spawns the writer task over `write`.
    pub(crate) fn spawn(write: BoxWrite, version: ProtocolVersion) -> PacketWriter {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_loop(write, rx));
        PacketWriter { tx, version }
    }

    /// Queues `packet`, waiting for room.
    ///
    /// # Errors
    /// [`WireError::WriterGone`] when the connection's writer ended.
    pub(crate) async fn send(&self, packet: &Packet) -> Result<(), WireError> {
        let bytes = packet.to_bytes(self.version).freeze();
        self.send_bytes(bytes).await
    }

    /// Queues encoded bytes, waiting for room.
    ///
    /// # Errors
    /// [`WireError::WriterGone`] when the connection's writer ended.
    pub(crate) async fn send_bytes(&self, bytes: Bytes) -> Result<(), WireError> {
        self.tx.send(bytes).await.map_err(|_| WireError::WriterGone)
    }

    /// Queues `packet` if there is room; returns whether it was queued.
    pub(crate) fn try_send(&self, packet: &Packet) -> bool {
        self.tx
            .try_send(packet.to_bytes(self.version).freeze())
            .is_ok()
    }
}

/// Writes what arrives, one flush per batch; ends when the channel closes or a write fails
/// (dropping the socket, which the reader then sees closed).
async fn write_loop(mut write: BoxWrite, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(first) = rx.recv().await {
        if write.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if write.write_all(&more).await.is_err() {
                return;
            }
        }
        if write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}
