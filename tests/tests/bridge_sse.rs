//! `GET /sse`: Server-Sent Events from the router, read with a raw-socket client and with
//! `curl -N`: event format (UTF-8 and base64 payloads, 5.0 properties), retained messages
//! first, resume with `Last-Event-ID`, the `lagged` event, keep-alive comments, bad filters,
//! authentication and read ACL (and its reload), limits; and the parked subscribers of the
//! lean path (served by their ring's writer, taken off the fast path when slow, reaped when
//! closed, closed at shutdown).

mod bridge_support;

use std::path::PathBuf;
use std::time::Duration;

use bridge_support::{get, route, AclFiles, SseClient};
use bytes::Bytes;
use tern_broker::metrics::Metrics;
use tern_codec::{PacketId, ProtocolVersion, Publish, PublishQoS, QoS};
use tern_tests::{require_tool, TestBroker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

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
    // The packet id is the publisher's own (publish_packet assigns it).
    let mut publish = Publish::new("s/a/x", Bytes::from_static(b"hello \"world\""))
        .with_qos(PublishQoS::AtLeastOnce(PacketId::MIN));
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

/// Traffic resets the keep-alive of a parked subscriber: none while messages flow more often
/// than the interval, one after the interval of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_reset_by_traffic() {
    let broker = TestBroker::start_with(|c| c.http.sse_keepalive_ms = 1000).await;
    let http = broker.running.http_addr.expect("http");
    let mut sse = SseClient::open(http, "/sse?filter=busy", &[]).await;
    sse.next().await.expect("opening");
    let mut publisher = publisher(&broker).await;
    for n in 0..20 {
        publisher
            .publish("busy", n.to_string().as_bytes(), QoS::AtMostOnce, false)
            .await;
        let block = sse.next().await.expect("event");
        assert!(
            block.comments.is_empty(),
            "no keep-alive while busy: {block:?}"
        );
        assert_eq!(block.json()["payload"], n.to_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let silent = std::time::Instant::now();
    let block = sse.next().await.expect("keep-alive");
    assert_eq!(block.comments, vec!["keep-alive".to_string()], "{block:?}");
    assert!(
        silent.elapsed() >= Duration::from_millis(700),
        "after the silence"
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

/// The topics of the next `n` message events.
async fn topics(sse: &mut SseClient, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = sse.next_event().await;
        assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
        out.push(event.json()["topic"].as_str().expect("topic").to_string());
    }
    out
}

/// A reload of the ACL (SIGHUP) reaches SSE readers at once: narrowed, an anonymous reader of
/// `a/#` stops getting `a/secret/..` (even what its ring already held unread) and still gets
/// `a/public/..`, while `alice`, on the same filter set but with rules of her own, keeps
/// everything; widened again, the secret topics come back. Lean path and hyper path alike.
#[tokio::test]
async fn sse_readers_follow_an_acl_reload() {
    let wide = "topic read a/#\nuser alice\ntopic read a/#\n";
    let narrow = "topic read a/public/#\nuser alice\ntopic read a/#\n";
    let files = AclFiles::new("sse-reload", wide);
    let acl = files.acl.clone();
    let broker = TestBroker::start_with(move |c| c.auth.acl_file = acl).await;
    let http = broker.running.http_addr.expect("http");
    let mut lean = SseClient::open(http, "/sse?filter=a/%23", &[]).await;
    let mut hyper = SseClient::open_second(http, "/sse?filter=a/%23").await;
    let mut alice = SseClient::open(http, "/sse?filter=a/%23&token=alice:x", &[]).await;
    for sse in [&mut lean, &mut hyper, &mut alice] {
        assert_eq!(sse.status, 200);
        sse.next().await; // the opening comment
    }
    assert_eq!(broker.bridges().ring_count(), 2, "one ring per reader");

    // Routed before the reload, not read yet: held in the rings.
    route(broker.broker(), "a/secret/held", "1");
    route(broker.broker(), "a/public/held", "2");
    let report = files.reload(broker.bridges(), narrow);
    assert_eq!(report.bridges.rings, 2);
    assert_eq!(
        report.bridges.entries_blanked, 1,
        "the anonymous ring's secret"
    );
    route(broker.broker(), "a/secret/x", "3");
    route(broker.broker(), "a/public/x", "4");
    for sse in [&mut lean, &mut hyper] {
        assert_eq!(topics(sse, 2).await, ["a/public/held", "a/public/x"]);
    }
    assert_eq!(
        topics(&mut alice, 4).await,
        ["a/secret/held", "a/public/held", "a/secret/x", "a/public/x"]
    );

    files.reload(broker.bridges(), wide);
    route(broker.broker(), "a/secret/y", "5");
    for sse in [&mut lean, &mut hyper, &mut alice] {
        assert_eq!(topics(sse, 1).await, ["a/secret/y"]);
    }

    // Wholly unreadable: the readers stay connected and receive nothing; a new request is 403.
    files.reload(
        broker.bridges(),
        "topic read b/#\nuser alice\ntopic read a/#\n",
    );
    route(broker.broker(), "a/public/z", "6");
    route(broker.broker(), "a/secret/z", "7");
    assert_eq!(topics(&mut alice, 2).await, ["a/public/z", "a/secret/z"]);
    let (status, _, _) = get(http, "/sse?filter=a/%23", &[]).await;
    assert_eq!(status, 403);
    files.reload(broker.bridges(), wide);
    route(broker.broker(), "a/public/back", "8");
    assert_eq!(
        topics(&mut lean, 1).await,
        ["a/public/back"],
        "still connected"
    );
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
    let bridges = &broker.bridges();
    assert_eq!(bridges.ring_count(), 2);
    assert_eq!(bridges.client_count(), 3);
    assert_eq!(
        broker.broker().trie_entries(),
        3,
        "two entries for {{x, y/#}}, one for {{x}}"
    );
    drop((a, b, c));
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if bridges.ring_count() == 0 && (broker.broker().trie_entries() == 0) {
            gone = true;
            break;
        }
    }
    assert!(gone, "rings and trie entries removed after the linger time");
    assert_eq!(bridges.client_count(), 0);
    broker.running.stop().await;
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..250 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 5 s: {what}");
}

/// Idle subscribers have no task: they are parked on their ring, and the ring's writer
/// sends every message to each of them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_subscribers_get_every_message_in_order() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let bridges = &broker.bridges();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut sse = SseClient::open(http, "/sse?filter=park/%23", &[]).await;
        sse.next().await.expect("opening");
        clients.push(sse);
    }
    eventually("all 20 parked", || bridges.parked_count() == 20).await;
    let mut publisher = publisher(&broker).await;
    for n in 0..30 {
        publisher
            .publish("park/x", n.to_string().as_bytes(), QoS::AtMostOnce, false)
            .await;
    }
    for sse in &mut clients {
        let mut last_id = None::<u64>;
        for n in 0..30 {
            let event = sse.next_event().await;
            assert_eq!(event.event.as_deref(), Some("message"));
            assert_eq!(event.json()["payload"], n.to_string());
            let id: u64 = event.id.as_deref().expect("id").parse().expect("id");
            if let Some(last) = last_id {
                assert_eq!(id, last + 1);
            }
            last_id = Some(id);
        }
    }
    eventually("parked again", || bridges.parked_count() == 20).await;
    assert_eq!(bridges.client_count(), 20);
    broker.running.stop().await;
}

/// One event of a close-delimited stream read raw: (`event`, `id`, `data`).
fn parse_events(body: &str) -> Vec<(String, Option<u64>, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            Some((event?, id, data))
        })
        .collect()
}

/// A parked subscriber that stops reading is taken off the fast path when its socket is
/// full, without holding up the others; when it reads again it gets what the ring still
/// holds in order, the rest as one `lagged` event, and is parked again once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_parked_subscriber_catches_up_in_order_or_is_told_it_lagged() {
    let broker = TestBroker::start_with(|c| {
        c.http.ring_max_messages = 64;
        c.limits.slow_consumer_timeout_ms = 30_000;
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let bridges = &broker.bridges();

    // The slow client: a small receive buffer, and it reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut slow = socket.connect(http).await.expect("connect");
    slow.write_all(format!("GET /sse?filter=slow/%23 HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    // A fast client on the same ring, read as messages come.
    let mut fast = SseClient::open(http, "/sse?filter=slow/%23", &[]).await;
    fast.next().await.expect("opening");
    eventually("both parked", || bridges.parked_count() == 2).await;

    let payload = "p".repeat(8 * 1024);
    let mut publisher = publisher(&broker).await;
    let mut sent = 0u64;
    while bridges.parked_count() == 2 {
        assert!(
            sent < 20_000,
            "the slow client was never taken off the fast path"
        );
        publisher
            .publish(
                "slow/x",
                format!("{sent}:{payload}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
        let event = fast.next_event().await;
        let got = event.json()["payload"]
            .as_str()
            .map(|p| p.split(':').next().map(str::to_string));
        assert_eq!(
            got,
            Some(Some(sent.to_string())),
            "the fast client keeps up"
        );
        sent += 1;
    }
    // Off the fast path, still connected; go on until the ring has moved past it.
    assert_eq!(bridges.client_count(), 2);
    for _ in 0..100 {
        publisher
            .publish(
                "slow/x",
                format!("{sent}:{payload}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
        assert!(fast.next_event().await.data.is_some());
        sent += 1;
    }

    // Now read everything the slow client gets up to the last message.
    let mut body = Vec::new();
    let last = (sent - 1).to_string();
    let mut seen = Vec::new();
    let mut lagged = 0u64;
    let mut last_id = None::<u64>;
    while seen.last() != Some(&last) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut chunk))
            .await
            .expect("slow client data in time")
            .expect("read");
        assert!(n > 0, "the slow client was disconnected");
        body.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&body).to_string();
        let Some(end) = text.rfind("\n\n") else {
            continue;
        };
        let (complete, _) = text.split_at(end + 2);
        let head_end = complete.find("\r\n\r\n").map_or(0, |e| e + 4);
        for (event, id, data) in parse_events(&complete[head_end..]) {
            match event.as_str() {
                "lagged" => {
                    let json: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                    lagged += json["missed"].as_u64().expect("missed count");
                }
                "message" => {
                    let json: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                    let number = json["payload"].as_str().and_then(|p| p.split(':').next());
                    seen.push(number.expect("payload").to_string());
                    let id = id.expect("id");
                    if let Some(last_id) = last_id {
                        assert!(id > last_id, "ids increase");
                    }
                    last_id = Some(id);
                }
                other => panic!("unexpected event {other}"),
            }
        }
        body.drain(..complete.len());
    }
    let numbers: Vec<u64> = seen.iter().map(|n| n.parse().expect("number")).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order: {numbers:?}"
    );
    assert_eq!(
        numbers.len() as u64 + lagged,
        sent,
        "every message was received or counted as missed"
    );
    assert!(lagged > 0, "the ring of 64 moved past the slow client");
    assert!(
        Metrics::get(&broker.broker().metrics().bridge_lagged_messages) >= lagged,
        "lagged messages are counted"
    );

    // Caught up: parked again, and both get the next message.
    eventually("the slow client parked again", || {
        bridges.parked_count() == 2
    })
    .await;
    publisher
        .publish("slow/x", b"after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(fast.next_event().await.json()["payload"], "after");
    let mut tail = Vec::new();
    while !String::from_utf8_lossy(&tail).contains("\"after\"") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut chunk))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "still connected");
        tail.extend_from_slice(&chunk[..n]);
    }
    broker.running.stop().await;
}

/// A parked subscriber that closes its connection is dropped at once (noticed by
/// readiness, not at the next keep-alive): the client count and gauge drop.
#[tokio::test]
async fn closed_parked_subscriber_is_reaped() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let bridges = &broker.bridges();
    let metrics = &broker.broker().metrics();
    let mut a = SseClient::open(http, "/sse?filter=reap", &[]).await;
    let mut b = SseClient::open(http, "/sse?filter=reap", &[]).await;
    a.next().await.expect("opening");
    b.next().await.expect("opening");
    eventually("both parked", || bridges.parked_count() == 2).await;
    assert_eq!(Metrics::get(&metrics.bridge_clients), 2);
    drop(a);
    eventually("the closed one reaped", || {
        bridges.client_count() == 1 && bridges.parked_count() == 1
    })
    .await;
    assert_eq!(Metrics::get(&metrics.bridge_clients), 1);
    // The other is untouched.
    publisher(&broker)
        .await
        .publish("reap", b"still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(b.next_event().await.json()["payload"], "still here");
    drop(b);
    eventually("all reaped", || bridges.client_count() == 0).await;
    assert_eq!(Metrics::get(&metrics.bridge_clients), 0);
    broker.running.stop().await;
}

/// Broker shutdown closes parked streams.
#[tokio::test]
async fn shutdown_closes_parked_subscribers() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut sse = SseClient::open(http, "/sse?filter=bye", &[]).await;
    sse.next().await.expect("opening");
    eventually("parked", || broker.bridges().parked_count() == 1).await;
    let handle = broker.bridges().clone();
    broker.running.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), sse.next())
        .await
        .expect("closed in time");
    assert!(ended.is_none(), "the stream ended: {ended:?}");
    assert_eq!(handle.client_count(), 0);
}
