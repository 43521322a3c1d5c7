//! Persistence through a restart of an in-process broker on the same data directory: what
//! was acknowledged (sessions, subscriptions, queued and inflight QoS 1/2 messages with
//! their packet ids, inbound QoS 2 ids, retained messages) is there after it. Crashes of
//! the real binary (SIGKILL) are in crash.rs and restart.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_codec::{
    Connect, Packet, ProtocolVersion, PubRec, PubRel, Publish, PublishQoS, QoS, ReasonCode,
};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-persist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::start_with(move |c| {
        c.persistence.enabled = true;
        c.persistence.dir = dir;
    })
    .await
}

/// Connects `client_id` with Clean Start 0 and a session expiry of 300 s; returns the
/// client and Session Present.
async fn persistent(broker: &TestBroker, client_id: &str) -> (Client, bool) {
    let mut client = broker.raw(V5).await;
    let mut connect = Connect::new(V5, client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(300);
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    (client, connack.session_present)
}

/// [MQTT-3.1.2-4] / [MQTT-4.1.0-1] across a restart: a session with an expiry, its
/// subscription and the QoS 1 messages acknowledged to the publisher while it was offline
/// are all there after the broker restarts; they arrive in order.
#[tokio::test]
async fn offline_session_and_its_queued_messages_survive_a_restart() {
    let dir = data_dir("queued");
    let broker = start(&dir).await;
    let (mut sub, present) = persistent(&broker, "sub").await;
    assert!(!present);
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = broker.client(V5, "pub").await;
    for i in 0..50u32 {
        let code = publisher
            .publish("q/a", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(code, Some(ReasonCode::SUCCESS));
    }
    publisher.disconnect().await;
    broker.running.stop().await;

    let broker = start(&dir).await;
    let (mut sub, present) = persistent(&broker, "sub").await;
    assert!(present, "the session came back");
    for i in 0..50u32 {
        let publish = sub.expect_publish_acked().await;
        assert_eq!(publish.payload(), format!("m{i}").as_bytes());
    }
    // The subscription is back too: a new message is routed to it.
    let mut publisher = broker.client(V5, "pub").await;
    publisher
        .publish("q/b", b"after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(sub.expect_publish_acked().await.payload(), b"after");
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// [MQTT-4.4.0-1] across a restart: an unacknowledged QoS 2 PUBLISH is resent with DUP and
/// the same packet id, and after PUBREC the PUBREL (not the PUBLISH) is resent.
#[tokio::test]
async fn inflight_qos2_resumes_with_the_same_packet_id_after_a_restart() {
    let dir = data_dir("inflight");
    let broker = start(&dir).await;
    let (mut sub, _) = persistent(&broker, "sub2").await;
    sub.subscribe("x", QoS::ExactlyOnce).await;
    let mut publisher = broker.client(V5, "pub2").await;
    publisher
        .publish("x", b"one", QoS::ExactlyOnce, false)
        .await;
    publisher
        .publish("x", b"two", QoS::ExactlyOnce, false)
        .await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    let (PublishQoS::ExactlyOnce(id1), PublishQoS::ExactlyOnce(id2)) =
        (first.publish_qos(), second.publish_qos())
    else {
        panic!("QoS 2 expected");
    };
    // The first is received (PUBREC, PUBREL arrives), the second not acknowledged at all.
    sub.send(&Packet::PubRec(PubRec::new(id1))).await;
    match sub.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id1),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(sub);
    publisher.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.running.stop().await;

    let broker = start(&dir).await;
    let (mut sub, present) = persistent(&broker, "sub2").await;
    assert!(present);
    let mut saw_pubrel = false;
    let mut saw_publish = false;
    for _ in 0..2 {
        match sub.recv().await {
            Packet::PubRel(rel) => {
                assert_eq!(rel.packet_id, id1, "PUBREL for the received one");
                saw_pubrel = true;
                sub.send(&Packet::PubComp(tern_codec::PubComp::new(id1)))
                    .await;
            }
            Packet::Publish(p) => {
                assert_eq!(p.publish_qos(), PublishQoS::ExactlyOnce(id2), "same id");
                assert!(p.dup, "DUP on the resend");
                assert_eq!(p.payload(), b"two");
                saw_publish = true;
                sub.ack(&p).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_pubrel && saw_publish);
    sub.expect_nothing(Duration::from_millis(200)).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// [MQTT-4.3.3-10] across a restart: a QoS 2 PUBLISH whose PUBREC went out is known after
/// the restart; the publisher's resend is acknowledged, not delivered a second time.
#[tokio::test]
async fn inbound_qos2_id_is_remembered_across_a_restart() {
    let dir = data_dir("in-qos2");
    let broker = start(&dir).await;
    let (mut sub, _) = persistent(&broker, "watcher").await;
    sub.subscribe("once", QoS::AtLeastOnce).await;
    let (mut publisher, _) = persistent(&broker, "p-qos2").await;
    let id = publisher.next_packet_id();
    let publish = Publish::new("once", b"exactly".to_vec()).with_qos(PublishQoS::ExactlyOnce(id));
    publisher.send(&Packet::Publish(publish.clone())).await;
    match publisher.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(sub.expect_publish_acked().await.payload(), b"exactly");
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.running.stop().await;

    let broker = start(&dir).await;
    let (mut sub, _) = persistent(&broker, "watcher").await;
    let (mut publisher, present) = persistent(&broker, "p-qos2").await;
    assert!(present);
    let mut again = publish;
    again.dup = true;
    publisher.send(&Packet::Publish(again)).await;
    match publisher.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(&Packet::PubRel(PubRel::new(id))).await;
    match publisher.recv().await {
        Packet::PubComp(comp) => assert_eq!(comp.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    sub.expect_nothing(Duration::from_millis(300)).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retained messages survive a restart; one cleared before it stays cleared; a session
/// with expiry 0 is not kept.
#[tokio::test]
async fn retained_messages_survive_and_clean_sessions_do_not() {
    let dir = data_dir("retained");
    let broker = start(&dir).await;
    let mut publisher = broker.client(V5, "r-pub").await;
    publisher
        .publish("r/a", b"kept", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("r/b", b"gone", QoS::AtLeastOnce, true)
        .await;
    publisher.publish("r/b", b"", QoS::AtLeastOnce, true).await;
    let mut clean = broker.client(V5, "clean").await;
    clean.subscribe("c", QoS::AtLeastOnce).await;
    drop(clean);
    publisher.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.running.stop().await;

    let broker = start(&dir).await;
    assert!(!broker.broker().has_session("clean"), "expiry 0: not kept");
    let mut sub = broker.client(V5, "r-sub").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let publish = sub.expect_publish_acked().await;
    assert_eq!((publish.topic(), publish.payload()), ("r/a", &b"kept"[..]));
    assert!(publish.retain);
    sub.expect_nothing(Duration::from_millis(200)).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint that does not read back whole is moved aside and the broker starts from
/// the log; a second broker on the same data directory is refused with a clear error.
#[tokio::test]
async fn corrupt_checkpoint_is_moved_aside_and_a_locked_directory_refused() {
    let dir = data_dir("corrupt");
    let broker = start(&dir).await;
    let mut publisher = broker.client(V5, "c-pub").await;
    publisher.publish("k", b"v", QoS::AtLeastOnce, true).await;
    let second = tern_broker::server::start({
        let mut c = tern_tests::test_config();
        c.persistence.enabled = true;
        c.persistence.dir = dir.clone();
        c
    })
    .await;
    let err = second.expect_err("a second broker on the same directory");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(publisher);
    broker.running.stop().await;

    // Stopping wrote a checkpoint: damage it.
    let snap = dir.join("checkpoint.snap");
    let mut data = std::fs::read(&snap).expect("checkpoint written at shutdown");
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&snap, data).expect("write");

    let broker = start(&dir).await;
    let moved = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(moved, "the corrupt checkpoint was moved aside");
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connects `client_id` (Clean Start 0, expiry 300 s) with a will on `will/<client_id>`
/// delayed by `delay_secs`.
async fn with_will(broker: &TestBroker, client_id: &str, delay_secs: u32) -> Client {
    let mut client = broker.raw(V5).await;
    let mut connect = Connect::new(V5, client_id);
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(300);
    let properties = tern_codec::WillProperties {
        will_delay_interval_secs: Some(delay_secs),
        ..Default::default()
    };
    connect.will = Some(tern_codec::LastWill {
        topic: tern_codec::ByteStr::from(format!("will/{client_id}")),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    });
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    client
}

/// [MQTT-3.1.3-9] across a restart: the will of a client whose connection the broker lost
/// when it went down waits out its Will Delay Interval after the restart and is published
/// (it was pending, in the journal); a client that comes back within the delay cancels it,
/// and one that disconnected normally before has none.
#[tokio::test]
async fn pending_wills_survive_a_restart_and_a_resume_cancels_them() {
    let dir = data_dir("wills");
    let broker = start(&dir).await;
    let (mut sub, _) = persistent(&broker, "will-sub").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let gone = with_will(&broker, "w-gone", 1).await;
    let back = with_will(&broker, "w-back", 2).await;
    // [MQTT-3.1.2-10]: a normal DISCONNECT discards the will, in the journal too.
    let clean = with_will(&broker, "w-clean", 0).await;
    clean.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.running.stop().await;
    drop((gone, back));

    let broker = start(&dir).await;
    // "w-back" resumes within its delay: its will is cancelled.
    let back = with_will(&broker, "w-back", 2).await;
    let (mut sub, present) = persistent(&broker, "will-sub").await;
    assert!(present);
    let publish = sub.expect_publish_acked().await;
    assert_eq!(publish.topic(), "will/w-gone");
    assert_eq!(publish.payload(), b"gone");
    sub.expect_nothing(Duration::from_millis(2500)).await;
    drop(back);
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal HTTP/1.1 GET of `path`; returns the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of metric `name` in the exposition `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
}

/// Over `max_disk_bytes`, a QoS 1/2 PUBLISH is refused rather than acknowledged and then
/// not stored: 5.0 gets PUBACK/PUBREC 0x97 Quota exceeded and stays connected, 3.1.1
/// (which has no refusing PUBACK) is disconnected unacknowledged; QoS 0 still flows. The
/// refusals are counted.
#[tokio::test]
async fn over_the_disk_budget_qos1_and_qos2_publishes_get_0x97() {
    let dir = data_dir("budget");
    let d = dir.clone();
    let broker = TestBroker::start_with(move |c| {
        c.persistence.enabled = true;
        c.persistence.dir = d;
        // A preallocated segment alone is over this.
        c.persistence.max_disk_bytes = 1;
    })
    .await;
    let mut sub = broker.client(V5, "b-sub").await;
    sub.subscribe("b/#", QoS::AtMostOnce).await;
    let mut v5 = broker.client(V5, "b-pub5").await;
    let code = v5.publish("b/1", b"x", QoS::AtLeastOnce, false).await;
    assert_eq!(code, Some(ReasonCode::QUOTA_EXCEEDED));
    let code = v5.publish("b/2", b"x", QoS::ExactlyOnce, false).await;
    assert_eq!(code, Some(ReasonCode::QUOTA_EXCEEDED));
    assert_eq!(v5.publish("b/0", b"q0", QoS::AtMostOnce, false).await, None);
    assert_eq!(
        sub.expect_publish().await.payload(),
        b"q0",
        "QoS 0 still flows"
    );

    let mut v3 = broker.client(ProtocolVersion::V3_1_1, "b-pub3").await;
    v3.send(&Packet::Publish({
        let mut p = Publish::new("b/3", bytes::Bytes::from_static(b"x"));
        p.set_qos(PublishQoS::with_id(
            QoS::AtLeastOnce,
            tern_codec::PacketId::MIN,
        ));
        p
    }))
    .await;
    assert_eq!(v3.recv_or_eof().await, None, "3.1.1: closed, no PUBACK");
    sub.expect_nothing(Duration::from_millis(200)).await;

    let http = broker.running.http_addr.expect("http enabled");
    let text = http_get(http, "/metrics").await;
    assert_eq!(metric(&text, "tern_publishes_refused_disk_full_total"), 3.0);
    assert!(metric(&text, "tern_journal_disk_bytes") > 1.0);
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The journal's numbers are on /metrics: records, fsyncs, commits, and the commit
/// histograms; with group commit, one fsync covers many records.
#[tokio::test]
async fn journal_metrics_are_exported() {
    let dir = data_dir("metrics");
    let broker = start(&dir).await;
    let (mut sub, _) = persistent(&broker, "j-sub").await;
    sub.subscribe("j", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "j-pub").await;
    for _ in 0..20 {
        publisher.publish("j", b"x", QoS::AtLeastOnce, false).await;
        sub.expect_publish_acked().await;
    }
    let http = broker.running.http_addr.expect("http enabled");
    let text = http_get(http, "/metrics").await;
    assert!(
        metric(&text, "tern_journal_records_total") >= 40.0,
        "{text}"
    );
    assert!(metric(&text, "tern_journal_fsyncs_total") >= 1.0);
    assert!(metric(&text, "tern_journal_commits_total") >= 1.0);
    assert!(metric(&text, "tern_journal_commit_latency_seconds_count") >= 1.0);
    assert!(metric(&text, "tern_journal_commit_batch_records_sum") >= 40.0);
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `$SYS/broker/persistence/...` carries the journal's numbers (as retained messages).
#[tokio::test]
async fn sys_topics_report_the_journal() {
    let dir = data_dir("sys");
    let broker = start(&dir).await;
    let mut publisher = broker.client(V5, "s-pub").await;
    publisher.publish("s/r", b"x", QoS::AtLeastOnce, true).await;
    tern_broker::sys::publish_stats(
        broker.broker(),
        &mut tern_broker::router::RouteScratch::default(),
        tokio::time::Instant::now(),
    );
    let mut sub = broker.client(V5, "s-sub").await;
    sub.subscribe("$SYS/broker/persistence/#", QoS::AtMostOnce)
        .await;
    let mut topics = Vec::new();
    for _ in 0..6 {
        let p = sub.expect_publish().await;
        if p.topic().ends_with("/records") {
            let n: u64 = std::str::from_utf8(p.payload())
                .expect("utf8")
                .parse()
                .expect("number");
            assert!(n >= 1, "the retained message was journaled");
        }
        topics.push(p.topic().to_owned());
    }
    topics.sort();
    assert_eq!(
        topics,
        [
            "$SYS/broker/persistence/checkpoints",
            "$SYS/broker/persistence/commits",
            "$SYS/broker/persistence/disk bytes",
            "$SYS/broker/persistence/fsyncs",
            "$SYS/broker/persistence/records",
            "$SYS/broker/persistence/recovery ms",
        ]
    );
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
