//! `GET /sse`: Server-Sent Events from the router, read with a raw-socket client and with
//! `curl -N`: event format (UTF-8 and base64 payloads, 5.0 properties), retained messages
//! first, resume with `Last-Event-ID`, the `lagged` event, keep-alive comments, bad filters,
//! authentication and read ACL, limits.

mod bridge_support;

use std::path::PathBuf;
use std::time::Duration;

use bridge_support::{get, SseClient};
use bytes::Bytes;
use tern_codec::{ProtocolVersion, Publish, QoS};
use tern_tests::{require_tool, TestBroker};
use tokio::io::AsyncBufReadExt;

async fn publisher(broker: &TestBroker) -> tern_tests::Client {
    broker.client(ProtocolVersion::V5, "sse-pub").await
}

#[tokio::test]
async fn events_carry_id_topic_payload_and_properties() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    // `+` is sent as is, `#` percent-encoded; two filters overlapping still give one event.
    let mut sse = SseClient::open(http, "/sse?filter=s/%2B/x&filter=s/%23", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(sse.header("cache-control").as_deref(), Some("no-cache"));
    let opening = sse.next().await.expect("opening comment");
    assert!(opening.event.is_none());

    let mut publisher = publisher(&broker).await;
    let mut publish = Publish::new("s/a/x", Bytes::from_static(b"hello \"world\""));
    publish.qos = QoS::AtLeastOnce;
    publish.properties_mut().content_type = Some("text/plain".into());
    publish
        .properties_mut()
        .user_properties
        .push(("k".into(), "v".into()));
    publish.properties_mut().correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    publisher.publish_packet(publish).await;
    publisher
        .publish("s/b", &[0xff, 0xfe, 0x00], QoS::AtMostOnce, false)
        .await;

    let first = sse.next_event().await;
    assert_eq!(first.event.as_deref(), Some("message"));
    let id1: u64 = first
        .id
        .as_deref()
        .expect("id")
        .parse()
        .expect("numeric id");
    let json = first.json();
    assert_eq!(json["topic"], "s/a/x");
    assert_eq!(json["payload"], "hello \"world\"");
    assert!(json.get("encoding").is_none());
    assert_eq!(json["qos"], 1);
    assert_eq!(json["retain"], false);
    assert_eq!(json["properties"]["content_type"], "text/plain");
    assert_eq!(
        json["properties"]["user_properties"],
        serde_json::json!([["k", "v"]])
    );
    assert_eq!(json["properties"]["correlation_data"], "AQI=");
    assert!(
        json.get("type").is_none(),
        "SSE data has no type field: {json}"
    );

    let second = sse.next_event().await;
    let id2: u64 = second
        .id
        .as_deref()
        .expect("id")
        .parse()
        .expect("numeric id");
    assert_eq!(
        id2,
        id1 + 1,
        "one event per message although two filters match"
    );
    let json = second.json();
    assert_eq!(json["topic"], "s/b");
    assert_eq!(json["payload"], "//4A");
    assert_eq!(json["encoding"], "base64");
    assert_eq!(json["qos"], 0);

    // MQTT subscribers are unaffected, and the publisher saw a matching subscriber (no 0x10).
    let code = publisher
        .publish("s/c/x", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code.map(|c| c.0), Some(0));
    broker.running.stop().await;
}

#[tokio::test]
async fn retained_messages_come_first_when_asked() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("r/1", b"kept", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("other", b"no", QoS::AtLeastOnce, true)
        .await;
    let mut sse = SseClient::open(http, "/sse?filter=r/%23&retained=1", &[]).await;
    let retained = sse.next_event().await;
    assert!(retained.id.is_none(), "retained replay is outside the ring");
    let json = retained.json();
    assert_eq!(
        (json["topic"].as_str(), json["retain"].as_bool()),
        (Some("r/1"), Some(true))
    );
    publisher
        .publish("r/1", b"live", QoS::AtLeastOnce, true)
        .await;
    let live = sse.next_event().await.json();
    assert_eq!(
        (live["payload"].as_str(), live["retain"].as_bool()),
        (Some("live"), Some(false))
    );
    broker.running.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_without_gap_or_reports_lagged() {
    let broker = TestBroker::start_with(|c| c.http.ring_max_messages = 3).await;
    let http = broker.running.http_addr.expect("http");
    let mut publisher = publisher(&broker).await;
    let mut sse = SseClient::open(http, "/sse?filter=resume/%23", &[]).await;
    sse.next().await;
    publisher
        .publish("resume/a", b"1", QoS::AtLeastOnce, false)
        .await;
    let first = sse.next_event().await;
    let id1 = first.id.clone().expect("id");
    drop(sse);

    // Gone for two messages: the ring (lingering after its last client) still holds them.
    publisher
        .publish("resume/a", b"2", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("resume/a", b"3", QoS::AtLeastOnce, false)
        .await;
    let mut sse = SseClient::open(http, "/sse?filter=resume/%23", &[("Last-Event-ID", &id1)]).await;
    let two = sse.next_event().await;
    assert_eq!(two.event.as_deref(), Some("message"));
    assert_eq!(two.json()["payload"], "2");
    let three = sse.next_event().await;
    assert_eq!(three.json()["payload"], "3");
    let id3 = three.id.clone().expect("id");
    drop(sse);

    // Gone for five: the ring of three lost two of them.
    for n in 4..=8 {
        publisher
            .publish(
                "resume/a",
                n.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    let path = format!("/sse?filter=resume/%23&last_event_id={id3}");
    let mut sse = SseClient::open(http, &path, &[]).await;
    let lagged = sse.next_event().await;
    assert_eq!(lagged.event.as_deref(), Some("lagged"));
    assert_eq!(lagged.json()["missed"], 2);
    for n in 6..=8 {
        assert_eq!(sse.next_event().await.json()["payload"], n.to_string());
    }
    // The client stays connected and gets new messages.
    publisher
        .publish("resume/a", b"9", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(sse.next_event().await.json()["payload"], "9");

    // An id this stream never issued: lagged with an unknown count.
    let mut other = SseClient::open(
        http,
        "/sse?filter=resume/%23",
        &[("Last-Event-ID", "12345")],
    )
    .await;
    let lagged = other.next_event().await;
    assert_eq!(lagged.event.as_deref(), Some("lagged"));
    assert!(lagged.json()["missed"].is_null());
    broker.running.stop().await;
}

#[tokio::test]
async fn keepalive_comment_after_silence() {
    let broker = TestBroker::start_with(|c| c.http.sse_keepalive_ms = 150).await;
    let http = broker.running.http_addr.expect("http");
    let mut sse = SseClient::open(http, "/sse?filter=quiet", &[]).await;
    sse.next().await;
    let started = std::time::Instant::now();
    let block = sse.next().await.expect("keep-alive");
    assert_eq!(block.comments, vec!["keep-alive".to_string()], "{block:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "not before the interval"
    );
    broker.running.stop().await;
}

#[tokio::test]
async fn bad_filters_are_400_with_a_json_error() {
    let broker = TestBroker::start_with(|c| c.http.max_filters_per_client = 2).await;
    let http = broker.running.http_addr.expect("http");
    for path in [
        "/sse",
        "/sse?filter=",
        "/sse?filter=a/%23/b",
        "/sse?filter=a%2B",
        "/sse?filter=%24share/g/x",
        "/sse?filter=a&filter=b&filter=c",
    ] {
        let (status, head, body) = get(http, path, &[]).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(json["error"].is_string(), "{path}: {body}");
    }
    broker.running.stop().await;
}

fn auth_files(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tern-bridge-auth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let passwords = dir.join("passwd");
    let hash = tern_broker::auth::password::encode_pbkdf2(b"pw", b"twelve bytes", 101);
    std::fs::write(&passwords, format!("alice:{hash}\n")).expect("write");
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite public/#\ntopic write alice/#\n",
    )
    .expect("write");
    (passwords, acl)
}

#[tokio::test]
async fn authentication_and_read_acl() {
    let (passwords, acl) = auth_files("sse");
    let broker = TestBroker::start_with(move |c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = passwords;
        c.auth.acl_file = acl;
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let (status, head, _) = get(http, "/sse?filter=public/%23", &[]).await;
    assert_eq!(status, 401);
    assert!(
        head.contains("WWW-Authenticate") || head.contains("www-authenticate"),
        "{head}"
    );
    let (status, _, _) = get(http, "/sse?filter=public/%23&token=alice:nope", &[]).await;
    assert_eq!(status, 401);
    // "alice:pw" in Basic.
    let basic = [("Authorization", "Basic YWxpY2U6cHc=")];
    let (status, _, body) = get(http, "/sse?filter=secret/%23", &basic).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("secret/#"), "{body}");

    // `#` overlaps what alice may read: granted, each message checked.
    let mut sse = SseClient::open(http, "/sse?filter=%23&token=alice:pw", &[]).await;
    assert_eq!(sse.status, 200);
    sse.next().await;
    let mut mqtt = broker.raw(ProtocolVersion::V5).await;
    let mut connect = tern_codec::Connect::new(ProtocolVersion::V5, "acl-pub");
    connect.username = Some("alice".into());
    connect.password = Some(Bytes::from_static(b"pw"));
    assert_eq!(mqtt.connect(connect).await.code.0, 0);
    mqtt.publish("alice/secret", b"hidden", QoS::AtLeastOnce, false)
        .await;
    mqtt.publish("public/news", b"shown", QoS::AtLeastOnce, false)
        .await;
    let event = sse.next_event().await.json();
    assert_eq!(
        event["topic"], "public/news",
        "alice/ is writable, not readable"
    );

    let mut sse = SseClient::open(
        http,
        "/sse?filter=public/%23",
        &[("Authorization", "Bearer alice:pw")],
    )
    .await;
    assert_eq!(sse.status, 200);
    sse.next().await;
    broker.running.stop().await;
}

#[tokio::test]
async fn client_limit_is_503_and_counted() {
    let broker = TestBroker::start_with(|c| c.http.max_bridge_clients = 1).await;
    let http = broker.running.http_addr.expect("http");
    let mut first = SseClient::open(http, "/sse?filter=x", &[]).await;
    first.next().await;
    let (status, _, _) = get(http, "/sse?filter=x", &[]).await;
    assert_eq!(status, 503);
    let (_, _, stats) = get(http, "/api/stats", &[]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["bridge_clients"], 1);
    assert_eq!(stats["bridge_rings"], 1);
    drop(first);
    // The place is freed when the stream is dropped.
    let mut ok = false;
    for _ in 0..50 {
        let mut again = SseClient::open(http, "/sse?filter=x", &[]).await;
        if again.status == 200 {
            again.next().await;
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slot freed after the client left");
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_the_stream() {
    if !require_tool("curl") {
        return;
    }
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let url = format!("http://{http}/sse?filter=curl/%2B");
    let mut child = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "20", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn curl");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    // The opening comment means the subscription is in place.
    let first = next_line(&mut lines).await;
    assert!(first.starts_with(':'), "{first}");
    let mut publisher = publisher(&broker).await;
    publisher
        .publish("curl/x", b"via curl", QoS::AtLeastOnce, false)
        .await;
    let mut data = None;
    while data.is_none() {
        let line = next_line(&mut lines).await;
        data = line.strip_prefix("data: ").map(str::to_string);
    }
    let json: serde_json::Value = serde_json::from_str(&data.expect("data")).expect("JSON");
    assert_eq!(json["payload"], "via curl");
    let _ = child.kill().await;
    broker.running.stop().await;
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("curl output in time")
        .expect("read")
        .expect("curl stream open")
}

/// The lean path answers a connection that starts with `GET /sse` (close-delimited body);
/// hyper answers `/sse` as a later request on a kept-alive connection (chunked). Both send
/// the same events.
#[tokio::test]
async fn lean_path_and_hyper_path_send_the_same_events() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut lean = SseClient::open(http, "/sse?filter=both", &[]).await;
    assert!(!lean.chunked);
    assert_eq!(lean.header("connection").as_deref(), Some("close"));
    let mut hyper = SseClient::open_second(http, "/sse?filter=both").await;
    assert_eq!(hyper.status, 200);
    assert!(hyper.chunked, "{}", hyper.head);
    lean.next().await;
    hyper.next().await;
    publisher(&broker)
        .await
        .publish("both", b"x", QoS::AtLeastOnce, false)
        .await;
    let (a, b) = (lean.next_event().await, hyper.next_event().await);
    assert_eq!(a.id, b.id, "one ring, one id");
    assert_eq!(a.data, b.data);
    broker.running.stop().await;
}

/// Clients with the same filter set (in any order) share one ring; a ring outlives its last
/// client by `ring_linger_ms`, then leaves the registry and the trie.
#[tokio::test]
async fn rings_are_shared_per_filter_set_and_reaped_after_linger() {
    let broker = TestBroker::start_with(|c| c.http.ring_linger_ms = 100).await;
    let http = broker.running.http_addr.expect("http");
    let mut a = SseClient::open(http, "/sse?filter=x&filter=y/%23", &[]).await;
    let mut b = SseClient::open(http, "/sse?filter=y/%23&filter=x&filter=x", &[]).await;
    let mut c = SseClient::open(http, "/sse?filter=x", &[]).await;
    for client in [&mut a, &mut b, &mut c] {
        client.next().await;
    }
    let bridges = &broker.broker().bridges;
    assert_eq!(bridges.ring_count(), 2);
    assert_eq!(bridges.client_count(), 3);
    assert_eq!(
        broker.broker().router.len(),
        3,
        "two entries for {{x, y/#}}, one for {{x}}"
    );
    drop((a, b, c));
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if bridges.ring_count() == 0 && broker.broker().router.is_empty() {
            gone = true;
            break;
        }
    }
    assert!(gone, "rings and trie entries removed after the linger time");
    assert_eq!(bridges.client_count(), 0);
    broker.running.stop().await;
}
