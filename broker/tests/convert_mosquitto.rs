//! `tern convert` on real-world-shaped Mosquitto configurations (`tests/mosquitto/`): each
//! converts, the result passes `tern check-config`, and the real `tern` binary started with
//! it accepts the same clients, on the same ports, as Mosquitto started with the original
//! file: `mosquitto_pub`/`mosquitto_sub` with the same users, password file, ACL and CA
//! file. Where Tern differs on purpose (per-listener settings combined strictly), the test
//! checks the difference the conversion announced.
//!
//! Mosquitto itself runs only to show that the fixtures mean what the checks say (each
//! check runs against both). A missing tool skips with a printed reason, or fails under
//! `CI=true`.

mod convert_support;

use std::path::Path;

use convert_support::{
    publish, receive, require_tool, user, websocket_connect, Fixture, Process, Seen, Tls, Who,
    ANONYMOUS,
};

/// The brokers a fixture's checks run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Tern,
    Mosquitto,
}

fn clients_available() -> bool {
    require_tool("mosquitto_pub") && require_tool("mosquitto_sub") && require_tool("timeout")
}

fn start_tern(fixture: &Fixture, config: &str, ports: &[u16]) -> Process {
    Process::start(
        "tern",
        Path::new(env!("CARGO_BIN_EXE_tern")),
        &["--config", config],
        &fixture.dir,
        ports,
    )
}

/// Mosquitto with the original file (as root it would switch to the `mosquitto` user,
/// who cannot read the test's files: `user root` is added for that). Listeners with
/// `protocol websockets` are left out when this Mosquitto build cannot open them.
fn start_mosquitto(fixture: &Fixture, ports: &[u16], websockets: bool) -> Option<Process> {
    if !require_tool("mosquitto") {
        return None;
    }
    let mut text = std::fs::read_to_string(fixture.path("mosquitto.conf")).expect("conf");
    if !websockets {
        text = without_websocket_listeners(&text);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        text.push_str("\nuser root\n");
    }
    std::fs::write(fixture.path("reference.conf"), text).expect("reference.conf");
    let program = which("mosquitto");
    Some(Process::start(
        "mosquitto",
        Path::new(&program),
        &["-c", "reference.conf"],
        &fixture.dir,
        ports,
    ))
}

fn which(tool: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn without_websocket_listeners(text: &str) -> String {
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with("listener ") {
            blocks.push(Vec::new());
        }
        blocks.last_mut().expect("block").push(line);
    }
    blocks
        .into_iter()
        .filter(|b| !b.iter().any(|l| l.trim() == "protocol websockets"))
        .flatten()
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Whether this Mosquitto opens WebSocket listeners (Debian's 2.0.11 does not).
fn mosquitto_has_websockets() -> bool {
    let dir = std::env::temp_dir().join(format!("tern-convert-wsprobe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let conf = dir.join("probe.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nprotocol websockets\nuser root\n"),
    )
    .expect("probe");
    let mut child = std::process::Command::new(which("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let up = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if child.try_wait().ok().flatten().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    up
}

/// Runs `checks` against Tern started with the converted file, then against Mosquitto
/// started with the original one (when installed). `ws_port`: the fixture's WebSocket
/// listener, if any; `checks` is told whether to use it.
fn against_both(
    fixture: &Fixture,
    ports: &[u16],
    ws_port: Option<u16>,
    checks: impl Fn(Broker, bool),
) {
    let tern = start_tern(fixture, "tern.toml", ports);
    checks(Broker::Tern, ws_port.is_some());
    tern.stop();
    let ws = ws_port.is_some() && mosquitto_has_websockets();
    if ws_port.is_some() && !ws {
        eprintln!("NOTE: this Mosquitto cannot open WebSocket listeners; its reference run leaves them out");
    }
    let ports: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| ws || Some(p) != ws_port)
        .collect();
    if let Some(mosquitto) = start_mosquitto(fixture, &ports, ws) {
        checks(Broker::Mosquitto, ws);
        mosquitto.stop();
    }
}

fn roundtrip(fixture: &Fixture, port: u16, who: Who<'_>, topic: &str) -> Seen {
    let payload = format!("hello {topic}");
    if let Err(e) = publish(fixture, port, who, topic, &payload) {
        return Seen::Refused(e);
    }
    receive(fixture, port, who, topic)
}

fn assert_message(seen: Seen, topic: &str, context: &str) {
    assert_eq!(seen, Seen::Message(format!("hello {topic}")), "{context}");
}

#[test]
fn default_debian_configuration() {
    let fixture = Fixture::prepare("default");
    let (toml, warnings) = fixture.convert();
    fixture.check_config();
    for expected in [
        "mosquitto.conf:6: pid_file: not supported",
        "mosquitto.conf:8: persistence: handled differently",
        "mosquitto.conf:11: log_dest: handled differently",
    ] {
        assert!(warnings.contains(expected), "{expected:?} in:\n{warnings}");
    }
    assert!(
        toml.contains("bind = \"127.0.0.1:1883\""),
        "local only:\n{toml}"
    );
    assert!(toml.contains("allow_anonymous = true"), "{toml}");
    assert!(toml.contains("enabled = true"), "{toml}");
    let data = format!("dir = \"{}/data/\"", fixture.dir.display());
    assert!(toml.contains(&data), "{toml}");
    if !clients_available() {
        return;
    }
    // Port 1883 may be taken on a test machine: the live run moves the listener only.
    // (So Mosquitto, whose local-only listener is always 1883, is not started here.)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let live = toml.replace("127.0.0.1:1883", &format!("127.0.0.1:{port}"));
    std::fs::write(fixture.path("live.toml"), live).expect("live.toml");
    let tern = start_tern(&fixture, "live.toml", &[port]);
    assert_message(
        roundtrip(&fixture, port, ANONYMOUS, "demo/hello"),
        "demo/hello",
        "anonymous",
    );
    tern.stop();
}

#[test]
fn tls_websockets_and_authentication() {
    let fixture = Fixture::prepare("tls_websockets_auth");
    let (toml, warnings) = fixture.convert();
    fixture.check_config();
    for expected in [
        "tls_version: handled differently: listener",
        "connection_messages: handled differently",
        // Only the WebSocket listener had a limit: Tern's one total cannot say that.
        "max_connections: handled differently: Tern counts connections over all listeners",
    ] {
        assert!(warnings.contains(expected), "{expected:?} in:\n{warnings}");
    }
    for expected in [
        "enabled = false",
        "kind = \"ws\"",
        "use_identity_as_username = true",
        "max_inflight_messages = 40",
        "receive_maximum = 40",
        "max_packet_size_bytes = 262144",
    ] {
        assert!(toml.contains(expected), "{expected:?} in:\n{toml}");
    }
    assert_eq!(
        toml.matches("client_ca_file").count(),
        1,
        "only with require_certificate"
    );
    if !clients_available() {
        return;
    }
    let p = |name| fixture.port(name);
    let ports = [p("PORT_MQTT"), p("PORT_TLS"), p("PORT_MTLS"), p("PORT_WS")];
    against_both(
        &fixture,
        &ports,
        Some(p("PORT_WS")),
        |broker, websockets| {
            let ctx = |what: &str| format!("{broker:?}: {what}");
            let mqtt = p("PORT_MQTT");
            assert_message(
                roundtrip(&fixture, mqtt, user("alice"), "alice/t"),
                "alice/t",
                &ctx("alice"),
            );
            let wrong = Who {
                user: Some(("alice", "wrong")),
                tls: Tls::No,
            };
            assert!(
                publish(&fixture, mqtt, wrong, "alice/t", "x").is_err(),
                "{}",
                ctx("wrong password")
            );
            assert!(
                publish(&fixture, mqtt, ANONYMOUS, "alice/t", "x").is_err(),
                "{}",
                ctx("anonymous")
            );
            publish(
                &fixture,
                mqtt,
                user("bob"),
                "bob/secret",
                "hello bob/secret",
            )
            .expect("bob");
            assert_eq!(
                receive(&fixture, mqtt, user("alice"), "bob/secret"),
                Seen::Nothing,
                "{}",
                ctx("ACL")
            );
            let tls_alice = Who {
                user: Some(("alice", "alice-pw")),
                tls: Tls::Server,
            };
            assert_message(
                roundtrip(&fixture, p("PORT_TLS"), tls_alice, "sensors/tls"),
                "sensors/tls",
                &ctx("TLS"),
            );
            let device = Who {
                user: None,
                tls: Tls::Client,
            };
            let topic = "devices/device-42/state";
            assert_message(
                roundtrip(&fixture, p("PORT_MTLS"), device, topic),
                topic,
                &ctx("mTLS"),
            );
            assert!(
                matches!(
                    roundtrip(&fixture, p("PORT_MTLS"), tls_alice, "alice/m"),
                    Seen::Refused(_)
                ),
                "{}",
                ctx("mTLS without a client certificate")
            );
            if websockets {
                assert_eq!(
                    websocket_connect(p("PORT_WS"), user("alice")),
                    Ok(0),
                    "{}",
                    ctx("ws alice")
                );
                assert_eq!(
                    websocket_connect(p("PORT_WS"), ANONYMOUS),
                    Ok(5),
                    "{}",
                    ctx("ws anonymous")
                );
            }
        },
    );
}

#[test]
fn per_listener_settings_are_combined_strictly() {
    let fixture = Fixture::prepare("per_listener");
    let (toml, warnings) = fixture.convert();
    fixture.check_config();
    let expected = "mosquitto.conf:2: per_listener_settings: handled differently";
    assert!(warnings.contains(expected), "{warnings}");
    let local = fixture.port("PORT_LOCAL");
    let users = fixture.port("PORT_USERS");
    assert!(
        warnings.contains(&format!(
            "anonymous clients are refused, also on listener {local} 127.0.0.1"
        )),
        "{warnings}"
    );
    assert!(toml.contains("allow_anonymous = false"), "{toml}");
    if !clients_available() {
        return;
    }
    against_both(&fixture, &[local, users], None, |broker, _| {
        let ctx = |what: &str| format!("{broker:?}: {what}");
        assert_message(
            roundtrip(&fixture, users, user("alice"), "alice/u"),
            "alice/u",
            &ctx("alice"),
        );
        assert_message(
            roundtrip(&fixture, local, user("alice"), "alice/l"),
            "alice/l",
            &ctx("alice, local"),
        );
        publish(&fixture, users, user("bob"), "bob/x", "hello bob/x").expect("bob");
        let anonymous = roundtrip(&fixture, local, ANONYMOUS, "local/anon");
        let alice_reads_bob = receive(&fixture, local, user("alice"), "bob/x");
        match broker {
            // Mosquitto: the local listener has neither password file nor ACL.
            Broker::Mosquitto => {
                assert_message(
                    anonymous,
                    "local/anon",
                    &ctx("anonymous on the local listener"),
                );
                assert_eq!(alice_reads_bob, Seen::Message("hello bob/x".into()));
            }
            // Tern, as the warning said: the strictest settings on every listener.
            Broker::Tern => {
                assert!(matches!(anonymous, Seen::Refused(_)), "{anonymous:?}");
                assert_eq!(
                    alice_reads_bob,
                    Seen::Nothing,
                    "the ACL applies on every listener"
                );
            }
        }
    });
}

#[test]
fn persistence_survives_a_restart() {
    let fixture = Fixture::prepare("persistence");
    let (toml, _) = fixture.convert();
    fixture.check_config();
    for expected in [
        "enabled = true".to_string(),
        format!("dir = \"{}/data/\"", fixture.dir.display()),
        "checkpoint_interval_secs = 60".into(),
        "max_session_expiry_secs = 1209600".into(),
        "interval_secs = 30".into(),
    ] {
        assert!(toml.contains(&expected), "{expected:?} in:\n{toml}");
    }
    if !clients_available() {
        return;
    }
    let port = fixture.port("PORT_MQTT");
    let topic = |b: Broker| format!("plant/{b:?}/state");
    let tern = start_tern(&fixture, "tern.toml", &[port]);
    publish(
        &fixture,
        port,
        ANONYMOUS,
        &topic(Broker::Tern),
        "hello before",
    )
    .expect("publish");
    tern.stop();
    let tern = start_tern(&fixture, "tern.toml", &[port]);
    let seen = receive(&fixture, port, ANONYMOUS, &topic(Broker::Tern));
    assert_eq!(
        seen,
        Seen::Message("hello before".into()),
        "retained across a Tern restart"
    );
    tern.stop();
    if let Some(mosquitto) = start_mosquitto(&fixture, &[port], false) {
        publish(
            &fixture,
            port,
            ANONYMOUS,
            &topic(Broker::Mosquitto),
            "hello before",
        )
        .expect("publish");
        mosquitto.stop();
        let mosquitto = start_mosquitto(&fixture, &[port], false).expect("mosquitto");
        let seen = receive(&fixture, port, ANONYMOUS, &topic(Broker::Mosquitto));
        assert_eq!(
            seen,
            Seen::Message("hello before".into()),
            "retained across a Mosquitto restart"
        );
        mosquitto.stop();
    }
}

#[test]
fn a_bridge_becomes_an_mqtt_bridge() {
    let fixture = Fixture::prepare("bridge");
    let (toml, warnings) = fixture.convert();
    // The output is valid for Tern's [[mqtt_bridges]] schema.
    fixture.check_config();
    assert!(
        warnings.contains("mosquitto.conf:10: remote_password: handled differently: bridge `site`"),
        "{warnings}"
    );
    let remote = fixture.port("PORT_REMOTE");
    for expected in [
        "[[mqtt_bridges]]\nname = \"site\"".to_string(),
        format!("remotes = [\"127.0.0.1:{remote}\"]"),
        "protocol = \"3.1.1\"".into(),
        "client_id = \"edge-1\"".into(),
        "clean_start = false".into(),
        "try_private = true".into(),
        "username = \"edge\"".into(),
        "pattern = \"sensors/#\"\ndirection = \"out\"\nqos = 1\nlocal_prefix = \"\"\nremote_prefix = \"plant1/\"".into(),
        "pattern = \"commands/#\"\ndirection = \"in\"\nqos = 1\nlocal_prefix = \"plant1/\"\nremote_prefix = \"\"".into(),
    ] {
        assert!(toml.contains(&expected), "{expected:?} in:\n{toml}");
    }
    assert!(!toml.contains("edge-secret") && !warnings.contains("edge-secret"));
    if !clients_available() {
        return;
    }
    let port = fixture.port("PORT_MQTT");
    against_both(&fixture, &[port], None, |broker, _| {
        let seen = roundtrip(&fixture, port, ANONYMOUS, "sensors/t1");
        assert_message(seen, "sensors/t1", &format!("{broker:?}: local clients"));
    });
}

#[test]
fn include_dir_files_are_read_in_order() {
    let fixture = Fixture::prepare("include_dir");
    let (toml, warnings) = fixture.convert();
    fixture.check_config();
    let conf_d = fixture.path("conf.d");
    let listed = format!(
        "#   {}\n#   {}\n",
        conf_d.join("10-listeners.conf").display(),
        conf_d.join("20-auth.conf").display()
    );
    assert!(toml.contains(&listed), "{toml}");
    assert!(!toml.contains("README"), "{toml}");
    assert!(toml.contains("max_connections = 1000"), "{toml}");
    assert!(
        !warnings.contains("warning:"),
        "every option converts:\n{warnings}"
    );
    if !clients_available() {
        return;
    }
    let port = fixture.port("PORT_MQTT");
    against_both(&fixture, &[port], None, |broker, _| {
        let ctx = |what: &str| format!("{broker:?}: {what}");
        assert_message(
            roundtrip(&fixture, port, user("alice"), "alice/i"),
            "alice/i",
            &ctx("alice"),
        );
        assert!(
            publish(&fixture, port, ANONYMOUS, "alice/i", "x").is_err(),
            "{}",
            ctx("anonymous")
        );
    });
}

#[test]
fn convert_refuses_to_overwrite_its_input_and_names_a_missing_file() {
    let fixture = Fixture::prepare("bridge");
    let conf = fixture.path("mosquitto.conf");
    let before = std::fs::read_to_string(&conf).expect("conf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("convert")
        .arg(&conf)
        .arg("-o")
        .arg(&conf)
        .output()
        .expect("tern convert");
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&conf).expect("conf"),
        before,
        "input untouched"
    );
    let missing = fixture.path("nope.conf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("convert")
        .arg(&missing)
        .output()
        .expect("tern convert");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.conf"));
}
