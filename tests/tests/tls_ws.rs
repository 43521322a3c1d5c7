//! TLS, mTLS and WebSocket listeners with real clients: `mosquitto_pub`/`mosquitto_sub` with
//! `--cafile` (and a client certificate for mTLS), certificates generated here with rcgen;
//! MQTT.js over `ws://`; and the raw-packet client over TLS for `use_identity_as_username`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tern_broker::config::{ListenerConfig, ListenerKind};
use tern_tests::{require_tool, TestBroker};

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tern-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tern Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::new()).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "device-42");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        let write =
            |file: &str, text: String| std::fs::write(dir.join(file), text).expect("write pem");
        write("ca.crt", ca.pem());
        write("server.crt", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.crt", client.pem());
        write("client.key", client_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn tls_listener(&self, kind: ListenerKind, mtls: bool, identity: bool) -> ListenerConfig {
        ListenerConfig {
            kind,
            bind: "127.0.0.1:0".parse().expect("addr"),
            cert_file: Some(self.path("server.crt")),
            key_file: Some(self.path("server.key")),
            client_ca_file: mtls.then(|| self.path("ca.crt")),
            use_identity_as_username: identity,
            redirect: None,
        }
    }
}

/// Subscribes with mosquitto_sub, publishes with mosquitto_pub, both with `tls_args`, and
/// checks the message arrives.
async fn mosquitto_roundtrip(port: u16, tls_args: &[&str], version: &str) {
    let port = port.to_string();
    let topic = format!("tls/{version}/{}", std::process::id());
    let common = ["-h", "127.0.0.1", "-p", port.as_str(), "-V", version];
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(common)
        .args(tls_args)
        .args(["-t", topic.as_str(), "-C", "1", "-W", "10", "-q", "1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    // Publish until the subscriber has seen one (it may still be connecting).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(common)
            .args(tls_args)
            .args(["-t", topic.as_str(), "-m", "over-tls", "-q", "1"])
            .status()
            .await
            .expect("run mosquitto_pub");
        assert!(status.success(), "mosquitto_pub over TLS failed: {status}");
        if let Ok(Some(status)) = sub.try_wait() {
            assert!(status.success(), "mosquitto_sub failed: {status}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub got nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = sub.wait_with_output().await.expect("sub output");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "over-tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_mosquitto_clients_cafile() {
    if !require_tool("mosquitto_pub") {
        return;
    }
    let pki = Pki::generate("tls");
    let listener = pki.tls_listener(ListenerKind::Tls, false, false);
    let broker = TestBroker::start_with(|c| c.listeners = vec![listener]).await;
    let cafile = pki.path("ca.crt").display().to_string();
    for version in ["mqttv311", "mqttv5"] {
        mosquitto_roundtrip(broker.addr.port(), &["--cafile", &cafile], version).await;
    }
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate() {
    if !require_tool("mosquitto_pub") {
        return;
    }
    let pki = Pki::generate("mtls");
    let listener = pki.tls_listener(ListenerKind::Tls, true, false);
    let broker = TestBroker::start_with(|c| c.listeners = vec![listener]).await;
    let port = broker.addr.port().to_string();
    let (cafile, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let (cafile, cert, key) = (
        cafile.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    mosquitto_roundtrip(
        broker.addr.port(),
        &["--cafile", &cafile, "--cert", &cert, "--key", &key],
        "mqttv5",
    )
    .await;
    // Without a client certificate the handshake fails.
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &cafile,
            "-t",
            "x",
            "-m",
            "y",
        ])
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run mosquitto_pub");
    assert!(
        !status.success(),
        "a client without a certificate must be refused"
    );
    assert!(
        tern_broker::metrics::Metrics::get(&broker.broker().metrics().tls_handshake_failures) >= 1
    );
    broker.running.stop().await;
}

#[test]
fn tls_listener_without_certificate_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("tern-tlscfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tls.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\n",
    )
    .expect("write");
    let err = tern_broker::Config::load(Some(&path))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("cert_file") && err.contains("tls.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_certificate_file_names_the_file() {
    let mut config = tern_tests::test_config();
    config.listeners = vec![ListenerConfig {
        kind: ListenerKind::Tls,
        bind: "127.0.0.1:0".parse().expect("addr"),
        cert_file: Some(Path::new("/nonexistent/server.crt").into()),
        key_file: Some(Path::new("/nonexistent/server.key").into()),
        client_ca_file: None,
        use_identity_as_username: false,
        redirect: None,
    }];
    let err = tern_broker::server::start(config)
        .await
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("/nonexistent/server.crt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_websocket_listener() {
    if !tern_tests::mqttjs_available() {
        return;
    }
    let ws = ListenerConfig {
        kind: ListenerKind::Ws,
        bind: "127.0.0.1:0".parse().expect("addr"),
        cert_file: None,
        key_file: None,
        client_ca_file: None,
        use_identity_as_username: false,
        redirect: None,
    };
    let broker = TestBroker::start_with(|c| c.listeners = vec![ws]).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.addr.port());
    tern_tests::run_mqttjs_over_websocket(&url).await;
    broker.running.stop().await;
}
