//! Live reload of the ACL file in-process: a connected subscriber's wildcard subscription
//! is re-checked against the new ACL at once, and a connected publisher's write access
//! changes from its next PUBLISH.

use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS, ReasonCode};
use tern_tests::TestBroker;

const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn acl_reload_applies_to_connected_clients() {
    let dir = std::env::temp_dir().join(format!("tern-reload-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite a/#\ntopic write b/#\n").expect("acl");
    let config_path = dir.join("tern.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[auth]\nacl_file = \"{}\"\n",
            acl.display()
        ),
    )
    .expect("config");
    let broker = TestBroker::start_with(|c| c.auth.acl_file = acl.clone()).await;
    let mut sub = broker.client(V5, "reader").await;
    assert_eq!(
        sub.subscribe("#", QoS::AtMostOnce).await.reason_codes,
        [ReasonCode(0)]
    );
    let mut publisher = broker.client(V5, "writer").await;

    publisher.publish("a/1", b"x", QoS::AtMostOnce, false).await;
    assert_eq!(sub.expect_publish().await.topic(), "a/1");
    publisher.publish("b/1", b"x", QoS::AtMostOnce, false).await;
    sub.expect_nothing(Duration::from_millis(200)).await; // b/# is not readable

    // Swap the rules: b/# readable and writable, a/# nothing.
    std::fs::write(&acl, "topic readwrite b/#\n").expect("acl");
    let report = tern_broker::reload::reload(broker.bridges(), Some(&config_path), &|_| Ok(()))
        .expect("reload");
    assert_eq!(report.sessions_rechecked, 2);

    publisher.publish("b/2", b"x", QoS::AtMostOnce, false).await;
    assert_eq!(sub.expect_publish().await.topic(), "b/2");
    let code = publisher
        .publish("a/2", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        code,
        Some(ReasonCode::NOT_AUTHORIZED),
        "a/# is no longer writable"
    );
    sub.expect_nothing(Duration::from_millis(200)).await;

    // A broken ACL file is refused and the rules in force stay.
    std::fs::write(&acl, "topic sideways c/#\n").expect("acl");
    assert!(
        tern_broker::reload::reload(broker.bridges(), Some(&config_path), &|_| Ok(())).is_err()
    );
    publisher.publish("b/3", b"x", QoS::AtMostOnce, false).await;
    assert_eq!(sub.expect_publish().await.topic(), "b/3");
    broker.running.stop().await;
}
