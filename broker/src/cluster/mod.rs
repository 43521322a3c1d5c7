//! The cluster engine: several Tern nodes acting as one broker over NATS (`[cluster]`).
//!
//! A node connects to NATS once ([`start`]) and plugs a [`Cluster`] into its broker as the
//! broker's [`ClusterLink`]; the broker knows nothing else of it. Then:
//! - a message published on this node is routed locally and sent once to NATS, on the
//!   subject of its topic ([`subject`], [`envelope`], [`forward`]); its publisher's
//!   PUBACK/PUBREC waits until a NATS round trip after it has completed ([`forward`]);
//!   one larger than a NATS message travels through the JetStream object store, its
//!   reference on the topic's subject ([`large`]);
//! - NATS forwards it only to nodes whose subscribers hold a matching filter: each node
//!   subscribes once per distinct filter, before the SUBACK ([`interest`]; on a NATS
//!   cluster the other nodes confirm that their servers have it: [`confirm`]), and routes
//!   what arrives through its own trie, once per client ([`dedup`]);
//! - retained messages live in a JetStream key-value bucket mirrored into every node's
//!   retained store ([`retained`]);
//! - every node writes a heartbeat that the others watch: the member list ([`nodes`]);
//! - a JetStream key-value bucket says which node owns each client id; a CONNECT takes it
//!   by compare-and-swap and the previous owner closes its connection with 0x8E and hands
//!   the session over ([`owners`]);
//! - what other nodes need if this one dies (subscriptions, expiry, wills) is kept in a
//!   sessions bucket ([`sessions`]); one survivor claims a dead node's sessions and
//!   publishes their wills after their delay ([`failover`]); a node restarted with
//!   `[persistence]` takes part in that race for its own previous incarnation before it
//!   decides which recovered sessions to keep ([`rejoin`]);
//! - a node cut off from NATS longer than `partition_lease_ms` moves its clients off
//!   rather than split the brain ([`partition`]).
//!
//! - shared subscriptions are NATS queue groups: one node per message, then one member
//!   ([`interest`]).
//!
//! This module owns the connection to NATS and the parts' lifetimes.

mod confirm;
mod dedup;
mod envelope;
mod error;
mod failover;
mod forward;
mod handover_chunks;
mod interest;
mod large;
pub mod metrics;
mod nodes;
mod ordered;
mod outbox;
mod owners;
mod partition;
mod prepare;
mod rejoin;
mod retained;
mod sessions;
mod subject;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{Broker, ClaimWait, ClusterLink, InterestReady};
use crate::config::ClusterConfig;
use crate::message::Message;

pub use self::error::ClusterError;
use self::forward::Forwarder;
use self::interest::Interests;
pub use self::metrics::ClusterMetrics;
use self::retained::RetainedBucket;

/// How often the NATS round trip is measured.
const RTT_EVERY: Duration = Duration::from_secs(5);

/// This node's part of the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The configured name (logs, stats).
    node_name: String,
    /// Random per start: marks this node's messages (a restarted node is a new origin).
    origin: u64,
    forwarder: Forwarder,
    interests: Interests,
    metrics: Arc<ClusterMetrics>,
    /// The members seen through their heartbeats.
    nodes: Arc<nodes::Nodes>,
    /// Who owns which client id.
    owners: Arc<owners::Owners>,
    /// What other nodes need of this node's sessions if it dies.
    sessions: Arc<sessions::SessionBucket>,
}

impl Cluster {
    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// This node's counters.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// This run's origin id.
    pub fn origin(&self) -> u64 {
        self.origin
    }
}

impl ClusterLink for Cluster {
    fn forward(&self, messages: &[Arc<Message>], now: Instant) -> u64 {
        self.forwarder.forward(messages, now)
    }

    fn identify(&self, message: &Message) {
        self.forwarder.identify(message);
    }

    fn refuses(&self, message: &Message) -> bool {
        self.forwarder.refuses(message)
    }

    fn confirmed_position(&self) -> u64 {
        self.forwarder.confirmed().position()
    }

    fn poll_confirmed(
        &self,
        position: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.forwarder.confirmed().poll(position, cx)
    }

    fn retain_only(&self, message: &Arc<Message>, now: Instant) {
        self.forwarder.retain_only(message, now);
    }

    fn interest_added(&self, filter: &str) {
        self.interests.add(filter);
    }

    fn interest_removed(&self, filter: &str) {
        self.interests.remove(filter);
    }

    fn interest_ready(&self, filter: &str) -> Option<InterestReady> {
        self.interests.ready(filter)
    }

    fn node_name(&self) -> &str {
        &self.node_name
    }

    fn claim(&self, client_id: &str, resume: bool) -> Option<ClaimWait> {
        let owners = self.owners.clone();
        let client_id = client_id.to_string();
        Some(Box::pin(
            async move { owners.claim(&client_id, resume).await },
        ))
    }

    fn attached(&self, client_id: &str) -> bool {
        self.owners.attached(client_id)
    }

    fn session_changed(&self, client_id: &Arc<str>) {
        self.sessions.changed(client_id);
    }

    fn will_changed(&self, client_id: &Arc<str>, form: Option<Vec<u8>>) {
        self.sessions.will(client_id, form);
    }

    fn session_ended(&self, client_id: &Arc<str>) {
        self.sessions.gone(client_id);
    }

    fn congested(&self) -> Option<InterestReady> {
        self.forwarder.congested()
    }

    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.metrics.snapshot()
    }

    fn stats(&self) -> serde_json::Value {
        let m = &self.metrics;
        let get = ClusterMetrics::get;
        serde_json::json!({
            "node_name": self.node_name,
            "connected": m.connected.load(Ordering::Relaxed),
            "messages_out": get(&m.messages_out),
            "nats_messages_out": get(&m.nats_messages_out),
            "messages_in": get(&m.messages_in),
            "duplicates_dropped": get(&m.duplicates_dropped),
            "forward_dropped": get(&m.forward_dropped),
            "publisher_waits": get(&m.publisher_waits),
            "publish_errors": get(&m.publish_errors),
            "large_messages_out": get(&m.large_messages_out),
            "large_messages_in": get(&m.large_messages_in),
            "large_put_errors": get(&m.large_put_errors),
            "large_fetch_errors": get(&m.large_fetch_errors),
            "group_misses": get(&m.group_misses),
            "retained_writes": get(&m.retained_writes),
            "retained_applied": get(&m.retained_applied),
            "interest_filters": get(&m.interest_filters),
            "interest_unconfirmed": get(&m.interest_unconfirmed),
            "nats_rtt_us": get(&m.nats_rtt_us),
            "disconnects": get(&m.disconnects),
            "partition_disconnects": get(&m.partition_disconnects),
            "ownership_changes": get(&m.ownership_changes),
            "takeovers": get(&m.takeovers),
            "handovers": get(&m.handovers),
            "handovers_incomplete": get(&m.handovers_incomplete),
            "handover_messages_dropped": get(&m.handover_messages_dropped),
            "dead_nodes_claimed": get(&m.dead_nodes_claimed),
            "dead_sessions_claimed": get(&m.dead_sessions_claimed),
            "session_writes_coalesced": get(&m.session_writes_coalesced),
            "nodes": self.nodes.list(),
        })
    }
}

/// Connects to NATS, opens the retained bucket, starts the parts and attaches them to
/// `broker` (announcing the filters its recovered sessions hold). Call before the
/// listeners open.
///
/// # Errors
/// No NATS server answered within `connect_timeout_ms`, the credentials file is unreadable,
/// or JetStream is off on the server ([`ClusterError`]).
pub async fn start(broker: &Broker, config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
    let metrics = Arc::new(ClusterMetrics::default());
    let connections = Connections::open(config, &metrics).await?;
    let (client, origin) = (connections.client.clone(), connections.origin);
    let probe = connections.probe.clone();
    let kv = retained::Kv::new(&client, config.kv_replicas);
    let bucket = RetainedBucket::open(&kv, &config.subject_prefix).await?;
    let prefix = &config.subject_prefix;
    let large = large::LargeStore::open(&kv, prefix, client.clone(), metrics.clone()).await?;
    let sessions = sessions::SessionBucket::open(&kv, prefix, broker.clone(), metrics.clone());
    let sessions = Arc::new(sessions.await?);
    let owners = owners::Owners::start(
        &kv,
        client.clone(),
        (prefix, &config.node_name),
        broker.clone(),
        metrics.clone(),
        (
            Duration::from_millis(config.handover_timeout_ms),
            sessions.clone(),
        ),
    )
    .await?;
    let lease = Duration::from_millis(config.node_lease_ms);
    let rejoin = rejoin::Rejoin::open(&kv, &owners, broker, &sessions, config).await?;
    // Before the first heartbeat: no survivor can claim what this node keeps.
    let previous = rejoin.reap_own().await;
    rejoin.drop_superseded_sessions(&previous).await;
    let nodes = Arc::new(nodes::Nodes::new(lease));
    let cluster = Arc::new(Cluster {
        node_name: config.node_name.clone(),
        origin,
        forwarder: Forwarder::spawn(
            client.clone(),
            bucket.clone(),
            (origin, probe.clone()),
            config.subject_prefix.clone(),
            config.forward_queue_messages,
            metrics.clone(),
            large.clone(),
        ),
        interests: interests(config, connections, large, broker, (&nodes, &metrics)),
        metrics: metrics.clone(),
        nodes,
        owners: Arc::new(owners),
        sessions: sessions.clone(),
    });
    broker.attach_cluster(cluster.clone());
    nodes::start(
        rejoin.nodes.clone(),
        &config.node_name,
        broker.clone(),
        metrics.clone(),
        cluster.nodes.clone(),
    )
    .await?;
    bucket.watch_into(broker.clone(), metrics.clone()).await?;
    rejoin.finish_recovery(&previous).await; // rejoined: recovered wills go out now
    tokio::spawn(failover::watch(failover::Failover {
        nodes: cluster.nodes.clone(),
        owners: cluster.owners.store(),
        sessions,
        broker: broker.clone(),
        node_name: config.node_name.clone(),
        metrics: metrics.clone(),
    }));
    tokio::spawn(measure_rtt(client, probe, metrics.clone()));
    if config.partition_lease_ms > 0 {
        let lease = Duration::from_millis(config.partition_lease_ms);
        tokio::spawn(partition::watch(broker.clone(), metrics, lease));
    }
    tracing::info!(node = config.node_name, urls = ?config.nats_urls, "joined the cluster");
    Ok(cluster)
}

/// The interest routing, with the confirmation rounds of both connections.
fn interests(
    config: &ClusterConfig,
    connections: Connections,
    large: large::LargeStore,
    broker: &Broker,
    (nodes, metrics): (&Arc<nodes::Nodes>, &Arc<ClusterMetrics>),
) -> Interests {
    let confirmers = (
        confirmer(
            config,
            (&connections.client, &connections.probe),
            nodes,
            metrics,
        ),
        confirmer(
            config,
            (&connections.queue_client, &connections.queue_probe),
            nodes,
            metrics,
        ),
    );
    Interests::new(
        connections,
        large,
        confirmers,
        broker.clone(),
        config.subject_prefix.clone(),
        metrics.clone(),
        Duration::from_millis(config.interest_timeout_ms),
    )
}

/// Starts the confirmation rounds of one connection (with its round trips' probe subject).
fn confirmer(
    config: &ClusterConfig,
    (client, probe): (&async_nats::Client, &async_nats::Subject),
    nodes: &Arc<nodes::Nodes>,
    metrics: &Arc<ClusterMetrics>,
) -> confirm::Confirmer {
    confirm::Confirmer::spawn(confirm::Round {
        client: client.clone(),
        probe: probe.clone(),
        prefix: config.subject_prefix.clone(),
        node_name: config.node_name.clone(),
        nodes: nodes.clone(),
        metrics: metrics.clone(),
        // Half the SUBACK's bound: a node that does not answer is counted before the
        // SUBACK would go anyway.
        answer_timeout: Duration::from_millis(config.interest_timeout_ms / 2),
    })
}

/// The node's two NATS connections and what identifies it on them.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    /// Publishes (no echo) and holds the interest subscriptions.
    pub(crate) client: async_nats::Client,
    /// The queue subscriptions of shared groups, apart from the no-echo publisher; it
    /// answers the node's round trips.
    pub(crate) queue_client: async_nats::Client,
    /// Random per start: marks this node's messages.
    pub(crate) origin: u64,
    /// Where `client`'s round trips go ([`round_trip`]); `queue_client` answers them.
    pub(crate) probe: async_nats::Subject,
    /// Where `queue_client`'s round trips go; `client` answers them (both connections are
    /// no-echo: a connection never gets its own requests).
    pub(crate) queue_probe: async_nats::Subject,
}

impl Connections {
    async fn open(
        config: &ClusterConfig,
        metrics: &Arc<ClusterMetrics>,
    ) -> Result<Connections, ClusterError> {
        let client = connect(config, metrics.clone(), "").await?;
        let queue_client = connect(config, metrics.clone(), "-groups").await?;
        metrics.connected.store(true, Ordering::Relaxed);
        let origin = random_origin();
        let probe = probe_subject(&config.subject_prefix, origin, "p");
        answer_probes(queue_client.clone(), probe.clone()).await?;
        let queue_probe = probe_subject(&config.subject_prefix, origin, "q");
        answer_probes(client.clone(), queue_probe.clone()).await?;
        confirm::answer(client.clone(), &config.subject_prefix, &config.node_name).await?;
        Ok(Connections {
            client,
            queue_client,
            origin,
            probe,
            queue_probe,
        })
    }
}

/// The first connection to NATS, with the configured credentials and TLS; reconnects
/// forever afterwards (counted in `disconnects`).
async fn connect(
    config: &ClusterConfig,
    metrics: Arc<ClusterMetrics>,
    name_suffix: &str,
) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(ClusterError::Credentials)?;
    }
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let options = options
        .name(format!("tern-{}{name_suffix}", config.node_name))
        // A node never needs its own messages back: it delivered them locally.
        .no_echo()
        .require_tls(config.tls_required)
        .connection_timeout(timeout)
        .max_reconnects(None)
        // `nats_urls` in the configured order (each node may list its nearest server
        // first), not shuffled; servers the cluster announces are tried after them.
        .retain_servers_order()
        .event_callback(move |event| {
            let metrics = metrics.clone();
            async move { on_event(&metrics, event) }
        });
    let urls = config.nats_urls.join(",");
    let addrs: Vec<async_nats::ServerAddr> = config
        .nats_urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    match tokio::time::timeout(timeout, options.connect(addrs)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ClusterError::Connect { urls, source }),
        Err(_) => Err(ClusterError::ConnectTimeout(urls)),
    }
}

fn on_event(metrics: &ClusterMetrics, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            metrics.connected.store(true, Ordering::Relaxed);
            tracing::info!("cluster: connected to NATS");
        }
        async_nats::Event::Disconnected => {
            metrics.connected.store(false, Ordering::Relaxed);
            ClusterMetrics::inc(&metrics.disconnects);
            tracing::warn!("cluster: lost the connection to NATS; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "cluster: NATS subscription fell behind, messages dropped"
            );
        }
        other => tracing::debug!(event = %other, "cluster: NATS event"),
    }
}

/// One request through the NATS server and its answer: the node's other connection
/// answers requests on `probe` ([`probe_subject`], [`answer_probes`]). The server reads a
/// connection's commands in order and routes the request only after everything this client
/// sent before it, so all of that is in force on the server when this returns. (A client's
/// `flush` only empties the socket buffer.) Neither JetStream nor its meta leader is
/// involved: a NATS cluster electing a leader does not hold acknowledgements up.
///
/// # Errors
/// The request failed or timed out (NATS away, or the answering connection not subscribed
/// yet).
pub(crate) async fn round_trip(
    client: &async_nats::Client,
    probe: &async_nats::Subject,
) -> Result<(), async_nats::RequestError> {
    client
        .request(probe.clone(), bytes::Bytes::new())
        .await
        .map(drop)
}

/// A subject on which node `origin` answers its own round trips (`connection`: which of
/// its connections asks).
fn probe_subject(prefix: &str, origin: u64, connection: &str) -> async_nats::Subject {
    format!("{prefix}.probe.{origin:016x}.{connection}").into()
}

/// Answers every round-trip request on `probe` with an empty message, on `client` (the
/// node's other connection than the one asking).
///
/// # Errors
/// NATS refused the subscription.
async fn answer_probes(
    client: async_nats::Client,
    probe: async_nats::Subject,
) -> Result<(), async_nats::SubscribeError> {
    use futures_util::StreamExt as _;
    let mut requests = client.subscribe(probe).await?;
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                if let Err(e) = client.publish(reply, bytes::Bytes::new()).await {
                    tracing::debug!(error = %e, "cluster: round trip not answered");
                }
            }
        }
    });
    Ok(())
}

/// Measures the NATS round trip ([`round_trip`]) every [`RTT_EVERY`].
async fn measure_rtt(
    client: async_nats::Client,
    probe: async_nats::Subject,
    metrics: Arc<ClusterMetrics>,
) {
    let mut every = tokio::time::interval(RTT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let started = std::time::Instant::now();
        if round_trip(&client, &probe).await.is_ok() {
            let us = started.elapsed().as_micros() as u64;
            metrics.nats_rtt_us.store(us, Ordering::Relaxed);
        }
    }
}

fn random_origin() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness: the clock and the pid still differ between nodes and runs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(bytes)
}
