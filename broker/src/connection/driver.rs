//! The packet loop of an established connection: a thin driver around the session's
//! protocol state machine ([`crate::session::machine::Machine`]). It reads and decodes,
//! feeds each packet to the machine, writes the packets it returns and carries out the
//! events it asks for through the broker (route a PUBLISH, subscribe, unsubscribe), then
//! writes what this task and the publishers appended to the connection's SharedWriter.
//!
//! Nothing here awaits while handling a packet: a PUBLISH is checked, stored if retained,
//! and routed to every subscriber's SharedWriter before the next packet is read.

use std::task::Poll;
use std::time::Duration;

use tern_codec::{Packet, PacketId, ReasonCode, SubscriptionOptions, Unsubscribe};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::held_records::HeldRecords;
use super::io::PacketReader;
use super::output::Output;
use super::{Connection, Ended, PendingSubAck};
use crate::broker::{InterestReady, Subscribed};
use crate::delivery::shared_writer::HeldFor;
use crate::error::Close;
use crate::journal::batch::DEFERRED;
use crate::metrics::Metrics;
use crate::session::machine::{
    self, Event, FilterOutcome, Output as Step, SubscribeRequest, Transmit,
};

/// What ended one wait of the packet loop.
enum Wake {
    /// The SharedWriter woke us: output, a close or a kick.
    Woken,
    /// A write of the output batch.
    Written(std::io::Result<usize>),
    /// A read into the packet buffer.
    Read(std::io::Result<usize>),
}

impl Connection {
    /// Before the first run of the packet loop: `Err` when the broker is shutting down;
    /// otherwise the keep alive is enforced from now on.
    pub(crate) fn start(&self) -> Result<(), Close> {
        // The session's link is attached by now, so a shutdown either kicks this
        // connection through it or was signalled before and is seen here.
        if self.broker.is_shutting_down() {
            return Err(Close::Shutdown);
        }
        if let Some(timeout_ms) = self.keep_alive_timeout_ms {
            let timeout = Duration::from_millis(u64::from(timeout_ms.get()));
            self.broker.keep_alive().watch(&self.out, timeout);
        }
        Ok(())
    }

    /// Reads and handles packets until the connection ends ([`Ended::Closed`], with why)
    /// or, with `parks`, until it has been idle long enough to park ([`Ended::Park`]).
    /// Called after [`Connection::start`], and again after each parking.
    pub(crate) async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut PacketReader<R>,
        output: &mut Output<W>,
        parks: bool,
    ) -> Ended {
        if parks {
            self.watch_idle();
        }
        // Few locals live across the awaits below: an idle connection waits in this
        // future, so each one is paid by every connection.
        loop {
            if let Some(kick) = self.out.control().kicked() {
                return Ended::Closed(kick.into());
            }
            if let Err(close) = self.handle_buffered(reader) {
                return Ended::Closed(close);
            }
            if self.pending_suback.is_some() {
                // Boxed: its state costs memory only while a SUBACK waits for the cluster.
                Box::pin(self.finish_pending_suback()).await;
                continue; // packets may be waiting in the buffer
            }
            if let Some(close) = self.pause_if_asked().await {
                if let Some(close) = close {
                    return Ended::Closed(close);
                }
                continue; // packets may be waiting in the buffer: handle them first
            }
            // Going round the loop is activity; the idle sweeper may have asked us to park.
            if parks && self.out.control().take_idle() == crate::idle_sweep::IDLE_PARK_REQUESTED {
                if self.can_park(reader, output) {
                    return Ended::Park;
                }
                self.watch_idle(); // busy after all: asked again once idle
            }
            let wake = self.wait(reader, output).await;
            match wake {
                Wake::Woken => {}
                Wake::Written(Ok(n)) => {
                    Metrics::add(&self.broker.metrics().bytes_sent, n as u64);
                    self.machine.session().count_bytes(true, n as u64);
                }
                Wake::Read(Ok(0)) => return Ended::Closed(Close::PeerGone),
                Wake::Read(Ok(n)) => {
                    Metrics::add(&self.broker.metrics().bytes_received, n as u64);
                    self.machine.session().count_bytes(false, n as u64);
                }
                Wake::Written(Err(e)) | Wake::Read(Err(e)) => return Ended::Closed(Close::Io(e)),
            }
        }
    }

    /// Has the idle sweeper watch this connection (`park_idle_after_ms`).
    fn watch_idle(&self) {
        let after_ms = self.machine.limits().park_idle_after_ms;
        self.broker.idle_sweep().watch(&self.out, after_ms);
    }

    /// Whether the connection has nothing in hand: no input buffered, no output being
    /// written or waiting, nothing it waits for but input or a wake-up of its
    /// SharedWriter. Only then may it park (`park.rs`).
    fn can_park<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        reader: &PacketReader<R>,
        output: &Output<W>,
    ) -> bool {
        !reader.has_buffered()
            && !output.is_busy()
            && self.out.is_below(1)
            && !self.out.is_drain_wanted()
            && self.out.control().kicked().is_none()
            && !self.waits_for_cluster()
            && !self.has_pressure()
            && !self.machine.is_throttled()
    }

    /// Handles the packets waiting in the read buffer, until it is empty or the client must
    /// pause (publish rate, back-pressure).
    fn handle_buffered<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut PacketReader<R>,
    ) -> Result<(), Close> {
        let mut received = false;
        // The steps acknowledgements cause go into the journal once, after the buffer.
        let _deferred = HeldRecords::begin(&self.broker, DEFERRED);
        // One clock read per buffer serves the rate bucket, expiry and routing of every
        // packet in it (a buffer is handled in well under a millisecond).
        let now = Instant::now();
        // Publishers waiting for our queue to move are woken once per buffer, not once per
        // acknowledgement in it (each wake-up reaches every waiting publisher).
        let mut relieved = false;
        let result = loop {
            match reader.try_decode() {
                Ok(Some(packet)) => {
                    received = true;
                    match self.handle(packet, now) {
                        Ok(relief) => relieved |= relief,
                        Err(close) => break Err(close),
                    }
                    let paused = self.has_pressure() || self.waits_for_cluster();
                    if self.machine.is_throttled() || paused {
                        break Ok(()); // the rest waits in the buffer until we may go on
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Close::Protocol(e)),
            }
        };
        // What joined a run in this buffer is routed now, whatever ended the loop.
        self.flush_run(now);
        if relieved && self.queue_relieved(now) {
            self.broker.relief().relieve();
        }
        if let Some(routing) = self.routing.as_mut() {
            routing.scratch.keep_turn_for_input(reader.has_buffered());
        }
        if received && result.is_ok() {
            self.alive_at(now);
        }
        result
    }

    /// Whether the cluster holds this client's input: a SUBACK waiting for the cluster to
    /// confirm the interest, or a publisher waiting for room towards the cluster.
    fn waits_for_cluster(&self) -> bool {
        self.pending_suback.is_some()
            || self
                .routing
                .as_ref()
                .is_some_and(|r| r.cluster_wait.is_some())
    }

    /// Stops reading while publishers' subscribers drain or the publish rate refills.
    /// `None`: no pause; `Some(None)`: paused and may go on; `Some(Some(close))`: closed
    /// meanwhile.
    async fn pause_if_asked(&mut self) -> Option<Option<Close>> {
        if let Some(wait) = self.routing.as_mut().and_then(|r| r.cluster_wait.take()) {
            // The queue to the other nodes of a cluster is over its high-water mark.
            self.out
                .control()
                .set_keep_alive_deadline_ms(crate::keep_alive::NO_DEADLINE_MS);
            wait.await;
            self.alive();
            return Some(None);
        }
        if self.has_pressure() {
            // The client is not late while we do not read it.
            self.out
                .control()
                .set_keep_alive_deadline_ms(crate::keep_alive::NO_DEADLINE_MS);
            // Boxed: its state costs memory only while a publisher waits.
            Box::pin(self.wait_for_subscribers()).await;
            self.alive();
            return Some(None);
        }
        let resume_at = self.machine.take_throttle()?;
        // Over max_publish_rate_per_client: stop reading until the bucket refills. Boxed so
        // that its timer costs memory only while a client is throttled.
        Metrics::add(&self.broker.metrics().publish_throttled, 1);
        self.out
            .control()
            .set_keep_alive_deadline_ms(crate::keep_alive::NO_DEADLINE_MS);
        let closed = Box::pin(pause_until(resume_at, &self.out)).await;
        self.alive();
        Some(closed)
    }

    /// Writes what is pending and waits for output, a kick, a written batch or input.
    ///
    /// A plain function returning the wait itself (not an `async fn`): an idle connection
    /// waits here, and this way the wait adds only its borrows to the connection's task.
    fn wait<'a, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &'a self,
        reader: &'a mut PacketReader<R>,
        output: &'a mut Output<W>,
    ) -> impl std::future::Future<Output = Wake> + 'a {
        // Whatever this task and others appended since the last batch goes out next, once
        // the journal is durable as far as it needs (acknowledgements of logged records).
        let was_writing = output.is_busy();
        let (writing, held_for) = match output.refill(&self.out, self.broker.reached()) {
            Ok(writing) => (writing, HeldFor::default()),
            Err(held_for) => (false, held_for),
        };
        if writing && !was_writing {
            // A batch was just taken, so our buffered length dropped: publishers waiting
            // for us may go on (not on every pass while one batch is still being written,
            // nor while our queue still holds them back).
            if self.queue_relieved(Instant::now()) {
                self.broker.relief().relieve();
            }
            // And what our session kept back for room in the buffer (a retained replay,
            // QoS 1/2 messages past the cap) may follow; it wakes us for the next pass.
            if self.out.take_drain_wanted() {
                self.broker.pump(self.machine.session(), Instant::now());
            }
        }
        // One borrow of the connection rather than of its parts: an idle connection waits
        // in this future, and every captured reference is paid by each one.
        let this = self;
        std::future::poll_fn(move |cx| {
            // Output, a kick or a shutdown (a kick too); checked at the top of the loop.
            // Also polled while writing: a kick must not wait for a stuck socket.
            if this.out.control().poll_notified(cx).is_ready() {
                return Poll::Ready(Wake::Woken);
            }
            // Held output may go once the journal is durable that far. (If the log failed,
            // the broker is stopping and kicks this connection.)
            // (A hold still pending on an open journal batch is released with a wake-up.)
            let held_until = held_for.journal;
            let known = held_until != 0 && !crate::journal::batch::is_pending(held_until);
            if let (true, Some(journal)) = (known, this.broker.journal()) {
                if journal.poll_durable(held_until, cx).is_ready() {
                    return Poll::Ready(Wake::Woken);
                }
            }
            // Or once NATS has confirmed the messages it acknowledges (cluster).
            if held_for.cluster != 0 && this.broker.poll_confirmed(held_for.cluster, cx).is_ready()
            {
                return Poll::Ready(Wake::Woken);
            }
            if writing {
                if let Poll::Ready(written) = output.poll_progress(cx) {
                    return Poll::Ready(Wake::Written(written));
                }
            }
            reader.poll_read_more(cx).map(Wake::Read)
        })
    }

    /// Whether our queue is short enough for publishers it stopped to go on
    /// ([`crate::backpressure::queue_relieved`]); one atomic load when nobody waits.
    fn queue_relieved(&self, now: Instant) -> bool {
        if !self.broker.relief().has_waiters() {
            return false;
        }
        let bound = self.broker.deliver_ctx(now).backpressure_queued_messages;
        let queued = self.machine.session().delivery().queued();
        crate::backpressure::queue_relieved(queued, bound)
    }

    /// Moves the keep-alive deadline one period on, after traffic or after a pause of our
    /// own making.
    fn alive(&self) {
        self.alive_at(Instant::now());
    }

    /// [`Self::alive`] with the clock already read (once per input buffer).
    fn alive_at(&self, now: Instant) {
        if let Some(timeout_ms) = self.keep_alive_timeout_ms {
            let now_ms = self.broker.keep_alive().ms_at(now);
            self.out
                .control()
                .set_keep_alive_deadline_ms(now_ms + u64::from(timeout_ms.get()));
        }
    }

    /// Whether routing left subscribers over their soft cap to wait for.
    fn has_pressure(&self) -> bool {
        self.routing
            .as_ref()
            .is_some_and(|r| r.scratch.has_pressure())
    }

    /// Feeds one packet to the machine and carries out what it asks for. `Ok(true)`: our
    /// queue may have moved on, so publishers waiting for it should look again.
    fn handle(&mut self, packet: Packet, now: Instant) -> Result<bool, Close> {
        if !matches!(packet, Packet::Publish(_)) {
            // A run of messages is routed before anything the client sent after it.
            self.flush_run(now);
        }
        let packet = match packet {
            Packet::Auth(auth) => return self.handle_auth(*auth).map(|()| false),
            other => other,
        };
        if matches!(packet, Packet::Publish(_) | Packet::Subscribe(_)) {
            self.refresh_acl();
        }
        crate::journal::take_appended();
        let step = self
            .machine
            .handle_packet(packet, self.broker.deliver_ctx(now))?;
        let mut relieved = false;
        match step {
            Step::None => {}
            Step::Transmit(transmit) => self.send(&transmit),
            Step::Event(Event::Publish(message, ack)) => self.publish_or_join(message, ack, now),
            Step::Event(Event::Subscribe(request)) => self.subscribe(*request, now),
            Step::Event(Event::Unsubscribe(request)) => self.unsubscribe(&request),
            Step::Event(Event::Relieved) => relieved = true,
        }
        self.hold_for_logged();
        Ok(relieved)
    }

    /// What this thread logged since it last asked (a message for persistent sessions, a
    /// subscription, inbound QoS 2 state): the acknowledgement sent for it, and all output
    /// after it, waits until that is durable ("nothing acknowledged is lost"); records
    /// held back until the end of the buffer (`journal::batch`) hold it until their frame
    /// is appended and durable. Called after each packet, and after each run is routed and
    /// acknowledged (`publish.rs`), which may happen outside a packet's handling.
    pub(super) fn hold_for_logged(&self) {
        let logged = crate::journal::take_appended();
        if crate::journal::batch::is_pending(logged) {
            crate::delivery::pending_holds::hold(&self.out, logged, true);
        } else if logged != 0 {
            self.out.lock().hold_until(logged);
        }
    }

    /// Re-derives this client's ACL when the auth files were reloaded since it was derived
    /// (one atomic load per PUBLISH/SUBSCRIBE otherwise).
    fn refresh_acl(&mut self) {
        let generation = self.broker.auth().generation();
        if generation == self.machine.acl_generation() {
            return;
        }
        let session = self.machine.session();
        let state = self.broker.auth().current();
        let acl = self
            .broker
            .client_acl(&state, &session.client_id, self.machine.username());
        self.machine.set_acl(acl, generation);
    }

    /// Subscribes the allowed filters through the broker (the session's record and the trie
    /// together), answers SUBACK, then sends the retained messages they match.
    fn subscribe(&mut self, request: SubscribeRequest, now: Instant) {
        let max = self.machine.limits().max_subscriptions_per_client;
        let session = self.machine.session().clone();
        let mut outcomes = Vec::with_capacity(request.filters.len());
        for filter in &request.filters {
            let outcome = match &filter.verdict {
                Err(code) => FilterOutcome::Refused(*code),
                Ok(check) => {
                    let subscribed = self.broker.subscribe(
                        &session,
                        &filter.filter,
                        filter.record,
                        check.clone(),
                        max,
                    );
                    match subscribed {
                        // Ended meanwhile (taken over by a Clean Start; this connection is
                        // being closed): nothing was added, and no SUBACK goes out.
                        Subscribed::SessionEnded => return,
                        Subscribed::QuotaExceeded => {
                            FilterOutcome::Refused(ReasonCode::QUOTA_EXCEEDED)
                        }
                        Subscribed::New => FilterOutcome::Granted { new: true },
                        Subscribed::Replaced => FilterOutcome::Granted { new: false },
                    }
                }
            };
            outcomes.push((filter.record.options, outcome));
        }
        // In a cluster, the SUBACK waits until the other nodes route the new filters here:
        // a client told it is subscribed then misses nothing published anywhere after.
        let waits: Vec<InterestReady> = request
            .filters
            .iter()
            .zip(&outcomes)
            .filter(|(_, (_, outcome))| matches!(outcome, FilterOutcome::Granted { .. }))
            .filter_map(|(filter, _)| self.broker.interest_ready(&filter.filter))
            .collect();
        if waits.is_empty() {
            self.answer_subscribe(&request, &outcomes, now);
        } else {
            self.pending_suback = Some(Box::new(PendingSubAck {
                waits,
                request,
                outcomes,
            }));
        }
    }

    /// Waits for the cluster to take the interest of a SUBSCRIBE, then answers it.
    async fn finish_pending_suback(&mut self) {
        let Some(pending) = self.pending_suback.take() else {
            return;
        };
        let PendingSubAck {
            waits,
            request,
            outcomes,
        } = *pending;
        for wait in waits {
            wait.await;
        }
        self.answer_subscribe(&request, &outcomes, Instant::now());
    }

    /// Answers SUBACK, then sends the retained messages the granted filters match.
    fn answer_subscribe(
        &mut self,
        request: &SubscribeRequest,
        outcomes: &[(SubscriptionOptions, FilterOutcome)],
        now: Instant,
    ) {
        let session = self.machine.session().clone();
        let suback = self.machine.subscribed(request.packet_id, outcomes);
        self.send(&suback);
        for (filter, (options, outcome)) in request.filters.iter().zip(outcomes) {
            let FilterOutcome::Granted { new } = *outcome else {
                continue;
            };
            if machine::sends_retained(&filter.filter, options, new) {
                let check = filter.verdict.as_ref().ok().and_then(Option::as_ref);
                let id = filter.record.subscription_id;
                self.broker
                    .send_retained(&session, &filter.filter, options.qos, check, id, now);
            }
        }
    }

    /// Unsubscribes each filter through the broker and answers UNSUBACK.
    fn unsubscribe(&mut self, request: &Unsubscribe) {
        let session = self.machine.session().clone();
        let existed: Vec<bool> = request
            .filters
            .iter()
            .map(|filter| self.broker.unsubscribe(&session, filter))
            .collect();
        let packet_id: PacketId = request.packet_id;
        let unsuback = self.machine.unsubscribed(packet_id, existed);
        self.send(&unsuback);
    }

    /// Appends one packet to the output buffer (never capped: control packets are small and
    /// bounded by the client's own requests).
    pub(super) fn send(&self, transmit: &Transmit) {
        let mut guard = self.out.lock();
        if !guard.is_closed() {
            transmit.encode(self.machine.version(), guard.buf());
        }
    }

    /// Back-pressure: stops reading until the subscribers this client's messages left
    /// behind have drained, for at most `backpressure_max_wait_ms` ([`crate::backpressure`]).
    async fn wait_for_subscribers(&mut self) {
        let own = &self.out;
        let Some(routing) = self.routing.as_mut() else {
            return;
        };
        let mut pressure = routing.scratch.take_pressure();
        // Never wait for ourselves: our own output is written by this very task.
        pressure.retain(|p| !std::sync::Arc::ptr_eq(&p.writer, own));
        if pressure.is_empty() {
            return;
        }
        Metrics::add(&self.broker.metrics().backpressure_waits, 1);
        let max_wait = Duration::from_millis(self.machine.limits().backpressure_max_wait_ms);
        // The same bound routing flagged the subscribers with (live: SIGHUP may change it).
        let bound = self
            .broker
            .deliver_ctx(Instant::now())
            .backpressure_queued_messages;
        let held = routing.scratch.take_turn();
        let (slow, kept) = self
            .broker
            .relief()
            .wait(&pressure, bound, max_wait, held)
            .await;
        routing.scratch.set_turn(kept);
        if slow > 0 {
            Metrics::add(
                &self.broker.metrics().backpressure_slow_consumers,
                slow as u64,
            );
            let client_id = &self.machine.session().client_id;
            tracing::debug!(%client_id, slow, "subscribers did not drain in time: marked slow");
        }
    }
}

/// Waits until `resume_at`, or returns why the connection must close first. Output
/// appended meanwhile waits in the SharedWriter.
async fn pause_until(
    resume_at: Instant,
    out: &crate::delivery::shared_writer::SharedWriter,
) -> Option<Close> {
    let sleep = tokio::time::sleep_until(resume_at);
    tokio::pin!(sleep);
    loop {
        if let Some(kick) = out.control().kicked() {
            return Some(kick.into());
        }
        tokio::select! {
            biased;
            _ = out.control().notified() => {}
            _ = &mut sleep => return None,
        }
    }
}
