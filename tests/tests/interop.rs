//! Interop with real MQTT clients started as processes against an in-process broker:
//! `mosquitto_pub`/`mosquitto_sub` (3.1.1 and 5.0), Python paho-mqtt (5.0 properties, 3.1.1),
//! MQTT.js (protocol 5 and 4). The client programs live in `tests/interop/` and exit 0 only
//! when every check passed. A missing tool skips with a printed reason, or fails under
//! `CI=true`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_tests::{require_tool, TestBroker};

/// Upper bound for one client program (they bound themselves at 20 s).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

async fn run_program(program: &str, args: &[&str]) {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(interop_dir())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PROGRAM_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {PROGRAM_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

fn python_has_paho() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 paho-mqtt is required under CI=true (.ci/run installs it)");
        }
        eprintln!("SKIPPED: python3 module paho-mqtt not installed (pip install paho-mqtt)");
    }
    ok
}

fn mqttjs_installed() -> bool {
    let ok = interop_dir().join("node_modules/mqtt").is_dir();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("MQTT.js is required under CI=true (.ci/run runs npm ci in tests/interop)");
        }
        eprintln!("SKIPPED: MQTT.js not installed (run `npm ci` in tests/interop)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_v311_and_v5() {
    if !require_tool("mosquitto_pub") || !require_tool("mosquitto_sub") {
        return;
    }
    let broker = TestBroker::start().await;
    let port = broker.addr.port().to_string();
    run_program("bash", &["mosquitto_clients.sh", "127.0.0.1", &port]).await;
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_v5_properties_and_v311() {
    if !require_tool("python3") || !python_has_paho() {
        return;
    }
    let broker = TestBroker::start().await;
    let port = broker.addr.port().to_string();
    run_program("python3", &["paho_v5.py", "127.0.0.1", &port]).await;
    broker.running.stop().await;
}

// Issue #13 as a real client sees it (paho-mqtt, `paho_mqtt5_features.py`): Response
// Information when requested ([MQTT-3.1.2-28]) with request/response through it, the
// capabilities in CONNACK ([MQTT-3.2.2-9]) with SUBACK 0xA2, and CONNACK 0x9C with a
// Server Reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_mqtt5_features_response_capabilities_redirect() {
    if !require_tool("python3") || !python_has_paho() {
        return;
    }
    type Change = fn(&mut tern_broker::Config);
    let cases: [(&str, Change); 3] = [
        ("response", |_| {}),
        ("capabilities", |c| {
            c.mqtt.maximum_qos = 1;
            c.mqtt.retain_available = false;
            c.mqtt.wildcard_subscription_available = false;
        }),
        ("redirect", |c| {
            c.mqtt.redirect = tern_broker::config::Redirect::UseAnotherServer;
            c.mqtt.server_reference = "other.example:1883".into();
        }),
    ];
    for (mode, change) in cases {
        let broker = TestBroker::start_with(change).await;
        let port = broker.addr.port().to_string();
        run_program(
            "python3",
            &["paho_mqtt5_features.py", "127.0.0.1", &port, mode],
        )
        .await;
        broker.running.stop().await;
    }
}

// [MQTT-3.14.4-2] as a real client sees it: paho-mqtt sends QoS 2 PUBLISH past the
// broker's Receive Maximum (it does not apply it) and is still writing when the broker
// sends DISCONNECT 0x93 and closes; paho must report 0x93, not a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_reads_disconnect_0x93_mqtt_3_14_4_2() {
    if !require_tool("python3") || !python_has_paho() {
        return;
    }
    let broker = TestBroker::start_with(|c| c.limits.receive_maximum = 2).await;
    let port = broker.addr.port().to_string();
    run_program("python3", &["paho_receive_maximum.py", "127.0.0.1", &port]).await;
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_v5_and_v4() {
    if !require_tool("node") || !mqttjs_installed() {
        return;
    }
    let broker = TestBroker::start().await;
    let port = broker.addr.port().to_string();
    run_program("node", &["mqttjs_v5.js", "127.0.0.1", &port]).await;
    broker.running.stop().await;
}

/// A password file with SCRAM-SHA-256 credentials for `alice` / `wonderland`.
fn scram_password_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-interop-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    let alice =
        tern_broker::auth::scram::ScramCredentials::derive(b"wonderland", b"interop-salt", 4096);
    std::fs::write(&file, format!("alice:{}\n", alice.encode())).expect("write");
    file
}

// Enhanced authentication as MQTT.js does it (`handleAuth`, `mqttjs_scram.js`, SCRAM
// computed with node's crypto): [MQTT-4.12.0-2] AUTH 0x18, [MQTT-4.12.0-5] CONNACK with
// the method and a server signature the client verifies, and 0x86 for a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_scram_sha_256_enhanced_auth_mqtt_4_12_0_2_and_5() {
    if !require_tool("node") || !mqttjs_installed() {
        return;
    }
    let file = scram_password_file("mqttjs-scram");
    let broker = TestBroker::start_with(|c| {
        c.auth.password_file = file;
        c.auth.allow_anonymous = false;
    })
    .await;
    let port = broker.addr.port().to_string();
    run_program(
        "node",
        &["mqttjs_scram.js", "127.0.0.1", &port, "alice", "wonderland"],
    )
    .await;
    broker.running.stop().await;
}

// mosquitto_sub sends Request Response Information (`-D connect
// request-response-information 1`) and, under an ACL file that grants it nothing else,
// subscribes to the response prefix the broker hands out (`reply/{client_id}/`) and gets
// what another client publishes there. (mosquitto_sub cannot print CONNACK properties; the
// raw-packet and paho tests check the Response Information itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_request_response_information_under_acl() {
    if !require_tool("mosquitto_sub") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tern-interop-rr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic read nothing/#\n").expect("acl");
    let broker = TestBroker::start_with(|c| c.auth.acl_file = acl).await;
    let port = broker.addr.port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "rr-mosq",
        ])
        .args(["-D", "connect", "request-response-information", "1"])
        .args(["-t", "reply/rr-mosq/#", "-C", "1", "-W", "15", "-q", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    let mut responder = broker
        .client(tern_codec::ProtocolVersion::V5, "responder")
        .await;
    let output = async {
        loop {
            // Until the subscription is in place: QoS 1 tells whether anyone got it.
            let code = responder
                .publish(
                    "reply/rr-mosq/answer",
                    b"42",
                    tern_codec::QoS::AtLeastOnce,
                    false,
                )
                .await;
            if code == Some(tern_codec::ReasonCode::SUCCESS) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sub.wait_with_output().await.expect("mosquitto_sub output")
    };
    let output = tokio::time::timeout(PROGRAM_TIMEOUT, output)
        .await
        .expect("mosquitto_sub did not finish");
    assert!(output.status.success(), "mosquitto_sub failed: {output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
