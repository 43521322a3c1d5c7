//! Will messages: when they are published (abnormal close, DISCONNECT 0x04, takeover, after
//! the Will Delay Interval or at session end) and when not (normal DISCONNECT, a resume
//! within the delay), with their RETAIN flag and properties. Named after the normative
//! statements they check. All on tokio's paused clock over in-memory streams.

use std::time::Duration;

use bytes::Bytes;
use tern_broker::Broker;
use tern_codec::{
    ByteStr, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, QoS, ReasonCode,
    WillProperties,
};
use tern_tests::{duplex_client, test_config, Client};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

fn broker() -> Broker {
    Broker::new(test_config())
}

fn will(payload: &'static str) -> LastWill {
    LastWill {
        topic: ByteStr::from("will/topic"),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

struct Opts {
    clean: bool,
    expiry: Option<u32>,
    delay: Option<u32>,
}

const CLEAN: Opts = Opts {
    clean: true,
    expiry: None,
    delay: None,
};

async fn connect_with_will(
    broker: &Broker,
    version: ProtocolVersion,
    id: &str,
    mut will: LastWill,
    opts: Opts,
) -> (Client, ConnAck) {
    let mut connect = Connect::new(version, id);
    connect.clean_start = opts.clean;
    connect.keep_alive_secs = 0;
    if version.is_v5() {
        connect.properties.session_expiry_interval_secs = opts.expiry;
        will.properties.will_delay_interval_secs = opts.delay;
    }
    connect.will = Some(will);
    let mut client = duplex_client(broker, version);
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    (client, connack)
}

/// A 5.0 client subscribed to `will/#`.
async fn watcher(broker: &Broker) -> Client {
    let mut client = duplex_client(broker, V5);
    let mut connect = Connect::new(V5, "watcher");
    connect.keep_alive_secs = 0;
    client.connect(connect).await;
    client.subscribe("will/#", QoS::AtLeastOnce).await;
    client
}

async fn expect_will(watcher: &mut Client, payload: &str) -> tern_codec::Publish {
    let got = watcher.expect_publish_acked().await;
    assert_eq!(got.topic(), "will/topic");
    assert_eq!(got.payload(), payload.as_bytes());
    got
}

fn wills_published(broker: &Broker) -> u64 {
    tern_broker::metrics::Metrics::get(&broker.metrics().wills_published)
}

// [MQTT-3.1.2-8]: the will is published when the network connection closes without a
// DISCONNECT.
async fn will_published_on_abnormal_close(version: ProtocolVersion) {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let (client, _) = connect_with_will(&broker, version, "w", will("gone"), CLEAN).await;
    drop(client);
    let got = expect_will(&mut watcher, "gone").await;
    assert_eq!(got.qos(), QoS::AtLeastOnce);
    assert!(
        !got.retain,
        "[MQTT-3.1.2-14]: will retain 0 is published non-retained"
    );
    watcher.expect_nothing(Duration::from_secs(5)).await;
    assert_eq!(wills_published(&broker), 1);
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_8_v311_will_published_on_abnormal_close() {
    will_published_on_abnormal_close(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_8_v5_will_published_on_abnormal_close() {
    will_published_on_abnormal_close(V5).await;
}

// 3.14.2.1: DISCONNECT 0x04 (Disconnect with Will Message) publishes the will.
#[tokio::test(start_paused = true)]
async fn disconnect_with_will_message_0x04_publishes_will() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let (mut client, _) = connect_with_will(&broker, V5, "w", will("asked"), CLEAN).await;
    client
        .send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::DISCONNECT_WITH_WILL,
        )))
        .await;
    assert!(client.expect_disconnect().await.is_none());
    expect_will(&mut watcher, "asked").await;
}

// [MQTT-3.14.4-3] (5.0) / [MQTT-3.1.2-10] (3.1.1): DISCONNECT with reason 0x00 discards
// the will.
async fn will_not_published_on_normal_disconnect(version: ProtocolVersion) {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let (client, _) = connect_with_will(&broker, version, "w", will("no"), CLEAN).await;
    client.disconnect().await;
    watcher.expect_nothing(Duration::from_secs(5)).await;
    assert_eq!(wills_published(&broker), 0);
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_10_v311_will_not_published_on_disconnect() {
    will_not_published_on_normal_disconnect(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_14_4_3_v5_will_not_published_on_normal_disconnect() {
    will_not_published_on_normal_disconnect(V5).await;
}

// [MQTT-3.1.2-15] (5.0) / [MQTT-3.1.2-17] (3.1.1): Will Retain 1 publishes the will as a
// retained message.
async fn will_retain_published_as_retained(version: ProtocolVersion) {
    let broker = broker();
    let mut retained_will = will("kept");
    retained_will.retain = true;
    let (client, _) = connect_with_will(&broker, version, "w", retained_will, CLEAN).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(wills_published(&broker), 1);
    // A later subscriber gets it as a retained message.
    let mut late = watcher(&broker).await;
    let got = expect_will(&mut late, "kept").await;
    assert!(got.retain, "the will was not stored as retained");
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_17_v311_will_retain_published_as_retained() {
    will_retain_published_as_retained(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_15_v5_will_retain_published_as_retained() {
    will_retain_published_as_retained(V5).await;
}

// 3.1.3.2 will properties become the PUBLISH properties; [MQTT-3.1.3-10]: User Properties
// keep their order. The Will Delay Interval itself is not forwarded.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_10_will_properties_forwarded_in_order() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let mut with_props = will("props");
    with_props.properties = WillProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval_secs: Some(3600),
        content_type: Some(ByteStr::from("text/plain")),
        response_topic: Some(ByteStr::from("reply/here")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        will_delay_interval_secs: None,
        user_properties: vec![
            (ByteStr::from("b"), ByteStr::from("2")),
            (ByteStr::from("a"), ByteStr::from("1")),
            (ByteStr::from("b"), ByteStr::from("3")),
        ],
    };
    let (client, _) = connect_with_will(&broker, V5, "w", with_props, CLEAN).await;
    drop(client);
    let got = expect_will(&mut watcher, "props").await;
    let p = got.properties();
    assert_eq!(p.payload_format_indicator(), Some(1));
    assert_eq!(p.message_expiry_interval_secs(), Some(3600));
    assert_eq!(p.content_type(), Some("text/plain"));
    assert_eq!(p.response_topic(), Some("reply/here"));
    assert_eq!(p.correlation_data(), Some(&b"\x00\x01corr"[..]));
    let users: Vec<(&str, &str)> = p.user_properties().collect();
    assert_eq!(users, [("b", "2"), ("a", "1"), ("b", "3")]);
}

// A 3.1.1 subscriber gets a 5.0 client's will without properties (never 5.0 bytes).
#[tokio::test(start_paused = true)]
async fn will_from_v5_client_reaches_v311_subscriber() {
    let broker = broker();
    let mut watcher = duplex_client(&broker, V3);
    watcher.connect(Connect::new(V3, "watcher3")).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut with_props = will("cross");
    with_props.properties.content_type = Some(ByteStr::from("text/plain"));
    let (client, _) = connect_with_will(&broker, V5, "w", with_props, CLEAN).await;
    drop(client);
    expect_will(&mut watcher, "cross").await;
}

// [MQTT-3.1.2-8] / 3.1.3.2.2: with a Will Delay Interval the will is published when the
// delay has passed, not before.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_8_will_published_after_will_delay_not_before() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: true,
        expiry: Some(60),
        delay: Some(5),
    };
    let (client, _) = connect_with_will(&broker, V5, "w", will("late"), opts).await;
    drop(client);
    watcher.expect_nothing(Duration::from_millis(4_900)).await;
    let got = tokio::time::timeout(Duration::from_millis(200), watcher.expect_publish())
        .await
        .expect("will not published 5 s after the close");
    assert_eq!(got.payload(), b"late");
}

// [MQTT-3.1.3-9]: a new connection to the session before the Will Delay Interval passes
// cancels the will.
async fn resume_within_will_delay_cancels_will(clean_after: bool) {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: true,
        expiry: Some(60),
        delay: Some(5),
    };
    let (client, _) = connect_with_will(&broker, V5, "w", will("cancelled"), opts).await;
    drop(client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut connect = Connect::new(V5, "w");
    connect.clean_start = clean_after;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(60);
    let mut again = duplex_client(&broker, V5);
    let connack = again.connect(connect).await;
    if clean_after {
        // Clean Start ends the old session, and a will whose session ends is published
        // ([MQTT-3.1.2-8]: "or the Session ends").
        assert!(!connack.session_present);
        expect_will(&mut watcher, "cancelled").await;
    } else {
        assert!(connack.session_present);
        watcher.expect_nothing(Duration::from_secs(30)).await;
        assert_eq!(wills_published(&broker), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_resume_within_will_delay_cancels_will() {
    resume_within_will_delay_cancels_will(false).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_8_clean_start_within_will_delay_ends_session_and_publishes_will() {
    resume_within_will_delay_cancels_will(true).await;
}

// 3.1.3.2.2: the will is published when the delay passes or the session ends, whichever is
// first: with Session Expiry 0 the session ends at the close, so a 5 s delay does not apply.
#[tokio::test(start_paused = true)]
async fn will_delay_with_session_expiry_zero_published_at_once() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: true,
        expiry: None,
        delay: Some(5),
    };
    let (client, _) = connect_with_will(&broker, V5, "w", will("now"), opts).await;
    drop(client);
    let got = tokio::time::timeout(Duration::from_millis(100), watcher.expect_publish())
        .await
        .expect("will not published when the session ended");
    assert_eq!(got.payload(), b"now");
}

// 3.1.3.2.2: a Will Delay longer than the Session Expiry Interval: published when the
// session expires.
#[tokio::test(start_paused = true)]
async fn will_delay_longer_than_session_expiry_published_at_expiry() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: true,
        expiry: Some(5),
        delay: Some(30),
    };
    let (client, _) = connect_with_will(&broker, V5, "w", will("expired"), opts).await;
    drop(client);
    watcher.expect_nothing(Duration::from_millis(4_900)).await;
    let got = tokio::time::timeout(Duration::from_millis(200), watcher.expect_publish())
        .await
        .expect("will not published at session expiry");
    assert_eq!(got.payload(), b"expired");
    assert!(!broker.has_session("w"));
    watcher.expect_nothing(Duration::from_secs(60)).await;
}

// [MQTT-3.1.4-3] takeover closes the old connection without a normal DISCONNECT: its will
// (no delay) is published ([MQTT-3.1.2-8]).
async fn takeover_publishes_old_connections_will(version: ProtocolVersion) {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: version == V3,
        expiry: Some(60),
        delay: None,
    };
    let (mut old, _) = connect_with_will(&broker, version, "w", will("old"), opts).await;
    let mut connect = Connect::new(version, "w");
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(60);
    let mut new = duplex_client(&broker, version);
    assert_eq!(new.connect(connect).await.code, ReasonCode::SUCCESS);
    let disconnect = old.expect_disconnect().await;
    if version.is_v5() {
        assert_eq!(
            disconnect.expect("DISCONNECT").reason_code,
            ReasonCode::SESSION_TAKEN_OVER
        );
    }
    expect_will(&mut watcher, "old").await;
    watcher.expect_nothing(Duration::from_secs(5)).await;
    // The new connection has no will: a normal close publishes nothing more.
    new.disconnect().await;
    watcher.expect_nothing(Duration::from_secs(5)).await;
    assert_eq!(wills_published(&broker), 1);
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_2_v311_takeover_publishes_old_connections_will() {
    takeover_publishes_old_connections_will(V3).await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_4_3_v5_takeover_publishes_old_connections_will() {
    takeover_publishes_old_connections_will(V5).await;
}

// [MQTT-3.1.3-9] through a takeover: the new connection resumes the session before the
// old connection's Will Delay passes, so that will is never published.
#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_takeover_resuming_within_will_delay_cancels_will() {
    let broker = broker();
    let mut watcher = watcher(&broker).await;
    let opts = Opts {
        clean: true,
        expiry: Some(60),
        delay: Some(5),
    };
    let (mut old, _) = connect_with_will(&broker, V5, "w", will("old"), opts).await;
    let mut connect = Connect::new(V5, "w");
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(60);
    let mut new = duplex_client(&broker, V5);
    assert!(new.connect(connect).await.session_present);
    old.expect_disconnect().await;
    watcher.expect_nothing(Duration::from_secs(30)).await;
    assert_eq!(wills_published(&broker), 0);
    new.ping().await;
}
