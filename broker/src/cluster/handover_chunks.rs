//! How a handed-over session travels when it takes several NATS messages: the node that
//! takes the client over (B) subscribes to a fresh inbox and publishes its takeover
//! request with that inbox as the reply subject ([`ask_in_chunks`]); the old owner (A)
//! publishes every handover form to it as one chunk ([`send_chunks`]). Each chunk is a
//! 16-byte prefix — the handover's id (`u64`), the chunk's index and the number of chunks
//! (`u32`s, little-endian) — then one complete handover form. NATS keeps the order of one
//! publisher's messages to one subscriber, so B takes them in order and checks that it
//! did ([`ChunkSet`]): same id, consecutive indexes, the same total. An empty message
//! instead of the first chunk means "no session here".
//!
//! Pacing: B's NATS connection must not fall behind by more than the server lets a
//! subscriber lag (`max_pending`, 64 MiB by default, past which the server cuts the
//! connection as a slow consumer), nor overflow the client's subscription buffer. So A
//! sends the last chunk of each window (at most [`WINDOW_BYTES`], at most
//! [`WINDOW_CHUNKS`]) as a request, and sends on once B has answered it, which it does
//! after taking that chunk: at most one window is ever pending towards B.
//!
//! A node sends at most [`SENDING_HANDOVERS`] chunked handovers at once, so that many
//! sessions moving together (a node's clients moving to another) do not add up to more
//! than a few windows pending either. Both ends are bounded by `handover_timeout_ms` as a
//! whole. This module owns the chunk
//! prefix and both ends of the transfer; what the forms hold is the broker's
//! (`broker/handover.rs`), when a node asks is `owners.rs`'s.

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::metrics::ClusterMetrics;
use crate::broker::Handover;

/// Bytes of the prefix before each chunk's form.
pub(super) const CHUNK_PREFIX_BYTES: usize = 16;
/// Most bytes A sends before waiting for B to have taken them (well below NATS's default
/// `max_pending` of 64 MiB).
const WINDOW_BYTES: usize = 8 << 20;
/// Most chunks A sends before waiting for B to have taken them (well below the client's
/// subscription buffer of 64 Ki messages).
const WINDOW_CHUNKS: usize = 16;
/// Most chunks one handover may have: a total above it is not believed.
const MAX_CHUNKS: u32 = 1 << 20;
/// Most chunked handovers this node sends at once (the others wait their turn, within
/// their `handover_timeout_ms`): what NATS holds for the nodes taking them stays within
/// this many windows.
const SENDING_HANDOVERS: usize = 4;

/// Numbers this node's handovers (mixed into their ids).
static HANDOVERS: AtomicU64 = AtomicU64::new(0);

/// Why a chunked handover did not arrive whole (or could not be sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChunkError {
    /// Subscribing to the reply inbox or publishing failed.
    #[error("NATS refused a subscription or a publish")]
    Nats,
    /// Nobody listens on the subject (the other node is gone).
    #[error("no responders")]
    NoResponders,
    /// Shorter than the prefix, no chunks, or too many.
    #[error("malformed chunk")]
    Malformed,
    /// A chunk of another handover, out of order, or with another total.
    #[error("chunk {got} of handover {id:#x} where chunk {expected} was due")]
    OutOfOrder {
        /// The handover the chunk said it belongs to.
        id: u64,
        /// The index it carried.
        got: u32,
        /// The index due.
        expected: u32,
    },
    /// The reply subscription ended (the NATS connection closed) with chunks missing.
    #[error("the subscription ended after {received} of {total} chunks")]
    Ended {
        /// Chunks taken.
        received: u32,
        /// Chunks announced (0: none came).
        total: u32,
    },
    /// `handover_timeout_ms` passed with chunks still missing.
    #[error("timed out after {received} of {total} chunks")]
    TimedOut {
        /// Chunks taken (by the sender: sent before the window the taker did not take).
        received: u32,
        /// Chunks announced (0: none came).
        total: u32,
    },
}

/// The prefix of chunk `index` of `total` of handover `id`.
fn prefix(id: u64, index: u32, total: u32) -> [u8; CHUNK_PREFIX_BYTES] {
    let mut out = [0; CHUNK_PREFIX_BYTES];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..12].copy_from_slice(&index.to_le_bytes());
    out[12..].copy_from_slice(&total.to_le_bytes());
    out
}

/// A chunk's id, index and total, and its form.
fn parse(chunk: &Bytes) -> Option<(u64, u32, u32, Bytes)> {
    let head = chunk.get(..CHUNK_PREFIX_BYTES)?;
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let id = u64::from_le_bytes(head[..8].try_into().ok()?);
    Some((id, word(8), word(12), chunk.slice(CHUNK_PREFIX_BYTES..)))
}

/// The chunks of one handover as B takes them.
#[derive(Debug, Default)]
pub(super) struct ChunkSet {
    /// The handover's id and total, from the first chunk.
    first: Option<(u64, u32)>,
    forms: Vec<Bytes>,
}

impl ChunkSet {
    /// Takes the next chunk; `Ok(true)` once the set is complete.
    ///
    /// # Errors
    /// [`ChunkError::Malformed`] or [`ChunkError::OutOfOrder`]: the set cannot complete.
    pub(super) fn take(&mut self, chunk: &Bytes) -> Result<bool, ChunkError> {
        let (id, index, total, form) = parse(chunk).ok_or(ChunkError::Malformed)?;
        if total == 0 || total > MAX_CHUNKS || form.is_empty() {
            return Err(ChunkError::Malformed);
        }
        let expected = self.forms.len() as u32;
        let (first_id, first_total) = *self.first.get_or_insert((id, total));
        if id != first_id || total != first_total || index != expected {
            return Err(ChunkError::OutOfOrder {
                id,
                got: index,
                expected,
            });
        }
        self.forms.push(form);
        Ok(self.forms.len() as u32 == total)
    }

    /// Chunks taken, and announced (0: none yet).
    fn progress(&self) -> (u32, u32) {
        (
            self.forms.len() as u32,
            self.first.map_or(0, |(_, total)| total),
        )
    }
}

/// Asks on `subject` with `request` and gathers the chunked answer within `timeout`:
/// the handover forms in order, or `None` when the other node has no session (an empty
/// answer).
///
/// # Errors
/// [`ChunkError`]: the request could not go out, nobody answered, or the chunks that came
/// do not make a whole set in time.
pub(super) async fn ask_in_chunks(
    client: &async_nats::Client,
    subject: String,
    request: Bytes,
    timeout: Duration,
) -> Result<Option<Vec<Bytes>>, ChunkError> {
    let deadline = Instant::now() + timeout;
    let inbox = client.new_inbox();
    // One connection: NATS has the subscription before it sees the request.
    let mut chunks = client
        .subscribe(inbox.clone())
        .await
        .map_err(|_| ChunkError::Nats)?;
    client
        .publish_with_reply(subject, inbox, request)
        .await
        .map_err(|_| ChunkError::Nats)?;
    let mut set = ChunkSet::default();
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, chunks.next()).await else {
            let (received, total) = set.progress();
            return Err(ChunkError::TimedOut { received, total });
        };
        let Some(message) = next else {
            let (received, total) = set.progress();
            return Err(ChunkError::Ended { received, total });
        };
        if message
            .status
            .is_some_and(|s| s == async_nats::StatusCode::NO_RESPONDERS)
        {
            return Err(ChunkError::NoResponders);
        }
        if message.payload.is_empty() && set.progress().0 == 0 {
            return Ok(None);
        }
        let complete = set.take(&message.payload)?;
        if let Some(ack) = message.reply {
            // The end of a window: A sends on once this is back.
            client
                .publish(ack, Bytes::new())
                .await
                .map_err(|_| ChunkError::Nats)?;
        }
        if complete {
            return Ok(Some(set.forms));
        }
    }
}

/// The turns to send chunked handovers from this node ([`SENDING_HANDOVERS`] at once).
#[derive(Debug, Clone)]
pub(super) struct Senders(Arc<Semaphore>);

impl Senders {
    /// The turns of one node.
    pub(super) fn new() -> Senders {
        Senders(Arc::new(Semaphore::new(SENDING_HANDOVERS)))
    }
}

/// Where and how a handover goes.
#[derive(Debug)]
pub(super) struct Handing {
    /// The node's NATS connection.
    pub(super) client: async_nats::Client,
    /// The inbox of the node taking the session.
    pub(super) reply: async_nats::Subject,
    /// `handover_timeout_ms`: the whole sending, the wait for a turn included.
    pub(super) timeout: Duration,
    /// For the messages that could not go.
    pub(super) metrics: Arc<ClusterMetrics>,
}

/// Encodes `handover` in forms that fit one NATS message each and sends them as chunks to
/// `to.reply`, in its turn among [`Senders`]; logs what does not go.
pub(super) async fn send_handover(handover: Handover, to: Handing, senders: Senders) {
    let deadline = Instant::now() + to.timeout;
    let client_id = handover.client_id().to_string();
    let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, senders.0.acquire()).await else {
        tracing::warn!(
            client_id,
            "cluster: no turn to send the handover in time; it is dropped"
        );
        return;
    };
    let handed = handover.into_forms(max_form_bytes(&to.client));
    let dropped = handed.dropped_messages as u64;
    ClusterMetrics::inc_by(&to.metrics.handover_messages_dropped, dropped);
    let chunks = handed.forms.len();
    let timeout = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = send_chunks(&to.client, to.reply, handed.forms, timeout).await {
        tracing::warn!(client_id, chunks, error = %e, "cluster: the handover did not go out whole");
    }
}

/// A fresh id for a handover of this node (random per process, then counted).
fn next_id() -> u64 {
    let n = HANDOVERS.fetch_add(1, Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one(n)
}

/// Publishes `forms` to `reply` as the chunks of one handover, pacing by window (see the
/// module doc), all within `timeout`.
///
/// # Errors
/// [`ChunkError`]: a publish failed, or B did not take a window in time (it gave up).
async fn send_chunks(
    client: &async_nats::Client,
    reply: async_nats::Subject,
    forms: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<(), ChunkError> {
    let deadline = Instant::now() + timeout;
    let id = next_id();
    let total = u32::try_from(forms.len()).map_err(|_| ChunkError::Malformed)?;
    let (mut window_bytes, mut window_chunks) = (0, 0);
    for (index, form) in forms.into_iter().enumerate() {
        let index = index as u32;
        let mut chunk = Vec::with_capacity(CHUNK_PREFIX_BYTES + form.len());
        chunk.extend_from_slice(&prefix(id, index, total));
        chunk.extend_from_slice(&form);
        window_bytes += chunk.len();
        window_chunks += 1;
        let last = index + 1 == total;
        if !last && (window_bytes >= WINDOW_BYTES || window_chunks >= WINDOW_CHUNKS) {
            let request = client.request(reply.clone(), chunk.into());
            let timed_out = ChunkError::TimedOut {
                received: index,
                total,
            };
            match tokio::time::timeout_at(deadline, request).await {
                Ok(Ok(_)) => (window_bytes, window_chunks) = (0, 0),
                Ok(Err(e)) => {
                    return Err(match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => ChunkError::NoResponders,
                        async_nats::RequestErrorKind::TimedOut => timed_out,
                        _ => ChunkError::Nats,
                    })
                }
                Err(_) => return Err(timed_out),
            }
        } else {
            client
                .publish(reply.clone(), chunk.into())
                .await
                .map_err(|_| ChunkError::Nats)?;
        }
    }
    Ok(())
}

/// The largest form a chunk may carry: the NATS server's `max_payload` (the client's
/// negotiated limit, checked by the client on every publish) less the chunk prefix.
fn max_form_bytes(client: &async_nats::Client) -> usize {
    client
        .max_payload()
        .saturating_sub(CHUNK_PREFIX_BYTES)
        .max(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u64, index: u32, total: u32, form: &[u8]) -> Bytes {
        let mut out = prefix(id, index, total).to_vec();
        out.extend_from_slice(form);
        out.into()
    }

    #[test]
    fn a_whole_set_in_order_gives_its_forms() {
        let mut set = ChunkSet::default();
        assert_eq!(set.take(&chunk(7, 0, 3, b"a")), Ok(false));
        assert_eq!(set.take(&chunk(7, 1, 3, b"bb")), Ok(false));
        assert_eq!(set.take(&chunk(7, 2, 3, b"c")), Ok(true));
        assert_eq!(set.forms, vec![&b"a"[..], &b"bb"[..], &b"c"[..]]);
    }

    #[test]
    fn a_single_chunk_is_a_whole_set() {
        let mut set = ChunkSet::default();
        assert_eq!(set.take(&chunk(1, 0, 1, b"form")), Ok(true));
        assert_eq!(set.forms, vec![&b"form"[..]]);
    }

    #[test]
    fn gaps_repeats_and_strangers_are_refused() {
        let mut set = ChunkSet::default();
        set.take(&chunk(7, 0, 3, b"a")).expect("first");
        let gap = set.take(&chunk(7, 2, 3, b"c"));
        assert_eq!(
            gap,
            Err(ChunkError::OutOfOrder {
                id: 7,
                got: 2,
                expected: 1
            })
        );
        assert!(set.take(&chunk(7, 0, 3, b"a")).is_err(), "a repeat");
        assert!(set.take(&chunk(8, 1, 3, b"b")).is_err(), "another handover");
        assert!(set.take(&chunk(7, 1, 4, b"b")).is_err(), "another total");
        assert_eq!(set.take(&chunk(7, 1, 3, b"b")), Ok(false), "still whole");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let mut set = ChunkSet::default();
        assert_eq!(
            set.take(&Bytes::from_static(b"short")),
            Err(ChunkError::Malformed)
        );
        assert_eq!(set.take(&chunk(1, 0, 0, b"a")), Err(ChunkError::Malformed));
        assert_eq!(set.take(&chunk(1, 0, 1, b"")), Err(ChunkError::Malformed));
        assert_eq!(
            set.take(&chunk(1, 0, MAX_CHUNKS + 1, b"a")),
            Err(ChunkError::Malformed)
        );
    }

    #[test]
    fn the_prefix_round_trips() {
        let c = chunk(u64::MAX - 1, 5, 9, b"xyz");
        assert_eq!(c.len(), CHUNK_PREFIX_BYTES + 3);
        let (id, index, total, form) = parse(&c).expect("parses");
        assert_eq!(
            (id, index, total, &form[..]),
            (u64::MAX - 1, 5, 9, &b"xyz"[..])
        );
        assert_ne!(next_id(), next_id());
    }
}
