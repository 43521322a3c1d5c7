//! The `tern` binary as an operator runs it: `tern check-config` (exit 0 or 1 with the
//! file, key and reason), SIGHUP reload of the password file, limits and log level while
//! clients stay connected, a bad reload keeping the old configuration, and SIGTERM ending
//! with exit status 0.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tern_codec::{
    ConnAck, Connect, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};

mod raw_client;
use raw_client::RawClient;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn check_config(path: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_config_accepts_valid_and_names_what_is_wrong() {
    let d = dir("check");
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1883\"\n",
    )
    .expect("write");
    let (ok, text) = check_config(&good);
    assert!(ok, "{text}");

    for (name, body, expect) in [
        (
            "unknown.toml",
            "[limits]\nmax_conections = 5\n",
            "max_conections",
        ),
        (
            "range.toml",
            "[limits]\nreceive_maximum = 0\n",
            "limits.receive_maximum",
        ),
        (
            "type.toml",
            "[limits]\nmax_connections = \"many\"\n",
            "max_connections",
        ),
        ("syntax.toml", "[limits\n", "syntax.toml"),
        (
            "tls.toml",
            "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\n",
            "cert_file",
        ),
        (
            "kind.toml",
            "[[listeners]]\nkind = \"quic\"\nbind = \"127.0.0.1:1\"\n",
            "quic",
        ),
        (
            "passwd.toml",
            "[auth]\npassword_file = \"/nonexistent/passwd\"\n",
            "/nonexistent/passwd",
        ),
        ("level.toml", "[log]\nlevel = \"loud=[\"\n", "log.level"),
        (
            "bridge_key.toml",
            "[[mqtt_bridges]]\nname = \"cloud\"\nremotes = [\"127.0.0.1:1884\"]\n\
             client_id = \"e\"\n[[mqtt_bridges.topics]]\npattern = \"a/#\"\nqos = 3\n",
            "mqtt_bridges `cloud`: key `topics.qos`",
        ),
        (
            "bridge_unknown.toml",
            "[[mqtt_bridges]]\nname = \"cloud\"\nremots = [\"127.0.0.1:1884\"]\n\
             client_id = \"e\"\n[[mqtt_bridges.topics]]\npattern = \"a/#\"\n",
            "mqtt_bridges `cloud`: unknown field `remots`",
        ),
        (
            "bridge_tls.toml",
            "[[mqtt_bridges]]\nname = \"cloud\"\nremotes = [\"127.0.0.1:1884\"]\n\
             client_id = \"e\"\n[mqtt_bridges.tls]\nca_file = \"/nonexistent/ca.pem\"\n\
             [[mqtt_bridges.topics]]\npattern = \"a/#\"\n",
            "mqtt_bridges `cloud`: tls: /nonexistent/ca.pem",
        ),
    ] {
        let path = d.join(name);
        std::fs::write(&path, body).expect("write");
        let (ok, text) = check_config(&path);
        assert!(!ok, "{name} must be rejected");
        assert!(
            text.contains(expect),
            "{name}: expected {expect:?} in: {text}"
        );
        assert!(
            text.contains(name),
            "{name}: the message names the file: {text}"
        );
    }
}

#[test]
fn environment_overrides_the_file() {
    let d = dir("env");
    let good = d.join("good.toml");
    std::fs::write(&good, "[limits]\nreceive_maximum = 10\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("check-config")
        .arg(&good)
        .env("TERN__LIMITS__RECEIVE_MAXIMUM", "0")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "TERN__LIMITS__RECEIVE_MAXIMUM=0 must override the file"
    );
    assert!(text.contains("limits.receive_maximum"), "{text}");
}

/// A running `tern` with its stderr lines forwarded to a channel.
struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Broker {
    fn start(config: &Path) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("--config")
            .arg(config)
            // The default data directory (tern-data/) lands next to the config, in a temp
            // directory, never in the checkout.
            .current_dir(config.parent().expect("config in a directory"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut broker = Broker {
            child,
            lines,
            addr: "0.0.0.0:0".parse().expect("addr"),
        };
        let line = broker.wait_for("listening");
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("addr in log");
        broker.addr = addr.trim_matches('"').parse().expect("parse addr");
        broker
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects `id` as `user` with `password`.
fn login(addr: SocketAddr, id: &str, user: &str, password: &str) -> (RawClient, ConnAck) {
    let mut connect = Connect::new(ProtocolVersion::V5, id);
    connect.username = Some(user.into());
    connect.password = Some(password.as_bytes().to_vec().into());
    RawClient::connect(addr, connect)
}

fn write_password_file(tern_passwd: &Path, users: &[(&str, &str)]) {
    let _ = std::fs::remove_file(tern_passwd);
    for (user, password) in users {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("passwd")
            .arg(tern_passwd)
            .arg(user)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("tern passwd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("pw");
        assert!(child.wait().expect("wait").success());
    }
}

#[test]
fn sighup_reloads_passwords_limits_and_log_level_without_dropping_clients() {
    let d = dir("reload");
    let passwd = d.join("passwd");
    write_password_file(&passwd, &[("alice", "a-secret")]);
    let config = d.join("tern.toml");
    let body = |level: &str, max_subs: u32| {
        format!(
            "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[http]\nenabled = false\nbind = \"127.0.0.1:0\"\n\
             [auth]\nallow_anonymous = false\npassword_file = \"{}\"\n[limits]\nmax_subscriptions_per_client = {max_subs}\n\
             [log]\nlevel = \"{level}\"\n",
            passwd.display()
        )
    };
    std::fs::write(&config, body("info", 10)).expect("config");
    let mut broker = Broker::start(&config);

    let (mut alice, connack) = login(broker.addr, "alice-1", "alice", "a-secret");
    assert_eq!(connack.code.0, 0);
    let subscribe = Subscribe {
        packet_id: 1.try_into().expect("id"),
        properties: Default::default(),
        filters: vec![(
            "news/#".into(),
            SubscriptionOptions::with_qos(QoS::AtMostOnce),
        )],
    };
    alice.send(&Packet::Subscribe(Box::new(subscribe)));
    assert!(matches!(alice.recv(), Some(Packet::SubAck(_))));
    let (_, refused) = login(broker.addr, "bob-0", "bob", "b-secret");
    assert_eq!(refused.code.0, 0x86, "bob is not in the file yet");

    // Add bob, lower a limit, turn on debug logging; reload.
    write_password_file(&passwd, &[("alice", "a-secret"), ("bob", "b-secret")]);
    std::fs::write(&config, body("debug", 1)).expect("config");
    broker.signal("HUP");
    broker.wait_for("configuration reloaded");

    let (mut bob, connack) = login(broker.addr, "bob-1", "bob", "b-secret");
    assert_eq!(connack.code.0, 0, "bob authenticates after the reload");
    broker.wait_for("DEBUG"); // the new log level is in force
                              // Alice was never dropped: bob's message reaches her.
    bob.send(&Packet::Publish(Publish::new(
        "news/today",
        b"hello".to_vec(),
    )));
    match alice.recv() {
        Some(Packet::Publish(p)) => assert_eq!(p.payload(), b"hello"),
        other => panic!("alice expected the message, got {other:?}"),
    }
    // The new limit applies to new connections: bob may hold one subscription only.
    let two = Subscribe {
        packet_id: 2.try_into().expect("id"),
        properties: Default::default(),
        filters: vec![
            ("a".into(), SubscriptionOptions::with_qos(QoS::AtMostOnce)),
            ("b".into(), SubscriptionOptions::with_qos(QoS::AtMostOnce)),
        ],
    };
    bob.send(&Packet::Subscribe(Box::new(two)));
    match bob.recv() {
        Some(Packet::SubAck(suback)) => assert_eq!(
            suback.reason_codes.iter().map(|c| c.0).collect::<Vec<_>>(),
            [0, 0x97]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // An invalid file is refused and the old configuration stays.
    std::fs::write(&config, "[limits]\nmax_conections = 1\n").expect("config");
    broker.signal("HUP");
    broker.wait_for("reload failed");
    let (_, connack) = login(broker.addr, "bob-2", "bob", "b-secret");
    assert_eq!(connack.code.0, 0, "still the reloaded password file");

    // SIGTERM: DISCONNECT 0x8B to 5.0 clients, exit status 0.
    broker.signal("TERM");
    match alice.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x8B),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let status = broker.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
}
