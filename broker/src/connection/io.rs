//! The read side of a connection: a buffer that grows with the traffic, shrinks when
//! quiet and is let go while the connection waits with nothing buffered, and the codec's
//! incremental decoder over it.

use bytes::BytesMut;
use std::future::Future;
use std::task::{Context, Poll};
use tern_codec::{Decoder, Packet};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Close, ProtocolError};

/// Smallest read reservation: what an idle connection holds.
const MIN_READ_BYTES: usize = 128;
/// Largest read reservation per read call.
const MAX_READ_BYTES: usize = 64 * 1024;

/// A connection's reader: transport, buffer and decoder. A parked connection keeps it
/// without its transport (`PacketReader<()>`, see [`PacketReader::replace_reader`]).
#[derive(Debug)]
pub struct PacketReader<R> {
    reader: R,
    buf: BytesMut,
    decoder: Decoder,
    /// How much spare room to ensure before the next read; doubles when reads fill it.
    read_size: usize,
}

impl<R> PacketReader<R> {
    /// The transport and the decoder's state, for a connection that parks with nothing
    /// buffered (the buffer is let go; [`PacketReader::with_decoder`] makes it again).
    pub(crate) fn into_parts(self) -> (R, Decoder) {
        (self.reader, self.decoder)
    }

    /// A reader over `reader` going on with `decoder` (see [`PacketReader::into_parts`]).
    pub(crate) fn with_decoder(reader: R, decoder: Decoder) -> PacketReader<R> {
        PacketReader {
            reader,
            buf: BytesMut::new(),
            decoder,
            read_size: MIN_READ_BYTES,
        }
    }
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader with a server-side decoder (version learnt from CONNECT).
    pub fn new(reader: R, max_packet_size_bytes: u32) -> PacketReader<R> {
        PacketReader {
            reader,
            buf: BytesMut::new(),
            decoder: Decoder::new(max_packet_size_bytes),
            read_size: MIN_READ_BYTES,
        }
    }

    /// Decodes a packet already buffered, if any.
    pub fn try_decode(&mut self) -> Result<Option<Packet>, ProtocolError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }

    /// Reads more bytes; returns how many (0 at end of stream).
    ///
    /// # Cancel safety
    /// Cancel safe: bytes are either read into the buffer or not read at all.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.is_empty() && self.buf.capacity() > MAX_READ_BYTES {
            self.buf = BytesMut::new();
        }
        self.buf.reserve(self.read_size);
        let spare = self.buf.capacity() - self.buf.len();
        let n = self.reader.read_buf(&mut self.buf).await?;
        if n == spare && self.read_size < MAX_READ_BYTES {
            self.read_size *= 2;
        } else if n < self.read_size / 4 && self.read_size > MIN_READ_BYTES {
            self.read_size /= 2;
        }
        Ok(n)
    }

    /// [`PacketReader::read_more`] as a poll, for a caller that waits on several things at
    /// once (the read's future is made anew at each poll: it holds nothing but borrows).
    ///
    /// While it waits with nothing buffered it holds no buffer: the read registered the
    /// task for readiness, and the next poll reserves room again. An idle connection then
    /// costs no read buffer at all, for a `malloc`/`free` per wait of a busy one.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::pin!(self.read_more()).poll(cx);
        if polled.is_pending() && self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        polled
    }

    /// Reads and drops what the peer sends, for a connection that is closing: returns how
    /// many bytes (0 at end of stream). Packets already buffered are dropped with them.
    pub fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.buf.clear();
        self.poll_read_more(cx)
    }

    /// Waits for the next whole packet.
    ///
    /// # Cancel safety
    /// Cancel safe (see [`PacketReader::read_more`]).
    pub async fn next_packet(&mut self) -> Result<(Packet, usize), Close> {
        let mut read = 0;
        loop {
            if let Some(packet) = self.try_decode()? {
                return Ok((packet, read));
            }
            match self.read_more().await? {
                0 => return Err(Close::PeerGone),
                n => read += n,
            }
        }
    }

    /// Whether bytes are buffered (a partial packet, or packets not handled yet).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The decoder (to learn the version, or change the limit).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}
