//! The HTTP listener: `/health`, `/metrics` (Prometheus text), unknown paths, and that the
//! counters there move with MQTT traffic.

use tern_codec::{ProtocolVersion, QoS};
use tern_tests::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 GET; returns (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http enabled");
    let (status, body) = get(http, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""), "{body}");
    let (status, body) = get(http, "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("error"), "{body}");
    broker.running.stop().await;
}

#[tokio::test]
async fn metrics_reflect_mqtt_traffic() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http enabled");
    let mut sub = broker.client(ProtocolVersion::V5, "m-sub").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(ProtocolVersion::V3_1_1, "m-pub").await;
    for _ in 0..3 {
        publisher
            .publish("m/x", b"1", QoS::AtLeastOnce, false)
            .await;
        sub.expect_publish_acked().await;
    }
    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("tern_clients_connected"), 2.0);
    assert_eq!(value("tern_subscriptions"), 1.0);
    assert!(value("tern_messages_received_total") >= 3.0);
    assert!(value("tern_messages_sent_total") >= 3.0);
    assert!(
        text.contains("# HELP tern_messages_received "),
        "help text present"
    );
    // One PUBLISH in 16 per connection is timed, the first one always.
    assert!(
        text.contains("tern_route_latency_seconds_count 1\n"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    broker.running.stop().await;
}
