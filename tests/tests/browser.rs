//! A real browser against the dashboard: headless Chromium driven by playwright-core
//! (`tests/bridge/browser.js`) loads `GET /`, subscribes to a filter through the page (which
//! reads `/sse`), and sees a message published with `mosquitto_pub`; then uses the clients
//! table (admin token, filter, sort) and its kick button on a connected client, which gets
//! DISCONNECT 0x98, and checks the activity charts. The screenshot is kept in
//! `tests/bridge/artifacts/dashboard.png` (git-ignored).

use std::path::Path;
use std::time::Duration;

use tern_codec::{Packet, ProtocolVersion};
use tern_tests::{require_tool, TestBroker};

const ADMIN_TOKEN: &str = "browser-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_dashboard_sees_mosquitto_pub() {
    if !require_tool("node") || !require_tool("mosquitto_pub") {
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "chromium is required under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {chromium} not found (apt-get install chromium)");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bridge");
    if !dir.join("node_modules/playwright-core").is_dir() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "playwright-core missing under CI"
        );
        eprintln!("SKIPPED: playwright-core not installed (npm ci in tests/bridge)");
        return;
    }
    let token_file = std::env::temp_dir().join(format!("tern-browser-{}", std::process::id()));
    std::fs::write(&token_file, ADMIN_TOKEN).expect("token");
    let broker = TestBroker::start_with(|c| {
        c.admin.enabled = true;
        c.admin.token_file = token_file.clone();
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let mut victim = broker.client(ProtocolVersion::V5, "browser-victim").await;
    let _bystander = broker.client(ProtocolVersion::V5, "bystander").await;
    let screenshot = dir.join("artifacts/dashboard.png");
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg("browser.js")
            .arg(format!("http://{http}/"))
            .arg("127.0.0.1")
            .arg(broker.addr.port().to_string())
            .arg(&screenshot)
            .env("CHROMIUM", &chromium)
            .env("TERN_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TERN_KICK_CLIENT", "browser-victim")
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("browser test finished in time")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("PASS: message published with mosquitto_pub shown live"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS: kick button disconnected the client"),
        "{stdout}"
    );
    match victim.recv_or_eof().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(screenshot.is_file(), "screenshot kept");
    broker.running.stop().await;
}
