//! Parked connections: idle MQTT connections without a task of their own.
//!
//! A plain TCP connection that the idle sweeper ([`crate::idle_sweep`]) finds quiet for
//! `park_idle_after_ms`, and that has nothing in hand (no input buffered, no output
//! waiting or being written, no pause), leaves its packet loop with [`super::Ended::Park`]:
//! its task ends, and what it owns — socket halves, SharedWriter handle, session state
//! machine, connection permit — goes into a [`Slot`] on the heap. The slot is a [`Wake`]:
//! its waker replaces the task's in the two places that can ever wake an idle connection,
//!
//! - the socket's read readiness (tokio's I/O registration: a packet, end of stream, an
//!   error), and
//! - the connection's control block ([`crate::delivery::control::Control`]): output
//!   routed to the session, a kick (takeover 0x8E, shutdown, drain, an administrator,
//!   keep-alive timeout from [`crate::keep_alive`], slow consumer, token expiry) or a
//!   close.
//!
//! The first wake-up takes the connection out of the slot and spawns a task that goes on
//! with the packet loop where it left off ([`resume`]), so everything a connection does
//! (PINGRESP, delivery, DISCONNECT, the will at close, closing at shutdown) is done by the
//! same code as ever. Nothing else holds a parked connection: it is owned by its wakers
//! until one fires (the socket and the control block always fire in the end: the peer
//! leaves, or the keep-alive sweeper, a takeover or shutdown kicks it). Keep alive needs
//! nothing here: the broker-wide sweeper enforces it with or without a task. A parked
//! connection stays counted in `clients_connected` and its session stays attached (the
//! `$SYS` and admin views see it as before); `clients_parked` counts those parked.
//!
//! Unlike the SSE bridge's parked list ([`crate::http`], `sse_park.rs`), no task serves
//! parked connections: an MQTT connection's output is its own, not a shared ring's, so
//! there is nothing to batch across connections, and handing a woken connection back to
//! a task of its own costs one spawn.
//!
//! This module owns the slot and the hand-over between tasks; when to park belongs to
//! [`crate::idle_sweep`] and the driver's `can_park`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;

use super::{ConnIo, Connection};
use crate::metrics::Metrics;

/// What a parked connection owns.
struct Parked<R, W, G> {
    io: ConnIo<R, W, G>,
    connection: Connection,
}

/// A parked connection and the waker that un-parks it.
struct Slot<R, W, G> {
    state: Mutex<SlotState<R, W, G>>,
    /// Where to spawn the woken connection's task: a wake-up may come from any thread.
    runtime: Handle,
}

struct SlotState<R, W, G> {
    /// The connection, while parked.
    parked: Option<Box<Parked<R, W, G>>>,
    /// A wake-up came: one that comes while the connection is being parked un-parks it
    /// at once.
    fired: bool,
}

impl<R, W, G> Slot<R, W, G> {
    fn state(&self) -> MutexGuard<'_, SlotState<R, W, G>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<R, W, G> Wake for Slot<R, W, G>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
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
            Metrics::sub(&parked.io.broker.metrics().clients_parked, 1);
            self.runtime.spawn(resume(parked));
        }
    }
}

/// Parks `connection` (its task is ending): registers the slot's waker with the control
/// block and the socket, then leaves the connection in the slot. Output, a kick or input
/// that came meanwhile spawns its task again at once.
pub(super) fn park<R, W, G>(io: ConnIo<R, W, G>, connection: Connection)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let mut parked = Box::new(Parked { io, connection });
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            parked: None,
            fired: false,
        }),
        runtime: Handle::current(),
    });
    let waker = Waker::from(slot.clone());
    let mut cx = Context::from_waker(&waker);
    // A wake-up taken here (`Ready`) is not lost: the resumed loop makes a whole pass.
    let notified = parked.io.out.control().poll_notified(&mut cx).is_ready();
    let ready = notified || {
        // Registers for readiness; what a read gets stays buffered for the resumed loop.
        match parked.io.reader.poll_read_more(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Ok(n)) => {
                Metrics::add(&parked.io.broker.metrics().bytes_received, n as u64);
                let session = parked.connection.machine.session();
                session.count_bytes(false, n as u64);
                true
            }
            // The resumed loop reads again and sees the end of stream (or the error).
            Poll::Ready(Err(_)) => true,
        }
    };
    if !ready {
        let mut state = slot.state();
        if !state.fired {
            Metrics::add(&parked.io.broker.metrics().clients_parked, 1);
            state.parked = Some(parked);
            return;
        }
    }
    tokio::spawn(resume(parked));
}

/// The task of a connection woken from parking: the packet loop where it left off, then
/// the close as usual, or parking again.
async fn resume<R, W, G>(parked: Box<Parked<R, W, G>>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let Parked { mut io, connection } = *parked;
    let mut connection = Some(connection);
    io.drive(&mut connection, false, true).await;
    if let Some(connection) = connection {
        park(io, connection);
    }
}
