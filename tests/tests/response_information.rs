//! Response Information (MQTT 5.0 3.1.2.11.6 and 3.2.2.3.15): a client that sets Request
//! Response Information gets a response topic prefix in CONNACK (`[mqtt]
//! response_information`, default `reply/{client_id}/`), and under an ACL file it may
//! subscribe there while others may publish there, so request/response works as is.

use bytes::Bytes;
use tern_codec::{Connect, ProtocolVersion, Publish, PublishQoS, QoS, ReasonCode};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

async fn connect_requesting(
    broker: &TestBroker,
    id: &str,
    request: Option<bool>,
) -> (Client, Option<String>) {
    let mut connect = Connect::new(V5, id);
    connect.properties.request_response_information = request;
    let mut client = broker.raw(V5).await;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    let info = connack
        .properties
        .response_information
        .map(|s| s.to_string());
    (client, info)
}

// [MQTT-3.1.2-28]: with Request Response Information 0 (or absent) the server sends no
// Response Information; with 1 it may, and here sends the configured prefix.
#[tokio::test]
async fn response_information_only_when_requested_mqtt_3_1_2_28() {
    let broker = TestBroker::start().await;
    let (_, none) = connect_requesting(&broker, "rr-absent", None).await;
    assert_eq!(none, None);
    let (_, zero) = connect_requesting(&broker, "rr-zero", Some(false)).await;
    assert_eq!(zero, None, "[MQTT-3.1.2-28]");
    let (_, given) = connect_requesting(&broker, "rr-one", Some(true)).await;
    assert_eq!(given.as_deref(), Some("reply/rr-one/"));
    broker.running.stop().await;
    let custom =
        TestBroker::start_with(|c| c.mqtt.response_information = "svc/{client_id}/in".into()).await;
    let (_, given) = connect_requesting(&custom, "c7", Some(true)).await;
    assert_eq!(given.as_deref(), Some("svc/c7/in"));
    custom.running.stop().await;
    let off = TestBroker::start_with(|c| c.mqtt.response_information = String::new()).await;
    let (_, given) = connect_requesting(&off, "c8", Some(true)).await;
    assert_eq!(given, None, "no template: none given");
    off.running.stop().await;
}

// Request/response under an ACL file that grants nothing else: the requester subscribes to
// its prefix, the responder publishes the answer to the Response Topic under it; a third
// client may not subscribe to someone else's prefix.
#[tokio::test]
async fn request_response_works_under_an_acl_file() {
    let dir = std::env::temp_dir().join(format!("tern-rr-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite requests/#\n").expect("acl");
    let broker = TestBroker::start_with(|c| c.auth.acl_file = acl.clone()).await;
    let (mut requester, prefix) = connect_requesting(&broker, "requester", Some(true)).await;
    let prefix = prefix.expect("response information");
    let mut responder = broker.client(V5, "responder").await;
    let suback = responder.subscribe("requests/#", QoS::AtLeastOnce).await;
    assert_eq!(suback.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let reply_filter = format!("{prefix}#");
    let suback = requester.subscribe(&reply_filter, QoS::AtLeastOnce).await;
    assert_eq!(suback.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let mut request = Publish::new("requests/time", Bytes::from_static(b"now?")).with_qos(
        PublishQoS::with_id(QoS::AtLeastOnce, requester.next_packet_id()),
    );
    request.properties_mut().response_topic = Some(format!("{prefix}time").into());
    requester.publish_packet(request).await;
    let got = responder.expect_publish_acked().await;
    let response_topic = got
        .properties()
        .response_topic()
        .expect("response topic")
        .to_string();
    let code = responder
        .publish(&response_topic, b"12:00", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::SUCCESS));
    let answer = requester.expect_publish_acked().await;
    assert_eq!(answer.topic(), format!("{prefix}time"));
    let mut snoop = broker.client(V5, "snoop").await;
    let suback = snoop.subscribe(&reply_filter, QoS::AtLeastOnce).await;
    assert_eq!(suback.reason_codes, [ReasonCode::NOT_AUTHORIZED]);
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
