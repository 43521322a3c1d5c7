//! Confirming that a node's new NATS subscriptions are in force on every NATS server its
//! peers publish through, before a SUBACK (or a handed-over session's CONNACK) says so.
//!
//! One NATS server has a subscription once a request sent after it on the same connection
//! has come back ([`super::round_trip`]). With several NATS servers clustered, the others
//! learn it over their routes moments later. Each server sends an account's interest
//! (RS+) and forwards its messages over one route connection per peer server (route
//! pooling assigns an account one connection of the pool; older servers have only one),
//! and reads that connection in order. So a request this node sends after its
//! subscriptions, on the same connection, to another node reaches that node's server
//! after the subscriptions' interest has: once the other node has answered, a message it
//! publishes afterwards reaches this node. A round therefore asks every other live member
//! ([`super::nodes::Nodes::alive_except`]) on `{prefix}.confirm.{node}`, which each node
//! answers at once on its publishing connection ([`answer`]).
//!
//! This needs one request per other node, no subscription per confirmation (a marker
//! subscribed after the filters and pinged by the others through their servers would cost
//! two round trips, an interest change broadcast to every server on and off, and retries
//! while the marker itself propagates). It is skipped when the NATS server reports no
//! cluster: then the local round trip is all it takes, as before. A node that has no
//! subscriber on its confirm subject (gone, or of an earlier version) gets "no responders"
//! at once and is passed over; one that does not answer within its time is logged, counted
//! (`tern_cluster_interest_unconfirmed_total`, per filter) and passed over, so that a SUBACK
//! never hangs on it.
//!
//! Confirmations are batched: the filters waiting when a round starts all share it, and
//! those that come meanwhile share the next one (a SUBSCRIBE of 100 filters makes a few
//! rounds, not 100).
//!
//! This module owns the rounds and the confirm subject.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::metrics::ClusterMetrics;
use super::nodes::Nodes;

/// Confirms one connection's subscriptions cluster-wide, in rounds.
#[derive(Debug, Clone)]
pub(crate) struct Confirmer {
    waiting: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

/// What a round needs.
#[derive(Debug)]
pub(crate) struct Round {
    /// The connection whose subscriptions are confirmed (it sends the requests).
    pub(crate) client: async_nats::Client,
    /// Where its local round trips go ([`super::round_trip`]).
    pub(crate) probe: async_nats::Subject,
    pub(crate) prefix: String,
    /// This node's name (not asked).
    pub(crate) node_name: String,
    pub(crate) nodes: Arc<Nodes>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    /// Longest a round waits for another node's answer.
    pub(crate) answer_timeout: Duration,
}

impl Confirmer {
    /// Starts the rounds of `round`'s connection.
    pub(crate) fn spawn(round: Round) -> Confirmer {
        let (waiting, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(round, receiver));
        Confirmer { waiting }
    }

    /// Returns once every subscription the connection sent before this call is in force
    /// on the node's NATS server and on those of the other live nodes (or those that did
    /// not answer in time were counted). Retries while NATS is away.
    pub(crate) async fn confirm(&self) {
        let (done, wait) = oneshot::channel();
        if self.waiting.send(done).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Runs a round for everything waiting, then for everything that came meanwhile, and so on.
async fn run(round: Round, mut receiver: mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
    let mut waiters = Vec::new();
    while let Some(first) = receiver.recv().await {
        waiters.push(first);
        while let Ok(more) = receiver.try_recv() {
            waiters.push(more);
        }
        if !round.run().await {
            ClusterMetrics::inc_by(&round.metrics.interest_unconfirmed, waiters.len() as u64);
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

impl Round {
    /// One round: the local round trip (retried until NATS answers), then, on a NATS
    /// cluster, one request to each other live node. `false` when a node did not answer
    /// in time.
    async fn run(&self) -> bool {
        while let Err(e) = super::round_trip(&self.client, &self.probe).await {
            tracing::debug!(error = %e, "cluster: interest not confirmed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !clustered(&self.client.server_info()) {
            return true;
        }
        let others = self.nodes.alive_except(&self.node_name);
        let answers = futures_util::future::join_all(others.iter().map(|n| self.ask(n))).await;
        let mut confirmed = true;
        for (node, answer) in others.iter().zip(answers) {
            match answer {
                Ok(()) => {}
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tracing::debug!(node, "cluster: node does not confirm interest; passed over");
                }
                Err(e) => {
                    tracing::warn!(
                        node,
                        error = %e,
                        "cluster: node did not confirm interest in time; SUBACK sent anyway"
                    );
                    confirmed = false;
                }
            }
        }
        confirmed
    }

    /// Asks `node` to answer through its NATS server.
    async fn ask(&self, node: &str) -> Result<(), async_nats::RequestError> {
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::new())
            .timeout(Some(self.answer_timeout));
        self.client
            .send_request(confirm_subject(&self.prefix, node), request)
            .await
            .map(drop)
    }
}

/// Whether the NATS server is part of a NATS cluster (it names one, or announces other
/// servers' URLs).
fn clustered(info: &async_nats::ServerInfo) -> bool {
    info.cluster.as_deref().is_some_and(|name| !name.is_empty()) || info.connect_urls.len() > 1
}

/// Where node `node_name` answers confirmation requests.
fn confirm_subject(prefix: &str, node_name: &str) -> async_nats::Subject {
    format!("{prefix}.confirm.{node_name}").into()
}

/// Answers other nodes' confirmation requests to this node on `client` (its publishing
/// connection: the server it is on is where its messages enter NATS).
///
/// # Errors
/// NATS refused the subscription.
pub(crate) async fn answer(
    client: async_nats::Client,
    prefix: &str,
    node_name: &str,
) -> Result<(), async_nats::SubscribeError> {
    super::answer_probes(client, confirm_subject(prefix, node_name)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_server_is_not_a_cluster() {
        assert!(!clustered(&async_nats::ServerInfo::default()));
        let lone = async_nats::ServerInfo {
            connect_urls: vec!["127.0.0.1:4222".into()],
            ..Default::default()
        };
        assert!(!clustered(&lone));
    }

    #[test]
    fn a_named_cluster_or_several_urls_is_a_cluster() {
        let named = async_nats::ServerInfo {
            cluster: Some("c".into()),
            ..Default::default()
        };
        assert!(clustered(&named));
        let urls = async_nats::ServerInfo {
            connect_urls: vec!["127.0.0.1:4222".into(), "127.0.0.1:4223".into()],
            ..Default::default()
        };
        assert!(clustered(&urls));
    }

    #[test]
    fn confirm_subjects_are_per_node() {
        assert_eq!(confirm_subject("tern", "n-1").as_str(), "tern.confirm.n-1");
    }
}
