//! Unit tests of the session state machine, with a made-up clock: each input is a packet
//! and an instant, each output checked as it comes back. No socket, no runtime.

// Test-only code (compiled under cfg(test) by its parent):
#[cfg(test)]
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{
    ByteStr, Disconnect, LastWill, Packet, PacketId, ProtocolVersion, PubAck, PubRel, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};
use tokio::time::Instant;

use super::*;
use crate::config::{Config, Limits};
use crate::error::{Close, ProtocolError};
use crate::metrics::Metrics;
use crate::test_support::{attach, ctx, packets, publishes, session, Attach};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

fn id(n: u16) -> PacketId {
    NonZeroU16::new(n).expect("non-zero")
}

fn limits(edit: impl FnOnce(&mut Limits)) -> Arc<Limits> {
    let mut limits = Config::default_config().limits;
    edit(&mut limits);
    Arc::new(limits)
}

fn machine(version: ProtocolVersion, limits: Arc<Limits>) -> Machine {
    Machine::new(Start {
        session: session(1, 100),
        generation: 1,
        version,
        limits,
        will: None,
        acl: None,
        acl_generation: 0,
        username: None,
        connect_expiry_was_zero: false,
        capabilities: Default::default(),
        enhanced_auth: false,
    })
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Packet {
    let packet_id = NonZeroU16::new(packet_id).unwrap_or(NonZeroU16::MIN);
    let publish = Publish::new(topic, bytes::Bytes::from_static(b"m"))
        .with_qos(crate::test_support::publish_qos(qos, packet_id));
    Packet::Publish(publish)
}

/// Feeds `packet` at `now`; returns the output.
fn feed(m: &mut Machine, packet: Packet, now: Instant) -> Result<Output, Close> {
    let metrics = Metrics::default();
    m.handle_packet(packet, ctx(&metrics, now))
}

/// Feeds a PUBLISH that must be routed; returns the acknowledgement it is owed.
fn routed(m: &mut Machine, packet: Packet, now: Instant) -> PendingAck {
    match feed(m, packet, now) {
        Ok(Output::Event(Event::Publish(_, ack))) => ack,
        other => panic!("expected a message to route, got {other:?}"),
    }
}

fn protocol_error(result: Result<Output, Close>) -> ProtocolError {
    match result {
        Err(Close::Protocol(e)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// QoS 1 in: routed, then PUBACK; 0x10 No Matching Subscribers in 5.0 when it reached no
/// one ([MQTT-3.4.2-1]); 3.1.1 has no reason codes.
#[test]
fn qos1_inbound_is_acknowledged_after_routing() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|_| {}));
    let ack = routed(&mut m, publish("t", QoS::AtLeastOnce, 5), now);
    let mut expected = PubAck::new(id(5));
    assert_eq!(
        m.published(ack, 1, None),
        Some(Transmit::PubAck(expected.clone()))
    );
    expected.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(m.published(ack, 0, None), Some(Transmit::PubAck(expected)));
    let mut v3 = machine(V3, limits(|_| {}));
    let ack = routed(&mut v3, publish("t", QoS::AtLeastOnce, 6), now);
    assert_eq!(
        v3.published(ack, 0, None),
        Some(Transmit::PubAck(PubAck::new(id(6))))
    );
    let ack = routed(&mut m, publish("t", QoS::AtMostOnce, 0), now);
    assert_eq!(m.published(ack, 3, None), None, "QoS 0 is not acknowledged");
}

/// QoS 2 in: PUBREC after routing, a resend of the same id before PUBREL is acknowledged
/// and not routed again ([MQTT-4.3.3-10]); PUBREL releases it with PUBCOMP, an unknown one
/// gets 0x92 ([MQTT-4.3.3-12]).
#[test]
fn qos2_inbound_exchange() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|_| {}));
    let ack = routed(&mut m, publish("t", QoS::ExactlyOnce, 9), now);
    assert!(matches!(m.published(ack, 1, None), Some(Transmit::PubRec(r)) if r.packet_id == id(9)));
    match feed(&mut m, publish("t", QoS::ExactlyOnce, 9), now) {
        Ok(Output::Transmit(Transmit::PubRec(r))) => assert_eq!(r.reason_code, ReasonCode::SUCCESS),
        other => panic!("a resend is acknowledged, not routed: {other:?}"),
    }
    let comp = |out| match out {
        Ok(Output::Transmit(Transmit::PubComp(c))) => c.reason_code,
        other => panic!("expected PUBCOMP, got {other:?}"),
    };
    assert_eq!(
        comp(feed(&mut m, Packet::PubRel(PubRel::new(id(9))), now)),
        ReasonCode::SUCCESS
    );
    assert_eq!(
        comp(feed(&mut m, Packet::PubRel(PubRel::new(id(9))), now)),
        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
    );
    // Released: the same id is a new message again.
    routed(&mut m, publish("t", QoS::ExactlyOnce, 9), now);
}

/// [MQTT-3.3.4-9]: more unacknowledged QoS 2 PUBLISH packets than our Receive Maximum is a
/// protocol error (0x93).
#[test]
fn receive_maximum_inbound() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|l| l.receive_maximum = 2));
    for n in 1..=2 {
        let ack = routed(&mut m, publish("t", QoS::ExactlyOnce, n), now);
        m.published(ack, 1, None);
    }
    let error = protocol_error(feed(&mut m, publish("t", QoS::ExactlyOnce, 3), now));
    assert_eq!(error, ProtocolError::ReceiveMaximumExceeded);
    assert_eq!(error.reason_code(), ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

/// Inbound topic aliases: set with a topic, used with an empty one ([MQTT-3.3.2-12]); 0
/// or above our maximum is 0x94 ([MQTT-3.3.2-8], [MQTT-3.3.2-9]); an unknown one a protocol
/// error. The alias never travels further.
#[test]
fn inbound_topic_aliases() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|l| l.topic_alias_maximum = 10));
    let aliased = |topic: &str, alias: u16| {
        let mut packet = publish(topic, QoS::AtMostOnce, 0);
        if let Packet::Publish(p) = &mut packet {
            p.properties_mut().topic_alias = Some(alias);
        }
        packet
    };
    let topic_of = |out: Result<Output, Close>| match out {
        Ok(Output::Event(Event::Publish(message, _))) => {
            assert_eq!(message.publish().properties().topic_alias(), None);
            message.topic().to_string()
        }
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(topic_of(feed(&mut m, aliased("a/b", 3), now)), "a/b");
    assert_eq!(topic_of(feed(&mut m, aliased("", 3), now)), "a/b");
    assert_eq!(
        protocol_error(feed(&mut m, aliased("", 4), now)),
        ProtocolError::TopicAliasUnknown
    );
    for bad in [0, 11] {
        let error = protocol_error(feed(&mut m, aliased("x", bad), now));
        assert_eq!(error.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    }
}

/// [MQTT-3.3.4-6]: a client may not send a Subscription Identifier in PUBLISH.
#[test]
fn subscription_identifier_from_client_is_a_protocol_error() {
    let mut m = machine(V5, limits(|_| {}));
    let mut packet = publish("t", QoS::AtMostOnce, 0);
    if let Packet::Publish(p) = &mut packet {
        p.properties_mut().subscription_identifiers.push(4);
    }
    assert_eq!(
        protocol_error(feed(&mut m, packet, Instant::now())),
        ProtocolError::SubscriptionIdFromClient
    );
}

/// DISCONNECT sets the session expiry (capped at the broker's maximum), except from 0 at
/// CONNECT to non-zero, a protocol error ([MQTT-3.14.2-2]).
#[test]
fn expiry_set_at_disconnect() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|l| l.max_session_expiry_secs = 100));
    let mut disconnect = Disconnect::new(ReasonCode::SUCCESS);
    disconnect.properties.session_expiry_interval_secs = Some(500);
    let close = feed(&mut m, Packet::Disconnect(disconnect.clone()), now);
    assert!(matches!(
        close,
        Err(Close::ClientDisconnect(ReasonCode::SUCCESS))
    ));
    assert_eq!(
        m.session().expiry_secs(),
        100,
        "capped at max_session_expiry_secs"
    );
    let mut zero = machine(V5, limits(|_| {}));
    zero.connect_expiry_was_zero = true;
    let error = protocol_error(feed(&mut zero, Packet::Disconnect(disconnect), now));
    assert_eq!(error, ProtocolError::SessionExpiryAfterZero);
}

/// The will goes with an abnormal close (and DISCONNECT 0x04), never after a normal
/// DISCONNECT ([MQTT-3.1.2-10]); its delay comes with it. A 5.0 client closed by the server
/// is told why.
#[test]
fn close_gives_the_will_and_the_disconnect() {
    let will = LastWill {
        topic: ByteStr::from("w"),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: tern_codec::WillProperties {
            will_delay_interval_secs: Some(30),
            ..Default::default()
        },
    };
    let with_will = || {
        let mut m = machine(V5, limits(|_| {}));
        m.will = Some(Box::new(will.clone()));
        m
    };
    let (disconnect, given) = with_will().close(&Close::ClientDisconnect(ReasonCode::SUCCESS));
    assert!(disconnect.is_none() && given.is_none());
    let (_, given) = with_will().close(&Close::ClientDisconnect(ReasonCode(0x04)));
    assert_eq!(given.map(|(_, delay)| delay), Some(Duration::from_secs(30)));
    let (disconnect, given) = with_will().close(&Close::KeepAliveTimeout);
    assert!(given.is_some());
    assert_eq!(
        disconnect,
        Some(Transmit::Disconnect(Disconnect::new(
            ReasonCode::KEEP_ALIVE_TIMEOUT
        )))
    );
    let mut v3 = machine(V3, limits(|_| {}));
    assert!(
        v3.close(&Close::KeepAliveTimeout).0.is_none(),
        "3.1.1 has no DISCONNECT"
    );
}

/// SUBSCRIBE: each filter checked against the topic limits (0x8F); UNSUBSCRIBE answered
/// per filter (0x11 when none existed).
#[test]
fn subscribe_and_unsubscribe_requests() {
    let now = Instant::now();
    let mut m = machine(V5, limits(|l| l.max_topic_levels = 2));
    let subscribe = Subscribe {
        packet_id: id(3),
        properties: Default::default(),
        filters: vec![
            (
                ByteStr::from("a/b"),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            ),
            (
                ByteStr::from("a/b/c"),
                SubscriptionOptions::with_qos(QoS::AtMostOnce),
            ),
        ],
    };
    let request = match feed(&mut m, Packet::Subscribe(Box::new(subscribe)), now) {
        Ok(Output::Event(Event::Subscribe(request))) => request,
        other => panic!("expected a subscribe request, got {other:?}"),
    };
    assert!(request.filters[0].verdict.is_ok());
    assert_eq!(
        request.filters[1].verdict,
        Err(ReasonCode::TOPIC_FILTER_INVALID)
    );
    let outcomes = [
        (
            request.filters[0].record.options,
            FilterOutcome::Granted { new: true },
        ),
        (
            request.filters[1].record.options,
            FilterOutcome::Refused(ReasonCode::TOPIC_FILTER_INVALID),
        ),
    ];
    match m.subscribed(request.packet_id, &outcomes) {
        Transmit::SubAck(suback) => {
            assert_eq!(
                suback.reason_codes,
                [ReasonCode(1), ReasonCode::TOPIC_FILTER_INVALID]
            )
        }
        other => panic!("{other:?}"),
    }
    let unsubscribe = Unsubscribe {
        packet_id: id(4),
        properties: Default::default(),
        filters: vec![ByteStr::from("a/b"), ByteStr::from("x")],
    };
    match feed(&mut m, Packet::Unsubscribe(Box::new(unsubscribe)), now) {
        Ok(Output::Event(Event::Unsubscribe(u))) => assert_eq!(u.filters.len(), 2),
        other => panic!("{other:?}"),
    }
    match m.unsubscribed(id(4), [true, false]) {
        Transmit::UnsubAck(u) => assert_eq!(
            u.reason_codes,
            [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
        ),
        other => panic!("{other:?}"),
    }
}

/// The publish-rate bucket: past `max_publish_rate_per_client` the client is paused until
/// the bucket refills (by the made-up clock), not disconnected.
#[test]
fn publish_rate_throttles_by_the_clock_passed_in() {
    let t0 = Instant::now();
    let mut m = machine(V5, limits(|l| l.max_publish_rate_per_client = 2));
    routed(&mut m, publish("t", QoS::AtMostOnce, 0), t0);
    routed(&mut m, publish("t", QoS::AtMostOnce, 0), t0);
    assert!(!m.is_throttled());
    routed(&mut m, publish("t", QoS::AtMostOnce, 0), t0);
    assert!(m.is_throttled());
    assert_eq!(m.take_throttle(), Some(t0 + Duration::from_millis(500)));
    assert!(!m.is_throttled());
    // A second later the bucket is full again.
    let later = t0 + Duration::from_secs(2);
    routed(&mut m, publish("t", QoS::AtMostOnce, 0), later);
    assert!(!m.is_throttled());
}

/// Acknowledgements from the client move the session's outbound window: the next queued
/// message goes out, and publishers are told they may go on.
#[test]
fn puback_moves_the_outbound_window() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let mut m = machine(V5, limits(|_| {}));
    let how = Attach {
        window: 1,
        ..Attach::default()
    };
    let out = attach(m.session(), how, 1, ctx(&metrics, now));
    for topic in ["a", "b"] {
        let message = crate::test_support::message(topic, QoS::AtLeastOnce, false, None);
        m.session()
            .delivery()
            .deliver(&message, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
    }
    let first = publishes(packets(&out, V5));
    assert_eq!(first.len(), 1, "window of one");
    let ack = Packet::PubAck(PubAck::new(first[0].packet_id().expect("id")));
    assert!(matches!(
        feed(&mut m, ack, now),
        Ok(Output::Event(Event::Relieved))
    ));
    let second = publishes(packets(&out, V5));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].topic(), "b");
}
