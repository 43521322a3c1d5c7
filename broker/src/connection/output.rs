//! The write side of a connection, driven from the connection's own task (no second task
//! per connection): batches are taken whole from the connection's [`SharedWriter`] and
//! written with as few syscalls as the socket allows, while the same task keeps reading.
//! A socket that does not drain only stops this connection's writing, never its reading,
//! and never another connection (publishers append to the SharedWriter and return).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::delivery::shared_writer::{HeldFor, Reached, SharedWriter, KEEP_CAPACITY_BYTES};

/// The socket's write half and the batch being written to it.
#[derive(Debug)]
pub(crate) struct Output<W> {
    socket: W,
    batch: BytesMut,
    written: usize,
    /// The batch was written but not yet flushed (TLS records, WebSocket frames).
    needs_flush: bool,
}

impl<W> Output<W> {
    /// The socket, for a connection that parks with nothing to write (the batch buffer is
    /// let go).
    pub(crate) fn into_socket(self) -> W {
        self.socket
    }
}

impl<W: AsyncWrite + Unpin> Output<W> {
    pub(crate) fn new(socket: W) -> Output<W> {
        Output {
            socket,
            batch: BytesMut::new(),
            written: 0,
            needs_flush: false,
        }
    }

    /// Whether a batch is being written (or flushed).
    pub(crate) fn is_busy(&self) -> bool {
        self.written < self.batch.len() || self.needs_flush
    }

    /// When idle, takes everything `out` holds as the next batch, if the journal and the
    /// cluster have come (up to `durable`) as far as those bytes need. Returns whether
    /// there is something to write.
    ///
    /// # Errors
    /// The journal and cluster positions the buffered bytes wait for (nothing was taken).
    pub(crate) fn refill(&mut self, out: &SharedWriter, durable: Reached) -> Result<bool, HeldFor> {
        if !self.is_busy() {
            self.batch.clear();
            self.written = 0;
            if self.batch.capacity() > KEEP_CAPACITY_BYTES {
                self.batch = BytesMut::new();
            }
            out.take_durable(&mut self.batch, durable)?;
            self.needs_flush = !self.batch.is_empty();
        }
        Ok(self.is_busy())
    }

    /// Makes progress on the batch: one write, or the flush after the last one. Returns the
    /// number of bytes written (0 for the flush).
    ///
    /// # Cancel safety
    /// Cancel safe: progress is recorded before the future completes, so a future dropped
    /// by `select!` loses nothing.
    pub(crate) async fn progress(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_progress(cx)).await
    }

    /// [`Output::progress`] as a poll, for a caller that waits on several things at once.
    pub(crate) fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.written < self.batch.len() {
            let n = ready!(Pin::new(&mut self.socket).poll_write(cx, &self.batch[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            return Poll::Ready(Ok(n));
        }
        ready!(Pin::new(&mut self.socket).poll_flush(cx))?;
        self.needs_flush = false;
        Poll::Ready(Ok(0))
    }

    /// Writes whatever is left in the batch and in `out` (closed by now), then shuts the
    /// socket down. Returns the number of bytes written. Bytes that wait for the journal
    /// or the cluster beyond `durable` are not sent (the client resends what they acknowledge).
    pub(crate) async fn finish(
        &mut self,
        out: &SharedWriter,
        durable: Reached,
    ) -> io::Result<usize> {
        let mut total = 0;
        while let Ok(true) = self.refill(out, durable) {
            total += self.progress().await?;
        }
        self.socket.shutdown().await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn flushes_and_stops_after_close() {
        let writer = SharedWriter::new(1024);
        let (client, mut server) = tokio::io::duplex(4096);
        let mut output = Output::new(client);
        let now = Instant::now();
        writer.append(3, true, now, |b| b.extend_from_slice(b"abc"));
        writer.append(3, true, now, |b| b.extend_from_slice(b"def"));
        writer.close();
        let written = output.finish(&writer, Reached::ALL).await.expect("io");
        assert_eq!(written, 6);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut got)
            .await
            .expect("read");
        assert_eq!(got, b"abcdef");
    }
}
