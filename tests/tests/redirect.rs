//! Server redirection (MQTT 5.0 section 4.11): CONNACK 0x9C Use another server / 0x9D
//! Server moved with a Server Reference, for the whole broker or one listener; and the
//! drain (SIGUSR1 in `tern`, `POST /api/v1/drain`, [`tern_broker::Broker::drain`] here, or
//! a reload turning redirection on) that sends connected 5.0 clients DISCONNECT 0x9C with the reference.

use std::time::Duration;

use tern_broker::config::{ListenerConfig, ListenerKind, ListenerRedirect, Redirect};
use tern_codec::{Connect, ProtocolVersion, ReasonCode};
use tern_tests::TestBroker;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

// 4.11 / 3.2.2.3.17: a redirecting broker answers CONNECT with 0x9C (temporary) or 0x9D
// (permanent) and the Server Reference; 3.1.1 clients get 0x03 Server unavailable.
#[tokio::test]
async fn redirecting_broker_connack_0x9c_or_0x9d_with_server_reference() {
    for (mode, code) in [
        (Redirect::UseAnotherServer, ReasonCode::USE_ANOTHER_SERVER),
        (Redirect::ServerMoved, ReasonCode::SERVER_MOVED),
    ] {
        let broker = TestBroker::start_with(|c| {
            c.mqtt.redirect = mode;
            c.mqtt.server_reference = "other.example:1883".into();
        })
        .await;
        let mut client = broker.raw(V5).await;
        let connack = client.connect(Connect::new(V5, "moved")).await;
        assert_eq!(connack.code, code);
        assert_eq!(
            connack.properties.server_reference.as_deref(),
            Some("other.example:1883")
        );
        assert!(client.expect_disconnect().await.is_none());
        let mut old = broker.raw(V3).await;
        assert_eq!(old.connect(Connect::new(V3, "moved-3")).await.code.0, 0x03);
        broker.running.stop().await;
    }
}

// A listener's own redirection overrides the broker's: here one listener sends its clients
// elsewhere while the other serves them.
#[tokio::test]
async fn listener_redirect_overrides_the_broker() {
    let redirecting = ListenerConfig {
        kind: ListenerKind::Tcp,
        bind: "127.0.0.1:0".parse().expect("addr"),
        cert_file: None,
        key_file: None,
        client_ca_file: None,
        use_identity_as_username: false,
        redirect: Some(ListenerRedirect {
            redirect: Redirect::ServerMoved,
            server_reference: "new.example:8883".into(),
        }),
    };
    let broker = TestBroker::start_with(|c| c.listeners.push(redirecting)).await;
    let mut served = broker.client(V5, "served").await;
    served.ping().await;
    let mut client = tern_tests::Client::tcp(broker.running.addrs[1], V5).await;
    let connack = client.connect(Connect::new(V5, "moved")).await;
    assert_eq!(connack.code, ReasonCode::SERVER_MOVED);
    assert_eq!(
        connack.properties.server_reference.as_deref(),
        Some("new.example:8883")
    );
    broker.running.stop().await;
}

// Drain: connected 5.0 clients get DISCONNECT 0x9C with the Server Reference (3.1.1 ones
// are closed), new ones CONNACK 0x9C; their sessions stay for their return; a reload with
// redirect = "none" ends the drain.
#[tokio::test]
async fn drain_disconnects_with_0x9c_and_server_reference() {
    let broker =
        TestBroker::start_with(|c| c.mqtt.server_reference = "b.example:1883".into()).await;
    let mut keep = Connect::new(V5, "drained");
    keep.clean_start = false;
    keep.properties.session_expiry_interval_secs = Some(600);
    let mut client = broker.raw(V5).await;
    assert_eq!(client.connect(keep.clone()).await.code, ReasonCode::SUCCESS);
    let mut old = broker.client(V3, "drained-3").await;
    assert_eq!(broker.broker().drain(), 2);
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("b.example:1883")
    );
    assert!(old.expect_disconnect().await.is_none());
    let mut late = broker.raw(V5).await;
    let connack = late.connect(Connect::new(V5, "late")).await;
    assert_eq!(connack.code, ReasonCode::USE_ANOTHER_SERVER);
    // Redirection off again (as a reload with redirect = "none" does): the session is back.
    let features = (*broker.broker().features()).clone();
    broker.broker().set_features(features);
    let mut back = broker.raw(V5).await;
    let connack = back.connect(keep).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert!(connack.session_present, "the drain kept the session");
    broker.running.stop().await;
}

// A reload that turns redirection on drains the connected clients (0x9D here, with the
// reference of the new file).
#[tokio::test]
async fn reload_turning_redirect_on_drains_connected_clients() {
    let dir = std::env::temp_dir().join(format!("tern-redirect-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[persistence]\nenabled = false\n\
         [mqtt]\nredirect = \"server_moved\"\nserver_reference = \"c.example:1883\"\n",
    )
    .expect("config");
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "reloaded").await;
    let report =
        tern_broker::reload::reload(broker.bridges(), Some(&path), &|_| Ok(())).expect("reload");
    assert_eq!(report.redirected, 1);
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SERVER_MOVED);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("c.example:1883")
    );
    let mut late = broker.raw(V5).await;
    assert_eq!(
        late.connect(Connect::new(V5, "late")).await.code,
        ReasonCode::SERVER_MOVED
    );
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// The admin API drains too (`POST /api/v1/drain`, `tern ctl drain`): connected 5.0
// clients get DISCONNECT 0x9C with the Server Reference.
#[tokio::test]
async fn admin_api_drain_disconnects_with_0x9c() {
    let dir = std::env::temp_dir().join(format!("tern-drain-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "drain-test-token-0123456789abcdef\n").expect("token");
    let broker = TestBroker::start_with(|c| {
        c.admin.enabled = true;
        c.admin.token_file = token.clone();
        c.mqtt.server_reference = "e.example:1883".into();
    })
    .await;
    let mut client = broker.client(V5, "admin-drained").await;
    let http = broker.running.http_addr.expect("http");
    let answer = tern_broker::http_client::send(
        hyper::Method::POST,
        &format!("http://{http}/api/v1/drain"),
        &[("authorization", "Bearer drain-test-token-0123456789abcdef")],
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("request");
    assert_eq!(answer.status.as_u16(), 200);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(body["redirected"], 1);
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("e.example:1883")
    );
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// `tern` drains on SIGUSR1: a connected 5.0 client gets DISCONNECT 0x9C.
#[tokio::test]
async fn sigusr1_drains_the_running_binary() {
    let Some(bin) = tern_binary() else {
        tern_tests::skip_unless_ci("target/debug/tern missing; run `cargo build -p tern-broker`");
        return;
    };
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    let dir = std::env::temp_dir().join(format!("tern-sigusr1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n[http]\nenabled = false\n\
             [persistence]\nenabled = false\n[sys]\ninterval_secs = 0\n\
             [mqtt]\nserver_reference = \"d.example:1883\"\n"
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tern");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut client = loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            break tern_tests::Client::new(Box::new(stream), V5);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        client.connect(Connect::new(V5, "signalled")).await.code,
        ReasonCode::SUCCESS
    );
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("d.example:1883")
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The `tern` binary next to the test binaries, if it was built.
fn tern_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("tern");
    bin.is_file().then_some(bin)
}
