//! A dead node's clients: once a node's heartbeat is older than `node_lease_ms`
//! ([`super::nodes::Nodes::dead`]), exactly one surviving node claims its sessions. The
//! survivors race to create the key `reap.{node}.{revision}` in the owners bucket (the
//! revision of the dead node's last heartbeat, the same on every node): the create is a
//! compare-and-swap, so one wins. The winner takes each owners entry that names the dead
//! node by compare-and-swap (a client that reconnected elsewhere meanwhile is left alone),
//! and puts the session back from the sessions bucket ([`super::sessions`]): its
//! subscriptions, expiry and will, which waits for its delay and then goes out unless the
//! client comes back first (here, or on another node, which asks this one to hand it over).
//! Messages that were queued on the dead node are lost with it. A node restarted with
//! `[persistence]` races for the same key for its previous incarnation before its first
//! heartbeat ([`super::rejoin`]): when it wins, no survivor claims what it kept.
//!
//! This module owns the watch for dead nodes and the claim; the buckets are
//! [`super::owners`]' and [`super::sessions`]'.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;

use super::metrics::ClusterMetrics;
use super::nodes::Nodes;
use super::sessions::SessionBucket;
use crate::broker::Broker;

/// How often the member list is checked for dead nodes.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The key whose creation claims the sessions of `node`'s incarnation whose last heartbeat
/// had `revision` (in the owners bucket). A restarted node creates it too
/// ([`super::rejoin`]).
pub(crate) fn reap_key(node: &str, revision: u64) -> String {
    format!("reap.{node}.{revision}")
}

/// What the watch needs.
#[derive(Debug)]
pub(crate) struct Failover {
    /// The members seen.
    pub(crate) nodes: Arc<Nodes>,
    /// The owners bucket (the reap keys live there too).
    pub(crate) owners: kv::Store,
    /// The stored session state.
    pub(crate) sessions: Arc<SessionBucket>,
    /// Where claimed sessions go.
    pub(crate) broker: Broker,
    /// This node's name.
    pub(crate) node_name: String,
    /// Counters.
    pub(crate) metrics: Arc<ClusterMetrics>,
}

/// Checks for dead nodes every [`CHECK_EVERY`] and claims the sessions of those this node
/// won the reap of. Runs for the node's life.
pub(crate) async fn watch(failover: Failover) {
    let mut handled: HashSet<(String, u64)> = HashSet::new();
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        for (node, revision) in failover.nodes.dead() {
            if node == failover.node_name || !handled.insert((node.clone(), revision)) {
                continue;
            }
            let key = reap_key(&node, revision);
            let me = bytes::Bytes::from(failover.node_name.clone());
            if failover.owners.create(&key, me).await.is_err() {
                // Another survivor won (or NATS is away: then nobody can claim anything).
                tracing::info!(node, "cluster: node dead; another node claims its sessions");
                continue;
            }
            tracing::warn!(
                node,
                "cluster: node dead (no heartbeat); claiming its sessions"
            );
            ClusterMetrics::inc(&failover.metrics.dead_nodes_claimed);
            let claimed = failover.claim_sessions_of(&node).await;
            tracing::info!(node, claimed, "cluster: dead node's sessions claimed");
        }
    }
}

impl Failover {
    /// Takes every client id `dead` owns; returns how many sessions were put back here.
    async fn claim_sessions_of(&self, dead: &str) -> usize {
        let keys: Vec<String> = match self.owners.keys().await {
            Ok(keys) => keys.filter_map(|k| async { k.ok() }).collect().await,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: owners not listed; dead node's sessions left");
                return 0;
            }
        };
        let mut claimed = 0;
        for key in keys.iter().filter(|k| !k.starts_with("reap.")) {
            if self.take(key, dead).await {
                claimed += 1;
            }
        }
        claimed
    }

    /// Takes one owners entry from `dead` and puts its session back here.
    async fn take(&self, key: &str, dead: &str) -> bool {
        let Ok(Some(entry)) = self.owners.entry(key).await else {
            return false;
        };
        if entry.operation != kv::Operation::Put || entry.value != dead.as_bytes() {
            return false;
        }
        let me = bytes::Bytes::from(self.node_name.clone());
        if self.owners.update(key, me, entry.revision).await.is_err() {
            return false; // the client connected elsewhere meanwhile
        }
        let Some(client_id) = super::owners::client_id_of(key) else {
            return false;
        };
        let here = (&self.broker, &*self.sessions, &self.owners);
        if !put_back(here, &self.node_name, key, &client_id).await {
            return false;
        }
        ClusterMetrics::inc(&self.metrics.dead_sessions_claimed);
        true
    }
}

/// Puts `client_id`'s session back here from the sessions bucket (its will's form and its
/// state's), once this node owns its owners entry (`key`); false when nothing is stored
/// for it, or it could not be put back. Also for a restarted node's own sessions that its
/// journal did not have ([`super::rejoin`]).
pub(crate) async fn put_back(
    (broker, sessions, owners): (&Broker, &SessionBucket, &kv::Store),
    node_name: &str,
    key: &str,
    client_id: &str,
) -> bool {
    let will = sessions.stored_will(client_id).await;
    let state = sessions.stored_form(client_id).await;
    // The will's form first: the state's expiry (written later) wins.
    let forms: Vec<&[u8]> = [will.as_deref(), state.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if forms.is_empty() {
        return false;
    }
    if let Err(e) = broker.adopt_session(&forms, 0) {
        tracing::warn!(client_id, error = %e, "cluster: stored session dropped");
        return false;
    }
    // The client may have claimed it on another node between the swap and here: that
    // node found nothing to hand over and used the stored state; let this copy go
    // without its will.
    let still_mine = matches!(owners.entry(key).await,
        Ok(Some(e)) if e.value == node_name.as_bytes());
    if !still_mine {
        drop(broker.hand_over(client_id, usize::MAX));
    }
    true
}
