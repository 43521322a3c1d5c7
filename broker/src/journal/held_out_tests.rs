//! Out records held back with a connection's input buffer (`batch.rs`): one frame for the
//! buffer, bodies stored once in it, and never referred to from a frame that may land
//! without them.

use std::sync::Arc;

use tern_codec::QoS;
use tokio::time::Instant;

use super::batch::{self, DEFERRED};
use super::record::{OutParts, Record};
use super::{open, take_appended, Journal};
use crate::config::{Durability, PersistenceConfig};
use crate::message::Message;
use crate::wal::tests::temp_dir;

fn config(dir: &std::path::Path) -> PersistenceConfig {
    PersistenceConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        durability: Durability::Write,
        fsync_interval_ms: 1000,
        checkpoint_interval_secs: 3600,
        segment_bytes: 1 << 20,
        max_disk_bytes: 0,
    }
}

fn opened(dir: &std::path::Path) -> (Journal, super::state::State) {
    let on_fatal: crate::wal::OnFatal = Box::new(|_| {});
    let (journal, state, _) = open::open(&config(dir), on_fatal).expect("opens");
    (journal, state)
}

/// Logs `message` handed to `session` as number `seq`, queued.
fn out(journal: &Journal, session: u64, seq: u64, message: &Arc<Message>, defer: bool) -> u64 {
    journal.append_out(message, Instant::now(), defer, |dst, body, inline| {
        OutParts {
            session,
            seq,
            qos: 1,
            retain: false,
            packet_id: 0,
            subscription_ids: &[],
            group: None,
            body,
            inline,
        }
        .encode(dst);
    })
}

fn open_sessions(journal: &Journal) {
    for session in [1, 2] {
        journal.append(&Record::SessionOpen {
            session,
            client_id: format!("c{session}"),
            expiry_secs: 60,
        });
    }
}

#[test]
fn outs_of_one_buffer_are_one_frame_with_each_body_once() {
    let dir = temp_dir("held-outs");
    let (journal, _) = opened(&dir);
    open_sessions(&journal);
    let before = journal.appended();
    take_appended();
    let messages: Vec<_> = (0..3)
        .map(|_| crate::test_support::message("t", QoS::AtLeastOnce, false, None))
        .collect();
    assert!(journal.begin_held(DEFERRED));
    for (i, message) in messages.iter().enumerate() {
        for session in [1, 2] {
            assert_eq!(
                out(&journal, session, i as u64 + 1, message, true),
                DEFERRED
            );
        }
    }
    assert_eq!(journal.appended(), before, "nothing appended yet");
    assert_eq!(take_appended(), DEFERRED, "what waits for them is held");
    let position = journal.end_held(DEFERRED);
    assert!(position > before);
    let carried = messages.iter().map(|m| {
        m.journal_body
            .position
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    assert!(
        carried.into_iter().all(|p| p == position),
        "bodies know their frame"
    );
    journal.close().expect("closes");
    drop(journal);
    let (journal, state) = opened(&dir);
    assert_eq!(state.bodies.len(), 3, "each body stored once");
    for session in [1, 2] {
        assert_eq!(state.sessions[&session].outbound.len(), 3);
    }
    journal.close().expect("closes");
}

/// A record that does not go into the buffer holding a message's body carries the body
/// again: the buffer's frame may land after it, or never (a crash before it is appended).
#[test]
fn a_record_outside_the_buffer_holding_a_body_carries_it_again() {
    let dir = temp_dir("held-body");
    let (journal, _) = opened(&dir);
    open_sessions(&journal);
    let message = crate::test_support::message("t", QoS::AtLeastOnce, false, None);
    assert!(journal.begin_held(DEFERRED));
    assert_eq!(out(&journal, 1, 1, &message, true), DEFERRED);
    // Straight into the log (a session without a connection) while the buffer is open.
    let straight = out(&journal, 2, 1, &message, false);
    assert!(!batch::is_pending(straight));
    // The buffer is lost (a crash before the end of the input buffer).
    assert!(batch::take(DEFERRED).is_some());
    journal.close().expect("closes");
    drop(journal);
    let (journal, state) = opened(&dir);
    let entry = &state.sessions[&2].outbound[&1];
    assert!(
        state.bodies.contains_key(&entry.record.body),
        "body stored with it"
    );
    assert!(state.sessions[&1].outbound.is_empty(), "never appended");
    journal.close().expect("closes");
}
