//! Why a node could not join its cluster. Errors after joining (a lost connection, a failed
//! send) are counted and logged where they happen and never end the node.

/// Joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server of `nats_urls` answered within `connect_timeout_ms`.
    #[error("cannot connect to NATS ({urls}): {source}")]
    Connect {
        /// The configured URLs.
        urls: String,
        /// What the client said.
        source: async_nats::ConnectError,
    },
    /// The first connection took longer than `connect_timeout_ms`.
    #[error("no NATS server of {0} answered in time")]
    ConnectTimeout(String),
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file: {0}")]
    Credentials(std::io::Error),
    /// A JetStream key-value bucket could not be opened or created (is JetStream on? `-js`).
    #[error("cannot open the JetStream bucket {bucket}: {source}")]
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What JetStream said.
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    /// Watching a bucket failed.
    #[error("cannot watch the JetStream bucket {bucket}: {source}")]
    Watch {
        /// The bucket's name.
        bucket: String,
        /// What JetStream said.
        source: async_nats::jetstream::kv::WatchError,
    },
    /// The node could not subscribe to answer its own round trips.
    #[error("cannot subscribe to NATS: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}
