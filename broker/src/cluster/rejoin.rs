//! A node restarted with `[persistence]` rejoining its cluster: which of the sessions it
//! recovered from its journal it keeps, and whose their wills are.
//!
//! While it was down, a survivor may have declared it dead and claimed its client ids, or
//! may be about to ([`super::failover`]): the survivors race to create
//! `reap.{node}.{revision}` in the owners bucket, the revision being that of the node's
//! last heartbeat, and the node's lease restarts only with its first heartbeat after the
//! restart. So, before it decides anything, the node enters that race itself
//! ([`Rejoin::reap_own`]): it reads its last heartbeat's revision in the nodes bucket and
//! creates the same key.
//! - It wins ([`Previous::Won`]): no survivor can claim that incarnation any more (they
//!   race for the same key), so the node keeps its recovered sessions, but those whose ids
//!   another node owns now (their clients moved, or a survivor claimed them at an earlier
//!   death); once joined it puts back, as a survivor would, the sessions of the ids it
//!   still owns that its journal did not have (Session Expiry 0, no `[persistence]`), from
//!   the sessions bucket, so that their wills go out.
//! - It has no heartbeat in the bucket (first start; entry deleted, or expired after six
//!   leases): nobody can reap it ([`Previous::Here`]); it keeps what it recovered but the
//!   sessions whose ids another node owns, as when the bucket cannot be read or written for
//!   [`REAP_TIMEOUT`] (logged; then a survivor may still claim what it keeps).
//! - A survivor won ([`Previous::Claimed`]): every recovered session of the old incarnation
//!   is the survivor's. The node waits until no owners entry names it any more (the
//!   survivor's claim takes each by compare-and-swap; at most `node_lease_ms`, then it goes
//!   on, logging it), so that no CONNECT it takes afterwards can be claimed under it, then
//!   drops every recovered session, and leaves every will of a session that expired
//!   meanwhile, whose client id has an owner; only ids nobody owns (no survivor claims
//!   them) stay here.
//!
//! Before it joins the node drops the sessions it does not keep
//! ([`Rejoin::drop_superseded_sessions`]); once joined it publishes the wills of the
//! recovered sessions that expired meanwhile and are its own, then lets its timers run
//! ([`Rejoin::finish_recovery`]).
//!
//! This module owns that decision; the buckets are [`super::owners`]', [`super::nodes`]'
//! and [`super::sessions`]'.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::error::ClusterError;
use super::owners::key_of;
use super::sessions::SessionBucket;
use crate::broker::Broker;
use crate::config::ClusterConfig;

/// How long the node tries to read its last heartbeat and create its reap key before it
/// goes on without (JetStream answering with errors).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two tries, and between two looks at a survivor's claim.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Who has the sessions of the node's previous incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Previous {
    /// This node, and no survivor can claim them: it had no heartbeat in the bucket, or
    /// the bucket did not answer (then one still may).
    Here,
    /// This node: it won the reap of its previous incarnation, so no survivor can claim
    /// it; the sessions its journal did not have are put back here from the sessions
    /// bucket, as a survivor would.
    Won,
    /// The survivor named won the reap of the previous incarnation.
    Claimed {
        /// The winner's node name.
        by: String,
    },
}

/// Why the node's own reap key could not be taken (retried until [`REAP_TIMEOUT`]).
#[derive(Debug, thiserror::Error)]
enum ReapError {
    /// The nodes bucket did not say the last heartbeat's revision.
    #[error("cannot read the last heartbeat: {0}")]
    Beat(kv::EntryError),
    /// The create failed otherwise than on an existing key.
    #[error("cannot create the reap key: {0}")]
    Create(kv::CreateError),
    /// The reap key exists but its winner could not be read.
    #[error("cannot read the reap key: {0}")]
    Winner(kv::EntryError),
}

/// What a restarted node needs to decide.
#[derive(Debug)]
pub(crate) struct Rejoin {
    /// The owners bucket (the reap keys live there too).
    owners: kv::Store,
    /// The members' heartbeats: where the last heartbeat's revision is read, and the new
    /// ones go.
    pub(crate) nodes: kv::Store,
    /// The recovered sessions.
    broker: Broker,
    /// The stored session state (an expired session whose will goes out here is gone).
    sessions: Arc<SessionBucket>,
    /// This node's name.
    node_name: String,
    /// Longest wait for a survivor's claim (`node_lease_ms`).
    claim_wait: Duration,
}

impl Rejoin {
    /// Opens the nodes bucket (kept for the heartbeat: [`Rejoin::nodes`]).
    ///
    /// # Errors
    /// The bucket cannot be opened (JetStream off).
    pub(crate) async fn open(
        kv: &super::retained::Kv,
        owners: &super::owners::Owners,
        broker: &Broker,
        sessions: &Arc<SessionBucket>,
        config: &ClusterConfig,
    ) -> Result<Rejoin, ClusterError> {
        let lease = Duration::from_millis(config.node_lease_ms);
        Ok(Rejoin {
            owners: owners.store(),
            nodes: super::nodes::open(kv, &config.subject_prefix, lease).await?,
            broker: broker.clone(),
            sessions: sessions.clone(),
            node_name: config.node_name.clone(),
            claim_wait: lease,
        })
    }

    /// Takes this node's own reap key (see the module doc) and says who has the previous
    /// incarnation's sessions; when a survivor does, returns once its claim has gone
    /// through (at most `claim_wait`).
    pub(crate) async fn reap_own(&self) -> Previous {
        let deadline = Instant::now() + REAP_TIMEOUT;
        let previous = loop {
            match self.try_reap_own().await {
                Ok(previous) => break previous,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "cluster: own reap key not taken yet");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: own reap key not taken; a survivor may still claim the recovered sessions");
                    return Previous::Here;
                }
            }
        };
        if let Previous::Claimed { by } = &previous {
            tracing::info!(
                by,
                "cluster: declared dead while down; the recovered sessions are the survivor's"
            );
            self.until_claimed(by).await;
        }
        previous
    }

    /// One try of [`Rejoin::reap_own`]'s create.
    async fn try_reap_own(&self) -> Result<Previous, ReapError> {
        let beat = super::nodes::last_beat(&self.nodes, &self.node_name).await;
        let Some(revision) = beat.map_err(ReapError::Beat)? else {
            return Ok(Previous::Here); // no heartbeat: nobody can reap this node
        };
        let key = super::failover::reap_key(&self.node_name, revision);
        let me = bytes::Bytes::from(self.node_name.clone());
        match self.owners.create(&key, me.clone()).await {
            Ok(_) => {
                tracing::info!(key, "cluster: own reap key taken; recovered sessions kept");
                Ok(Previous::Won)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let winner = self.owners.entry(&key).await.map_err(ReapError::Winner)?;
                let by = winner.map(|w| w.value).unwrap_or_default();
                // This node's own name: an earlier try succeeded but its answer was lost.
                if by == me {
                    return Ok(Previous::Won);
                }
                let by = String::from_utf8_lossy(&by).into_owned();
                Ok(Previous::Claimed { by })
            }
            Err(e) => Err(ReapError::Create(e)),
        }
    }

    /// Waits until no owners entry names this node: `by` has taken them all. Gives up
    /// (logged) after `claim_wait`: `by` stopped midway.
    async fn until_claimed(&self, by: &str) {
        let deadline = Instant::now() + self.claim_wait;
        let mut left: Option<Vec<String>> = None;
        let mut said = false;
        loop {
            let keys = match left.take() {
                Some(keys) => Some(keys),
                None => self.client_keys().await,
            };
            if let Some(keys) = keys {
                let mine = self.naming_me(keys).await;
                if mine.is_empty() {
                    return;
                }
                if !said {
                    said = true;
                    tracing::info!(
                        by,
                        left = mine.len(),
                        "cluster: waiting for the survivor's claim of this node's client ids"
                    );
                }
                left = Some(mine);
            }
            if Instant::now() >= deadline {
                tracing::warn!(by, "cluster: the survivor's claim did not finish in time; the client ids it left are dropped here too");
                return;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Every client id's key in the owners bucket (`None`: not listed).
    async fn client_keys(&self) -> Option<Vec<String>> {
        match self.owners.keys().await {
            Ok(keys) => Some(
                keys.filter_map(|k| async { k.ok() })
                    .filter(|k| std::future::ready(!k.starts_with("reap.")))
                    .collect()
                    .await,
            ),
            Err(e) => {
                tracing::debug!(error = %e, "cluster: owners not listed");
                None
            }
        }
    }

    /// Those of `keys` whose entry names this node (or cannot be read).
    async fn naming_me(&self, keys: Vec<String>) -> Vec<String> {
        let mut mine = Vec::new();
        for key in keys {
            let names_me = match self.owners.entry(&key).await {
                Ok(Some(e)) => e.operation == kv::Operation::Put && e.value == self.node_name,
                Ok(None) => false,
                Err(_) => true,
            };
            if names_me {
                mine.push(key);
            }
        }
        mine
    }

    /// Whether `client_id`'s session and will are another node's: its id has an owner other
    /// than this node, or any owner when a survivor claimed the previous incarnation. An id
    /// nobody owns is this node's (no survivor claims it); one the bucket cannot say about
    /// is this node's unless a survivor claimed.
    async fn superseded(&self, client_id: &str, previous: &Previous) -> bool {
        let claimed = matches!(previous, Previous::Claimed { .. });
        match self.owners.entry(&key_of(client_id)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                claimed || entry.value != self.node_name.as_bytes()
            }
            Ok(_) => false,
            Err(_) => claimed,
        }
    }

    /// Drops the sessions this node recovered from its journal that are another node's
    /// ([`Rejoin::superseded`]): their wills and messages are that node's business. Before
    /// the node joins.
    pub(crate) async fn drop_superseded_sessions(&self, previous: &Previous) {
        let mut dropped = 0;
        for session in self.broker.sessions() {
            if self.superseded(&session.client_id, previous).await {
                self.broker.drop_superseded(&session);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "cluster: recovered sessions now owned by other nodes dropped"
            );
        }
    }

    /// Once the node has rejoined, after winning its own reap ([`Previous::Won`]): puts back
    /// from the sessions bucket, as a survivor would have, the sessions of client ids this
    /// node owns that it has not recovered (its journal never had them: Session Expiry 0,
    /// no `[persistence]`, or not written yet before the crash; nor `expired`), so that
    /// their wills go out after their delay unless their clients come back first.
    async fn put_back_unrecovered(&self, expired: &std::collections::HashSet<&str>) {
        let Some(keys) = self.client_keys().await else {
            tracing::warn!("cluster: owners not listed; sessions the journal did not have left");
            return;
        };
        let mut put_back = 0;
        for key in self.naming_me(keys).await {
            let Some(client_id) = super::owners::client_id_of(&key) else {
                continue;
            };
            if expired.contains(client_id.as_str()) || self.broker.session(&client_id).is_some() {
                continue;
            }
            let here = (&self.broker, &*self.sessions, &self.owners);
            if super::failover::put_back(here, &self.node_name, &key, &client_id).await {
                put_back += 1;
            }
        }
        if put_back > 0 {
            tracing::info!(
                put_back,
                "cluster: sessions the journal did not have put back from the stored state"
            );
        }
    }

    /// Once the node has rejoined: publishes, through the cluster, the wills of the
    /// sessions its journal had that expired while it was down, unless they are another
    /// node's ([`Rejoin::superseded`]: that node claimed the session and publishes the
    /// will), and removes their stored state from the sessions bucket (they ended); then
    /// lets the offline timers of the recovered sessions run (held since the recovery).
    pub(crate) async fn finish_recovery(&self, previous: &Previous) {
        let recovered_expired = self.broker.take_recovered_wills();
        if *previous == Previous::Won {
            let ids = recovered_expired.iter().map(|e| &*e.client_id).collect();
            self.put_back_unrecovered(&ids).await;
        }
        let mut left = 0;
        for expired in recovered_expired {
            if self.superseded(&expired.client_id, previous).await {
                left += usize::from(expired.will.is_some());
                continue;
            }
            self.sessions.gone(&expired.client_id);
            self.broker.publish_recovered_wills(vec![expired]);
        }
        if left > 0 {
            tracing::info!(
                left,
                "cluster: wills of expired sessions now owned by other nodes left to them"
            );
        }
        self.broker.release_timers();
    }
}
