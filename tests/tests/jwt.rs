//! JSON Web Token authentication (`[auth.jwt]`) end to end: over MQTT (raw client and
//! `mosquitto_pub -P <jwt>`), over SSE and WebSocket (Bearer header, `?access_token=`),
//! claim ACLs, the disconnect at expiry (0xA0), and a JWKS key rotated by a reload.

mod bridge_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tern_broker::config::{Config, JwtAlgorithm};
use tern_codec::{Connect, Packet, ProtocolVersion, QoS};
use tern_tests::{require_tool, Client, TestBroker};

use bridge_support::{get, SseClient, WsClient};

const V5: ProtocolVersion = ProtocolVersion::V5;
const SECRET: &str = "jwt-test-secret-0123456789abcdef";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-jwt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn rs(key: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixtures().join(key)).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("pem"),
    )
    .expect("encode")
}

/// HS256 with a secret file, anonymous clients refused, no leeway.
fn hs_config(config: &mut Config, name: &str) {
    let secret = temp_dir(name).join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    config.auth.allow_anonymous = false;
    config.auth.jwt.enabled = true;
    config.auth.jwt.secret_file = secret;
    config.auth.jwt.leeway_secs = 0;
}

/// CONNECT with `password` (and `user`); returns the client and the CONNACK code.
async fn connect(
    broker: &TestBroker,
    id: &str,
    user: Option<&str>,
    password: &str,
) -> (Client, u8) {
    let mut client = broker.raw(V5).await;
    let mut packet = Connect::new(V5, id);
    packet.username = user.map(Into::into);
    packet.password = Some(password.as_bytes().to_vec().into());
    let code = client.connect(packet).await.code.0;
    (client, code)
}

#[tokio::test]
async fn jwt_valid_expired_not_yet_valid_wrong_signature_and_algorithm() {
    let broker = TestBroker::start_with(|c| hs_config(c, "basic")).await;
    let good = hs(&json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(connect(&broker, "c1", None, &good).await.1, 0);
    assert_eq!(connect(&broker, "c2", Some("alice"), &good).await.1, 0);
    assert_eq!(
        connect(&broker, "c3", Some("bob"), &good).await.1,
        0x86,
        "user name must match"
    );
    let expired = hs(&json!({"sub": "alice", "exp": now() - 5}));
    assert_eq!(connect(&broker, "c4", None, &expired).await.1, 0x86);
    let early = hs(&json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}));
    assert_eq!(connect(&broker, "c5", None, &early).await.1, 0x86);
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-0123456789abcd"),
    )
    .expect("encode");
    assert_eq!(connect(&broker, "c6", None, &forged).await.1, 0x86);
    // alg "none": an unsigned token.
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none"})),
        b64(json!({"sub": "alice", "exp": now() + 60}))
    );
    assert_eq!(connect(&broker, "c7", None, &none).await.1, 0x86);
    let m = broker.broker().metrics();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.auth_jwt_refused_expired.load(Relaxed), 1);
    assert_eq!(m.auth_jwt_refused_not_yet_valid.load(Relaxed), 1);
    assert_eq!(m.auth_jwt_refused_signature.load(Relaxed), 1);
    assert_eq!(m.auth_jwt_refused_algorithm.load(Relaxed), 1);
    assert_eq!(m.auth_jwt_refused_claims.load(Relaxed), 1);
}

#[tokio::test]
async fn jwt_rs256_refuses_hs_rs_confusion() {
    let broker = TestBroker::start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt.enabled = true;
        c.auth.jwt.algorithm = JwtAlgorithm::RS256;
        c.auth.jwt.public_key_file = fixtures().join("rsa1.pub");
    })
    .await;
    let claims = json!({"sub": "dev", "exp": now() + 60});
    assert_eq!(
        connect(&broker, "r1", None, &rs("rsa1.pk8", "x", &claims))
            .await
            .1,
        0
    );
    let public = std::fs::read(fixtures().join("rsa1.pub")).expect("pub");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public),
    )
    .expect("encode");
    assert_eq!(connect(&broker, "r2", None, &confused).await.1, 0x86);
}

#[tokio::test]
async fn jwt_claim_acl_limits_publish_and_subscribe() {
    let broker = TestBroker::start_with(|c| hs_config(c, "acl")).await;
    let token = hs(&json!({"sub": "dev7", "exp": now() + 60,
        "acl": {"publish": ["devices/%c/up"], "subscribe": ["commands/%u/#"]}}));
    let (mut client, code) = connect(&broker, "car", None, &token).await;
    assert_eq!(code, 0);
    let granted = client.subscribe("commands/dev7/#", QoS::AtLeastOnce).await;
    assert_eq!(granted.reason_codes[0].0, 1);
    let refused = client.subscribe("commands/other/#", QoS::AtLeastOnce).await;
    assert_eq!(refused.reason_codes[0].0, 0x87);
    let code = client
        .publish("devices/car/up", b"ok", QoS::AtLeastOnce, false)
        .await
        .map(|c| c.0);
    // 0x10: accepted, no subscriber.
    assert!(matches!(code, Some(0 | 0x10)), "{code:?}");
    assert_eq!(
        client
            .publish("devices/bus/up", b"no", QoS::AtLeastOnce, false)
            .await
            .map(|c| c.0),
        Some(0x87)
    );
}

#[tokio::test]
async fn jwt_expiry_disconnects_with_maximum_connect_time() {
    let broker = TestBroker::start_with(|c| hs_config(c, "expiry")).await;
    let token = hs(&json!({"sub": "alice", "exp": now() + 2}));
    let (mut client, code) = connect(&broker, "short", None, &token).await;
    assert_eq!(code, 0);
    let packet = client.recv_within(Duration::from_secs(5)).await;
    match packet {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0xA0),
        other => panic!("expected DISCONNECT 0xA0, got {other:?}"),
    }
}

/// Writes `[auth.jwt]` with a JWKS file to a config file, for an in-process reload.
fn jwks_config(dir: &Path, jwks: &Path) -> PathBuf {
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
             [auth]\nallow_anonymous = false\n\
             [auth.jwt]\nenabled = true\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            jwks.display()
        ),
    )
    .expect("config");
    path
}

#[tokio::test]
async fn jwks_key_rotation_on_reload() {
    let dir = temp_dir("jwks");
    let jwks = dir.join("keys.jwks");
    std::fs::copy(fixtures().join("rsa1.jwks"), &jwks).expect("copy");
    let config_path = jwks_config(&dir, &jwks);
    let broker = TestBroker::start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt.enabled = true;
        c.auth.jwt.algorithm = JwtAlgorithm::RS256;
        c.auth.jwt.public_key_file = jwks.clone();
    })
    .await;
    let claims = json!({"sub": "dev", "exp": now() + 60});
    let old = rs("rsa1.pk8", "rsa1", &claims);
    let new = rs("rsa2.pk8", "rsa2", &claims);
    assert_eq!(connect(&broker, "k1", None, &old).await.1, 0);
    assert_eq!(connect(&broker, "k2", None, &new).await.1, 0x86);
    std::fs::copy(fixtures().join("rsa2.jwks"), &jwks).expect("rotate");
    tern_broker::reload::reload(broker.bridges(), Some(&config_path), &|_| Ok(())).expect("reload");
    assert_eq!(connect(&broker, "k3", None, &new).await.1, 0);
    assert_eq!(connect(&broker, "k4", None, &old).await.1, 0x86);
}

#[tokio::test]
async fn jwt_on_sse_and_websocket_bridges() {
    let broker = TestBroker::start_with(|c| hs_config(c, "bridges")).await;
    let http = broker.running.http_addr.expect("http");
    let token = hs(&json!({"sub": "web", "exp": now() + 60}));
    let bearer = format!("Bearer {token}");
    let (status, _, _) = get(http, "/sse?filter=a/%23", &[]).await;
    assert_eq!(status, 401);
    let (status, _, body) = get(http, "/sse?filter=a/%23&token=web:pw", &[]).await;
    assert_eq!(status, 401, "passwords in URLs are off with JWT");
    assert!(body.contains("URL"), "{body}");
    let bad = format!("Bearer {}", hs(&json!({"sub": "web", "exp": now() - 5})));
    let (status, _, _) = get(http, "/sse?filter=a/%23", &[("Authorization", &bad)]).await;
    assert_eq!(status, 401);
    let sse = SseClient::open(http, "/sse?filter=a/%23", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let url = format!("/sse?filter=a/%23&access_token={token}");
    let sse = SseClient::open(http, &url, &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let mut ws = WsClient::connect(http, "/ws", &[("Authorization", &bearer)]).await;
    let reply = ws
        .request(json!({"op": "subscribe", "id": 1, "filters": ["a/#"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

/// A bridge stream authenticated with a token ends when the token expires, like an MQTT
/// connection (0xA0): SSE on the lean path (parked once idle) gets a last `expired` event
/// and the connection closes; through hyper the `expired` event ends the response body;
/// WebSocket JSON gets Close 1008.
#[tokio::test]
async fn bridge_streams_end_when_their_token_expires() {
    let broker = TestBroker::start_with(|c| hs_config(c, "bridge-expiry")).await;
    let http = broker.running.http_addr.expect("http");
    let token = hs(&json!({"sub": "web", "exp": now() + 2}));
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str())];
    let mut lean = SseClient::open(http, "/sse?filter=a/%23", &headers).await;
    assert_eq!(lean.status, 200, "{}", lean.head);
    let url = format!("/sse?filter=a/%23&access_token={token}");
    let mut via_hyper = SseClient::open_second(http, &url).await;
    assert_eq!(via_hyper.status, 200, "{}", via_hyper.head);
    let mut ws = WsClient::connect(http, "/ws", &headers).await;
    let reply = ws
        .request(json!({"op": "subscribe", "id": 1, "filters": ["a/#"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let expired = via_hyper.next_event().await;
    // Through hyper the response body ends there (the connection may stay open).
    assert_eq!(expired.event.as_deref(), Some("expired"), "{expired:?}");
    let expired = lean.next_event().await;
    assert_eq!(expired.event.as_deref(), Some("expired"), "{expired:?}");
    assert!(lean.next().await.is_none(), "the stream ended");
    let (code, reason) = ws.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    let counted = broker
        .broker()
        .metrics()
        .auth_token_expired_disconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, 3);
}

#[tokio::test]
async fn mosquitto_pub_with_a_jwt_password() {
    if !require_tool("mosquitto_pub") {
        return;
    }
    let broker = TestBroker::start_with(|c| hs_config(c, "mosquitto")).await;
    let token = hs(&json!({"sub": "tool", "exp": now() + 60}));
    let (mut sub, code) = connect(&broker, "watcher", None, &token).await;
    assert_eq!(code, 0);
    sub.subscribe("tools/#", QoS::AtMostOnce).await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.addr.port().to_string()])
        .args([
            "-V", "mqttv5", "-i", "mosq-jwt", "-P", &token, "-t", "tools/x", "-m", "via-jwt",
        ])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(status.success());
    let publish = sub.expect_publish().await;
    assert_eq!(publish.payload(), b"via-jwt");
    let refused = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.addr.port().to_string()])
        .args([
            "-V",
            "mqttv5",
            "-P",
            "not-a-token",
            "-t",
            "tools/x",
            "-m",
            "x",
        ])
        .output()
        .await
        .expect("mosquitto_pub");
    assert!(!refused.status.success());
}
