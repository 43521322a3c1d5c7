//! Sessions: persistence across connections (3.1.1 Clean Session 0, 5.0 Session Expiry
//! Interval), the offline queue, resending on resume, session expiry, clean start, takeover
//! and inbound QoS 2 state. Named after the normative statements they check.
//!
//! Most tests run over in-memory streams on tokio's paused clock (deterministic timers);
//! the takeover race runs over TCP on a multi-threaded runtime.

use std::time::Duration;

use tern_broker::Broker;
use tern_codec::{
    ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, PubComp, PubRec, PubRel,
    Publish, PublishQoS, QoS, ReasonCode,
};
use tern_tests::{duplex_client, test_config, Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

fn broker() -> Broker {
    Broker::new(test_config())
}

/// CONNECT for a session that outlives the connection: 3.1.1 Clean Session 0, 5.0 Session
/// Expiry Interval `expiry` (None: absent, i.e. 0). `clean` is Clean Start / Clean Session.
fn connect_packet(version: ProtocolVersion, id: &str, clean: bool, expiry: Option<u32>) -> Connect {
    let mut connect = Connect::new(version, id);
    connect.clean_start = clean;
    connect.keep_alive_secs = 0;
    if version.is_v5() {
        connect.properties.session_expiry_interval_secs = expiry;
    }
    connect
}

async fn connect(
    broker: &Broker,
    version: ProtocolVersion,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> (Client, ConnAck) {
    let mut client = duplex_client(broker, version);
    let connack = client
        .connect(connect_packet(version, id, clean, expiry))
        .await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    (client, connack)
}

/// First connection of a persistent session: 3.1.1 Clean Session 0 on a fresh id, 5.0
/// Clean Start 1 with a Session Expiry Interval of 60 s.
async fn persistent(broker: &Broker, version: ProtocolVersion, id: &str) -> Client {
    let (client, connack) = if version.is_v5() {
        connect(broker, version, id, true, Some(60)).await
    } else {
        connect(broker, version, id, false, None).await
    };
    assert!(!connack.session_present);
    client
}

/// Resumes a persistent session; asserts Session Present = 1.
async fn resume(broker: &Broker, version: ProtocolVersion, id: &str) -> Client {
    let (client, connack) = connect(broker, version, id, false, Some(60)).await;
    assert!(connack.session_present, "session not present: {connack:?}");
    client
}

async fn publisher(broker: &Broker) -> Client {
    connect(broker, V5, "publisher", true, None).await.0
}

/// Drops a connection without DISCONNECT and lets the broker notice.
async fn drop_connection(client: Client) {
    drop(client);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn is_registered(broker: &Broker, id: &str) -> bool {
    broker.has_session(id)
}

// [MQTT-3.1.2-5] (3.1.1) / [MQTT-3.1.2-23] (5.0): the session outlives the connection with
// its subscriptions and stores QoS 1 and QoS 2 messages; [MQTT-3.2.2-2] / [MQTT-3.2.2-3]:
// Session Present = 1 on resume. QoS 0 messages are not queued for an offline client.
async fn persistent_session_keeps_subscriptions_and_queues_qos1_qos2(version: ProtocolVersion) {
    let broker = broker();
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("s/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    assert!(is_registered(&broker, "sub"), "session ended at disconnect");

    let mut publisher = publisher(&broker).await;
    publisher
        .publish("s/0", b"zero", QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("s/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("s/2", b"two", QoS::ExactlyOnce, false)
        .await;

    let mut sub = resume(&broker, version, "sub").await;
    let one = sub.expect_publish_acked().await;
    assert_eq!(
        (one.topic(), one.qos(), one.dup),
        ("s/1", QoS::AtLeastOnce, false)
    );
    let two = sub.expect_publish_acked().await;
    assert_eq!(
        (two.topic(), two.qos(), two.dup),
        ("s/2", QoS::ExactlyOnce, false)
    );
    // The QoS 0 message was not queued.
    sub.expect_nothing(Duration::from_millis(200)).await;

    // The subscription is still there.
    publisher
        .publish("s/live", b"live", QoS::AtLeastOnce, false)
        .await;
    let live = sub.expect_publish_acked().await;
    assert_eq!(live.topic(), "s/live");
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_5_v311_clean_session_0_keeps_subscriptions_and_queues_qos1_qos2() {
    persistent_session_keeps_subscriptions_and_queues_qos1_qos2(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_23_v5_session_expiry_keeps_subscriptions_and_queues_qos1_qos2() {
    persistent_session_keeps_subscriptions_and_queues_qos1_qos2(V5).await;
}

// DESIGN.md "Sessions and flow": the offline queue is bounded (`max_queued_messages`);
// messages past it are dropped and counted, never silently.
async fn offline_queue_is_bounded(version: ProtocolVersion) {
    let broker = Broker::new({
        let mut config = test_config();
        config.limits.max_queued_messages = 3;
        config
    });
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    drop_connection(sub).await;
    let mut publisher = publisher(&broker).await;
    for i in 0..5u8 {
        publisher.publish("q", &[i], QoS::AtLeastOnce, false).await;
    }
    let dropped = broker
        .metrics()
        .dropped_queue_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 2, "messages past the queue bound must be counted");
    let mut sub = resume(&broker, version, "sub").await;
    for i in 0..3u8 {
        let got = sub.expect_publish_acked().await;
        assert_eq!(got.payload(), &[i]);
    }
    sub.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test(start_paused = true)]
async fn offline_queue_is_bounded_and_drops_are_counted_v311() {
    offline_queue_is_bounded(V3).await;
}

#[tokio::test(start_paused = true)]
async fn offline_queue_is_bounded_and_drops_are_counted_v5() {
    offline_queue_is_bounded(V5).await;
}

// [MQTT-4.4.0-1]: on resume the server resends unacknowledged PUBLISH packets with their
// original packet identifiers, and [MQTT-3.3.1-1] with DUP = 1.
async fn unacknowledged_publish_resent_with_dup(version: ProtocolVersion) {
    let broker = broker();
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("r/#", QoS::ExactlyOnce).await;
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("r/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("r/2", b"two", QoS::ExactlyOnce, false)
        .await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert!(!first.dup && !second.dup, "DUP must be 0 on first delivery");
    drop_connection(sub).await;

    let mut sub = resume(&broker, version, "sub").await;
    for original in [&first, &second] {
        let again = sub.expect_publish().await;
        assert!(again.dup, "resent PUBLISH without DUP: {again:?}");
        assert_eq!(
            again.packet_id(),
            original.packet_id(),
            "packet id changed on resend"
        );
        assert_eq!(
            (again.topic(), again.payload(), again.qos()),
            (original.topic(), original.payload(), original.qos())
        );
        sub.ack(&again).await;
    }
    sub.expect_nothing(Duration::from_millis(200)).await;
    // Acknowledged now: a second resume resends nothing.
    drop_connection(sub).await;
    let mut sub = resume(&broker, version, "sub").await;
    sub.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v311_unacknowledged_publish_resent_with_dup_and_same_id() {
    unacknowledged_publish_resent_with_dup(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v5_unacknowledged_publish_resent_with_dup_and_same_id() {
    unacknowledged_publish_resent_with_dup(V5).await;
}

// [MQTT-4.4.0-1]: a QoS 2 delivery past PUBREC is resumed with PUBREL, not PUBLISH
// (5.0 section 4.3.3: the sender must not resend the PUBLISH once it sent PUBREL).
async fn pubrel_resent_on_resume(version: ProtocolVersion) {
    let broker = broker();
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("r", QoS::ExactlyOnce).await;
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("r", b"two", QoS::ExactlyOnce, false)
        .await;
    let publish = sub.expect_publish().await;
    let id = publish.packet_id().expect("packet id");
    sub.send(&Packet::PubRec(PubRec::new(id))).await;
    match sub.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop_connection(sub).await;

    let mut sub = resume(&broker, version, "sub").await;
    match sub.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id, "PUBREL resent with another id"),
        other => panic!("expected the PUBREL resent, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubComp::new(id))).await;
    sub.expect_nothing(Duration::from_millis(200)).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v311_pubrel_resent_on_resume() {
    pubrel_resent_on_resume(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v5_pubrel_resent_on_resume() {
    pubrel_resent_on_resume(V5).await;
}

// [MQTT-4.4.0-1] (5.0): "Clients and Servers MUST NOT resend messages at any other time":
// nothing is retried on a live connection, however long the acknowledgement takes.
async fn no_resend_on_live_connection(version: ProtocolVersion) {
    let broker = broker();
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("r", QoS::ExactlyOnce).await;
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("r", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("r", b"two", QoS::ExactlyOnce, false)
        .await;
    let one = sub.expect_publish().await;
    let two = sub.expect_publish().await;
    sub.expect_nothing(Duration::from_secs(120)).await;
    // Acknowledging late still completes the flows.
    sub.ack(&one).await;
    sub.ack(&two).await;
    sub.ping().await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v311_no_resend_on_live_connection() {
    no_resend_on_live_connection(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_4_0_1_v5_no_resend_on_live_connection() {
    no_resend_on_live_connection(V5).await;
}

// [MQTT-3.1.2-23] and 3.1.2.11.2: the session is kept while the Session Expiry Interval
// runs and ends when it passes.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_23_session_ends_when_expiry_interval_passes() {
    let broker = broker();
    let (mut sub, _) = connect(&broker, V5, "sub", true, Some(10)).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(
        is_registered(&broker, "sub"),
        "session ended before its expiry interval"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !is_registered(&broker, "sub"),
        "session outlived its expiry interval"
    );
    // Its subscription went with it.
    let mut publisher = publisher(&broker).await;
    let code = publisher.publish("e", b"x", QoS::AtLeastOnce, false).await;
    assert_eq!(code, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    let (mut sub, connack) = connect(&broker, V5, "sub", false, Some(10)).await;
    assert!(
        !connack.session_present,
        "[MQTT-3.2.2-3]: no session state, Session Present 0"
    );
    sub.expect_nothing(Duration::from_millis(200)).await;
}

// 3.1.2.11.2: expiry 0 (absent) ends the session when the connection closes.
#[tokio::test(start_paused = true)]
async fn session_expiry_absent_ends_session_at_close() {
    let broker = broker();
    let (mut sub, _) = connect(&broker, V5, "sub", false, None).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    drop_connection(sub).await;
    assert!(!is_registered(&broker, "sub"));
    let (_, connack) = connect(&broker, V5, "sub", false, None).await;
    assert!(!connack.session_present);
}

fn disconnect_with_expiry(secs: u32) -> Packet {
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval_secs = Some(secs);
    Packet::Disconnect(disconnect)
}

// 3.14.2.2.2: the Session Expiry Interval sent on DISCONNECT replaces the CONNECT one.
#[tokio::test(start_paused = true)]
async fn disconnect_session_expiry_replaces_connect_value() {
    let broker = broker();
    // Longer: 10 s at CONNECT, 100 s at DISCONNECT.
    let (mut sub, _) = connect(&broker, V5, "longer", true, Some(10)).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.send(&disconnect_with_expiry(100)).await;
    assert!(sub.expect_disconnect().await.is_none());
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert!(
        is_registered(&broker, "longer"),
        "DISCONNECT's longer expiry ignored"
    );
    // Shorter: 100 s at CONNECT, 0 at DISCONNECT ends the session at once.
    let (mut sub, _) = connect(&broker, V5, "shorter", true, Some(100)).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.send(&disconnect_with_expiry(0)).await;
    assert!(sub.expect_disconnect().await.is_none());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !is_registered(&broker, "shorter"),
        "DISCONNECT's expiry 0 ignored"
    );
    let (_, connack) = connect(&broker, V5, "shorter", false, Some(100)).await;
    assert!(!connack.session_present);
    let (_, connack) = connect(&broker, V5, "longer", false, Some(100)).await;
    assert!(connack.session_present);
}

// 3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero, then it is a
// Protocol Error to set a non-zero Session Expiry Interval in the DISCONNECT packet".
#[tokio::test(start_paused = true)]
async fn disconnect_nonzero_expiry_after_zero_at_connect_is_protocol_error() {
    let broker = broker();
    let (mut sub, _) = connect(&broker, V5, "sub", true, None).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.send(&disconnect_with_expiry(30)).await;
    let disconnect = sub
        .expect_disconnect()
        .await
        .expect("DISCONNECT from the server");
    assert_eq!(disconnect.reason_code, ReasonCode::PROTOCOL_ERROR);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !is_registered(&broker, "sub"),
        "the session must end with expiry 0"
    );
}

// [MQTT-3.1.2-6] (3.1.1) / [MQTT-3.1.2-4] (5.0): Clean Start / Clean Session 1 discards the
// existing session: no subscriptions, no queued messages, Session Present 0.
async fn clean_start_discards_session(version: ProtocolVersion) {
    let broker = broker();
    let mut sub = persistent(&broker, version, "sub").await;
    sub.subscribe("c", QoS::AtLeastOnce).await;
    drop_connection(sub).await;
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("c", b"queued", QoS::AtLeastOnce, false)
        .await;
    let (mut sub, connack) = if version.is_v5() {
        connect(&broker, version, "sub", true, Some(60)).await
    } else {
        connect(&broker, version, "sub", true, None).await
    };
    assert!(!connack.session_present);
    sub.expect_nothing(Duration::from_millis(200)).await;
    let code = publisher
        .publish("c", b"after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    sub.expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(broker.session_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_6_v311_clean_session_1_discards_session() {
    clean_start_discards_session(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_4_v5_clean_start_1_discards_session() {
    clean_start_discards_session(V5).await;
}

// [MQTT-3.1.4-3] (5.0): a second connection with the same Client Identifier takes the
// session over: the old one gets DISCONNECT 0x8E and is closed; [MQTT-3.1.4-2] (3.1.1): the
// old one is closed. The new connection works and owns the session.
async fn takeover_closes_old_connection(
    old_version: ProtocolVersion,
    new_version: ProtocolVersion,
) {
    let broker = broker();
    let (mut old, _) = connect(&broker, old_version, "dup", false, Some(60)).await;
    old.subscribe("t", QoS::AtLeastOnce).await;
    let (mut new, connack) = connect(&broker, new_version, "dup", false, Some(60)).await;
    assert!(
        connack.session_present,
        "takeover with Clean Start 0 resumes the session"
    );
    let disconnect = old.expect_disconnect().await;
    if old_version.is_v5() {
        let disconnect = disconnect.expect("DISCONNECT 0x8E to the old connection");
        assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    } else {
        assert!(disconnect.is_none());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The old connection's close did not touch the session the new one owns.
    assert!(is_registered(&broker, "dup"));
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("t", b"to new", QoS::AtLeastOnce, false)
        .await;
    let got = new.expect_publish_acked().await;
    assert_eq!(got.payload(), b"to new");
    assert_eq!(
        broker
            .metrics()
            .session_takeovers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_3_v5_takeover_sends_0x8e_and_closes_old_connection() {
    takeover_closes_old_connection(V5, V5).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_2_v311_takeover_closes_old_connection() {
    takeover_closes_old_connection(V3, V3).await;
}

#[tokio::test(start_paused = true)]
async fn takeover_across_versions_v5_to_v311() {
    takeover_closes_old_connection(V5, V3).await;
}

// Takeover with Clean Start 1: the old connection is closed the same way and the old
// session's subscriptions are gone; the old close does not remove the new session.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_3_takeover_with_clean_start_discards_old_session() {
    let broker = broker();
    let (mut old, _) = connect(&broker, V5, "dup", false, Some(60)).await;
    old.subscribe("old", QoS::AtLeastOnce).await;
    let (mut new, connack) = connect(&broker, V5, "dup", true, None).await;
    assert!(!connack.session_present);
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT 0x8E");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(is_registered(&broker, "dup"));
    new.subscribe("new", QoS::AtLeastOnce).await;
    let mut publisher = publisher(&broker).await;
    let code = publisher
        .publish("old", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    publisher
        .publish("new", b"y", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(new.expect_publish_acked().await.payload(), b"y");
}

/// One connection of the takeover race: CONNECT and SUBSCRIBE pipelined, then reads until
/// closed (`None`) or until `settled` fires (`Some`: the connection may still be open).
/// With `drop_after_connack` it drops its connection right after CONNACK, so that closes of
/// old connections run concurrently with the handshakes of new ones.
async fn racer(
    addr: std::net::SocketAddr,
    i: usize,
    drop_after_connack: bool,
    mut settled: tokio::sync::watch::Receiver<bool>,
    handshakes: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<Client> {
    let version = if i.is_multiple_of(3) { V3 } else { V5 };
    let mut client = Client::tcp(addr, version).await;
    // 3.1.1 racers use Clean Session 1 (else their session never expires); 5.0 racers mix
    // Clean Start 0 and 1 with Session Expiry 0: the old connection's close then ends the
    // session, which must never be the one a new connection just resumed.
    let clean = version == V3 || i.is_multiple_of(2);
    let connect = connect_packet(version, "racer", clean, None);
    let mut bytes = Packet::Connect(Box::new(connect))
        .to_bytes(version)
        .to_vec();
    let subscribe = tern_codec::Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Default::default(),
        filters: vec![(
            "race/t".into(),
            tern_codec::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        )],
    };
    bytes.extend_from_slice(&Packet::Subscribe(Box::new(subscribe)).to_bytes(version));
    let mut counted = false;
    let mut count = || {
        if !counted {
            counted = true;
            let _ = handshakes.send(());
        }
    };
    if !client.try_send_bytes(&bytes).await {
        count();
        return None;
    }
    loop {
        tokio::select! {
            packet = client.next_packet() => match packet {
                None => {
                    count();
                    return None;
                }
                Some(Packet::ConnAck(_)) => {
                    if drop_after_connack {
                        drop(client);
                        count();
                        return None;
                    }
                    count();
                }
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER, "{d:?}");
                }
                Some(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id() {
                        let ack = Packet::PubAck(tern_codec::PubAck::new(id)).to_bytes(version);
                        let _ = client.try_send_bytes(&ack).await;
                    }
                }
                Some(_) => {}
            },
            _ = settled.changed() => return Some(client),
        }
    }
}

// [MQTT-3.1.4-3] under contention: many connections with one Client Identifier, some
// resuming and some starting clean, some closing on their own, at once. Afterwards: at most
// one connection is open; if one is, the registry holds exactly one session for the id, the
// one attached to that connection, and a message reaches it exactly once; if none is, no
// session and no subscription is left (an ended session never stays routed). An old
// connection's close never removes or ends the session a newer one resumed.
//
// Both outcomes are checked, and both happen: in round 0 no racer drops its connection, so
// one must survive; in round 1 every racer drops it after CONNACK, so none may; in the
// other rounds every fourth racer drops it and either outcome is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_3_takeover_race_leaves_one_live_session() {
    use tern_broker::metrics::Metrics;
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        OneSurvivor,
        NoSurvivor,
    }
    let broker = TestBroker::start().await;
    let b = broker.broker();
    const RACERS: usize = 24;
    let mut outcomes = Vec::new();
    for round in 0..10 {
        let drops: fn(usize) -> bool = match round {
            0 => |_| false,
            1 => |_| true,
            _ => |i| i % 4 == 3,
        };
        let expected = match round {
            0 => Some(Outcome::OneSurvivor),
            1 => Some(Outcome::NoSurvivor),
            _ => None,
        };
        let most_left = if expected == Some(Outcome::NoSurvivor) {
            0
        } else {
            1
        };
        let (settle_tx, settle_rx) = tokio::sync::watch::channel(false);
        let (hs_tx, mut hs_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            tasks.push(tokio::spawn(racer(
                broker.addr,
                i + round,
                drops(i + round),
                settle_rx.clone(),
                hs_tx.clone(),
            )));
        }
        for _ in 0..RACERS {
            tokio::time::timeout(Duration::from_secs(5), hs_rx.recv())
                .await
                .expect("racers did not finish their handshakes")
                .expect("channel");
        }
        // Wait for the takeovers to settle: at most one connection left.
        let settled = async {
            while Metrics::get(&b.metrics().clients_connected) > most_left {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: {} connections still open",
                    Metrics::get(&b.metrics().clients_connected)
                )
            });
        settle_tx.send_replace(true);
        let mut alive = Vec::new();
        for task in tasks {
            if let Some(mut client) = task.await.expect("racer panicked") {
                // A connection kicked just now may not have seen its close yet.
                let open = loop {
                    match tokio::time::timeout(Duration::from_millis(100), client.next_packet())
                        .await
                    {
                        Err(_) => break true,
                        Ok(None) => break false,
                        Ok(Some(Packet::Disconnect(d))) => {
                            assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
                        }
                        Ok(Some(_)) => {}
                    }
                };
                if open {
                    alive.push(client);
                }
            }
        }
        assert!(
            alive.len() <= 1,
            "round {round}: {} racers still connected",
            alive.len()
        );
        let connected = Metrics::get(&b.metrics().clients_connected) as usize;
        assert_eq!(
            alive.len(),
            connected,
            "round {round}: clients_connected gauge is off"
        );
        let mut publisher = broker.client(V5, "race-pub").await;
        let payload = format!("round {round}");
        let racer_id = tern_codec::ByteStr::from("racer");
        let outcome = match alive.pop() {
            Some(mut survivor) => {
                // Make sure its SUBSCRIBE was handled.
                survivor.send(&Packet::PingReq).await;
                loop {
                    match survivor.recv().await {
                        Packet::PingResp => break,
                        Packet::SubAck(_) | Packet::ConnAck(_) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                let session = b.session(&racer_id);
                let session = session.unwrap_or_else(|| {
                    panic!("round {round}: the live connection's session is not registered")
                });
                assert!(
                    !session.is_ended(),
                    "round {round}: the live connection's session was ended"
                );
                assert!(
                    session.delivery().is_online(),
                    "round {round}: registered session not attached"
                );
                let code = publisher
                    .publish("race/t", payload.as_bytes(), QoS::AtLeastOnce, false)
                    .await;
                assert_eq!(
                    code,
                    Some(ReasonCode::SUCCESS),
                    "round {round}: no subscriber"
                );
                let got = survivor.expect_publish_acked().await;
                assert_eq!(got.payload(), payload.as_bytes());
                survivor.expect_nothing(Duration::from_millis(50)).await;
                survivor.disconnect().await;
                Outcome::OneSurvivor
            }
            None => {
                let code = publisher
                    .publish("race/t", payload.as_bytes(), QoS::AtLeastOnce, false)
                    .await;
                assert_eq!(
                    code,
                    Some(ReasonCode::NO_MATCHING_SUBSCRIBERS),
                    "round {round}: a message was routed to a session no connection owns"
                );
                Outcome::NoSurvivor
            }
        };
        if let Some(expected) = expected {
            assert_eq!(outcome, expected, "round {round}");
        }
        outcomes.push(outcome);
        publisher.disconnect().await;
        // Everything ends: only sessions with expiry 0 were used.
        let drained = async {
            while b.session_count() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), drained)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: sessions left over: {:?}",
                    b.sessions()
                        .iter()
                        .map(|s| s.client_id.clone())
                        .collect::<Vec<_>>()
                )
            });
        assert_eq!(
            Metrics::get(&b.metrics().subscriptions),
            0,
            "round {round}: subscriptions leaked"
        );
        assert_eq!(
            Metrics::get(&b.metrics().sessions),
            0,
            "round {round}: sessions gauge"
        );
    }
    let survived = outcomes
        .iter()
        .filter(|&&o| o == Outcome::OneSurvivor)
        .count();
    eprintln!("takeover race: {survived} of 10 rounds ended with a live connection");
    assert!(
        outcomes.contains(&Outcome::OneSurvivor) && outcomes.contains(&Outcome::NoSurvivor),
        "both outcomes were exercised: {outcomes:?}"
    );
    broker.running.stop().await;
}

// [MQTT-4.3.3-10] (5.0) / [MQTT-4.3.3-2] (3.1.1): until PUBREL, a resent QoS 2 PUBLISH with
// the same packet id is acknowledged with PUBREC and not delivered again; the inbound QoS 2
// state is session state, so this holds across a reconnect. PUBREL then gets PUBCOMP, and
// [MQTT-4.3.3-12] the id is free again for a new message.
async fn inbound_qos2_state_survives_reconnect(version: ProtocolVersion) {
    let broker = broker();
    let (mut watcher, _) = connect(&broker, V5, "watcher", true, None).await;
    watcher.subscribe("q2", QoS::ExactlyOnce).await;
    let mut sender = persistent(&broker, version, "sender").await;
    let id = PacketId::new(7).expect("id");
    let mut publish = Publish::new("q2", &b"once"[..]);
    publish.set_qos(PublishQoS::ExactlyOnce(id));
    sender.send(&Packet::Publish(publish.clone())).await;
    match sender.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(watcher.expect_publish_acked().await.payload(), b"once");
    drop_connection(sender).await;

    let mut sender = resume(&broker, version, "sender").await;
    publish.dup = true;
    sender.send(&Packet::Publish(publish.clone())).await;
    match sender.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC for the resend, got {other:?}"),
    }
    watcher.expect_nothing(Duration::from_millis(200)).await;
    sender.send(&Packet::PubRel(PubRel::new(id))).await;
    match sender.recv().await {
        Packet::PubComp(comp) => {
            assert_eq!(comp.packet_id, id);
            assert_eq!(comp.reason_code, ReasonCode::SUCCESS, "the id was known");
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    watcher.expect_nothing(Duration::from_millis(200)).await;
    // After PUBCOMP the same id is a new message.
    publish.dup = false;
    publish.set_payload(bytes::Bytes::from_static(b"new"));
    sender.send(&Packet::Publish(publish)).await;
    assert!(matches!(sender.recv().await, Packet::PubRec(_)));
    assert_eq!(watcher.expect_publish_acked().await.payload(), b"new");
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_3_3_2_v311_inbound_qos2_dedup_survives_reconnect() {
    inbound_qos2_state_survives_reconnect(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_4_3_3_10_v5_inbound_qos2_dedup_survives_reconnect() {
    inbound_qos2_state_survives_reconnect(V5).await;
}
