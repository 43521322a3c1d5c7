//! `GET /sse?filter=F[&filter=F...][&retained=1][&last_event_id=N]`: Server-Sent Events.
//!
//! The response is a `text/event-stream` whose body reads the client's cursor in the shared
//! ring of its filter set: every event is a frame the router already encoded
//! (`id: N`, `event: message`, `data: {...}`), sent as is. `Last-Event-ID` (or the
//! `last_event_id` parameter) resumes after that event while the ring holds it; a client
//! that fell behind gets `event: lagged` with `{"missed": N}` and continues. A keep-alive
//! comment goes out after `sse_keepalive_ms` without traffic. The stream ends at broker
//! shutdown.
//!
//! This module owns the request checks and a subscriber's read side ([`Subscriber`]: its
//! place in the ring and the frames due before the ring). How the frames reach the socket is
//! the caller's: [`handle`] streams them through hyper (a task per client, a keep-alive
//! sleep reset by each event); the lean path ([`super::sse_raw`]) parks idle subscribers on
//! their ring ([`super::sse_park`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::access::{self, query_params};
use super::ring::{self, Next};
use super::{ClientSlot, RingLease};
use std::sync::Arc;

use super::Bridges;
use crate::broker::Broker;
use crate::http::{json_error, Body};
use crate::metrics::Metrics;

/// The first bytes of every stream: sent at once so that the client sees the headers.
const OPENING: &[u8] = b": tern\nretry: 2000\n\n";

/// The keep-alive comment.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The last event of a stream whose token expired (the stream then ends).
pub const EXPIRED: &[u8] = b"event: expired\ndata: {\"reason\":\"token expired\"}\n\n";

/// One subscriber's read side: its client slot, its ring and where it is in it.
pub struct Subscriber {
    /// Keeps the client counted against `max_bridge_clients` while the stream lives.
    pub(super) slot: ClientSlot,
    pub(super) lease: RingLease,
    /// The id of the next event this client reads.
    pub(super) cursor: u64,
    /// Frames to send before the ring: the opening, retained messages, a `lagged` notice.
    pub(super) pending: VecDeque<Bytes>,
    /// When its token expires (the stream ends then with an `expired` event).
    pub(super) expires_at: Option<Instant>,
}

/// A subscriber streamed through hyper: what its body holds between events.
struct HyperStream {
    subscriber: Subscriber,
    wake: watch::Receiver<()>,
    shutdown: watch::Receiver<bool>,
    keepalive: Pin<Box<Sleep>>,
    keepalive_every: Duration,
    /// The `expired` event went out: the stream ends.
    expired_sent: bool,
}

/// Serves `GET /sse` through hyper (a connection whose first request was not `/sse`;
/// the others take [`super::sse_raw`]).
pub async fn handle(bridges: &Arc<Bridges>, request: &Request<Incoming>) -> Response<Body> {
    let broker = bridges.broker();
    let subscriber = match open(bridges, request).await {
        Ok(subscriber) => subscriber,
        Err(response) => return *response,
    };
    let ring = subscriber.lease.ring().clone();
    let keepalive_every = keepalive_every(broker);
    let hyper_stream = HyperStream {
        subscriber,
        wake: ring.subscribe(),
        shutdown: broker.shutdown_signal(),
        keepalive: Box::pin(tokio::time::sleep(keepalive_every)),
        keepalive_every,
        expired_sent: false,
    };
    let events = stream::unfold(hyper_stream, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((Ok::<_, Infallible>(Frame::data(frame)), s))
    });
    let body = StreamBody::new(events)
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Checks an SSE request (filters, credentials, read ACL, client limit) and attaches the
/// subscriber to the ring of its filters.
///
/// # Errors
/// The error response to send (400, 401, 403 or 503, with a JSON body).
pub async fn open<B>(
    bridges: &Arc<Bridges>,
    request: &Request<B>,
) -> Result<Subscriber, Box<Response<Body>>> {
    let broker = bridges.broker();
    let refuse = |status, reason: &str| Box::new(json_error(status, reason));
    let mut filters = Vec::new();
    let mut retained = false;
    let mut last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    for (key, value) in query_params(request.uri().query().unwrap_or("")) {
        match key.as_str() {
            "filter" => filters.push(value),
            "retained" => retained = matches!(value.as_str(), "1" | "true"),
            "last_event_id" if last_event_id.is_none() => last_event_id = Some(value),
            _ => {}
        }
    }
    let max = broker.http_config().max_filters_per_client;
    if filters.len() > max {
        let reason = format!("at most {max} filters per client");
        return Err(refuse(StatusCode::BAD_REQUEST, &reason));
    }
    let filters = super::validate_filters(broker, filters)
        .map_err(|reason| refuse(StatusCode::BAD_REQUEST, &reason))?;
    let identity = access::authenticate(broker, request).await?;
    identity
        .check_readable(broker, &filters)
        .map_err(|reason| refuse(StatusCode::FORBIDDEN, &reason))?;
    let slot = ClientSlot::acquire(bridges)
        .ok_or_else(|| refuse(StatusCode::SERVICE_UNAVAILABLE, "too many bridge clients"))?;
    let lease = bridges.attach(filters, identity.username.as_deref());
    let ring = lease.ring();
    let mut cursor = ring.next_id();
    // Retained messages are read after the cursor is taken: a message published meanwhile
    // then comes as an event too (at most twice), never in neither list.
    let mut pending = VecDeque::from([Bytes::from_static(OPENING)]);
    if retained {
        retained_frames(broker, &ring.filters, &identity, &mut pending);
    }
    if let Some(last) = last_event_id {
        match last
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|id| ring.resume_cursor(id))
        {
            Some(resume) => cursor = resume,
            None => pending.push_back(ring::lagged_sse(None)),
        }
    }
    Ok(Subscriber {
        slot,
        lease,
        cursor,
        pending,
        expires_at: identity.expiry_instant(),
    })
}

/// How long a stream may stay silent before a keep-alive comment.
pub fn keepalive_every(broker: &Broker) -> Duration {
    Duration::from_millis(broker.http_config().sse_keepalive_ms.max(1))
}

/// The retained messages matching `filters`, one event each (without an id).
fn retained_frames(
    broker: &Broker,
    filters: &[Box<str>],
    identity: &access::Identity,
    out: &mut VecDeque<Bytes>,
) {
    let limit = broker.http_config().ring_max_messages.max(1);
    let now = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for filter in filters {
        broker.for_each_retained(filter, now, |message| {
            let topic = message.topic();
            if out.len() > limit || !identity.may_read(topic) || !seen.insert(topic.to_string()) {
                return;
            }
            let json = ring::encode_json(message.publish(), true);
            out.push_back(ring::sse_event_without_id(&json));
        });
    }
}

/// Whether a stream with this expiry has expired at `now` (counted once by the caller,
/// which ends the stream).
pub fn expired(expires_at: Option<Instant>, now: Instant) -> bool {
    expires_at.is_some_and(|at| now >= at)
}

/// Counts a bridge stream ended because its token expired.
pub fn count_expired(broker: &Broker) {
    Metrics::add(&broker.metrics().auth_token_expired_disconnects, 1);
}

/// Sleeps until `at`, or forever without one.
pub async fn sleep_until_expiry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Subscriber {
    /// The next frame if one is ready now: a pending one, else the ring's at the cursor
    /// (moving it), else `None` (caught up).
    pub fn try_frame(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        match self.lease.ring().next(&mut self.cursor) {
            Next::Entry(entry) => Some(entry.sse),
            Next::Lagged(missed) => {
                let metrics = &self.lease.broker().metrics();
                Metrics::add(&metrics.bridge_lagged_messages, missed);
                Some(ring::lagged_sse(Some(missed)))
            }
            Next::Empty => None,
        }
    }
}

impl HyperStream {
    /// The next bytes to send; `None` ends the stream (broker shutdown).
    ///
    /// # Cancel safety
    /// Cancel safe: the cursor only moves when a frame is returned.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if !self.subscriber.pending.is_empty() {
                return self.subscriber.try_frame();
            }
            if *self.shutdown.borrow() || self.expired_sent {
                return None;
            }
            if expired(self.subscriber.expires_at, Instant::now()) {
                count_expired(self.subscriber.lease.broker());
                self.expired_sent = true;
                return Some(Bytes::from_static(EXPIRED));
            }
            // Mark the wake-up seen before reading: a push after this read wakes us again.
            self.wake.borrow_and_update();
            if let Some(frame) = self.subscriber.try_frame() {
                self.reset_keepalive();
                return Some(frame);
            }
            tokio::select! {
                // Cancel safe (watch::Receiver::changed).
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                // Cancel safe. An error means the broker is gone: end the stream too.
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                // Cancel safe (the next pass sees the expiry).
                () = sleep_until_expiry(self.subscriber.expires_at) => {}
                // Cancel safe: the sleep is reset, not recreated.
                () = &mut self.keepalive => {
                    self.reset_keepalive();
                    return Some(Bytes::from_static(KEEPALIVE));
                }
            }
        }
    }

    fn reset_keepalive(&mut self) {
        let deadline = Instant::now() + self.keepalive_every;
        self.keepalive.as_mut().reset(deadline);
    }
}
