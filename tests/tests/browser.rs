//! A real browser against the dashboard: headless Chromium driven by playwright-core
//! (`tests/bridge/browser.js`) loads `GET /`, subscribes to a filter through the page (which
//! reads `/sse`), and sees a message published with `mosquitto_pub`. The screenshot is kept
//! in `tests/bridge/artifacts/dashboard.png` (git-ignored).

use std::path::Path;
use std::time::Duration;

use tern_tests::{require_tool, TestBroker};

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
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
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
    assert!(screenshot.is_file(), "screenshot kept");
    broker.running.stop().await;
}
