//! Opening the data directory at startup: lock it against a second broker, read the last
//! checkpoint, open the log and replay the records after the checkpoint's cut, giving the
//! [`State`] to restore and the [`Journal`] to log into from then on.
//!
//! A bad file never stops the start: a corrupt checkpoint is moved aside (logged at
//! error) and the log alone replayed; a log that cannot be opened is moved aside whole and
//! a new one started. A torn tail of the log is normal and cut by the log itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::record::Record;
use super::snapshot::{self, SnapshotError};
use super::state::State;
use super::Journal;
use crate::config::{Durability, PersistenceConfig};
use crate::wal::{DirLock, OnFatal, Wal, WalError, WalOptions};

/// Why the data directory could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory cannot be created or locked (another broker holds it).
    #[error("{0}")]
    Dir(#[from] WalError),
    /// A file could not be moved aside.
    #[error("cannot move {path} aside: {source}")]
    MoveAside {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What recovery found, for the log line and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records read from the checkpoint.
    pub checkpoint_records: u64,
    /// Records replayed from the log.
    pub log_records: u64,
    /// Log records that did not decode (skipped, logged).
    pub bad_records: u64,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

/// Opens the data directory of `config` (persistence on): the journal and the state to
/// restore.
///
/// # Errors
/// [`OpenError`] when the directory cannot be created or is locked by another broker.
pub fn open(
    config: &PersistenceConfig,
    on_fatal: OnFatal,
) -> Result<(Journal, State, Recovery), OpenError> {
    let started = Instant::now();
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(|e| WalError::io("create", dir, e))?;
    let lock = Arc::new(DirLock::acquire(dir)?);
    let mut state = State::default();
    let mut recovery = Recovery::default();
    let cut = read_checkpoint(dir, &mut state, &mut recovery)?;
    state.log_begins();
    let wal = match config.durability {
        Durability::None => None,
        Durability::Sync | Durability::Write => {
            let options = WalOptions {
                dir: dir.clone(),
                durability: config.durability,
                fsync_interval_ms: config.fsync_interval_ms,
                segment_bytes: config.segment_bytes,
                start_position: crate::wal::Position(cut),
            };
            let (wal, records) = open_wal(options, lock.clone(), on_fatal)?;
            for (position, bytes) in records {
                // Before the cut only bodies count: a record after it may refer to one
                // (see Broker::checkpoint).
                let before_cut = position.0 <= cut;
                if before_cut && !Record::may_hold_body(&bytes) {
                    continue;
                }
                match Record::decode(&bytes) {
                    Ok(record) if before_cut => state.apply_bodies(record),
                    Ok(record) => {
                        state.apply(record);
                        recovery.log_records += 1;
                    }
                    Err(e) => {
                        recovery.bad_records += 1;
                        tracing::error!(position = position.0, error = %e, "journal record does not decode: skipped");
                    }
                }
            }
            Some(wal)
        }
    };
    let dropped = state.finish();
    if dropped > 0 {
        // Steps another thread logged for messages whose Out record, held back by the
        // publisher's thread, never became durable (`journal::state`).
        tracing::info!(dropped, "steps of messages never handed over dropped");
    }
    recovery.elapsed = started.elapsed();
    let journal = Journal::new(wal, dir.clone(), lock, config.max_disk_bytes);
    journal.recovered_cut(cut);
    journal.set_max_body_id(state.max_body_id);
    Ok((journal, state, recovery))
}

/// Applies the checkpoint in `dir` to `state`; returns its cut (0: none). A corrupt one is
/// moved aside.
fn read_checkpoint(
    dir: &Path,
    state: &mut State,
    recovery: &mut Recovery,
) -> Result<u64, OpenError> {
    match snapshot::read(dir) {
        Ok(None) => Ok(0),
        Ok(Some(snap)) => {
            recovery.checkpoint_records = snap.records.len() as u64;
            for record in snap.records {
                state.apply(record);
            }
            Ok(snap.cut)
        }
        Err(e) => {
            let path = dir.join(snapshot::FILE_NAME);
            let moved = snapshot::move_aside(&path).map_err(|source| OpenError::MoveAside {
                path: path.display().to_string(),
                source,
            })?;
            let reason = match &e {
                SnapshotError::Io { source, .. } => source.to_string(),
                SnapshotError::Corrupt { reason, .. } => reason.clone(),
            };
            tracing::error!(moved_to = %moved.display(), %reason, "checkpoint unreadable: moved aside, recovering from the log alone");
            Ok(0)
        }
    }
}

/// Opens the log; one that cannot be read is moved aside whole and a new one started.
fn open_wal(
    options: WalOptions,
    lock: Arc<DirLock>,
    on_fatal: OnFatal,
) -> Result<(Arc<Wal>, crate::wal::Replay), OpenError> {
    // `on_fatal` is needed for the second attempt too: share it.
    let on_fatal: Arc<dyn Fn(WalError) + Send + Sync> = Arc::from(on_fatal);
    let again = on_fatal.clone();
    match Wal::open(
        options.clone(),
        lock.clone(),
        Box::new(move |e| on_fatal(e)),
    ) {
        Ok(opened) => Ok(opened),
        Err(WalError::Io { op, path, source }) => {
            let aside = options
                .dir
                .join(format!("wal.corrupt-{}", super::unix_ms_now()));
            std::fs::create_dir_all(&aside).map_err(|e| WalError::io("create", &aside, e))?;
            for entry in std::fs::read_dir(&options.dir)
                .map_err(|e| WalError::io("read", &options.dir, e))?
            {
                let entry = entry.map_err(|e| WalError::io("read", &options.dir, e))?;
                let name = entry.file_name();
                let name_str = name.to_string_lossy();
                if name_str.ends_with(".wal") || name_str.ends_with(".wal.free") {
                    std::fs::rename(entry.path(), aside.join(&name))
                        .map_err(|e| WalError::io("move aside", &entry.path(), e))?;
                }
            }
            tracing::error!(%op, path = %path.display(), error = %source, moved_to = %aside.display(), "log unreadable: moved aside, starting a new one");
            Ok(Wal::open(options, lock, Box::new(move |e| again(e)))?)
        }
        Err(e) => Err(e.into()),
    }
}
