//! The packet loop of an established connection and the handler of each packet type.
//!
//! Handlers run in the connection's task and never await: a PUBLISH is checked, stored if
//! retained, and routed to every subscriber's SharedWriter before the next packet is read.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tern_codec::{
    Disconnect, Packet, PacketId, PubAck, PubComp, PubRec, Publish, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::io::PacketReader;
use super::output::Output;
use super::{Connection, RateBucket};
use crate::broker::Subscribed;
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
            self.broker.keep_alive().watch(&self.out, timeout);
        }
        loop {
            if let Some(kick) = self.out.kicked() {
                return kick.into();
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
                Metrics::add(&self.broker.metrics().publish_throttled, 1);
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
                self.broker.relief().relieve();
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
                Event::Written(Ok(n)) => Metrics::add(&self.broker.metrics().bytes_sent, n as u64),
                Event::Read(Ok(0)) => return Close::PeerGone,
                Event::Read(Ok(n)) => Metrics::add(&self.broker.metrics().bytes_received, n as u64),
                Event::Written(Err(e)) | Event::Read(Err(e)) => return Close::Io(e),
            }
        }
    }

    /// Moves the keep-alive deadline one period on, after traffic or after a pause of our
    /// own making.
    fn alive(&self) {
        if let Some(timeout) = self.keep_alive_timeout {
            let now_ms = self.broker.keep_alive().now_ms();
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
                self.broker.relief().relieve(); // our queue may have moved on
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
                self.broker.relief().relieve();
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
        Metrics::add(&self.broker.metrics().messages_received, 1);
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
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        if !self.limits.topic_within_limits(publish.topic()) {
            Metrics::add(&self.broker.metrics().dropped_topic_too_deep, 1);
            tracing::debug!(client_id = %self.session.client_id, "topic has too many levels: dropped");
            self.acknowledge_publish(qos, packet_id, ReasonCode::TOPIC_NAME_INVALID);
            return Ok(());
        }
        if self.publish_denied(&publish) {
            return Ok(());
        }
        if qos == QoS::ExactlyOnce {
            let Some(id) = packet_id else { return Ok(()) };
            let pending = self.session.incoming_qos2();
            if pending.contains(&id.get()) {
                // A resend of a message already delivered: acknowledge, do not route again
                // ([MQTT-4.3.3-10]).
                drop(pending);
                self.acknowledge_publish(qos, packet_id, ReasonCode::SUCCESS);
                return Ok(());
            }
            // [MQTT-3.3.4-9]: no more unacknowledged QoS 2 than our Receive Maximum.
            if pending.len() >= usize::from(self.limits.receive_maximum) {
                return Err(ProtocolError::ReceiveMaximumExceeded.into());
            }
            // Remembered with the PUBREC, after routing: only this task adds ids.
        }
        let delivered = self.route(publish, now);
        let reason = if delivered == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        self.acknowledge_publish(qos, packet_id, reason);
        Ok(())
    }

    /// Answers a QoS 1 or 2 PUBLISH with `code` (5.0 numbering; nothing for QoS 0), the one
    /// place where a PUBLISH is acknowledged, refused or not:
    /// - 3.1.1 has no reason codes ([MQTT-3.3.5-2]: a refused message is acknowledged as
    ///   if received): PUBACK, or PUBREC with the id remembered so that the PUBREL
    ///   completes with PUBCOMP ([MQTT-4.3.3-10], [MQTT-4.3.3-11]).
    /// - 5.0: PUBACK/PUBREC with `code`. A QoS 2 id is remembered until PUBREL only when
    ///   the PUBREC is not an error: after one with a code of 0x80 or more the exchange is
    ///   over, and the same id starts a new message ([MQTT-4.3.3-9]).
    pub(super) fn acknowledge_publish(
        &self,
        qos: QoS,
        packet_id: Option<PacketId>,
        code: ReasonCode,
    ) {
        let Some(id) = packet_id else { return };
        let code = if self.version.is_v5() {
            code
        } else {
            ReasonCode::SUCCESS
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(id);
                ack.reason_code = code;
                self.send(|buf, version| ack.encode(version, buf));
            }
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    self.session.incoming_qos2().insert(id.get());
                }
                let mut rec = PubRec::new(id);
                rec.reason_code = code;
                self.send(|buf, version| rec.encode(version, buf));
            }
        }
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
            .route_latency()
            .observe(started.elapsed().as_secs_f64());
        delivered
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) {
        let subscription_id = subscribe.properties.subscription_identifier;
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        for (filter, options) in &subscribe.filters {
            let record = SubscriptionRecord {
                options: *options,
                subscription_id,
            };
            match self.subscribe_one(filter, record) {
                Ok((subscribed, read_check)) => {
                    reason_codes.push(ReasonCode(options.qos as u8));
                    if sends_retained(filter, options, subscribed) {
                        retained_for.push((filter.clone(), options.qos, read_check));
                    }
                }
                Err(SubscribeRefused::SessionEnded) => return,
                Err(SubscribeRefused::Code(code)) => reason_codes.push(code),
            }
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Default::default(),
            reason_codes,
        };
        self.send(|buf, version| suback.encode(version, buf));
        self.send_retained(retained_for, subscription_id);
    }

    /// Subscribes one filter through the broker (the session's record and the trie
    /// together); returns what it did and the read check the subscription got.
    fn subscribe_one(
        &mut self,
        filter: &str,
        record: SubscriptionRecord,
    ) -> Result<(Subscribed, Option<Arc<crate::auth::ClientAcl>>), SubscribeRefused> {
        if !self.limits.topic_within_limits(filter) {
            return Err(SubscribeRefused::Code(ReasonCode::TOPIC_FILTER_INVALID));
        }
        let read_check = self.subscribe_acl(filter).map_err(SubscribeRefused::Code)?;
        let max = self.limits.max_subscriptions_per_client;
        match self
            .broker
            .subscribe(&self.session, filter, record, read_check.clone(), max)
        {
            // Ended meanwhile (taken over by a Clean Start; this connection is being
            // closed): nothing was added, and no SUBACK goes out.
            Subscribed::SessionEnded => Err(SubscribeRefused::SessionEnded),
            Subscribed::QuotaExceeded => Err(SubscribeRefused::Code(ReasonCode::QUOTA_EXCEEDED)),
            subscribed => Ok((subscribed, read_check)),
        }
    }

    /// Sends the retained messages matching the filters just subscribed.
    fn send_retained(&mut self, retained_for: Vec<RetainedFor>, subscription_id: Option<u32>) {
        if retained_for.is_empty() {
            return;
        }
        let now = Instant::now();
        let ctx = self.broker.deliver_ctx(now);
        let ids: Vec<u32> = subscription_id.into_iter().collect();
        for (filter, granted, read_check) in retained_for {
            let mut matches = Vec::new();
            self.broker.for_each_retained(&filter, now, |m| {
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
        let reason_codes = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.broker.unsubscribe(&self.session, filter) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
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

/// A filter to send retained messages for: the filter, the granted QoS, the read check.
type RetainedFor = (
    tern_codec::ByteStr,
    QoS,
    Option<Arc<crate::auth::ClientAcl>>,
);

/// Why one SUBSCRIBE filter got no subscription.
enum SubscribeRefused {
    /// Refused with this SUBACK reason code.
    Code(ReasonCode),
    /// The session ended meanwhile: no SUBACK at all.
    SessionEnded,
}

/// Whether a subscription sends the retained messages it matches: per Retain Handling
/// ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]), never for shared subscriptions (5.0
/// section 4.8.2).
fn sends_retained(
    filter: &str,
    options: &tern_codec::SubscriptionOptions,
    done: Subscribed,
) -> bool {
    let shared = tern_codec::topic::split_shared(filter).is_some();
    let wanted = match options.retain_handling {
        tern_codec::RetainHandling::SendAtSubscribe => true,
        tern_codec::RetainHandling::SendIfNew => done == Subscribed::New,
        tern_codec::RetainHandling::DoNotSend => false,
    };
    wanted && !shared
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

/// Waits until `resume_at`, or returns why the connection must close first. Output
/// appended meanwhile waits in the SharedWriter.
async fn pause_until(
    resume_at: Instant,
    out: &crate::delivery::shared_writer::SharedWriter,
) -> Option<Close> {
    let sleep = tokio::time::sleep_until(resume_at);
    tokio::pin!(sleep);
    loop {
        if let Some(kick) = out.kicked() {
            return Some(kick.into());
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
        Metrics::add(&self.broker.metrics().backpressure_waits, 1);
        let max_wait = Duration::from_millis(self.limits.backpressure_max_wait_ms);
        // The same bound routing flagged the subscribers with (live: SIGHUP may change it).
        let bound = self
            .broker
            .deliver_ctx(Instant::now())
            .backpressure_queued_messages;
        let slow = self.broker.relief().wait(&pressure, bound, max_wait).await;
        if slow > 0 {
            Metrics::add(
                &self.broker.metrics().backpressure_slow_consumers,
                slow as u64,
            );
            tracing::debug!(client_id = %self.session.client_id, slow, "subscribers did not drain in time: marked slow");
        }
    }
}
