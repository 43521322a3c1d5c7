//! Parked connections: idle MQTT connections without a task of their own.
//!
//! A plain TCP connection that the idle sweeper ([`crate::idle_sweep`]) finds quiet for
//! `park_idle_after_ms`, and that has nothing in hand (no input buffered, no output
//! waiting or being written, no pause), leaves its packet loop with [`super::Ended::Park`]:
//! its task ends, and what it owns (SharedWriter handle, session state machine, decoder
//! state, connection permit) goes into a [`Slot`] on the heap, without its transport: the
//! socket halves are joined and taken out of tokio (which frees tokio's readiness state for
//! it, 256 B, and the `Arc` the halves shared) into the broker's epoll of parked sockets
//! ([`crate::park_poll`]). The slot is a [`Wake`]; its waker stands where the task's stood
//! in the two places that can ever wake an idle connection:
//!
//! - the epoll of parked sockets (read readiness: a packet, end of stream, an error), and
//! - the connection's control block ([`crate::delivery::control::Control`]): output
//!   routed to the session, a kick (takeover 0x8E, shutdown, drain, an administrator,
//!   keep-alive timeout from [`crate::keep_alive`], slow consumer, token expiry) or a
//!   close.
//!
//! The first wake-up takes the connection out of the slot and spawns a task ([`resume`])
//! that gives the socket back to tokio and goes on with the packet loop where it left off,
//! so everything a connection does (PINGRESP, delivery, DISCONNECT, the will at close,
//! closing at shutdown) is done by the same code as ever. Nothing else holds a parked
//! connection: it is owned by its wakers until one fires (one always does in the end: the
//! peer leaves, or the keep-alive sweeper, a takeover or shutdown kicks it). Keep alive
//! needs nothing here: the broker-wide sweeper enforces it with or without a task. A
//! parked connection stays counted in `clients_connected` and its session stays attached
//! (the `$SYS` and admin views see it as before); `clients_parked` counts those parked.
//!
//! Unlike the SSE bridge's parked list (`http/bridge/sse_park.rs`), no task writes for
//! parked connections: an MQTT connection's output is its own, not a shared ring's, so
//! there is nothing to batch across connections, and handing a woken connection back to a
//! task of its own costs one spawn (and two `epoll_ctl`).
//!
//! This module owns the slot and the hand-over between tasks; when to park belongs to
//! [`crate::idle_sweep`] and the driver's `can_park`, the epoll to [`crate::park_poll`].

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use tern_codec::{Decoder, ProtocolVersion};

use super::io::PacketReader;
use super::output::Output;
use super::{ConnIo, Connection, PeerInfo};
use crate::error::Close;
use crate::metrics::Metrics;
use crate::park_poll::ParkPoll;

/// A plain TCP connection with its task.
pub(super) type TcpIo<G> = ConnIo<OwnedReadHalf, OwnedWriteHalf, G>;

/// What a parked connection owns: only what its task cannot make again. The broker and
/// SharedWriter handles are the connection's own (not kept twice), the read and write
/// buffers are empty (let go), and the socket is out of tokio.
struct Parked<G> {
    connection: Connection,
    /// The decoder's state between frames: the protocol version (known after CONNECT)
    /// and the packet size limit (a `Decoder` would take 32 bytes).
    version: ProtocolVersion,
    max_packet_size_bytes: u32,
    /// The peer's address, inline (the connection's boxed [`PeerInfo`] costs 64 bytes).
    addr: std::net::SocketAddr,
    /// The boxed [`PeerInfo`], kept only when it holds more than the address (a listener
    /// redirect); made again at resume otherwise.
    info: Option<Box<PeerInfo>>,
    guard: G,
    stream: std::net::TcpStream,
    /// Its token in [`ParkPoll`].
    token: u32,
}

/// A parked connection and the waker that un-parks it: one allocation (256 B with the
/// `Arc`'s counts, where a slot pointing at a boxed record took 48 + 224).
struct Slot<G> {
    state: Mutex<SlotState<G>>,
}

struct SlotState<G> {
    /// The connection, while parked.
    parked: Option<Parked<G>>,
    /// A wake-up came: one that comes while the connection is being parked un-parks it
    /// at once.
    fired: bool,
}

impl<G> Slot<G> {
    fn state(&self) -> MutexGuard<'_, SlotState<G>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<G: Send + 'static> Wake for Slot<G> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let parked = {
            let mut state = self.state();
            state.fired = true;
            state.parked.take()
        };
        if let Some(parked) = parked {
            // Boxed for the move into the task, whose future then stays small.
            let parked = Box::new(parked);
            let broker = &parked.connection.broker;
            Metrics::sub(&broker.metrics().clients_parked, 1);
            // A wake-up may come from any thread: spawn where the epoll's task runs.
            match broker
                .idle_sweep()
                .park_poll()
                .map(|poll| poll.runtime().clone())
            {
                Some(runtime) => drop(runtime.spawn(resume(parked))),
                None => drop(tokio::spawn(resume(parked))),
            }
        }
    }
}

/// Parks `connection` (its task is ending): registers the slot's waker with the control
/// block, moves the socket from tokio into the epoll of parked sockets, and leaves the
/// connection in the slot. Output, a kick or input that came meanwhile spawns its task
/// again at once.
pub(super) fn park<G: Send + 'static>(io: TcpIo<G>, connection: Connection) {
    let Some(poll) = io.broker.idle_sweep().park_poll().cloned() else {
        tokio::spawn(run_again(io, connection));
        return;
    };
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            parked: None,
            fired: false,
        }),
    });
    let waker = Waker::from(slot.clone());
    // A wake-up taken here (`Ready`) is not lost: the resumed loop makes a whole pass.
    if io
        .out
        .control()
        .poll_notified(&mut Context::from_waker(&waker))
        .is_ready()
    {
        tokio::spawn(run_again(io, connection));
        return;
    }
    let Some(parked) = into_parked(io, connection, &poll, waker) else {
        return;
    };
    let mut state = slot.state();
    if state.fired {
        drop(state);
        tokio::spawn(resume(Box::new(parked)));
    } else {
        Metrics::add(&parked.connection.broker.metrics().clients_parked, 1);
        state.parked = Some(parked);
    }
}

/// What the connection must keep while parked, its socket out of tokio and watched by
/// `poll` for `waker`; `None` when that failed (the socket is lost then, and the
/// connection is ended as if it had failed).
fn into_parked<G>(
    io: TcpIo<G>,
    connection: Connection,
    poll: &ParkPoll,
    waker: Waker,
) -> Option<Parked<G>> {
    let ConnIo {
        broker: _,
        out,
        output,
        reader,
        info,
        parks: _,
        _guard: guard,
    } = io;
    // Idle: nothing buffered either side (`can_park`), so the buffers can go, and the
    // session's flow state too if it holds nothing.
    out.release_idle_buffer();
    connection.machine.session().delivery().release_idle();
    let write_half = output.into_socket();
    let (read_half, decoder) = reader.into_parts();
    // After CONNECT and with nothing buffered (`can_park`), both always hold.
    let version = match decoder.version() {
        Some(version) if decoder.is_between_frames() => version,
        _ => {
            tracing::error!(peer = %info.addr, "parking mid-frame or before CONNECT: connection closed");
            connection.finish(
                Close::Io(std::io::Error::other("parked mid-frame")),
                info.addr,
            );
            return None;
        }
    };
    let (stream, token) = match detach(read_half, write_half, poll, waker) {
        Ok(detached) => detached,
        Err(e) => {
            tracing::debug!(peer = %info.addr, error = %e, "parking failed: connection closed");
            connection.finish(Close::Io(e), info.addr);
            return None;
        }
    };
    let addr = info.addr;
    let only_addr = info.cert_username.is_none() && info.redirect.is_none();
    Some(Parked {
        connection,
        version,
        max_packet_size_bytes: decoder.max_packet_size_bytes(),
        addr,
        info: (!only_addr).then_some(info),
        guard,
        stream,
        token,
    })
}

/// Joins the halves, takes the socket out of tokio (freeing its readiness state and the
/// halves' `Arc`) and registers it with `poll` for `waker`; returns it and its token.
fn detach(
    read_half: OwnedReadHalf,
    write_half: OwnedWriteHalf,
    poll: &ParkPoll,
    waker: Waker,
) -> std::io::Result<(std::net::TcpStream, u32)> {
    let stream = read_half
        .reunite(write_half)
        .map_err(|_| std::io::Error::other("socket halves of two connections"))?
        .into_std()?;
    let token = poll.register(stream.as_raw_fd(), waker)?;
    Ok((stream, token))
}

/// The task of a connection woken from parking: its socket back to tokio, then the packet
/// loop where it left off.
async fn resume<G: Send + 'static>(parked: Box<Parked<G>>) {
    let Parked {
        connection,
        version,
        max_packet_size_bytes,
        addr,
        info,
        guard,
        stream,
        token,
    } = *parked;
    let info = info.unwrap_or_else(|| {
        Box::new(PeerInfo {
            addr,
            cert_username: None,
            redirect: None,
        })
    });
    let broker = connection.broker.clone();
    if let Some(poll) = broker.idle_sweep().park_poll() {
        poll.deregister(stream.as_raw_fd(), token);
    }
    match TcpStream::from_std(stream) {
        Ok(stream) => {
            let (read_half, write_half) = stream.into_split();
            let io = ConnIo {
                out: connection.out.clone(),
                output: Output::new(write_half),
                reader: PacketReader::with_decoder(
                    read_half,
                    Decoder::with_version(version, max_packet_size_bytes),
                ),
                info,
                parks: true,
                broker,
                _guard: guard,
            };
            run_again(io, connection).await;
        }
        Err(e) => {
            tracing::debug!(peer = %info.addr, error = %e, "un-parking failed: connection closed");
            connection.finish(Close::Io(e), info.addr);
        }
    }
}

/// The packet loop of a connection that had parked (or was about to), where it left off;
/// then the close as usual, or parking again.
async fn run_again<G: Send + 'static>(mut io: TcpIo<G>, connection: Connection) {
    let mut connection = Some(connection);
    io.drive(&mut connection, false, true).await;
    if let Some(connection) = connection {
        park(io, connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TcpGuard = (
        tokio::sync::OwnedSemaphorePermit,
        crate::ip_limits::Admission,
    );
    type TcpParked = Parked<TcpGuard>;

    /// What a parked plain TCP connection holds besides what it shares with the broker
    /// (session, SharedWriter, trie entry, socket): this record and its slot.
    #[test]
    fn a_parked_connection_is_small() {
        let parked = std::mem::size_of::<TcpParked>();
        let slot = std::mem::size_of::<Slot<TcpGuard>>();
        eprintln!(
            "parked {parked} B, slot {slot} B, connection {} B, decoder {} B, guard {} B, machine {} B",
            std::mem::size_of::<Connection>(),
            std::mem::size_of::<Decoder>(),
            std::mem::size_of::<(tokio::sync::OwnedSemaphorePermit, crate::ip_limits::Admission)>(),
            std::mem::size_of::<crate::session::machine::Machine>(),
        );
        // 224: jemalloc's size class for it; one byte more costs 32 per parked connection.
        assert!(parked <= 224, "the parked record grew to {parked} bytes");
        // The slot holds the record: 240 + the Arc's 16, the 256-byte class.
        assert!(slot <= 240, "the slot grew to {slot} bytes");
    }
}
