//! Persistence at run time: opening the broker on its data directory (recovery before any
//! listener accepts), the periodic checkpoints, a stop when the log fails, and the last
//! checkpoint at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::broker::Broker;
use crate::config::Config;
use crate::journal::open::{self, OpenError};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;

/// How often the checkpointer looks at the log's size.
const SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An `[auth]` file could not be loaded.
    #[error("loading the [auth] files: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The data directory could not be used.
    #[error("persistence: {0}")]
    Persistence(#[from] OpenError),
}

/// A broker opened on its configuration and data directory.
#[derive(Debug)]
pub struct Opened {
    /// The broker, with what was recovered in place.
    pub broker: Broker,
    /// Notified when the log fails: the broker must stop.
    pub failed: Arc<Notify>,
}

/// Creates the broker and, with persistence on, recovers its state from the data
/// directory and attaches the journal. Call before the listeners accept.
///
/// # Errors
/// [`StartError`]: an `[auth]` file, or a data directory that is locked by another broker
/// or cannot be created. Bad files in it are moved aside instead (see
/// [`crate::journal::open`]).
pub fn open_broker(config: Config) -> Result<Opened, StartError> {
    let persistence = config.persistence.clone();
    let clustered = config.cluster.enabled;
    let broker = Broker::try_new(config)?;
    let failed = Arc::new(Notify::new());
    if persistence.enabled {
        let notify = failed.clone();
        let on_fatal = Box::new(move |e: crate::wal::WalError| {
            tracing::error!(error = %e, "the journal failed: stopping rather than acknowledge what may not be stored");
            notify.notify_one();
        });
        let (journal, state, recovery) = open::open(&persistence, on_fatal)?;
        if clustered {
            // Recovered wills go out once the node has rejoined, and only for the client ids
            // it still owns then (`cluster/owners.rs`, `finish_recovery`); so do the wills
            // and session ends its timers bring.
            broker.hold_timers();
        }
        let mut restored = broker.restore(state);
        broker.attach_journal(Arc::new(journal));
        let expired = std::mem::take(&mut restored.expired);
        if clustered {
            broker.defer_recovered_wills(expired);
        } else {
            broker.publish_recovered_wills(expired);
        }
        tracing::info!(
            dir = %persistence.dir.display(),
            durability = ?persistence.durability,
            checkpoint_records = recovery.checkpoint_records,
            log_records = recovery.log_records,
            sessions = restored.sessions,
            expired_sessions = restored.expired_sessions,
            messages = restored.messages,
            retained = restored.retained,
            wills = restored.wills,
            elapsed_ms = recovery.elapsed.as_millis() as u64,
            "recovered"
        );
        let m = broker.metrics();
        Metrics::add(
            &m.journal_recovered_records,
            recovery.checkpoint_records + recovery.log_records,
        );
        Metrics::add(&m.journal_recovered_sessions, restored.sessions as u64);
        Metrics::add(&m.journal_recovery_ms, recovery.elapsed.as_millis() as u64);
    }
    Ok(Opened { broker, failed })
}

/// Takes checkpoints every `checkpoint_interval_secs`, and sooner when the log grows past
/// four segments, until the broker shuts down. Returns when the journal failed (the
/// caller stops the broker) or at shutdown.
pub async fn run(broker: Broker, failed: Arc<Notify>) {
    let Some(journal) = broker.journal() else {
        return;
    };
    let config = broker.persistence_config().clone();
    let interval = Duration::from_secs(config.checkpoint_interval_secs);
    let max_log_bytes = config.segment_bytes.saturating_mul(4);
    let wal = journal.wal().cloned();
    let mut shutdown = broker.shutdown_signal();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = failed.notified() => {
                broker.shutdown();
                return;
            }
            // wait_for, not changed: the shutdown may come before this task first runs.
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(SIZE_CHECK_INTERVAL) => {}
        }
        let big = wal.as_ref().is_some_and(|w| w.disk_bytes() > max_log_bytes);
        if big || last.elapsed() >= interval {
            checkpoint(&broker).await;
            last = tokio::time::Instant::now();
        }
    }
}

/// Takes one checkpoint off the async workers, logging what it did.
pub async fn checkpoint(broker: &Broker) {
    let b = broker.clone();
    match tokio::task::spawn_blocking(move || b.checkpoint()).await {
        Ok(Ok(Some(done))) => {
            let m = broker.metrics();
            Metrics::add(&m.journal_checkpoints, 1);
            m.journal_checkpoint_last_ms
                .store(done.elapsed.as_millis() as u64, Ordering::Relaxed);
            m.journal_checkpoint_bytes
                .store(done.bytes, Ordering::Relaxed);
            tracing::debug!(
                sessions = done.sessions,
                records = done.records,
                bytes = done.bytes,
                elapsed_ms = done.elapsed.as_millis() as u64,
                "checkpoint written"
            );
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed; the log is kept"),
        Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
    }
}

/// At shutdown, after the connections drained: a last checkpoint (a quick start next
/// time), then the log flushed and closed.
pub async fn finish(broker: &Broker) {
    let Some(journal) = broker.journal() else {
        return;
    };
    checkpoint(broker).await;
    if let Err(e) = journal.close() {
        tracing::error!(error = %e, "closing the journal failed");
    }
}
