//! The HTTP authentication callout (`[auth.http]`) against a small service in the test:
//! allow with ACL rules, deny, superuser, the answer cache, a timeout, a service that is
//! down (`on_error = "deny"`: CONNACK 0x88; `"next"`: the password file decides), and the
//! order of sources.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tern_broker::auth::password;
use tern_broker::config::{AuthSource, CalloutFailure, Config};
use tern_codec::{Connect, ProtocolVersion, QoS};
use tern_tests::{Client, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// The service: answers by password ("allow", "super", "slow", "broken", else deny) and
/// counts the requests it got.
async fn service() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer(stream));
        }
    });
    (addr, count)
}

async fn answer(mut stream: TcpStream) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                break body.to_string();
            }
        }
    };
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (status, reply) = match request["password"].as_str().unwrap_or("") {
        "allow" => (
            200,
            json!({"result": "allow", "acl": {"publish": ["callout/%u/#"], "subscribe": ["callout/#"]}}),
        ),
        "super" => (200, json!({"result": "allow", "superuser": true})),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (200, json!({"result": "allow"}))
        }
        "broken" => (500, json!({})),
        _ => (200, json!({"result": "deny"})),
    };
    assert!(request["client_id"].as_str().is_some());
    let body = reply.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

fn callout(config: &mut Config, addr: SocketAddr) {
    config.auth.allow_anonymous = false;
    config.auth.http.enabled = true;
    config.auth.http.url = format!("http://{addr}/auth");
    config.auth.http.timeout_ms = 500;
}

async fn connect(broker: &TestBroker, id: &str, user: &str, password: &str) -> (Client, u8) {
    let mut client = broker.raw(V5).await;
    let mut packet = Connect::new(V5, id);
    packet.username = Some(user.into());
    packet.password = Some(password.as_bytes().to_vec().into());
    let code = client.connect(packet).await.code.0;
    (client, code)
}

#[tokio::test]
async fn callout_allows_with_acl_denies_and_caches() {
    let (addr, count) = service().await;
    let broker = TestBroker::start_with(|c| callout(c, addr)).await;
    let (mut client, code) = connect(&broker, "h1", "ann", "allow").await;
    assert_eq!(code, 0);
    assert_eq!(
        client
            .subscribe("callout/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0
    );
    assert_eq!(
        client
            .subscribe("other/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0x87
    );
    let code = client
        .publish("callout/bob/x", b"no", QoS::AtLeastOnce, false)
        .await
        .map(|c| c.0);
    assert_eq!(code, Some(0x87), "publish only under callout/ann/");
    assert_eq!(connect(&broker, "h2", "ann", "wrong").await.1, 0x86);
    let (mut root, code) = connect(&broker, "h3", "root", "super").await;
    assert_eq!(code, 0);
    assert_eq!(
        root.subscribe("anything/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0
    );
    let asked = count.load(Ordering::SeqCst);
    assert_eq!(asked, 3);
    // The same credentials from the same address: answered from the cache.
    assert_eq!(connect(&broker, "h2", "ann", "wrong").await.1, 0x86);
    assert_eq!(count.load(Ordering::SeqCst), asked);
    let m = broker.broker().metrics();
    assert_eq!(m.auth_http_cache_hits.load(Ordering::Relaxed), 1);
    assert_eq!(m.auth_http_accepted.load(Ordering::Relaxed), 2);
    assert_eq!(
        m.auth_http_denied.load(Ordering::Relaxed),
        2,
        "cached refusals count too"
    );
}

#[tokio::test]
async fn callout_timeout_and_errors_refuse_with_server_unavailable() {
    let (addr, _) = service().await;
    let broker = TestBroker::start_with(|c| callout(c, addr)).await;
    let started = std::time::Instant::now();
    assert_eq!(connect(&broker, "t1", "ann", "slow").await.1, 0x88);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout bounds the wait"
    );
    assert_eq!(connect(&broker, "t2", "ann", "broken").await.1, 0x88);
    // 3.1.1: 0x03 Server unavailable.
    let mut client = broker.raw(ProtocolVersion::V3_1_1).await;
    let mut packet = Connect::new(ProtocolVersion::V3_1_1, "t3");
    packet.username = Some("ann".into());
    packet.password = Some(b"slow".to_vec().into());
    assert_eq!(client.connect(packet).await.code.0, 0x03);
    let errors = broker
        .broker()
        .metrics()
        .auth_http_errors
        .load(Ordering::Relaxed);
    assert_eq!(errors, 3);
}

#[tokio::test]
async fn service_down_falls_through_to_the_password_file_with_on_error_next() {
    // A port nothing listens on.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let dir = std::env::temp_dir().join(format!("tern-callout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    let hash = password::encode_pbkdf2(b"pw", b"0123456789ab", 101);
    std::fs::write(&file, format!("local:{hash}\n")).expect("passwd");
    let broker = TestBroker::start_with(|c| {
        callout(c, down);
        c.auth.password_file = file.clone();
        c.auth.order = vec![AuthSource::Http, AuthSource::PasswordFile];
        c.auth.http.on_error = CalloutFailure::Next;
    })
    .await;
    assert_eq!(connect(&broker, "d1", "local", "pw").await.1, 0);
    assert_eq!(connect(&broker, "d2", "local", "bad").await.1, 0x86);
    let broker = TestBroker::start_with(|c| callout(c, down)).await;
    assert_eq!(
        connect(&broker, "d3", "local", "pw").await.1,
        0x88,
        "on_error = deny"
    );
}
