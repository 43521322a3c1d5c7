//! Authentication and authorisation: password files (including one written by the real
//! `mosquitto_passwd`), anonymous access, and Mosquitto-syntax ACLs applied to SUBSCRIBE,
//! PUBLISH, live delivery and retained messages, in MQTT 3.1.1 and 5.0.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_broker::auth::password;
use tern_codec::{
    Connect, LastWill, Packet, ProtocolVersion, PubRel, Publish, PublishQoS, QoS, ReasonCode,
};
use tern_tests::{require_tool, test_config, Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const QUIET: Duration = Duration::from_millis(300);

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn connect_packet(
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    pass: Option<&str>,
) -> Connect {
    let mut connect = Connect::new(version, id);
    connect.username = user.map(Into::into);
    connect.password = pass.map(|p| p.as_bytes().to_vec().into());
    connect
}

/// Connects and returns the client and the CONNACK code as sent on the wire.
async fn try_connect(
    broker: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    pass: Option<&str>,
) -> (Client, u8) {
    let mut client = broker.raw(version).await;
    let connack = client
        .connect(connect_packet(version, id, user, pass))
        .await;
    (client, connack.code.0)
}

/// A connected client, or a failed test.
async fn login(
    broker: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
) -> Client {
    let (client, code) = try_connect(broker, version, id, user, None).await;
    assert_eq!(code, 0, "{id} ({user:?}) refused");
    client
}

fn both_versions() -> [ProtocolVersion; 2] {
    [V5, V3]
}

fn bad_credentials(version: ProtocolVersion) -> u8 {
    if version.is_v5() {
        0x86
    } else {
        0x04
    }
}

fn not_authorized(version: ProtocolVersion) -> u8 {
    if version.is_v5() {
        0x87
    } else {
        0x05
    }
}

fn auth_failures(broker: &TestBroker) -> u64 {
    broker
        .broker()
        .metrics()
        .auth_failures
        .load(Ordering::Relaxed)
}

async fn check_logins(broker: &TestBroker, users: &[(&str, &str)]) {
    for version in both_versions() {
        for (user, pass) in users {
            let (client, code) = try_connect(broker, version, "c", Some(user), Some(pass)).await;
            assert_eq!(code, 0, "{version:?}: {user} refused");
            client.disconnect().await;
            let wrong = format!("{pass}x");
            let (_, code) = try_connect(broker, version, "c", Some(user), Some(&wrong)).await;
            assert_eq!(
                code,
                bad_credentials(version),
                "{version:?}: {user} wrong password"
            );
            let (_, code) = try_connect(broker, version, "c", Some(user), None).await;
            assert_eq!(
                code,
                bad_credentials(version),
                "{version:?}: {user} no password"
            );
        }
        let (_, code) = try_connect(broker, version, "c", Some("nobody"), Some("x")).await;
        assert_eq!(code, bad_credentials(version), "{version:?}: unknown user");
        let (_, code) = try_connect(broker, version, "c", None, None).await;
        assert_eq!(code, not_authorized(version), "{version:?}: anonymous");
    }
}

async fn start_with_passwords(file: &Path) -> TestBroker {
    let file = file.to_path_buf();
    TestBroker::start_with(move |cfg| {
        cfg.auth.allow_anonymous = false;
        cfg.auth.password_file = file;
    })
    .await
}

#[tokio::test]
async fn mosquitto_passwd_file_authenticates() {
    if !require_tool("mosquitto_passwd") {
        return;
    }
    let dir = temp_dir("mosq");
    let file = dir.join("passwd");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("mosquitto_passwd")
            .args(args)
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd {args:?}");
    };
    let f = file.to_str().expect("utf-8 path");
    // Mosquitto 2.x's default ($7$, PBKDF2-SHA512) and its older SHA-512 ($6$).
    run(&["-c", "-b", f, "alice", "s3cret pass"]);
    run(&["-H", "sha512", "-b", f, "bob", "hunter2"]);
    // And one Argon2id line added by Tern to the same file.
    let carol = password::hash_argon2id(b"carol-pw").expect("hash");
    password::write_entry(&file, "carol", &carol).expect("write");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");
    assert!(text.contains("carol:$argon2id$"), "{text}");

    let broker = start_with_passwords(&file).await;
    let before = auth_failures(&broker);
    check_logins(
        &broker,
        &[
            ("alice", "s3cret pass"),
            ("bob", "hunter2"),
            ("carol", "carol-pw"),
        ],
    )
    .await;
    // Per version: 3 users x 2 failures, unknown user, anonymous.
    assert_eq!(auth_failures(&broker) - before, 2 * (3 * 2 + 2));
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn hash_lines_written_here_authenticate() {
    // The same formats without mosquitto_passwd: $6$ and $7$ lines made with known salts,
    // an Argon2id line, in a file with a comment and a blank line.
    let dir = temp_dir("lines");
    let file = dir.join("passwd");
    let text = format!(
        "# users\n\nsix:{}\nseven:{}\nargon:{}\n",
        password::encode_sha512(b"pw6", b"twelve bytes"),
        password::encode_pbkdf2(b"pw7", b"twelve bytes", 1000),
        password::hash_argon2id(b"pwA").expect("hash"),
    );
    std::fs::write(&file, text).expect("write");
    let broker = start_with_passwords(&file).await;
    check_logins(
        &broker,
        &[("six", "pw6"), ("seven", "pw7"), ("argon", "pwA")],
    )
    .await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn anonymous_allowed_by_default_and_usernames_unchecked_without_file() {
    let broker = TestBroker::start().await;
    for version in both_versions() {
        let (_, code) = try_connect(&broker, version, "a", None, None).await;
        assert_eq!(code, 0);
        let (_, code) = try_connect(&broker, version, "b", Some("anyone"), Some("x")).await;
        assert_eq!(code, 0);
    }
    broker.running.stop().await;

    // allow_anonymous = false with no password file: nobody can be verified.
    let broker = TestBroker::start_with(|cfg| cfg.auth.allow_anonymous = false).await;
    for version in both_versions() {
        let (_, code) = try_connect(&broker, version, "a", None, None).await;
        assert_eq!(code, not_authorized(version));
        let (_, code) = try_connect(&broker, version, "b", Some("anyone"), Some("x")).await;
        assert_eq!(code, bad_credentials(version));
    }
    broker.running.stop().await;
}

#[tokio::test]
async fn bad_files_stop_the_start_with_file_and_line() {
    let dir = temp_dir("bad");
    let pw = dir.join("passwd");
    std::fs::write(&pw, "# ok\nalice:plaintext\n").expect("write");
    let mut config = test_config();
    config.auth.password_file = pw.clone();
    let err = tern_broker::server::start(config)
        .await
        .expect_err("must not start")
        .to_string();
    assert!(err.contains(&format!("{}:2:", pw.display())), "{err}");

    let acl = dir.join("acl");
    std::fs::write(&acl, "user a\ntopic readonly x\n").expect("write");
    let mut config = test_config();
    config.auth.acl_file = acl.clone();
    let err = tern_broker::server::start(config)
        .await
        .expect_err("must not start")
        .to_string();
    assert!(err.contains(&format!("{}:2:", acl.display())), "{err}");
    assert!(err.contains("readonly"), "{err}");

    let mut config = test_config();
    config.auth.acl_file = dir.join("missing");
    let err = tern_broker::server::start(config)
        .await
        .expect_err("must not start")
        .to_string();
    assert!(
        err.contains("missing") && err.contains("cannot read"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

const ACL: &str = "\
# Anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret

user spy
topic read #

user writer
topic write #

# Everybody
pattern readwrite clients/%c/#
pattern read inbox/%u/#
";

async fn start_with_acl() -> (TestBroker, PathBuf) {
    let dir = temp_dir(&format!("acl-{}", rand_suffix()));
    let file = dir.join("acl");
    std::fs::write(&file, ACL).expect("write");
    let acl = file.clone();
    let broker = TestBroker::start_with(move |cfg| cfg.auth.acl_file = acl).await;
    (broker, dir)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn suback_code(version: ProtocolVersion, granted: Option<QoS>) -> u8 {
    match granted {
        Some(qos) => qos as u8,
        None if version.is_v5() => 0x87,
        None => 0x80,
    }
}

#[tokio::test]
async fn subscribe_refused_where_nothing_is_readable() {
    let (broker, dir) = start_with_acl().await;
    for version in both_versions() {
        let mut alice = login(&broker, version, "alice-c", Some("alice")).await;
        for (filter, granted) in [
            ("alice/#", Some(QoS::AtLeastOnce)),
            ("alice/x/+", Some(QoS::AtLeastOnce)),
            ("alice/secret", None),
            ("bob/#", None),
            ("public/#", None),
            ("inbox/alice/#", Some(QoS::AtLeastOnce)),
            ("inbox/bob/#", None),
            ("clients/alice-c/#", Some(QoS::AtLeastOnce)),
            ("$SYS/#", None),
            ("#", Some(QoS::AtLeastOnce)),
        ] {
            let suback = alice.subscribe(filter, QoS::AtLeastOnce).await;
            assert_eq!(
                suback.reason_codes.iter().map(|c| c.0).collect::<Vec<_>>(),
                vec![suback_code(version, granted)],
                "{version:?} {filter}"
            );
        }
        let mut anon = login(&broker, version, "anon", None).await;
        assert_eq!(
            anon.subscribe("public/news", QoS::AtMostOnce)
                .await
                .reason_codes[0]
                .0,
            0
        );
        assert_eq!(
            anon.subscribe("inbox/anon/#", QoS::AtMostOnce)
                .await
                .reason_codes[0]
                .0,
            suback_code(version, None),
            "%u patterns do not apply to anonymous clients"
        );
        alice.disconnect().await;
        anon.disconnect().await;
    }
    assert!(broker.broker().metrics().acl_denied.load(Ordering::Relaxed) > 0);
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn publish_refused_v5_with_0x87_and_dropped() {
    let (broker, dir) = start_with_acl().await;
    let mut spy = login(&broker, V5, "spy-c", Some("spy")).await;
    spy.subscribe("#", QoS::AtLeastOnce).await;
    let mut alice = login(&broker, V5, "alice-c", Some("alice")).await;

    // QoS 1 and 2 are told; QoS 0 is dropped silently.
    assert_eq!(
        alice
            .publish("public/x", b"1", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    let id = alice.next_packet_id();
    let mut publish = Publish::new("alice/secret", b"2".to_vec());
    publish.set_qos(PublishQoS::ExactlyOnce(id));
    alice.send(&Packet::Publish(publish)).await;
    match alice.recv().await {
        Packet::PubRec(rec) => {
            assert_eq!(rec.packet_id, id);
            assert_eq!(rec.reason_code, ReasonCode::NOT_AUTHORIZED);
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    alice
        .publish("public/y", b"3", QoS::AtMostOnce, false)
        .await;
    // Allowed: delivered, and the only thing the spy sees.
    assert_eq!(
        alice
            .publish("alice/ok", b"4", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::SUCCESS)
    );
    let got = spy.expect_publish_acked().await;
    assert_eq!(got.topic(), "alice/ok");
    spy.expect_nothing(QUIET).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn publish_refused_v3_is_acked_and_dropped() {
    let (broker, dir) = start_with_acl().await;
    let mut spy = login(&broker, V3, "spy-c", Some("spy")).await;
    spy.subscribe("#", QoS::AtLeastOnce).await;
    let mut alice = login(&broker, V3, "alice-c", Some("alice")).await;
    // 3.1.1 cannot refuse a PUBLISH: acknowledged normally, not routed.
    assert_eq!(
        alice
            .publish("public/x", b"1", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::SUCCESS)
    );
    // QoS 2: the whole flow completes (PUBREC, PUBREL, PUBCOMP) as usual.
    assert_eq!(
        alice
            .publish("alice/secret", b"2", QoS::ExactlyOnce, false)
            .await,
        Some(ReasonCode::SUCCESS)
    );
    alice
        .publish("public/y", b"3", QoS::AtMostOnce, false)
        .await;
    alice
        .publish("alice/ok", b"4", QoS::AtMostOnce, false)
        .await;
    let got = spy.expect_publish_acked().await;
    assert_eq!(got.topic(), "alice/ok");
    spy.expect_nothing(QUIET).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn read_denied_topics_not_delivered_through_wildcards() {
    let (broker, dir) = start_with_acl().await;
    for version in both_versions() {
        let mut alice = login(&broker, version, "alice-c", Some("alice")).await;
        // Granted (alice/ is hers) but alice/secret is denied: checked per message.
        assert_eq!(
            alice
                .subscribe("alice/#", QoS::AtMostOnce)
                .await
                .reason_codes[0]
                .0,
            0
        );
        // Granted for the part she may read (clients/alice-c/...), filtered for the rest.
        assert_eq!(
            alice
                .subscribe("clients/+/up", QoS::AtMostOnce)
                .await
                .reason_codes[0]
                .0,
            0
        );
        let mut writer = login(&broker, version, "w", Some("writer")).await;
        for topic in [
            "alice/secret",
            "alice/a",
            "clients/other/up",
            "clients/alice-c/up",
        ] {
            writer
                .publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false)
                .await;
        }
        assert_eq!(alice.expect_publish().await.topic(), "alice/a");
        assert_eq!(alice.expect_publish().await.topic(), "clients/alice-c/up");
        alice.expect_nothing(QUIET).await;
        alice.disconnect().await;
        writer.disconnect().await;
    }
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn retained_messages_checked_on_subscribe() {
    let (broker, dir) = start_with_acl().await;
    let mut writer = login(&broker, V5, "w", Some("writer")).await;
    for topic in ["alice/secret", "alice/pub"] {
        writer
            .publish(topic, topic.as_bytes(), QoS::AtLeastOnce, true)
            .await;
    }
    for version in both_versions() {
        let mut alice = login(&broker, version, "alice-c", Some("alice")).await;
        alice.subscribe("alice/#", QoS::AtMostOnce).await;
        let got = alice.expect_publish().await;
        assert_eq!(got.topic(), "alice/pub");
        assert!(got.retain);
        alice.expect_nothing(QUIET).await;
        alice.disconnect().await;
    }
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn patterns_substitute_client_id_and_username() {
    let (broker, dir) = start_with_acl().await;
    let mut spy = login(&broker, V5, "spy-c", Some("spy")).await;
    spy.subscribe("clients/#", QoS::AtLeastOnce).await;
    // %c: an anonymous client writes under its own client id only.
    let mut dev = login(&broker, V5, "dev1", None).await;
    assert_eq!(
        dev.publish("clients/dev1/up", b"x", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(
        dev.publish("clients/dev2/up", b"x", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    assert_eq!(spy.expect_publish_acked().await.topic(), "clients/dev1/up");
    spy.expect_nothing(QUIET).await;
    // A client id with a wildcard character gets nothing from the patterns.
    let mut bad = login(&broker, V5, "dev+", None).await;
    assert_eq!(
        bad.subscribe("clients/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0x87
    );
    assert_eq!(
        bad.publish("clients/x/up", b"x", QoS::AtLeastOnce, false)
            .await,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    // %u: alice reads her inbox, not bob's.
    let mut alice = login(&broker, V3, "a1", Some("alice")).await;
    assert_eq!(
        alice
            .subscribe("inbox/alice/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0
    );
    assert_eq!(
        alice
            .subscribe("inbox/bob/#", QoS::AtMostOnce)
            .await
            .reason_codes[0]
            .0,
        0x80
    );
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn will_to_a_forbidden_topic_is_dropped() {
    let (broker, dir) = start_with_acl().await;
    let mut spy = login(&broker, V5, "spy-c", Some("spy")).await;
    spy.subscribe("#", QoS::AtMostOnce).await;
    for (id, topic, delivered) in [
        ("c1", "public/will", false),
        ("c2", "clients/c2/will", true),
    ] {
        let mut client = broker.raw(V5).await;
        let mut connect = connect_packet(V5, id, None, None);
        connect.will = Some(LastWill {
            topic: topic.into(),
            payload: b"gone".to_vec().into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        // Accepted, as Mosquitto does; only the will is dropped.
        assert_eq!(client.connect(connect).await.code.0, 0);
        drop(client);
        if delivered {
            assert_eq!(spy.expect_publish().await.topic(), topic);
        } else {
            spy.expect_nothing(QUIET).await;
        }
    }
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn resumed_session_gets_the_new_users_acl() {
    let (broker, dir) = start_with_acl().await;
    let mut connect = connect_packet(V5, "shared-id", Some("spy"), None);
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(60);
    let mut first = broker.raw(V5).await;
    assert_eq!(first.connect(connect.clone()).await.code.0, 0);
    first.subscribe("#", QoS::AtMostOnce).await;
    first.disconnect().await;
    // The same client id comes back as alice: the spy's "#" must not show her alice/secret.
    connect.username = Some("alice".into());
    let mut second = broker.raw(V5).await;
    let connack = second.connect(connect).await;
    assert!(connack.session_present);
    let mut writer = login(&broker, V5, "w", Some("writer")).await;
    writer
        .publish("alice/secret", b"s", QoS::AtLeastOnce, false)
        .await;
    writer
        .publish("public/x", b"p", QoS::AtLeastOnce, false)
        .await;
    writer
        .publish("alice/ok", b"o", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(second.expect_publish().await.topic(), "alice/ok");
    second.expect_nothing(QUIET).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// One rule for acknowledging a PUBLISH the ACL refuses, as for any refused PUBLISH: 5.0
// PUBACK/PUBREC 0x87 and the QoS 2 exchange over ([MQTT-4.3.3-9]); 3.1.1 acknowledged as
// received ([MQTT-3.3.5-2]), the QoS 2 id kept until PUBREL.
#[tokio::test]
async fn publish_refused_by_acl_acknowledged_per_version_mqtt_4_3_3_9() {
    let (broker, dir) = start_with_acl().await;
    for version in both_versions() {
        let client_id = format!("alice-{version:?}");
        let mut alice = login(&broker, version, &client_id, Some("alice")).await;
        tern_tests::check_refused_publish_acks(
            broker.broker(),
            &mut alice,
            &client_id,
            "public/x",
            ReasonCode::NOT_AUTHORIZED,
        )
        .await;
        alice.ping().await;
        alice.disconnect().await;
    }
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn qos2_pubrel_after_refused_v5_pubrec_is_harmless() {
    // A 5.0 client that sends PUBREL anyway gets PUBCOMP 0x92 and stays connected.
    let (broker, dir) = start_with_acl().await;
    let mut alice = login(&broker, V5, "alice-c", Some("alice")).await;
    let id = alice.next_packet_id();
    let mut publish = Publish::new("public/x", b"2".to_vec());
    publish.set_qos(PublishQoS::ExactlyOnce(id));
    alice.send(&Packet::Publish(publish)).await;
    assert!(matches!(alice.recv().await, Packet::PubRec(r) if r.reason_code.0 == 0x87));
    alice.send(&Packet::PubRel(PubRel::new(id))).await;
    assert!(matches!(alice.recv().await, Packet::PubComp(c) if c.reason_code.0 == 0x92));
    alice.ping().await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The `tern` binary next to the test binaries, if it was built (by `cargo test
/// --workspace` or `cargo build`) and knows `passwd`.
fn tern_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("tern");
    let help = std::process::Command::new(&bin)
        .args(["passwd", "--help"])
        .output()
        .ok()?;
    help.status.success().then_some(bin)
}

#[tokio::test]
async fn tern_passwd_cli_writes_a_working_file() {
    // broker/tests/passwd_cli.rs always runs the CLI (CARGO_BIN_EXE_tern); this one adds a
    // broker login with the file it writes. This crate cannot ask Cargo for another
    // package's binary: `cargo test --workspace` (CI) builds it, a local
    // `cargo test -p tern-tests` may not, so it skips locally and fails under CI=true.
    let Some(bin) = tern_binary() else {
        tern_tests::skip_unless_ci(
            "target/debug/tern missing or stale; run `cargo build -p tern-broker`",
        );
        return;
    };
    let dir = temp_dir("cli");
    let file = dir.join("passwd");
    let run = |user: &str, pass: &str, extra: &[&str]| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&bin)
            .arg("passwd")
            .arg(&file)
            .arg(user)
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn tern passwd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{pass}\n").as_bytes())
            .expect("write password");
        assert!(child.wait().expect("wait").success(), "tern passwd {user}");
    };
    run("dave", "first", &[]);
    run("erin", "mosq-compatible", &["--pbkdf2"]);
    run("dave", "second", &[]);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("dave:$argon2id$"), "{text}");
    assert!(text.contains("\nerin:$7$101$"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let broker = start_with_passwords(&file).await;
    check_logins(&broker, &[("dave", "second"), ("erin", "mosq-compatible")]).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
