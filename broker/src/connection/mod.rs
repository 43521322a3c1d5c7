//! One client connection: the CONNECT handshake ([`handshake`]), the packet loop
//! ([`driver`]), parking while idle ([`park`]) and the end of the connection (DISCONNECT,
//! will, session expiry).
//!
//! A connection is one task: it reads, decodes and handles packets (routing the PUBLISH
//! packets it receives, in this task) and, in the same `select!`, writes what it and the
//! publishers appended to the connection's [`SharedWriter`] (`output.rs`). The transport
//! is any `AsyncRead`/`AsyncWrite` pair, so TCP, TLS and WebSocket all use the same driver.
//! A plain TCP connection idle for `park_idle_after_ms` parks: its task ends, and input
//! or output for it starts a new one where it left off.

pub(crate) mod auth_hooks;
pub mod closes;
mod driver;
mod enhanced_auth;
mod handshake;
mod held_records;
pub mod io;
mod output;
mod park;
mod publish;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::broker::Broker;
use crate::delivery::shared_writer::SharedWriter;
use crate::error::Close;
use crate::metrics::Metrics;
use crate::router::RouteScratch;
use crate::session::machine::{Machine, Transmit};

use self::io::PacketReader;
use self::output::Output;

/// How long the writer may take to flush after the connection ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for a client disconnected as a slow consumer (0x97).
const SLOW_CONSUMER_FLUSH_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a connection that sent DISCONNECT or an error CONNACK goes on reading (and
/// discarding) after its FIN, unless the peer closes first; within the flush timeout. A
/// socket closed with unread input makes the kernel answer with RST instead of FIN: a peer
/// still writing then gets EPIPE/ECONNRESET and may never read the reason code.
const LINGER_MS: u64 = 300;
/// Reads in one poll of the discarding loop before it yields to other tasks.
const DISCARD_READS_PER_POLL: usize = 16;

/// Who is at the other end of a connection, as the transport knows it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub addr: SocketAddr,
    /// The Common Name of a verified client certificate, on listeners with
    /// `use_identity_as_username`: it replaces the CONNECT user name.
    pub cert_username: Option<String>,
    /// The redirection of the listener the connection came in on, overriding the
    /// broker's (`[[listeners]] redirect`).
    pub redirect: Option<Arc<crate::config::ListenerRedirect>>,
}

/// Serves one accepted connection until it ends.
pub async fn serve<R, W>(broker: Broker, reader: R, writer: W, peer: SocketAddr)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve_with(
        broker,
        reader,
        writer,
        PeerInfo {
            addr: peer,
            cert_username: None,
            redirect: None,
        },
    )
    .await;
}

/// Serves one accepted connection, with what the transport learnt of the peer.
pub fn serve_with<R, W>(
    broker: Broker,
    reader: R,
    writer: W,
    info: PeerInfo,
) -> impl Future<Output = ()> + Send + 'static
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    ConnIo::new(broker, reader, writer, info, (), false).spawnable()
}

/// Like [`serve_with`], holding `guard` (a connection permit, a per-IP count) until the
/// connection ends, so that the future can be spawned as it is; and the connection parks
/// when idle (`park_idle_after_ms`): the task this future is may end early, the
/// connection going on in another.
///
/// The connection's parts are built here, outside `async`, and the returned future uses
/// them in place: an `async fn` would keep its arguments and the locals moved out of
/// them side by side for the life of the connection, and this future is most of what an
/// idle connection costs.
pub fn serve_guarded<G: Send + 'static>(
    broker: Broker,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    info: PeerInfo,
    guard: G,
) -> impl Future<Output = ()> + Send + 'static {
    let mut io = ConnIo::new(broker, reader, writer, info, guard, true);
    async move {
        if let Some(connection) = io.serve().await {
            park::park(io, connection);
        }
    }
}

/// How a connection's packet loop ended.
pub(crate) enum Ended {
    /// The connection ends, for this reason.
    Closed(Close),
    /// Idle long enough: it parks (`park.rs`).
    Park,
}

/// What a connection owns from accept to close.
struct ConnIo<R, W, G> {
    broker: Broker,
    out: Arc<SharedWriter>,
    output: Output<W>,
    reader: PacketReader<R>,
    /// The peer (boxed: the connection's future holds it for its whole life).
    info: Box<PeerInfo>,
    /// Whether the connection parks when idle (plain TCP).
    parks: bool,
    _guard: G,
}

impl<R, W, G> ConnIo<R, W, G>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    fn new(broker: Broker, reader: R, writer: W, info: PeerInfo, guard: G, parks: bool) -> Self {
        let limits = broker.limits();
        let io = ConnIo {
            out: Arc::new(SharedWriter::with_soft_cap(
                limits.writer_cap_bytes,
                limits.writer_soft_cap_bytes,
            )),
            output: Output::new(writer),
            reader: PacketReader::new(reader, limits.max_packet_size_bytes),
            info: Box::new(info),
            parks,
            broker,
            _guard: guard,
        };
        drop(limits);
        io
    }

    /// The task of a connection that does not park, from accept.
    ///
    /// Not an `async fn`: that would keep `self` twice in the future (the argument, and the
    /// local it is moved into).
    fn spawnable(self) -> impl Future<Output = ()> + Send + 'static {
        let mut io = self;
        async move {
            let parked = io.serve().await;
            debug_assert!(parked.is_none(), "only plain TCP connections park");
        }
    }

    /// Handshake, packet loop, close; returns the connection when it is to park instead.
    async fn serve(&mut self) -> Option<Connection> {
        // Whether we sent an error CONNACK or a DISCONNECT: then the close lingers.
        let mut linger = false;
        let mut connection = {
            // The handshake's result lives only in this statement, and the connection is
            // used in place afterwards: a `match` on the awaited call (whose temporary
            // lives to the end of the `match`) or a binding moved out of by parts would
            // keep a second copy of the connection in this future for its whole life. The
            // handshake is boxed: its state lives on the heap only while it runs.
            let handshake = Box::pin(handshake::connect(
                &self.broker,
                &mut self.reader,
                &mut self.output,
                &self.out,
                &self.info,
            ));
            match handshake.await {
                Ok(connection) => Some(connection),
                Err(close) => {
                    linger = matches!(close, Close::Refused(_) | Close::RefusedMalformed(_));
                    match &close {
                        Close::ConnectTimeout => Metrics::add(&self.broker.metrics().timeouts, 1),
                        Close::Protocol(_) | Close::RefusedMalformed(_) => {
                            Metrics::add(&self.broker.metrics().protocol_errors, 1)
                        }
                        _ => {}
                    }
                    tracing::debug!(peer = %self.info.addr, reason = %close, "connection closed before CONNECT completed");
                    closes::record(self.broker.metrics(), None, self.info.addr, &close);
                    None
                }
            }
        };
        self.drive(&mut connection, linger, false).await;
        connection
    }

    /// Runs the packet loop of `connection` (if the handshake made one) and closes the
    /// connection, or leaves `connection` in place when it is to park. `linger`: the
    /// handshake sent an error CONNACK. `resumed`: the loop goes on after parking.
    async fn drive(&mut self, connection: &mut Option<Connection>, linger: bool, resumed: bool) {
        // In a block: the connection's room in this future is not kept for the flush.
        let (slow_consumer, linger) = {
            let mut slow_consumer = false;
            let mut linger = linger;
            if let Some(established) = connection.as_mut() {
                let close = 'run: {
                    if !resumed {
                        if let Err(close) = established.start() {
                            break 'run close;
                        }
                    }
                    let parks = self.parks;
                    match established
                        .run(&mut self.reader, &mut self.output, parks)
                        .await
                    {
                        Ended::Park => return,
                        Ended::Closed(close) => close,
                    }
                };
                slow_consumer = close.is_slow_consumer();
                if let Some(established) = connection.take() {
                    linger = established.finish(close, self.info.addr);
                }
            }
            (slow_consumer, linger)
        };
        self.close(slow_consumer, linger).await;
    }

    /// Flushes what is left and closes the socket, within the flush timeout.
    async fn close(&mut self, slow_consumer: bool, linger: bool) {
        self.out.close();
        let flush_timeout = if slow_consumer {
            SLOW_CONSUMER_FLUSH_TIMEOUT
        } else {
            FLUSH_TIMEOUT
        };
        // Boxed: its timers cost memory only while the connection closes.
        let closing = Box::pin(tokio::time::timeout(
            flush_timeout,
            close_gracefully(
                &mut self.output,
                &self.out,
                &mut self.reader,
                linger,
                self.broker.reached(),
            ),
        ));
        match closing.await {
            Ok(Ok((written, discarded))) => {
                Metrics::add(&self.broker.metrics().bytes_sent, written as u64);
                Metrics::add(&self.broker.metrics().bytes_received, discarded);
            }
            Ok(Err(e)) => tracing::debug!(peer = %self.info.addr, error = %e, "final write failed"),
            // The peer does not read: give up rather than hold the connection open.
            Err(_) => tracing::debug!(peer = %self.info.addr, "output did not flush in time"),
        }
    }
}

/// Flushes what is left of the output and shuts the write side down (FIN); with `linger`
/// (after an error CONNACK or a DISCONNECT), then reads and discards input until the peer
/// closes or [`LINGER_MS`] pass, so that the socket is not closed with unread input (which
/// the kernel answers with RST). Input is discarded while flushing too: a peer blocked
/// writing to us may read only once its write goes through. The caller bounds the whole
/// with the flush timeout. Returns the bytes written and the bytes discarded.
///
/// # Errors
/// A write (or the shutdown) failed; read errors only end the discarding.
async fn close_gracefully<R, W>(
    output: &mut Output<W>,
    out: &SharedWriter,
    reader: &mut PacketReader<R>,
    linger: bool,
    durable: crate::delivery::shared_writer::Reached,
) -> std::io::Result<(usize, u64)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !linger {
        return Ok((output.finish(out, durable).await?, 0));
    }
    let mut discarded = 0u64;
    // Reads and drops what is there; `Pending` once nothing is (or after a few reads, woken
    // again at once so that a flooding peer does not hold the thread).
    let mut discard = |cx: &mut std::task::Context<'_>| {
        for _ in 0..DISCARD_READS_PER_POLL {
            match reader.poll_discard(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => discarded += n as u64,
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    };
    let mut finish = std::pin::pin!(output.finish(out, durable));
    let mut input_open = true;
    let written = poll_fn(|cx| {
        if let Poll::Ready(result) = finish.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if input_open && discard(cx).is_ready() {
            input_open = false;
        }
        Poll::Pending
    })
    .await?;
    if input_open {
        let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), poll_fn(&mut discard)).await;
    }
    Ok((written, discarded))
}

/// A connected client, after CONNACK: the session's protocol state machine and what the
/// driver needs around it.
pub(crate) struct Connection {
    broker: Broker,
    out: Arc<SharedWriter>,
    machine: Machine,
    /// Nothing received for this many ms closes the connection (1.5 x keep alive). 4 bytes
    /// where a `Duration` takes 16: the connection is part of every parked record.
    keep_alive_timeout_ms: Option<NonZeroU32>,
    /// What only a publishing client needs, boxed at its first PUBLISH: most idle
    /// connections are subscribers that never publish.
    routing: Option<Box<Routing>>,
    /// A SUBACK waiting for the cluster to take its filters' interest (clusters only).
    pending_suback: Option<Box<PendingSubAck>>,
}

/// A SUBSCRIBE done locally whose SUBACK waits for the cluster.
pub(crate) struct PendingSubAck {
    /// One wait per granted filter the cluster did not route here yet.
    waits: Vec<crate::broker::InterestReady>,
    /// The request, for the SUBACK and the retained messages.
    request: crate::session::machine::SubscribeRequest,
    /// What became of each filter.
    outcomes: Vec<(
        tern_codec::SubscriptionOptions,
        crate::session::machine::FilterOutcome,
    )>,
}

impl std::fmt::Debug for PendingSubAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSubAck")
            .field("waits", &self.waits.len())
            .finish_non_exhaustive()
    }
}

/// The routing state of a client that publishes.
#[derive(Default)]
pub(crate) struct Routing {
    /// Routing scratch space, reused from one PUBLISH to the next.
    scratch: RouteScratch,
    /// PUBLISH packets routed, for sampling the routing latency.
    published: u64,
    /// Messages of one topic and QoS (0 or 1) waiting to be routed together
    /// (`publish.rs`); empty between read buffers.
    run: Vec<Arc<crate::message::Message>>,
    /// The acknowledgements a QoS 1 `run` is owed, in its order (empty for QoS 0).
    run_acks: Vec<crate::session::machine::PendingAck>,
    /// In a cluster: the queue to the other nodes is over its high-water mark; reading waits
    /// for it.
    cluster_wait: Option<crate::broker::InterestReady>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("scratch", &self.scratch)
            .field("published", &self.published)
            .field("run", &self.run.len())
            .field("cluster_wait", &self.cluster_wait.is_some())
            .finish()
    }
}

impl Connection {
    /// Ends the connection: DISCONNECT to a 5.0 client when we close it, then the broker
    /// detaches the session, publishes or schedules the will and ends the session or files
    /// its expiry. Returns whether a DISCONNECT was sent.
    fn finish(mut self, close: Close, peer: SocketAddr) -> bool {
        let metrics = self.broker.metrics();
        match &close {
            Close::Protocol(_) => Metrics::add(&metrics.protocol_errors, 1),
            Close::KeepAliveTimeout => Metrics::add(&metrics.timeouts, 1),
            Close::SlowConsumer => Metrics::add(&metrics.slow_consumer_disconnects, 1),
            Close::TokenExpired => Metrics::add(&metrics.auth_token_expired_disconnects, 1),
            Close::Administrative => Metrics::add(&metrics.admin_kicks, 1),
            _ => {}
        }
        let session = self.machine.session().clone();
        tracing::debug!(client_id = %session.client_id, reason = %close, "connection closed");
        closes::record(metrics, Some(&session.client_id), peer, &close);
        let (disconnect, will) = self.machine.close(&close);
        let sent_disconnect = disconnect.is_some();
        // Output held for messages NATS never confirmed (the node is cut off) must not go:
        // it acknowledges them. It is dropped so that the DISCONNECT still goes.
        self.out
            .discard_unconfirmed(self.broker.confirmed_position());
        if let Some(mut disconnect) = disconnect {
            if let (Close::Redirected(_), Transmit::Disconnect(d)) = (&close, &mut disconnect) {
                // Section 4.11: where the client should go instead.
                let reference = &self.broker.features().server_reference;
                if !reference.is_empty() {
                    d.properties.server_reference = Some(reference.as_str().into());
                }
            }
            self.send(&disconnect);
        }
        self.out.close();
        // After the close: a sweep that has the entry out meanwhile sees it closed and
        // does not file it again.
        if self.keep_alive_timeout_ms.is_some() {
            self.broker.keep_alive().unwatch(&self.out);
        }
        Metrics::sub(&metrics.clients_connected, 1);
        self.broker
            .connection_closed(&session, self.machine.generation(), will);
        sent_disconnect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection is mostly its task, and the task is mostly this future: a
    /// temporary kept alive across an `.await`, or a state that should be boxed, shows up
    /// here before it shows up as RSS per connection (`tern-bench idle`).
    #[tokio::test]
    async fn connection_future_stays_small() {
        let broker = Broker::new(crate::config::Config::default_config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let (reader, writer) = stream.into_split();
        let info = PeerInfo {
            addr: peer,
            cert_username: None,
            redirect: None,
        };
        // The plain TCP connection's task (it parks when idle).
        let future = serve_guarded(broker, reader, writer, info, ());
        let size = std::mem::size_of_val(&future);
        // 512: tokio's task cell (header, this future, trailer) is 128-byte aligned on
        // x86_64, so up to about 528 bytes of future the task takes 640. The split of the
        // packet loop from the handshake (so that a connection woken from parking goes on
        // where it left off) took it from 480 to 512. An idle connection parks and gives its
        // task back; a busy one pays this.
        assert!(size <= 512, "the connection future grew to {size} bytes");
        assert!(std::mem::size_of::<Connection>() <= 160);
        // One per connection: a few more bytes here move its Arc into the next size class
        // of the allocator (jemalloc: 160 bytes holds the Arc's 16 and up to 144) for every
        // connection.
        assert!(std::mem::size_of::<SharedWriter>() <= 144);
        drop(future);
        drop(client);
    }

    /// After the last bytes and the FIN, a closing connection reads and discards input for
    /// [`LINGER_MS`] at most, and less when the peer closes first.
    #[tokio::test]
    async fn close_lingers_until_the_peer_closes_or_linger_ms() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for peer_closes in [false, true] {
            let (server, mut client) = tokio::io::duplex(4096);
            let (reader, writer) = tokio::io::split(server);
            let mut output = Output::new(writer);
            let mut reader = PacketReader::new(reader, 1024);
            let out = SharedWriter::new(1024);
            out.append(2, false, tokio::time::Instant::now(), |b| {
                b.extend_from_slice(&[0xE0, 0x00])
            });
            out.close();
            client.write_all(&[0xC0, 0x00, 0xC0]).await.expect("write");
            if peer_closes {
                client.shutdown().await.expect("shutdown");
            }
            let started = std::time::Instant::now();
            let (written, discarded) = close_gracefully(
                &mut output,
                &out,
                &mut reader,
                true,
                crate::delivery::shared_writer::Reached::ALL,
            )
            .await
            .expect("close");
            let lingered = started.elapsed();
            assert_eq!((written, discarded), (2, 3));
            if peer_closes {
                assert!(lingered < Duration::from_millis(LINGER_MS), "{lingered:?}");
            } else {
                assert!(lingered >= Duration::from_millis(LINGER_MS), "{lingered:?}");
                assert!(lingered < FLUSH_TIMEOUT, "{lingered:?}");
            }
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, [0xE0, 0x00], "the bytes, then end of stream");
        }
    }
}
