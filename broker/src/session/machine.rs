//! The protocol state machine of one connection to a session, without I/O: packets in,
//! packets and events out, the time passed in (`now` in each [`DeliverCtx`]). No tokio, no
//! clock, no broker: the connection task (`connection/driver.rs`) feeds it what it reads,
//! writes the [`Transmit`]s it returns and carries out the [`Event`]s (route a message,
//! subscribe, unsubscribe) through the broker, reporting back what they did.
//!
//! Each input gives at most one [`Output`], returned rather than queued: a connection's
//! state stays as small between packets as it was (an idle connection is mostly this).
//!
//! What it owns: the rules a client's packets are checked against (Receive Maximum, topic
//! aliases, topic limits, the client's ACL, subscription identifiers, the capabilities its
//! CONNACK announced, the session expiry rule at DISCONNECT), the inbound QoS 2 exchange,
//! the publish-rate bucket and a re-authentication in progress. The SUBSCRIBE side is in
//! `machine_subscribe.rs`. What
//! publishers hand this session goes through the session's [`super::delivery::Delivery`];
//! acknowledgements from the client are applied to it here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{
    ByteStr, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec, Publish,
    PublishQoS, ReasonCode, SubAck, UnsubAck, Unsubscribe,
};
use tokio::time::Instant;

use super::delivery::DeliverCtx;
use super::Session;
use crate::auth::scram::ServerExchange;
use crate::auth::{Access, ClientAcl};
use crate::config::Limits;
use crate::error::{Close, ProtocolError};
use crate::features::Capabilities;
use crate::journal::record::Record;
use crate::journal::Journal;
use crate::message::Message;
use crate::metrics::Metrics;

/// What the driver does after an input.
#[derive(Debug)]
pub enum Output {
    /// Nothing.
    None,
    /// Write this packet.
    Transmit(Transmit),
    /// Carry this out through the broker.
    Event(Event),
}

/// A packet for the driver to write to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (5.0 only; [`Machine::close`] gives it).
    Disconnect(Disconnect),
}

impl Transmit {
    /// Encodes the packet for `version` onto `buf`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut bytes::BytesMut) {
        match self {
            Transmit::PubAck(p) => p.encode(version, buf),
            Transmit::PubRec(p) => p.encode(version, buf),
            Transmit::PubComp(p) => p.encode(version, buf),
            Transmit::SubAck(p) => p.encode(version, buf),
            Transmit::UnsubAck(p) => p.encode(version, buf),
            Transmit::PingResp => Packet::PingResp.encode(version, buf),
            Transmit::Disconnect(p) => p.encode(version, buf),
        }
    }
}

/// Something only the broker can do, asked for by the session.
#[derive(Debug)]
pub enum Event {
    /// Store (if retained) and route `message`, then hand `ack` and the number of
    /// subscribers it reached to [`Machine::published`].
    Publish(Arc<Message>, PendingAck),
    /// Subscribe each allowed filter, then hand the outcomes to [`Machine::subscribed`].
    Subscribe(Box<SubscribeRequest>),
    /// Unsubscribe each filter, then hand the outcomes to [`Machine::unsubscribed`].
    Unsubscribe(Box<Unsubscribe>),
    /// The outbound window moved on (an acknowledgement): publishers held back by this
    /// session may go on.
    Relieved,
}

/// The acknowledgement a routed PUBLISH is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck(PublishQoS);

impl PendingAck {
    /// Whether the PUBLISH was QoS 2 (its packet id is remembered until PUBREL).
    pub fn is_exactly_once(&self) -> bool {
        matches!(self.0, PublishQoS::ExactlyOnce(_))
    }
}

/// Token bucket for `max_publish_rate_per_client`.
#[derive(Debug)]
struct RateBucket {
    tokens: f64,
    refilled_at: Instant,
    /// Set when the bucket ran dry: reading pauses until then.
    resume_at: Option<Instant>,
}

/// What only a client that publishes needs; boxed at its first PUBLISH (most idle clients
/// are subscribers).
#[derive(Debug, Default)]
struct Inbound {
    /// Topic aliases set by the client on this connection ([MQTT-3.3.2-7]: not kept).
    aliases: HashMap<u16, ByteStr>,
    /// The publish-rate bucket (when `max_publish_rate_per_client` is set).
    rate: Option<RateBucket>,
    /// A re-authentication waiting for the client-final message (here too: rare, and
    /// kept off the size of every connection).
    reauth: Option<ServerExchange>,
}

/// What a connection starts the machine with (from CONNECT and the handshake).
#[derive(Debug)]
pub struct Start {
    /// The session, opened or resumed.
    pub session: Arc<Session>,
    /// This connection's generation in it.
    pub generation: u64,
    /// The protocol version.
    pub version: ProtocolVersion,
    /// The limits in force at CONNECT.
    pub limits: Arc<Limits>,
    /// The client's will.
    pub will: Option<LastWill>,
    /// The client's ACL (`None`: no ACL file) and the auth generation it was derived under.
    pub acl: Option<Arc<ClientAcl>>,
    /// The auth generation `acl` is from.
    pub acl_generation: u64,
    /// The user name the client authenticated as.
    pub username: Option<ByteStr>,
    /// CONNECT's Session Expiry Interval was 0 ([MQTT-3.14.2-2]).
    pub connect_expiry_was_zero: bool,
    /// The capabilities announced in CONNACK (`[mqtt]` at CONNECT).
    pub capabilities: Capabilities,
    /// The client authenticated with an Authentication Method (it may re-authenticate).
    pub enhanced_auth: bool,
}

/// The protocol state of one connection to a session.
#[derive(Debug)]
pub struct Machine {
    session: Arc<Session>,
    generation: u64,
    version: ProtocolVersion,
    connect_expiry_was_zero: bool,
    capabilities: Capabilities,
    enhanced_auth: bool,
    /// Boxed: most clients have none, and this lives as long as the connection.
    will: Option<Box<LastWill>>,
    acl: Option<Arc<ClientAcl>>,
    acl_generation: u64,
    /// Its own copy (16 bytes, where the CONNECT's `ByteStr` takes 32 and keeps the
    /// CONNECT frame's buffer).
    username: Option<Arc<str>>,
    limits: Arc<Limits>,
    inbound: Option<Box<Inbound>>,
}

impl Machine {
    /// A machine for a connection just attached to its session.
    pub fn new(start: Start) -> Machine {
        Machine {
            session: start.session,
            generation: start.generation,
            version: start.version,
            connect_expiry_was_zero: start.connect_expiry_was_zero,
            capabilities: start.capabilities,
            enhanced_auth: start.enhanced_auth,
            will: start.will.map(Box::new),
            acl: start.acl,
            acl_generation: start.acl_generation,
            username: start.username.as_deref().map(Arc::from),
            limits: start.limits,
            inbound: None,
        }
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// This connection's generation in the session.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The limits this connection runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The auth generation the client's ACL was derived under.
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation
    }

    /// The user name the client authenticated as (to derive its ACL again).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Where a re-authentication in progress is kept; `None` when the client did not
    /// authenticate with a method at CONNECT, and so may not send AUTH ([MQTT-4.12.0-7]).
    pub fn reauth_slot(&mut self) -> Option<&mut Option<ServerExchange>> {
        if !self.enhanced_auth {
            return None;
        }
        Some(&mut self.inbound.get_or_insert_default().reauth)
    }

    /// Puts a re-derived ACL in force (after a reload), with the auth generation it is from.
    pub fn set_acl(&mut self, acl: Option<Arc<ClientAcl>>, generation: u64) {
        self.acl = acl;
        self.acl_generation = generation;
    }

    /// Handles one packet from the client.
    ///
    /// # Errors
    /// The [`Close`] that ends the connection: a protocol error, or the client's DISCONNECT.
    pub fn handle_packet(&mut self, packet: Packet, ctx: DeliverCtx<'_>) -> Result<Output, Close> {
        let output = match packet {
            Packet::Publish(publish) => self.handle_publish(publish, ctx)?,
            Packet::PubAck(ack) => {
                self.session.delivery().handle_puback(ack.packet_id, ctx);
                Output::Event(Event::Relieved) // our queue may have moved on
            }
            Packet::PubRec(rec) => {
                let mut delivery = self.session.delivery();
                delivery.handle_pubrec(rec.packet_id, rec.reason_code, ctx);
                Output::None
            }
            Packet::PubComp(comp) => {
                self.session.delivery().handle_pubcomp(comp.packet_id, ctx);
                Output::Event(Event::Relieved)
            }
            Packet::PubRel(rel) => {
                // [MQTT-4.3.3-12]: release the id; PUBCOMP (0x92 when it was unknown).
                let mut pending = self.session.incoming_qos2();
                let known = pending.remove(&rel.packet_id.get());
                if known {
                    // PUBCOMP waits until this is durable: after a crash the id must not
                    // still look in use, or a new message with it would be taken for a
                    // duplicate.
                    self.log_qos2(ctx.journal, |session| Record::Qos2Released {
                        session,
                        packet_id: rel.packet_id.get(),
                    });
                }
                drop(pending);
                let mut comp = PubComp::new(rel.packet_id);
                if !known {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                Output::Transmit(Transmit::PubComp(comp))
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(*subscribe, ctx.metrics),
            Packet::Unsubscribe(unsubscribe) => Output::Event(Event::Unsubscribe(unsubscribe)),
            Packet::PingReq => Output::Transmit(Transmit::PingResp),
            Packet::Disconnect(disconnect) => return Err(self.handle_disconnect(&disconnect)),
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect.into()),
            Packet::Auth(_) => return Err(ProtocolError::UnexpectedAuth.into()),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => return Err(ProtocolError::ServerOnlyPacket(other.name()).into()),
        };
        Ok(output)
    }

    /// When reading may resume after the client went over its publish rate (cleared), if
    /// it did: the client is slowed down, not disconnected.
    pub fn take_throttle(&mut self) -> Option<Instant> {
        self.inbound.as_mut()?.rate.as_mut()?.resume_at.take()
    }

    /// Whether the client went over its publish rate and reading should pause.
    pub fn is_throttled(&self) -> bool {
        self.inbound
            .as_ref()
            .and_then(|i| i.rate.as_ref())
            .is_some_and(|bucket| bucket.resume_at.is_some())
    }

    fn handle_publish(
        &mut self,
        mut publish: Publish,
        ctx: DeliverCtx<'_>,
    ) -> Result<Output, Close> {
        Metrics::add(&ctx.metrics.messages_received, 1);
        self.charge_publish_rate(ctx.now);
        if publish.properties().has_subscription_identifiers() {
            return Err(ProtocolError::SubscriptionIdFromClient.into());
        }
        self.capabilities
            .check_publish(publish.qos() as u8, publish.retain)?;
        self.resolve_alias(&mut publish)?;
        let ack = PendingAck(publish.publish_qos());
        if !self.limits.topic_within_limits(publish.topic()) {
            Metrics::add(&ctx.metrics.dropped_topic_too_deep, 1);
            tracing::debug!(client_id = %self.session.client_id, "topic has too many levels: dropped");
            return Ok(self.acknowledge(ack, ReasonCode::TOPIC_NAME_INVALID, ctx.journal));
        }
        if let Some(acl) = &self.acl {
            if !acl.check(publish.topic(), Access::Write) {
                Metrics::add(&ctx.metrics.acl_denied, 1);
                tracing::debug!(client_id = %self.session.client_id, topic = %publish.topic(), "publish refused by ACL: dropped");
                return Ok(self.acknowledge(ack, ReasonCode::NOT_AUTHORIZED, ctx.journal));
            }
        }
        if ack.0 != PublishQoS::AtMostOnce && ctx.journal.is_some_and(Journal::over_budget) {
            return self.refuse_over_disk_budget(ack, ctx);
        }
        if ack.0 != PublishQoS::AtMostOnce && ctx.budget.is_exhausted() {
            // Over max_total_queued_bytes: 0x97 (3.1.1: acknowledged as received and
            // dropped, [MQTT-3.3.5-2]), counted, instead of holding more.
            Metrics::add(&ctx.metrics.publishes_refused_total_budget, 1);
            tracing::debug!(client_id = %self.session.client_id, "broker over max_total_queued_bytes: publish refused");
            return Ok(self.acknowledge(ack, ReasonCode::QUOTA_EXCEEDED, ctx.journal));
        }
        if let PublishQoS::ExactlyOnce(id) = ack.0 {
            let pending = self.session.incoming_qos2();
            if pending.contains(&id.get()) {
                // A resend of a message already delivered: acknowledge, do not route again
                // ([MQTT-4.3.3-10]).
                drop(pending);
                return Ok(self.acknowledge(ack, ReasonCode::SUCCESS, ctx.journal));
            }
            // [MQTT-3.3.4-9]: no more unacknowledged QoS 2 than our Receive Maximum.
            if pending.len() >= usize::from(self.limits.receive_maximum) {
                return Err(ProtocolError::ReceiveMaximumExceeded.into());
            }
            // Remembered with the PUBREC, after routing: only this connection adds ids.
        }
        // Clients may not publish into the broker's own statistics: acknowledged, not routed.
        if crate::config::is_sys_topic(publish.topic()) {
            return Ok(self.acknowledge(ack, ReasonCode::NO_MATCHING_SUBSCRIBERS, ctx.journal));
        }
        let message = Message::new(publish, ctx.now, Some(self.session.id));
        Ok(Output::Event(Event::Publish(message, ack)))
    }

    /// A QoS 1/2 PUBLISH while the data directory is over its budget: 5.0 gets 0x97 Quota
    /// exceeded; 3.1.1 has no refusing acknowledgement, so its connection is closed
    /// unacknowledged and the client sends the message again once it reconnects.
    fn refuse_over_disk_budget(
        &self,
        ack: PendingAck,
        ctx: DeliverCtx<'_>,
    ) -> Result<Output, Close> {
        Metrics::add(&ctx.metrics.publishes_refused_disk_full, 1);
        tracing::debug!(client_id = %self.session.client_id, "data directory over max_disk_bytes: publish refused");
        if self.version.is_v5() {
            Ok(self.acknowledge(ack, ReasonCode::QUOTA_EXCEEDED, ctx.journal))
        } else {
            Err(Close::DiskFull)
        }
    }

    /// The acknowledgement of a routed PUBLISH that reached `delivered` subscribers.
    pub fn published(
        &self,
        ack: PendingAck,
        delivered: usize,
        journal: Option<&Journal>,
    ) -> Option<Transmit> {
        let code = if delivered == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        match self.acknowledge(ack, code, journal) {
            Output::Transmit(transmit) => Some(transmit),
            _ => None,
        }
    }

    /// The acknowledgement of a PUBLISH refused after it was decoded and checked (the
    /// cluster cannot carry it): 0x97 Quota exceeded to 5.0 clients.
    pub fn refused(&self, ack: PendingAck, journal: Option<&Journal>) -> Option<Transmit> {
        match self.acknowledge(ack, ReasonCode::QUOTA_EXCEEDED, journal) {
            Output::Transmit(transmit) => Some(transmit),
            _ => None,
        }
    }

    /// Answers a QoS 1 or 2 PUBLISH with `code` (5.0 numbering; nothing for QoS 0), the one
    /// place where a PUBLISH is acknowledged, refused or not:
    /// - 3.1.1 has no reason codes ([MQTT-3.3.5-2]: a refused message is acknowledged as
    ///   if received): PUBACK, or PUBREC with the id remembered so that the PUBREL
    ///   completes with PUBCOMP ([MQTT-4.3.3-10], [MQTT-4.3.3-11]).
    /// - 5.0: PUBACK/PUBREC with `code`. A QoS 2 id is remembered until PUBREL only when
    ///   the PUBREC is not an error: after one with a code of 0x80 or more the exchange is
    ///   over, and the same id starts a new message ([MQTT-4.3.3-9]).
    fn acknowledge(&self, ack: PendingAck, code: ReasonCode, journal: Option<&Journal>) -> Output {
        let code = if self.version.is_v5() {
            code
        } else {
            ReasonCode::SUCCESS
        };
        match ack.0 {
            PublishQoS::AtMostOnce => Output::None,
            PublishQoS::AtLeastOnce(id) => {
                let mut puback = PubAck::new(id);
                puback.reason_code = code;
                Output::Transmit(Transmit::PubAck(puback))
            }
            PublishQoS::ExactlyOnce(id) => {
                if !code.is_error() {
                    let mut pending = self.session.incoming_qos2();
                    if pending.insert(id.get()) {
                        // PUBREC waits until this is durable: a resend after a crash is
                        // then known as one ([MQTT-4.3.3-10]).
                        self.log_qos2(journal, |session| Record::Qos2Received {
                            session,
                            packet_id: id.get(),
                        });
                    }
                }
                let mut pubrec = PubRec::new(id);
                pubrec.reason_code = code;
                Output::Transmit(Transmit::PubRec(pubrec))
            }
        }
    }

    /// Logs a change of the inbound QoS 2 state (call holding its lock) if the session is
    /// persistent.
    fn log_qos2(&self, journal: Option<&Journal>, record: impl FnOnce(u64) -> Record) {
        if let (Some(journal), true) = (journal, self.session.is_logged()) {
            journal.append(&record(self.session.id));
        }
    }

    /// Replaces an inbound topic alias by its topic, or records a new one ([MQTT-3.3.2-8]
    /// onwards); the alias never travels further.
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), ProtocolError> {
        let Some(alias) = publish.properties().topic_alias() else {
            return Ok(());
        };
        if alias == 0 || alias > self.limits.topic_alias_maximum {
            return Err(ProtocolError::TopicAliasInvalid);
        }
        if publish.topic().is_empty() {
            let topic = self
                .inbound
                .as_ref()
                .and_then(|i| i.aliases.get(&alias))
                .cloned()
                .ok_or(ProtocolError::TopicAliasUnknown)?;
            publish.resolve_alias(topic);
        } else {
            let topic = publish.shared_topic();
            let inbound = self.inbound.get_or_insert_default();
            inbound.aliases.insert(alias, topic.clone());
            publish.resolve_alias(topic);
        }
        Ok(())
    }

    /// Takes one token from the publish-rate bucket; when it runs dry, sets when reading may
    /// resume.
    fn charge_publish_rate(&mut self, now: Instant) {
        let rate = f64::from(self.limits.max_publish_rate_per_client);
        if rate <= 0.0 {
            return;
        }
        let bucket = self
            .inbound
            .get_or_insert_default()
            .rate
            .get_or_insert(RateBucket {
                tokens: rate,
                refilled_at: now,
                resume_at: None,
            });
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

    /// DISCONNECT from the client: its Session Expiry Interval, if any, replaces the one
    /// in force ([MQTT-3.14.2-2]: not from 0 to non-zero).
    fn handle_disconnect(&mut self, disconnect: &Disconnect) -> Close {
        if let Some(secs) = disconnect.properties.session_expiry_interval_secs {
            if self.connect_expiry_was_zero && secs != 0 {
                return ProtocolError::SessionExpiryAfterZero.into();
            }
            self.session
                .set_expiry_secs(secs.min(self.limits.max_session_expiry_secs));
        }
        Close::ClientDisconnect(disconnect.reason_code)
    }

    /// The end of the connection because of `close`: the DISCONNECT to send (5.0, when the
    /// server closes), and the will to publish or schedule with its delay (none after a
    /// normal DISCONNECT, [MQTT-3.1.2-10]).
    pub fn close(&mut self, close: &Close) -> (Option<Transmit>, Option<(LastWill, Duration)>) {
        let disconnect = close
            .disconnect_reason()
            .filter(|_| self.version.is_v5())
            .map(|reason| Transmit::Disconnect(Disconnect::new(reason)));
        let will = self
            .will
            .take()
            .filter(|_| close.publishes_will())
            .map(|w| {
                let delay = u64::from(w.properties.will_delay_interval_secs.unwrap_or(0));
                (*w, Duration::from_secs(delay))
            });
        (disconnect, will)
    }
}

#[path = "machine_subscribe.rs"]
mod subscribe;
pub use self::subscribe::{sends_retained, FilterOutcome, FilterRequest, SubscribeRequest};

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
