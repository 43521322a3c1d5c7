//! `[cluster]`: several Tern nodes acting as one broker over NATS (off by default).
//!
//! This module owns the keys and their validation; the engine that uses them is
//! [`crate::cluster`].

use std::path::PathBuf;

use serde::Deserialize;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Whether this node joins a cluster. Off: no NATS connection, nothing changes.
    pub enabled: bool,
    /// NATS servers to connect to (`nats://host:port`, `tls://host:port`); tried in turn.
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`.
    pub node_name: String,
    /// First token of every subject and the name of the KV buckets, so that several clusters
    /// can share one NATS: letters, digits, `-` and `_`.
    pub subject_prefix: String,
    /// A NATS credentials file (JWT and NKey seed), when the server wants one.
    pub credentials_file: Option<PathBuf>,
    /// User name for NATS (with `password`).
    pub username: Option<String>,
    /// Password for NATS.
    pub password: Option<String>,
    /// Token for NATS.
    pub token: Option<String>,
    /// PEM CA certificates to trust for a TLS connection to NATS.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for TLS to NATS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Whether the connection to NATS must use TLS.
    pub tls_required: bool,
    /// How long the first connection to NATS may take before the node refuses to start.
    pub connect_timeout_ms: u64,
    /// Longest a SUBACK waits for NATS to confirm the node's interest in a new filter;
    /// after it the SUBACK goes anyway (the subscription works on this node at once and
    /// across nodes once NATS has it). On a NATS cluster, another live node that has not
    /// confirmed it through its server within half of this is counted and passed over.
    pub interest_timeout_ms: u64,
    /// A node cut off from NATS for longer than this moves its clients off (DISCONNECT
    /// 0x9C, new CONNECTs refused) until NATS is back, rather than split the brain; 0 keeps
    /// them.
    pub partition_lease_ms: u64,
    /// Longest a CONNECT that takes a client over from another node waits for that node to
    /// hand the session over (all of it, in however many NATS messages); then it goes on
    /// with the session state stored in the cluster's sessions bucket (subscriptions), or a
    /// fresh session.
    pub handover_timeout_ms: u64,
    /// A node whose heartbeat is older than this is declared dead: one surviving node
    /// claims its sessions and publishes their wills.
    pub node_lease_ms: u64,
    /// Messages waiting to be sent to NATS. Once half are taken, publishers wait before
    /// reading more; past all of it (many publishers at once) cross-node copies are dropped
    /// and counted (`tern_cluster_forward_dropped_total`), local delivery goes on.
    pub forward_queue_messages: usize,
    /// Copies JetStream keeps of each KV bucket this node creates (retained messages,
    /// owners, sessions, nodes): 1 for a single nats-server; 3 (or 5) for a NATS cluster
    /// that should keep the buckets through the loss of a server. A bucket that exists
    /// already keeps its own setting.
    pub kv_replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            nats_urls: vec!["nats://127.0.0.1:4222".to_string()],
            node_name: String::new(),
            subject_prefix: "tern".to_string(),
            credentials_file: None,
            username: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_ms: 5000,
            interest_timeout_ms: 5000,
            partition_lease_ms: 10000,
            handover_timeout_ms: 2000,
            node_lease_ms: 10000,
            forward_queue_messages: 65536,
            kv_replicas: 1,
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks `[cluster]` as read from `source_name`.
///
/// # Errors
/// [`super::ConfigError::OutOfRange`] naming the first bad key.
pub(crate) fn validate(c: &ClusterConfig, source_name: &str) -> Result<(), super::ConfigError> {
    check(c).map_err(|(key, value, allowed)| super::ConfigError::OutOfRange {
        source_name: source_name.to_string(),
        key,
        value,
        allowed,
    })
}

/// Checks `[cluster]`: `Err((key, value, allowed))` for the first bad key.
pub(crate) fn check(c: &ClusterConfig) -> Result<(), (&'static str, String, &'static str)> {
    if !c.enabled {
        return Ok(());
    }
    if !is_name(&c.node_name) {
        return Err((
            "cluster.node_name",
            format!("{:?}", c.node_name),
            "1 to 64 letters, digits, '-' or '_' when cluster.enabled",
        ));
    }
    if !is_name(&c.subject_prefix) {
        return Err((
            "cluster.subject_prefix",
            format!("{:?}", c.subject_prefix),
            "1 to 64 letters, digits, '-' or '_'",
        ));
    }
    if c.nats_urls.is_empty() {
        return Err(("cluster.nats_urls", "[]".into(), "at least one URL"));
    }
    if c.tls_cert_file.is_some() != c.tls_key_file.is_some() {
        return Err((
            "cluster.tls_cert_file",
            format!("{:?}", c.tls_cert_file),
            "both tls_cert_file and tls_key_file, or neither",
        ));
    }
    if c.password.is_some() && c.username.is_none() {
        return Err((
            "cluster.username",
            "none".into(),
            "a user name with password",
        ));
    }
    if c.node_lease_ms < 4000 {
        return Err((
            "cluster.node_lease_ms",
            c.node_lease_ms.to_string(),
            "at least 4000 (two heartbeats)",
        ));
    }
    if c.forward_queue_messages == 0 {
        return Err(("cluster.forward_queue_messages", "0".into(), "at least 1"));
    }
    if !(1..=5).contains(&c.kv_replicas) {
        return Err((
            "cluster.kv_replicas",
            c.kv_replicas.to_string(),
            "1 to 5 (JetStream's limit)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        let mut c = ClusterConfig::default();
        assert!(!c.enabled);
        assert!(check(&c).is_ok());
        c.enabled = true;
        assert_eq!(check(&c).map_err(|e| e.0), Err("cluster.node_name"));
        c.node_name = "a.b".into();
        assert_eq!(check(&c).map_err(|e| e.0), Err("cluster.node_name"));
        c.node_name = "node-1".into();
        assert!(check(&c).is_ok());
        c.kv_replicas = 6;
        assert_eq!(check(&c).map_err(|e| e.0), Err("cluster.kv_replicas"));
        c.kv_replicas = 3;
        assert!(check(&c).is_ok());
    }
}
