//! Persistence as a Mosquitto user sees it, through the real `tern` binary and real
//! clients: `mosquitto_sub -c` goes offline, `mosquitto_pub -q 1` sends, the broker is
//! killed with SIGKILL and started again on the same data directory, and the subscriber
//! comes back to every message and the retained one. Skips with a printed reason when the
//! Mosquitto clients are missing (fails under `CI=true`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tern_codec::{Connect, Packet, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};

mod raw_client;
use raw_client::RawClient;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-pm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        let reason = format!("{tool} not found; install mosquitto-clients (.ci/run does)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("required under CI=true: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
    }
    found
}

/// A running `tern`, killed with SIGKILL when dropped.
struct Tern {
    child: Child,
    addr: SocketAddr,
}

impl Tern {
    fn start(config: &Path) -> Tern {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).expect("tern logs `listening`");
            if line.contains("listening") {
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .expect("addr in log");
                break addr.trim_matches('"').parse().expect("parse addr");
            }
        };
        // Keep draining stderr so the broker never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Tern { child, addr }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config for `dir` (persistence on, sync, checkpoints every `checkpoint_secs`).
fn config(dir: &Path, checkpoint_secs: u32) -> PathBuf {
    let config = dir.join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[persistence]\nenabled = true\ndir = \"{}\"\ndurability = \"sync\"\n\
             checkpoint_interval_secs = {checkpoint_secs}\n\n\
             [[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    config
}

/// A raw 5.0 client of `client_id`'s persistent session (Clean Start 0, 300 s expiry).
struct Raw(RawClient);

impl Raw {
    /// Connects; returns Session Present.
    fn connect(addr: SocketAddr, id: &str) -> (Raw, bool) {
        let mut connect = Connect::new(ProtocolVersion::V5, id);
        connect.clean_start = false;
        connect.properties.session_expiry_interval_secs = Some(300);
        let (client, ack) = RawClient::connect(addr, connect);
        assert_eq!(ack.code.0, 0, "{ack:?}");
        (Raw(client), ack.session_present)
    }

    fn send(&mut self, packet: &Packet) {
        self.0.send(packet);
    }

    fn recv(&mut self) -> Option<Packet> {
        self.0.recv()
    }

    fn subscribe(&mut self, filter: &str) {
        self.send(&Packet::Subscribe(Box::new(Subscribe {
            packet_id: tern_codec::PacketId::MIN,
            properties: Default::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
        })));
    }

    fn ack(&mut self, publish: &tern_codec::Publish) {
        let Some(id) = publish.packet_id() else {
            panic!("QoS 1 expected");
        };
        self.send(&Packet::PubAck(tern_codec::PubAck::new(id)));
    }

    /// PINGREQ, and waits for PINGRESP: everything sent before was handled.
    fn ping(&mut self) {
        self.send(&Packet::PingReq);
        match self.recv() {
            Some(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// The next PUBLISH (skipping SUBACK); panics on anything else or a timeout.
    fn expect_publish(&mut self) -> tern_codec::Publish {
        loop {
            match self.recv() {
                Some(Packet::Publish(p)) => return p,
                Some(Packet::SubAck(_)) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
}

fn mosquitto(tool: &str, addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto client");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin");
    }
    drop(input);
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// [MQTT-3.1.2-4] across `kill -9`, with Mosquitto's own clients (3.1.1 and 5.0): a
/// `mosquitto_sub -c` session subscribed and went offline, `mosquitto_pub -q 1` got every
/// PUBACK, the broker was killed with SIGKILL; after the restart the subscriber resumes its
/// session and receives every message, and the retained message is still retained.
#[test]
fn mosquitto_sub_gets_everything_after_kill_9() {
    if !require_tool("mosquitto_sub") || !require_tool("mosquitto_pub") {
        return;
    }
    for version in ["mqttv311", "mqttv5"] {
        let dir = temp_dir(version);
        let config = dir.join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[persistence]\nenabled = true\ndir = \"{}\"\ndurability = \"sync\"\n\n\
                 [[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n[http]\nenabled = false\n",
                dir.join("data").display()
            ),
        )
        .expect("config");
        let tern = Tern::start(&config);
        let sub_args = [
            "-V", version, "-c", "-i", "pm-sub", "-q", "1", "-t", "pm/#", "-x", "300",
        ];
        // Subscribe, then go offline at once (-E: exit once the SUBACK arrived).
        let mut args = sub_args.to_vec();
        args.push("-E");
        mosquitto("mosquitto_sub", tern.addr, &args, None);
        let lines: String = (0..20).map(|i| format!("m{i}\n")).collect();
        mosquitto(
            "mosquitto_pub",
            tern.addr,
            &["-V", version, "-q", "1", "-t", "pm/a", "-l"],
            Some(&lines),
        );
        mosquitto(
            "mosquitto_pub",
            tern.addr,
            &[
                "-V", version, "-q", "1", "-r", "-t", "pm/kept", "-m", "retained",
            ],
            None,
        );
        tern.kill();

        let tern = Tern::start(&config);
        let mut args = sub_args.to_vec();
        args.extend(["-v", "-C", "21", "-W", "10"]);
        let output = mosquitto("mosquitto_sub", tern.addr, &args, None);
        let text = String::from_utf8_lossy(&output.stdout);
        let mut got: Vec<&str> = text.lines().collect();
        got.sort_unstable();
        let mut want: Vec<String> = (0..20).map(|i| format!("pm/a m{i}")).collect();
        want.push("pm/kept retained".into());
        want.sort_unstable();
        assert_eq!(got, want, "{version}: after kill -9");
        tern.kill();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A message body is stored once in the log and records refer to it; a checkpoint lets the
/// log before it go. Here a retained message's body was stored for one subscriber (who got
/// it) and two checkpoints passed; then a new persistent subscriber is sent the retained
/// message (its body's log segment recycled meanwhile) and the broker is killed with
/// SIGKILL. After the restart the new subscriber's
/// session resends it (DUP, without a new SUBSCRIBE): the body was stored again for it, not
/// left behind in recycled log.
#[test]
fn a_body_from_before_a_checkpoint_survives_a_later_reference_and_kill_9() {
    if !require_tool("mosquitto_sub") || !require_tool("mosquitto_pub") {
        return;
    }
    let dir = temp_dir("body");
    let config = config(&dir, 1);
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "[persistence]\n",
        "[persistence]\nsegment_bytes = 1048576\n",
    );
    std::fs::write(&config, text).expect("config");
    let tern = Tern::start(&config);
    mosquitto(
        "mosquitto_pub",
        tern.addr,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            "body/r",
            "-m",
            "kept-body",
        ],
        None,
    );
    // A persistent session is sent the retained message (its body is stored then) and
    // acknowledges it: nothing refers to the body any more.
    let (mut a, _) = Raw::connect(tern.addr, "body-a");
    a.subscribe("body/r");
    let publish = a.expect_publish();
    assert_eq!(publish.payload(), b"kept-body");
    a.ack(&publish);
    a.ping();
    drop(a);
    // More than a segment (1 MiB) of other records, queued for a third session, so that
    // the body's segment is closed; then two checkpoints, after which it is recycled.
    let sub_c = [
        "-V", "mqttv5", "-c", "-i", "body-c", "-q", "1", "-t", "filler", "-x", "300", "-E",
    ];
    mosquitto("mosquitto_sub", tern.addr, &sub_c, None);
    let filler = "f".repeat(400_000);
    for _ in 0..4 {
        mosquitto(
            "mosquitto_pub",
            tern.addr,
            &["-V", "mqttv5", "-q", "1", "-t", "filler", "-s"],
            Some(&filler),
        );
    }
    std::thread::sleep(Duration::from_millis(2600));
    let (mut b, _) = Raw::connect(tern.addr, "body-b");
    b.subscribe("body/r");
    let first = b.expect_publish();
    assert_eq!(first.payload(), b"kept-body");
    drop(b); // not acknowledged
    tern.kill();

    let tern = Tern::start(&config);
    let (mut b, present) = Raw::connect(tern.addr, "body-b");
    assert!(present, "the session survived");
    let again = b.expect_publish();
    assert_eq!(again.payload(), b"kept-body");
    assert!(
        again.dup,
        "resent from the session, not a new retained delivery"
    );
    tern.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
