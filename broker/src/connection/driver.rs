//! The packet loop of an established connection and the handler of each packet type.
//!
//! Handlers run in the connection's task and never await: a PUBLISH is checked, stored if
//! retained, and routed to every subscriber's SharedWriter before the next packet is read.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tern_codec::{
    Disconnect, Packet, PubAck, PubComp, PubRec, Publish, PublishQoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::io::PacketReader;
use super::output::Output;
use super::{Connection, RateBucket};
use crate::error::{Close, ProtocolError};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::SubscriptionRecord;

/// One PUBLISH in this many is timed for the routing latency histogram (the first of each
/// connection always is).
const LATENCY_SAMPLE_EVERY: u64 = 16;

impl Connection {
    /// Reads and handles packets until the connection ends; returns why.
    pub(crate) async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut PacketReader<R>,
        output: &mut Output<W>,
    ) -> Close {
        // The session's link is attached by now, so a shutdown either kicks this
        // connection through it or was signalled before and is seen here.
        if self.broker.is_shutting_down() {
            return Close::Shutdown;
        }
        // Few locals live across the awaits below: an idle connection waits in this
        // future, so each one is paid by every connection.
        if let Some(timeout) = self.keep_alive_timeout {
            self.broker.keep_alive.watch(&self.out, timeout);
        }
        loop {
            if let Some(reason) = self.out.kicked() {
                return kicked(reason);
            }
            let mut received = false;
            loop {
                match reader.try_decode() {
                    Ok(Some(packet)) => {
                        received = true;
                        if let Err(close) = self.handle(packet) {
                            return close;
                        }
                        if self.is_throttled() || self.has_pressure() {
                            break; // the rest waits in the buffer until we may go on
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Close::Protocol(e),
                }
            }
            if received {
                self.alive();
            }
            if self.has_pressure() {
                // The client is not late while we do not read it.
                self.out
                    .set_keep_alive_deadline_ms(crate::keep_alive::NO_DEADLINE_MS);
                // Boxed: its state costs memory only while a publisher waits.
                Box::pin(self.wait_for_subscribers()).await;
                self.alive();
                // Packets may be waiting in the buffer: handle them before reading more.
                continue;
            }
            if let Some(resume_at) = self.take_throttle() {
                // Over max_publish_rate_per_client: stop reading until the bucket refills.
                // Boxed so that its timer costs memory only while a client is throttled.
                Metrics::add(&self.broker.metrics.publish_throttled, 1);
                self.out
                    .set_keep_alive_deadline_ms(crate::keep_alive::NO_DEADLINE_MS);
                let pause = Box::pin(pause_until(resume_at, &self.out));
                if let Some(close) = pause.await {
                    return close;
                }
                self.alive();
                continue;
            }
            // Whatever this task and others appended since the last batch goes out next.
            let was_writing = output.is_busy();
            let writing = output.refill(&self.out);
            if writing && !was_writing {
                // A batch was just taken, so our buffered length dropped: publishers waiting
                // for us may go on (not on every pass while one batch is still being written).
                self.broker.relief.relieve();
            }
            // One hand-written wait instead of `select!` over three futures: an idle
            // connection waits here, and this way the wait adds only borrows to its task.
            let out = &self.out;
            let event = std::future::poll_fn(|cx| {
                // Output, a kick or a shutdown (a kick too); checked at the top of the loop.
                // Also polled while writing: a kick must not wait for a stuck socket.
                if out.poll_notified(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                if writing {
                    if let Poll::Ready(written) = output.poll_progress(cx) {
                        return Poll::Ready(Event::Written(written));
                    }
                }
                reader.poll_read_more(cx).map(Event::Read)
            })
            .await;
            match event {
                Event::Woken => {}
                Event::Written(Ok(n)) => Metrics::add(&self.broker.metrics.bytes_sent, n as u64),
                Event::Read(Ok(0)) => return Close::PeerGone,
                Event::Read(Ok(n)) => Metrics::add(&self.broker.metrics.bytes_received, n as u64),
                Event::Written(Err(e)) | Event::Read(Err(e)) => return Close::Io(e),
            }
        }
    }

    /// Moves the keep-alive deadline one period on, after traffic or after a pause of our
    /// own making.
    fn alive(&self) {
        if let Some(timeout) = self.keep_alive_timeout {
            let now_ms = self.broker.keep_alive.now_ms();
            self.out
                .set_keep_alive_deadline_ms(now_ms + timeout.as_millis() as u64);
        }
    }

    /// Whether routing left subscribers over their soft cap to wait for.
    fn has_pressure(&self) -> bool {
        self.publishing
            .as_ref()
            .is_some_and(|p| p.scratch.has_pressure())
    }

    /// Whether the client went over its publish rate: reading waits.
    fn is_throttled(&self) -> bool {
        self.publishing
            .as_ref()
            .and_then(|p| p.rate.as_ref())
            .is_some_and(|bucket| bucket.resume_at.is_some())
    }

    /// When reading may resume after going over the publish rate (cleared).
    fn take_throttle(&mut self) -> Option<Instant> {
        self.publishing.as_mut()?.rate.as_mut()?.resume_at.take()
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        if matches!(packet, Packet::Publish(_) | Packet::Subscribe(_)) {
            self.refresh_acl();
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish)?,
            Packet::PubAck(ack) => {
                let ctx = self.broker.deliver_ctx(Instant::now());
                self.session.delivery().handle_puback(ack.packet_id, ctx);
                self.broker.relief.relieve(); // our queue may have moved on
            }
            Packet::PubRec(rec) => {
                let ctx = self.broker.deliver_ctx(Instant::now());
                self.session
                    .delivery()
                    .handle_pubrec(rec.packet_id, rec.reason_code, ctx);
            }
            Packet::PubComp(comp) => {
                let ctx = self.broker.deliver_ctx(Instant::now());
                self.session.delivery().handle_pubcomp(comp.packet_id, ctx);
                self.broker.relief.relieve();
            }
            Packet::PubRel(rel) => {
                // [MQTT-4.3.3-12]: release the id; PUBCOMP (0x92 when it was unknown).
                let known = self.session.incoming_qos2().remove(&rel.packet_id.get());
                let mut comp = PubComp::new(rel.packet_id);
                if !known {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(|buf, version| comp.encode(version, buf));
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(*subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(*unsubscribe),
            Packet::PingReq => self.send(|buf, version| Packet::PingResp.encode(version, buf)),
            Packet::Disconnect(disconnect) => return Err(self.handle_disconnect(disconnect)),
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect.into()),
            Packet::Auth(_) => return Err(ProtocolError::UnexpectedAuth.into()),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => return Err(ProtocolError::ServerOnlyPacket(other.name()).into()),
        }
        Ok(())
    }

    /// Takes one token from the publish-rate bucket; when it runs dry, sets when reading may
    /// resume (the client is slowed down, not disconnected).
    fn charge_publish_rate(&mut self, now: Instant) {
        let rate = f64::from(self.limits.max_publish_rate_per_client);
        if rate <= 0.0 {
            return;
        }
        let bucket = self
            .publishing
            .get_or_insert_default()
            .rate
            .get_or_insert_with(|| RateBucket::full(rate, now));
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled_at = now;
        bucket.tokens -= 1.0;
        if bucket.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-bucket.tokens / rate);
            bucket.resume_at = Some(now + wait);
        }
    }

    fn handle_publish(&mut self, mut publish: Publish) -> Result<(), Close> {
        Metrics::add(&self.broker.metrics.messages_received, 1);
        // One clock read per PUBLISH serves the rate bucket, expiry and routing.
        let now = Instant::now();
        self.charge_publish_rate(now);
        if publish.properties().has_subscription_identifiers() {
            return Err(ProtocolError::SubscriptionIdFromClient.into());
        }
        if let Some(alias) = publish.properties().topic_alias() {
            if alias == 0 || alias > self.limits.topic_alias_maximum {
                return Err(ProtocolError::TopicAliasInvalid.into());
            }
            if publish.topic().is_empty() {
                let topic = self
                    .publishing
                    .as_ref()
                    .and_then(|p| p.inbound_aliases.get(&alias))
                    .cloned()
                    .ok_or(ProtocolError::TopicAliasUnknown)?;
                publish.resolve_alias(topic);
            } else {
                let topic = publish.shared_topic();
                self.publishing
                    .get_or_insert_default()
                    .inbound_aliases
                    .insert(alias, topic.clone());
                publish.resolve_alias(topic);
            }
        }
        let qos = publish.publish_qos();
        if !self.limits.topic_within_limits(publish.topic()) {
            Metrics::add(&self.broker.metrics.dropped_topic_too_deep, 1);
            tracing::debug!(client_id = %self.session.client_id, "topic has too many levels: dropped");
            if let Some(id) = qos.packet_id() {
                let code = if self.version.is_v5() {
                    ReasonCode::TOPIC_NAME_INVALID
                } else {
                    ReasonCode::SUCCESS
                };
                if let PublishQoS::ExactlyOnce(_) = qos {
                    let mut rec = PubRec::new(id);
                    rec.reason_code = code;
                    self.send(|buf, version| rec.encode(version, buf));
                } else {
                    let mut ack = PubAck::new(id);
                    ack.reason_code = code;
                    self.send(|buf, version| ack.encode(version, buf));
                }
            }
            return Ok(());
        }
        if self.publish_denied(&publish) {
            return Ok(());
        }
        if let PublishQoS::ExactlyOnce(id) = qos {
            let mut pending = self.session.incoming_qos2();
            if pending.contains(&id.get()) {
                // A resend of a message already delivered: acknowledge, do not route again
                // ([MQTT-4.3.3-10]).
                drop(pending);
                self.send(|buf, version| PubRec::new(id).encode(version, buf));
                return Ok(());
            }
            // [MQTT-3.3.4-9]: no more unacknowledged QoS 2 than our Receive Maximum.
            if pending.len() >= usize::from(self.limits.receive_maximum) {
                return Err(ProtocolError::ReceiveMaximumExceeded.into());
            }
            pending.insert(id.get());
        }
        let delivered = self.route(publish, now);
        let reason = if delivered == 0 && self.version.is_v5() {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        match qos {
            PublishQoS::AtLeastOnce(id) => {
                let mut ack = PubAck::new(id);
                ack.reason_code = reason;
                self.send(|buf, version| ack.encode(version, buf));
            }
            PublishQoS::ExactlyOnce(id) => {
                let mut rec = PubRec::new(id);
                rec.reason_code = reason;
                self.send(|buf, version| rec.encode(version, buf));
            }
            PublishQoS::AtMostOnce => {}
        }
        Ok(())
    }

    /// Stores and routes a client's message; returns how many sessions it reached.
    ///
    /// The routing latency histogram samples one PUBLISH in [`LATENCY_SAMPLE_EVERY`]: the
    /// clock reads would otherwise cost more than the routing of a small fan-out.
    fn route(&mut self, publish: Publish, now: Instant) -> usize {
        // Clients may not publish into the broker's own statistics.
        if crate::config::is_sys_topic(publish.topic()) {
            return 0;
        }
        let message = Message::new(publish, now, Some(self.session.id));
        let publishing = self.publishing.get_or_insert_default();
        publishing.published = publishing.published.wrapping_add(1);
        if publishing.published % LATENCY_SAMPLE_EVERY != 1 {
            return self.broker.publish(&message, &mut publishing.scratch, now);
        }
        let started = std::time::Instant::now();
        let delivered = self.broker.publish(&message, &mut publishing.scratch, now);
        self.broker
            .route_latency
            .observe(started.elapsed().as_secs_f64());
        delivered
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) {
        let subscription_id = subscribe.properties.subscription_identifier;
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        for (filter, options) in &subscribe.filters {
            if !self.limits.topic_within_limits(filter) {
                reason_codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let max_subscriptions = self.limits.max_subscriptions_per_client;
            let subscriptions = self.session.subscriptions();
            let is_new = !subscriptions.contains_key(filter);
            let full = is_new && max_subscriptions > 0 && subscriptions.len() >= max_subscriptions;
            drop(subscriptions);
            if full {
                Metrics::add(&self.broker.metrics.subscriptions_refused_quota, 1);
                reason_codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            let read_check = match self.subscribe_acl(filter) {
                Ok(check) => check,
                Err(code) => {
                    reason_codes.push(code);
                    continue;
                }
            };
            let record = SubscriptionRecord {
                options: *options,
                subscription_id,
            };
            let existed = self
                .session
                .subscriptions()
                .insert(Arc::from(&**filter), record)
                .is_some();
            let added = self.broker.router.subscribe_checked(
                filter,
                &self.session,
                *options,
                subscription_id,
                read_check.clone(),
            );
            if added {
                Metrics::add(&self.broker.metrics.subscriptions, 1);
            }
            reason_codes.push(ReasonCode(options.qos as u8));
            // Retained messages: per Retain Handling ([MQTT-3.3.1-9], [MQTT-3.3.1-10],
            // [MQTT-3.3.1-11]); never for shared subscriptions (5.0 section 4.8.2).
            let shared = tern_codec::topic::split_shared(filter).is_some();
            let send_retained = match options.retain_handling {
                tern_codec::RetainHandling::SendAtSubscribe => true,
                tern_codec::RetainHandling::SendIfNew => !existed,
                tern_codec::RetainHandling::DoNotSend => false,
            };
            if send_retained && !shared {
                retained_for.push((filter.clone(), options.qos, read_check));
            }
        }
        if self.session.is_ended() {
            // Ended meanwhile (taken over by a Clean Start; this connection is being
            // closed): the end released the subscriptions it saw, so undo what this packet
            // added, or the router would keep a session nobody owns.
            for (filter, _) in &subscribe.filters {
                self.session.subscriptions().remove(filter);
                if self.broker.router.unsubscribe(filter, self.session.id) {
                    Metrics::sub(&self.broker.metrics.subscriptions, 1);
                }
            }
            return;
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Default::default(),
            reason_codes,
        };
        self.send(|buf, version| suback.encode(version, buf));
        if retained_for.is_empty() {
            return;
        }
        let now = Instant::now();
        let ctx = self.broker.deliver_ctx(now);
        let ids: Vec<u32> = subscription_id.into_iter().collect();
        for (filter, granted, read_check) in retained_for {
            let mut matches = Vec::new();
            self.broker.retained.for_each_match(&filter, now, |m| {
                // The ACL's read check applies to retained messages too.
                if read_check
                    .as_ref()
                    .is_none_or(|acl| acl.allows_read(m.publish().topic()))
                {
                    matches.push(m.clone());
                }
            });
            let mut delivery = self.session.delivery();
            for message in &matches {
                // Sent because of a subscribe: RETAIN is 1 ([MQTT-3.3.1-8]).
                delivery.deliver(message, message.qos().min(granted), true, &ids, ctx);
            }
        }
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self.session.subscriptions().remove(filter).is_some();
            if self.broker.router.unsubscribe(filter, self.session.id) {
                Metrics::sub(&self.broker.metrics.subscriptions, 1);
            }
            reason_codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        let unsuback = UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Default::default(),
            reason_codes,
        };
        self.send(|buf, version| unsuback.encode(version, buf));
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Close {
        if let Some(secs) = disconnect.properties.session_expiry_interval_secs {
            if self.connect_expiry_was_zero && secs != 0 {
                return ProtocolError::SessionExpiryAfterZero.into();
            }
            self.session
                .set_expiry_secs(secs.min(self.limits.max_session_expiry_secs));
        }
        Close::ClientDisconnect(disconnect.reason_code)
    }
}

/// What ended one wait of the packet loop.
enum Event {
    /// The SharedWriter woke us: output, a close or a kick.
    Woken,
    /// A write of the output batch.
    Written(std::io::Result<usize>),
    /// A read into the packet buffer.
    Read(std::io::Result<usize>),
}

/// The close of a connection kicked with `reason`: a shutdown is its own close.
fn kicked(reason: ReasonCode) -> Close {
    if reason == ReasonCode::SERVER_SHUTTING_DOWN {
        Close::Shutdown
    } else if reason == ReasonCode::KEEP_ALIVE_TIMEOUT {
        Close::KeepAliveTimeout
    } else {
        Close::Kicked(reason)
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
        if let Some(reason) = out.kicked() {
            return Some(kicked(reason));
        }
        tokio::select! {
            biased;
            _ = out.notified() => {}
            _ = &mut sleep => return None,
        }
    }
}

impl Connection {
    /// Back-pressure: stops reading until the subscribers this client's messages left
    /// behind have drained, for at most `backpressure_max_wait_ms` ([`crate::backpressure`]).
    async fn wait_for_subscribers(&mut self) {
        let own = &self.out;
        let Some(publishing) = self.publishing.as_mut() else {
            return;
        };
        let mut pressure = publishing.scratch.take_pressure();
        // Never wait for ourselves: our own output is written by this very task.
        pressure.retain(|p| !std::sync::Arc::ptr_eq(&p.writer, own));
        if pressure.is_empty() {
            return;
        }
        Metrics::add(&self.broker.metrics.backpressure_waits, 1);
        let max_wait = Duration::from_millis(self.limits.backpressure_max_wait_ms);
        // The same bound routing flagged the subscribers with (live: SIGHUP may change it).
        let bound = self
            .broker
            .deliver_ctx(Instant::now())
            .backpressure_queued_messages;
        let slow = self.broker.relief.wait(&pressure, bound, max_wait).await;
        if slow > 0 {
            Metrics::add(
                &self.broker.metrics.backpressure_slow_consumers,
                slow as u64,
            );
            tracing::debug!(client_id = %self.session.client_id, slow, "subscribers did not drain in time: marked slow");
        }
    }
}
