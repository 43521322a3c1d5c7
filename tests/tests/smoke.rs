//! Smoke tests: the harness works and the basic publish/subscribe path does, in both
//! protocol versions and across them.

use tern_codec::{ProtocolVersion, QoS};
use tern_tests::TestBroker;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

#[tokio::test]
async fn publish_reaches_subscriber_across_versions() {
    let broker = TestBroker::start().await;
    for (pub_version, sub_version) in [(V5, V5), (V5, V3), (V3, V5), (V3, V3)] {
        let mut sub = broker.client(sub_version, "sub").await;
        sub.subscribe("smoke/#", QoS::ExactlyOnce).await;
        let mut publisher = broker.client(pub_version, "pub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher.publish("smoke/x", b"hello", qos, false).await;
            let got = sub.expect_publish_acked().await;
            assert_eq!(got.topic(), "smoke/x");
            assert_eq!(got.payload(), b"hello");
            assert_eq!(got.qos(), qos);
        }
        publisher.disconnect().await;
        sub.disconnect().await;
    }
    broker.running.stop().await;
}
