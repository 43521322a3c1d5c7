//! Wills a node recovers from its journal when it restarts in a cluster (issue #12): they
//! go out once the node has rejoined, through the cluster (so a subscriber on another node
//! gets them), and only for the client ids the node still owns; a session a survivor
//! claimed while the node was dead is that survivor's, will included. A `tern` process
//! with `[persistence]` killed with SIGKILL and restarted, in-process survivors, a real
//! nats-server. Skipped (with the reason printed) when nats-server is not installed.

use std::time::Duration;

use tern_codec::{Packet, ProtocolVersion, QoS};
use tern_tests::cluster_support::{with_will, NatsServer};
use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A `tern` node named `name` with persistence in a fresh directory, joined to `nats` with
/// `node_lease_ms`.
fn victim(nats: &NatsServer, name: &str, lease_ms: u64) -> (BrokerProcess, std::path::PathBuf) {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-restart-wills-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"{name}\"\nnats_urls = [\"{}\"]\nnode_lease_ms = {lease_ms}\n",
        nats.url()
    );
    (BrokerProcess::start(&config), dir)
}

/// Waits (at most 20 s) until the node's current run has joined the cluster: its
/// listeners are bound before that.
async fn until_joined(node: &BrokerProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let runs = node.starts() as usize;
    while node.log_tail(100_000).matches("joined the cluster").count() < runs {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not rejoined: {}",
            node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The wills `watcher` gets within `wait` (and, once it has `expected` of them, in 1 s
/// more), their topics sorted, each acknowledged.
async fn wills_within(watcher: &mut Client, expected: usize, wait: Duration) -> Vec<String> {
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut topics = Vec::new();
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        if topics.len() == expected {
            deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        }
        match watcher.recv_within(left).await {
            Some(Packet::Publish(will)) => {
                watcher.ack(&will).await;
                topics.push(will.topic().to_string());
            }
            Some(other) => panic!("expected a will, got {other:?}"),
            None => break,
        }
    }
    topics.sort();
    topics
}

/// Restarted before it is declared dead (within `node_lease_ms`): the node still owns its
/// client ids, so it publishes, once it has rejoined and through the cluster, the will of
/// a session that expired while it was down (its client had gone before the crash) and
/// that of a session connected at the crash with no delay ([MQTT-3.1.3-9]: at the delay's
/// end or the session's, whichever is first). A subscriber on another node gets each once.
#[tokio::test]
async fn a_node_restarted_in_time_publishes_its_due_wills_across_the_cluster() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    // Declared dead 8 to 11 s after the kill: the restart comes well before.
    let (mut node, dir) = victim(&nats, "back", 10_000);
    let other = TestBroker::start_with(|c| {
        nats.join(c, "other");
        c.cluster.node_lease_ms = 10_000;
    })
    .await;
    let mut watcher = other.client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    // Gone before the crash: its will waits for the session's end (expiry 1 s < delay).
    drop(with_will(node.addr(), "expired", 60, 1).await);
    let _connected = with_will(node.addr(), "connected", 0, 300).await;
    // The journal and the sessions bucket are written in the background: a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.stop(Stop::Kill);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.restart();
    until_joined(&node).await;
    let wills = wills_within(&mut watcher, 2, Duration::from_secs(5)).await;
    assert_eq!(
        wills,
        vec!["wills/connected", "wills/expired"],
        "each recovered will once, on the other node; log:\n{}",
        node.log_tail(20)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restarted after it was declared dead: the survivor claimed its client ids and published
/// the will of the session that expired (its client had gone before the crash); the
/// restarted node, which finds that session expired in its journal, leaves the will to the
/// survivor. A subscriber gets it once.
#[tokio::test]
async fn a_node_restarted_after_its_claim_leaves_the_wills_to_the_survivor() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (mut node, dir) = victim(&nats, "late", 4000);
    let survivor = TestBroker::start_with(|c| {
        nats.join(c, "survivor");
        c.cluster.node_lease_ms = 4000;
    })
    .await;
    let mut watcher = survivor.client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    drop(with_will(node.addr(), "expired", 60, 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.stop(Stop::Kill);
    // Claimed after the lease, then the session (expiry 1 s from the claim) ends there.
    let wills = wills_within(&mut watcher, 1, Duration::from_secs(10)).await;
    assert_eq!(wills, vec!["wills/expired"], "the survivor's");
    node.restart();
    until_joined(&node).await;
    let again = wills_within(&mut watcher, usize::MAX, Duration::from_secs(2)).await;
    assert!(
        again.is_empty(),
        "published again by the restarted node: {again:?}; log:\n{}",
        node.log_tail(20)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
