//! The epoll that parked connections' sockets wait in, out of tokio's.
//!
//! A socket registered with tokio costs its `ScheduledIo` (256 B of heap, 128-byte
//! aligned) for as long as it is registered, and the `Arc` its split halves share (64 B):
//! about a third of what an idle connection cost. A parked connection's socket is taken
//! out of tokio (`into_std`, which frees both) and registered here instead, for read
//! readiness only, under a token whose entry holds the waker to call: one word per parked
//! socket. The kernel keeps what epoll needs per socket; that is not in the broker's RSS.
//!
//! One task serves the epoll: tokio watches the epoll's own descriptor (an epoll is
//! readable while events are ready), and the task takes the events and wakes the wakers
//! of their tokens. Registrations are edge-triggered (mio's default): a socket that is
//! readable when it is registered is reported at once, and each is woken at most once
//! (its waker is taken). The connection deregisters its socket when it wakes, for
//! whatever reason, and gives it back to tokio.
//!
//! This module owns the epoll, its task and the token table; what parking is belongs to
//! `connection`'s `park.rs`.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;

/// Events taken from the epoll at once.
const EVENTS_PER_POLL: usize = 256;

/// The wakers of the registered sockets, by token.
#[derive(Debug, Default)]
struct Table {
    wakers: Vec<Option<Waker>>,
    /// Tokens not in use.
    free: Vec<u32>,
    /// Tokens in use.
    used: usize,
}

/// An epoll of parked sockets and the wakers of their tokens.
#[derive(Debug)]
pub struct ParkPoll {
    registry: Registry,
    table: Mutex<Table>,
    /// The runtime the epoll's task runs on, where woken connections are spawned (a
    /// wake-up may come from any thread; kept here once rather than in every parked one).
    runtime: tokio::runtime::Handle,
}

impl ParkPoll {
    /// A new epoll, served by a task spawned on the current runtime.
    ///
    /// # Errors
    /// The epoll could not be created or watched by tokio.
    pub fn start() -> io::Result<Arc<ParkPoll>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // Deprecated in tokio 1.54 for `register_with_interest`, which is `unsafe` because
        // the descriptor must stay open and the same while the `AsyncFd` lives: here it
        // does (the `Poll` owns its epoll descriptor and the `AsyncFd` owns the `Poll`),
        // and the safe form keeps `unsafe` out of the crate.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        let park_poll = Arc::new(ParkPoll {
            registry,
            table: Mutex::new(Table::default()),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(serve(fd, Arc::downgrade(&park_poll)));
        Ok(park_poll)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `fd` for read readiness (data, end of stream, an error): `waker` is woken
    /// once when it is readable (at once if it is already). Returns the token to
    /// deregister it with.
    ///
    /// # Errors
    /// The kernel refused the registration (nothing is registered then).
    pub fn register(&self, fd: RawFd, waker: Waker) -> io::Result<u32> {
        let token = {
            let mut table = self.table();
            table.used += 1;
            match table.free.pop() {
                Some(token) => {
                    table.wakers[token as usize] = Some(waker);
                    token
                }
                None => {
                    let token = u32::try_from(table.wakers.len()).unwrap_or(u32::MAX);
                    table.wakers.push(Some(waker));
                    token
                }
            }
        };
        let registered = self.registry.register(
            &mut SourceFd(&fd),
            Token(token as usize),
            Interest::READABLE,
        );
        if let Err(e) = registered {
            self.release(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Stops watching `fd`, registered under `token`, before it goes back to tokio.
    pub fn deregister(&self, fd: RawFd, token: u32) {
        if let Err(e) = self.registry.deregister(&mut SourceFd(&fd)) {
            tracing::debug!(error = %e, "parked socket: deregistration failed");
        }
        self.release(token);
    }

    fn release(&self, token: u32) {
        let mut table = self.table();
        if let Some(entry) = table.wakers.get_mut(token as usize) {
            *entry = None;
            table.free.push(token);
            table.used -= 1;
        }
        if table.used == 0 && table.wakers.len() > 64 {
            // Everyone woke: the table of a burst of parking is not kept.
            *table = Table::default();
        }
    }

    /// The runtime this epoll's task runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Sockets registered now.
    pub fn len(&self) -> usize {
        self.table().used
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the wakers of the ready tokens.
    fn take_wakers(&self, events: &Events, wakers: &mut Vec<Waker>) {
        let mut table = self.table();
        for event in events {
            if let Some(waker) = table.wakers.get_mut(event.token().0).and_then(Option::take) {
                wakers.push(waker);
            }
        }
    }
}

/// The task of one epoll: wakes the wakers of ready sockets until the `ParkPoll` is gone
/// (or the runtime shuts down).
async fn serve(mut fd: AsyncFd<Poll>, park_poll: Weak<ParkPoll>) {
    let mut events = Events::with_capacity(EVENTS_PER_POLL);
    let mut wakers = Vec::new();
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            tracing::error!(
                "the epoll of parked sockets failed: parked sockets wake only for output or kicks"
            );
            return;
        };
        loop {
            match guard
                .get_inner_mut()
                .poll(&mut events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "polling the epoll of parked sockets failed");
                    return;
                }
            }
            if events.is_empty() {
                guard.clear_ready();
                break;
            }
            let Some(park_poll) = park_poll.upgrade() else {
                return;
            };
            park_poll.take_wakers(&events, &mut wakers);
            drop(park_poll);
            for waker in wakers.drain(..) {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::WakeCount;
    use std::os::fd::AsRawFd;

    async fn until(count: &WakeCount, n: usize) {
        for _ in 0..500 {
            if count.get() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("woken {} times, expected {n}", count.get());
    }

    #[tokio::test]
    async fn wakes_once_when_readable_and_reuses_tokens() {
        use std::io::Write;
        let poll = ParkPoll::start().expect("epoll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let count = Arc::new(WakeCount::default());
        let token = poll
            .register(server.as_raw_fd(), Waker::from(count.clone()))
            .expect("register");
        assert_eq!(poll.len(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.get(), 0, "not readable yet");
        client.write_all(b"x").expect("write");
        until(&count, 1).await;
        client.write_all(b"y").expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.get(), 1, "woken once");
        poll.deregister(server.as_raw_fd(), token);
        assert!(poll.is_empty());
        // Readable already when registered: woken at once; the token is reused.
        let again = Arc::new(WakeCount::default());
        let token2 = poll
            .register(server.as_raw_fd(), Waker::from(again.clone()))
            .expect("register");
        assert_eq!(token2, token);
        until(&again, 1).await;
        poll.deregister(server.as_raw_fd(), token2);
    }
}
