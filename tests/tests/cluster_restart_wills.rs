//! Wills a node recovers from its journal when it restarts in a cluster (issue #12): they
//! go out once the node has rejoined, through the cluster (so a subscriber on another node
//! gets them), and only for the client ids the node still owns; a session a survivor
//! claimed while the node was dead is that survivor's, will included; a restart just as
//! the node is declared dead leaves each session (and will) to one node: the restarted
//! node takes its own reap key before it decides, or defers to the survivor that has it.
//! A `tern` process
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

/// The owners and nodes buckets, as a survivor sees them, over a NATS connection of the
/// test's own.
async fn buckets(
    nats: &NatsServer,
) -> (
    async_nats::jetstream::kv::Store,
    async_nats::jetstream::kv::Store,
) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    let owners = jetstream
        .get_key_value("tern_owners")
        .await
        .expect("owners");
    let nodes = jetstream.get_key_value("tern_nodes").await.expect("nodes");
    (owners, nodes)
}

/// The revision of `node`'s last heartbeat.
async fn last_beat(nodes: &async_nats::jetstream::kv::Store, node: &str) -> u64 {
    let entry = nodes.entry(node).await.expect("read").expect("a heartbeat");
    entry.revision
}

/// `client_id`'s owner entry, as `(owner, revision)`.
async fn owner(owners: &async_nats::jetstream::kv::Store, client_id: &str) -> (String, u64) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id);
    let entry = owners.entry(key).await.expect("read").expect("owned");
    (
        String::from_utf8_lossy(&entry.value).into_owned(),
        entry.revision,
    )
}

/// A survivor ("ghost", played by the test: it publishes nothing) won the reap of the
/// node's last incarnation before the restarted node looked, but has not yet taken its
/// client ids (it does so only once the node has either rejoined or said that it waits).
/// The restarted node must leave every recovered session to it: the will of the session
/// that expired while it was down and that of the session connected at the crash (no
/// delay) are not published by it. Without the node's own reap it kept both and published
/// both.
#[tokio::test]
async fn a_node_declared_dead_while_restarting_leaves_its_sessions_to_the_survivor() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (mut node, dir) = victim(&nats, "slow", 10_000);
    // Never declares anyone dead during the test: the ghost is the survivor.
    let other = TestBroker::start_with(|c| {
        nats.join(c, "other");
        c.cluster.node_lease_ms = 60_000;
    })
    .await;
    let mut watcher = other.client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    drop(with_will(node.addr(), "expired", 60, 1).await);
    let _connected = with_will(node.addr(), "connected", 0, 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.stop(Stop::Kill);
    let (owners, nodes) = buckets(&nats).await;
    let revision = last_beat(&nodes, "slow").await;
    owners
        .create(format!("reap.slow.{revision}"), "ghost".into())
        .await
        .expect("the ghost wins the reap");
    node.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !node.logged("waiting for the survivor's claim") {
        let joined = node.log_tail(100_000).matches("joined the cluster").count();
        if joined >= node.starts() as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The ghost's claim: each client id by compare-and-swap, as a survivor takes them.
    for client_id in ["expired", "connected"] {
        let (was, revision) = owner(&owners, client_id).await;
        assert_eq!(was, "slow");
        let key = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id)
        };
        owners
            .update(key, "ghost".into(), revision)
            .await
            .expect("claimed");
    }
    until_joined(&node).await;
    let wills = wills_within(&mut watcher, usize::MAX, Duration::from_secs(3)).await;
    assert!(
        wills.is_empty(),
        "published by the restarted node although the survivor has them: {wills:?}; log:\n{}",
        node.log_tail(30)
    );
    assert!(node.logged("the recovered sessions are the survivor's"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restarted before any survivor declared it dead: the node takes its own reap key (the
/// one a survivor would create for its last heartbeat) before it decides which sessions to
/// keep, so a survivor that declares it dead afterwards, before its first heartbeat, loses
/// the race (played by the test: its create fails) and claims nothing; the node publishes
/// each due will once: those of its recovered sessions, and, put back from the sessions
/// bucket as a survivor would, that of a session its journal never had (Session Expiry 0,
/// connected at the crash: [MQTT-3.1.2-8], the will goes out when the connection is lost
/// otherwise than by DISCONNECT 0x00).
#[tokio::test]
async fn a_restarted_node_takes_its_own_reap_key_before_it_keeps_its_sessions() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (mut node, dir) = victim(&nats, "quick", 10_000);
    let other = TestBroker::start_with(|c| {
        nats.join(c, "other");
        c.cluster.node_lease_ms = 60_000;
    })
    .await;
    let mut watcher = other.client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    drop(with_will(node.addr(), "expired", 60, 1).await);
    let _connected = with_will(node.addr(), "connected", 0, 300).await;
    let _fleeting = with_will(node.addr(), "fleeting", 0, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.stop(Stop::Kill);
    let (owners, nodes) = buckets(&nats).await;
    let revision = last_beat(&nodes, "quick").await;
    node.restart();
    until_joined(&node).await;
    let key = format!("reap.quick.{revision}");
    let taken = owners.entry(&key).await.expect("read");
    assert_eq!(
        taken.map(|e| e.value),
        Some("quick".into()),
        "the node's own reap key; log:\n{}",
        node.log_tail(20)
    );
    let survivor = owners.create(&key, "late".into()).await;
    assert!(survivor.is_err(), "a survivor still won the reap");
    assert_eq!(owner(&owners, "connected").await.0, "quick");
    let wills = wills_within(&mut watcher, 3, Duration::from_secs(5)).await;
    assert_eq!(
        wills,
        vec!["wills/connected", "wills/expired", "wills/fleeting"],
        "each once; log:\n{}",
        node.log_tail(20)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
