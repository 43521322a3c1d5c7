//! Enhanced authentication (MQTT 5.0 section 4.12) with SCRAM-SHA-256, driven by an
//! independent SCRAM client (the `rsasl` crate) through the raw-packet client: the exchange
//! at CONNECT, its failures, the CONNECT timeout over an unfinished exchange, and
//! re-authentication (AUTH 0x19) on a live connection. RFC 7677's test vector is checked in
//! `broker/src/auth/scram.rs`.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig, Session, State};
use tern_broker::auth::scram::ScramCredentials;
use tern_codec::{Auth, Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const METHOD: &str = "SCRAM-SHA-256";

/// A broker whose password file holds SCRAM credentials for `alice` / `wonderland` (4096
/// iterations) and an Argon2id-free `$7$` line for `bob`, so both formats coexist.
async fn scram_broker(name: &str, change: impl FnOnce(&mut tern_broker::Config)) -> TestBroker {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tern-scram-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    let alice = ScramCredentials::derive(b"wonderland", b"alice-salt-16byt", 4096).encode();
    let bob = tern_broker::auth::password::encode_pbkdf2(b"builder", b"0123456789ab", 101);
    std::fs::write(&file, format!("alice:{alice}\nbob:{bob}\n")).expect("write");
    TestBroker::start_with(|c| {
        c.auth.password_file = file;
        c.auth.allow_anonymous = false;
        change(c);
    })
    .await
}

/// A SCRAM-SHA-256 client session from rsasl.
fn sasl(user: &str, password: &str) -> Session {
    let config = SASLConfig::with_credentials(None, user.into(), password.into()).expect("config");
    let mech = Mechname::parse(METHOD.as_bytes()).expect("mechname");
    SASLClient::new(config)
        .start_suggested(&[mech])
        .expect("SCRAM-SHA-256 client")
}

/// One client step: the message to send after reading `input`.
fn step(session: &mut Session, input: Option<&[u8]>) -> (Result<State, String>, Bytes) {
    let mut out = Vec::new();
    let state = session.step(input, &mut out).map_err(|e| e.to_string());
    (state, Bytes::from(out))
}

fn auth_packet(code: ReasonCode, method: &str, data: Bytes) -> Packet {
    let mut auth = Auth {
        reason_code: code,
        ..Auth::default()
    };
    auth.properties.authentication_method = Some(method.into());
    auth.properties.authentication_data = Some(data);
    Packet::Auth(Box::new(auth))
}

/// Expects an AUTH with `code` naming the method ([MQTT-4.12.0-5]); returns its data.
async fn expect_auth(client: &mut Client, code: ReasonCode) -> Bytes {
    match client.recv().await {
        Packet::Auth(auth) => {
            assert_eq!(auth.reason_code, code, "{auth:?}");
            assert_eq!(
                auth.properties.authentication_method.as_deref(),
                Some(METHOD),
                "[MQTT-4.12.0-5]"
            );
            auth.properties.authentication_data.expect("data")
        }
        other => panic!("expected AUTH, got {other:?}"),
    }
}

/// Runs the whole exchange at CONNECT as `user` with `password`; returns the client, the
/// CONNACK and the SCRAM session (to check the server-final message).
async fn scram_connect(
    broker: &TestBroker,
    id: &str,
    user: &str,
    password: &str,
) -> (Client, tern_codec::ConnAck, Session) {
    let mut session = sasl(user, password);
    let (_, client_first) = step(&mut session, None);
    let mut connect = Connect::new(V5, id);
    connect.properties.authentication_method = Some(METHOD.into());
    connect.properties.authentication_data = Some(client_first);
    let mut client = broker.raw(V5).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    // [MQTT-4.12.0-2]: the server asks for more with AUTH 0x18.
    let server_first = expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION).await;
    let (state, client_final) = step(&mut session, Some(&server_first));
    assert_eq!(state, Ok(State::Running));
    // [MQTT-4.12.0-3]: the client answers with AUTH 0x18.
    client
        .send(&auth_packet(
            ReasonCode::CONTINUE_AUTHENTICATION,
            METHOD,
            client_final,
        ))
        .await;
    let connack = match client.recv().await {
        Packet::ConnAck(connack) => *connack,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    (client, connack, session)
}

// [MQTT-4.12.0-2] [MQTT-4.12.0-3] [MQTT-4.12.0-5]: a SCRAM-SHA-256 exchange with a real
// SCRAM client ends in CONNACK 0x00 naming the method, whose server-final message the
// client verifies (the server proves it knows the credentials too).
#[tokio::test]
async fn scram_sha_256_exchange_succeeds_mqtt_4_12_0_2_and_3_and_5() {
    let broker = scram_broker("ok", |_| {}).await;
    let (mut client, connack, mut session) =
        scram_connect(&broker, "scram-ok", "alice", "wonderland").await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    let p = &connack.properties;
    assert_eq!(
        p.authentication_method.as_deref(),
        Some(METHOD),
        "[MQTT-4.12.0-5]"
    );
    let server_final = p.authentication_data.clone().expect("server-final");
    let (state, _) = step(&mut session, Some(&server_final));
    assert!(
        matches!(state, Ok(State::Finished(_))),
        "the client must accept the server signature: {state:?}"
    );
    client.subscribe("scram/t", QoS::AtLeastOnce).await;
    client.ping().await;
    // A plain password login with the same SCRAM entry works too.
    let mut plain = Connect::new(V5, "scram-plain");
    plain.username = Some("alice".into());
    plain.password = Some(Bytes::from_static(b"wonderland"));
    let mut other = broker.raw(V5).await;
    assert_eq!(other.connect(plain).await.code, ReasonCode::SUCCESS);
    broker.running.stop().await;
}

// Wrong password and unknown user: CONNACK 0x86 ([MQTT-4.12.0-4]: the server may reject at
// any point, with a code of 0x80 or above, and closes). A user stored in another format has
// no SCRAM credentials: 0x86 too. The CONNECT user name, when given, must be the SCRAM one.
#[tokio::test]
async fn scram_wrong_proof_or_unknown_user_connack_0x86_mqtt_4_12_0_4() {
    let broker = scram_broker("bad", |_| {}).await;
    for (user, password) in [
        ("alice", "looking-glass"),
        ("nobody", "x"),
        ("bob", "builder"),
    ] {
        let (mut client, connack, _) = scram_connect(&broker, "scram-bad", user, password).await;
        assert_eq!(
            connack.code,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{user}"
        );
        assert_eq!(connack.properties.authentication_method, None);
        assert!(client.expect_disconnect().await.is_none());
    }
    let failures = tern_broker::metrics::Metrics::get(&broker.broker().metrics().auth_failures);
    assert!(failures >= 3, "{failures}");
    broker.running.stop().await;
}

// [MQTT-4.12.0-1]: an Authentication Method the server does not support gets CONNACK 0x8C
// and the connection is closed; without a password file SCRAM is not offered either.
#[tokio::test]
async fn unknown_method_or_no_password_file_connack_0x8c_mqtt_4_12_0_1() {
    let broker = scram_broker("method", |_| {}).await;
    let no_file = TestBroker::start().await;
    for (broker, method) in [
        (&broker, "SCRAM-SHA-1"),
        (&broker, "KERBEROS"),
        (&no_file, METHOD),
    ] {
        let mut connect = Connect::new(V5, "method");
        connect.properties.authentication_method = Some(method.into());
        connect.properties.authentication_data = Some(Bytes::from_static(b"n,,n=alice,r=abc"));
        let mut client = broker.raw(V5).await;
        let connack = client.connect(connect).await;
        assert_eq!(
            connack.code,
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "{method}"
        );
        assert!(client.expect_disconnect().await.is_none());
    }
    broker.running.stop().await;
    no_file.running.stop().await;
}

// A client that starts the exchange and never finishes it is closed at the CONNECT
// timeout, like one that never sends CONNECT.
#[tokio::test]
async fn unfinished_exchange_closed_at_connect_timeout() {
    let broker = scram_broker("timeout", |c| c.limits.connect_timeout_ms = 300).await;
    let mut session = sasl("alice", "wonderland");
    let (_, client_first) = step(&mut session, None);
    let mut connect = Connect::new(V5, "slow-scram");
    connect.properties.authentication_method = Some(METHOD.into());
    connect.properties.authentication_data = Some(client_first);
    let mut client = broker.raw(V5).await;
    let started = std::time::Instant::now();
    client.send(&Packet::Connect(Box::new(connect))).await;
    expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION).await;
    assert!(
        client.recv_or_eof().await.is_none(),
        "closed without CONNACK"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    broker.running.stop().await;
}

// Anything but AUTH (or DISCONNECT) during the exchange is a protocol error: CONNACK 0x82.
#[tokio::test]
async fn other_packet_during_exchange_connack_0x82() {
    let broker = scram_broker("order", |_| {}).await;
    let mut session = sasl("alice", "wonderland");
    let (_, client_first) = step(&mut session, None);
    let mut connect = Connect::new(V5, "order");
    connect.properties.authentication_method = Some(METHOD.into());
    connect.properties.authentication_data = Some(client_first);
    let mut client = broker.raw(V5).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION).await;
    client.send(&Packet::PingReq).await;
    match client.recv().await {
        Packet::ConnAck(connack) => assert_eq!(connack.code, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    broker.running.stop().await;
}

/// Re-authenticates `client` as `user`; returns the server's last AUTH or DISCONNECT.
async fn reauthenticate(client: &mut Client, user: &str, password: &str) -> Packet {
    let mut session = sasl(user, password);
    let (_, client_first) = step(&mut session, None);
    client
        .send(&auth_packet(
            ReasonCode::RE_AUTHENTICATE,
            METHOD,
            client_first,
        ))
        .await;
    let server_first = expect_auth(client, ReasonCode::CONTINUE_AUTHENTICATION).await;
    let (_, client_final) = step(&mut session, Some(&server_first));
    client
        .send(&auth_packet(
            ReasonCode::CONTINUE_AUTHENTICATION,
            METHOD,
            client_final,
        ))
        .await;
    let last = client.recv().await;
    if let Packet::Auth(auth) = &last {
        let data = auth.properties.authentication_data.clone().expect("data");
        let (state, _) = step(&mut session, Some(&data));
        assert!(matches!(state, Ok(State::Finished(_))), "{state:?}");
    }
    last
}

// [MQTT-4.12.1-1]: a client that authenticated with a method re-authenticates with AUTH
// 0x19 at any time; success is AUTH 0x00 with server-final, and the connection goes on.
// [MQTT-4.12.1-2]: a failed re-authentication ends it with DISCONNECT 0x87.
#[tokio::test]
async fn reauthentication_succeeds_or_disconnects_0x87_mqtt_4_12_1_1_and_2() {
    let broker = scram_broker("reauth", |_| {}).await;
    let (mut client, connack, _) = scram_connect(&broker, "reauth", "alice", "wonderland").await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    match reauthenticate(&mut client, "alice", "wonderland").await {
        Packet::Auth(auth) => assert_eq!(auth.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    client.ping().await;
    match reauthenticate(&mut client, "alice", "guess").await {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(client.expect_disconnect().await.is_none());
    broker.running.stop().await;
}

// [MQTT-4.12.0-7]: a client that did not authenticate with a method may not send AUTH:
// DISCONNECT 0x82. [MQTT-4.12.1-1]: re-authentication must name the same method.
#[tokio::test]
async fn auth_without_method_at_connect_is_protocol_error_mqtt_4_12_0_7() {
    let broker = scram_broker("noauth", |_| {}).await;
    let mut plain = Connect::new(V5, "plain");
    plain.username = Some("bob".into());
    plain.password = Some(Bytes::from_static(b"builder"));
    let mut client = broker.raw(V5).await;
    assert_eq!(client.connect(plain).await.code, ReasonCode::SUCCESS);
    client
        .send(&auth_packet(
            ReasonCode::RE_AUTHENTICATE,
            METHOD,
            Bytes::new(),
        ))
        .await;
    let d = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
    let (mut client, _, _) = scram_connect(&broker, "other-method", "alice", "wonderland").await;
    client
        .send(&auth_packet(
            ReasonCode::RE_AUTHENTICATE,
            "SCRAM-SHA-1",
            Bytes::new(),
        ))
        .await;
    let d = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR, "[MQTT-4.12.1-1]");
    broker.running.stop().await;
}
