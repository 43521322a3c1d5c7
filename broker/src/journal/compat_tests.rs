//! Recovery equivalence of the two record encodings: the same operations written in the
//! fixed-width form of older brokers (`record/legacy.rs`) and in the compact form of
//! today's (`record/compact.rs`, runs in deferred batches) recover the same state, also
//! when a log holds both (a broker upgraded on an existing data directory).

use bytes::Bytes;
use tern_codec::Family;

use super::batch;
use super::record::{legacy, OutRecord, Record, Step, StoredMessage};
use super::state::{OutStage, State};
use crate::wal::tests::temp_dir;

/// One thing the broker writes into the log.
enum Op {
    /// A record, written as it is.
    Rec(Record),
    /// An out record that carries its message's body.
    OutWithBody(OutRecord, StoredMessage),
    /// The steps one connection's read buffer caused, appended as one deferred frame.
    Deferred(Vec<(u64, u64, Step)>),
}

fn message(n: u8, family: Family) -> StoredMessage {
    StoredMessage {
        received_unix_ms: 1_765_000_000_000 + u64::from(n),
        origin_session: u64::from(n % 3),
        publish: Bytes::from(vec![0x32, 4, 0, 1, b't', n]),
        family,
    }
}

fn out(session: u64, seq: u64, packet_id: u16, body: u64) -> OutRecord {
    OutRecord {
        session,
        seq,
        qos: 1 + (seq % 2) as u8,
        retain: seq.is_multiple_of(3),
        packet_id,
        subscription_ids: if seq.is_multiple_of(2) {
            vec![7, 300_000]
        } else {
            vec![]
        },
        group: (session == 2).then(|| "$share/g/t".to_owned()),
        body,
    }
}

fn open(session: u64) -> Op {
    Op::Rec(Record::SessionOpen {
        session,
        client_id: format!("c{session}"),
        expiry_secs: 3600,
    })
}

/// Sessions 1 to 3; body 10 shared by sessions 1 and 2 (stored once); messages queued and
/// sent at once; sent from the queue, PUBREC'd (PUBREL owed), finished out of order; an
/// inbound QoS 2 id; a session that ends; retained messages.
fn history() -> Vec<Op> {
    use Step::{Done, Released, Sent};
    vec![
        open(1),
        open(2),
        open(3),
        Op::OutWithBody(out(1, 1, 1, 10), message(10, Family::V5)),
        Op::Rec(Record::Out(Box::new(out(2, 1, 0, 10)))),
        Op::OutWithBody(out(1, 2, 2, 11), message(11, Family::V3)),
        Op::OutWithBody(out(1, 3, 0, 12), message(12, Family::V5)),
        Op::OutWithBody(out(1, 4, 0, 13), message(13, Family::V5)),
        Op::OutWithBody(out(3, 1 << 40, 9, 14), message(14, Family::V5)),
        Op::Rec(Record::Body {
            id: 1 << 35,
            message: message(15, Family::V5),
        }),
        Op::Rec(Record::Out(Box::new(out(3, (1 << 40) + 1, 0, 1 << 35)))),
        Op::Rec(Record::Qos2Received {
            session: 1,
            packet_id: 77,
        }),
        Op::Deferred(vec![
            (1, 2, Done),
            (1, 1, Done),
            (2, 1, Sent(65535)),
            (1, 3, Sent(3)),
            (1, 4, Sent(4)),
            (1, 3, Released),
            (3, 1 << 40, Released),
        ]),
        Op::Rec(Record::Retain {
            topic: "r/1".into(),
            message: Some(message(20, Family::V5)),
        }),
        Op::Deferred(vec![(1, 4, Done), (3, 1 << 40, Done), (2, 1, Done)]),
        Op::Rec(Record::Done { session: 2, seq: 5 }),
        Op::Rec(Record::SessionEnd { session: 2 }),
        Op::Rec(Record::Sent {
            session: 3,
            seq: (1 << 40) + 1,
            packet_id: 12,
        }),
    ]
}

/// `op` as an older broker wrote it.
fn old_frame(op: &Op) -> Vec<u8> {
    let mut buf = Vec::new();
    match op {
        Op::Rec(record) => legacy::encode(record, &mut buf),
        Op::OutWithBody(out, message) => legacy::encode_out(out, Some(message), &mut buf),
        Op::Deferred(steps) => {
            let records = steps.iter().map(|&(s, seq, step)| step.record(s, seq));
            legacy::encode(&Record::Batch(records.collect()), &mut buf);
        }
    }
    buf
}

/// `op` as this broker writes it.
fn new_frame(op: &Op) -> Vec<u8> {
    let mut buf = Vec::new();
    match op {
        Op::Rec(record) => record.encode(&mut buf),
        Op::OutWithBody(out, message) => out.parts(Some(message.as_stored_ref())).encode(&mut buf),
        Op::Deferred(steps) => {
            assert!(batch::begin(batch::DEFERRED));
            for &(session, seq, step) in steps {
                assert!(batch::append_step(batch::DEFERRED, session, seq, step).is_some());
            }
            buf = batch::take(batch::DEFERRED)
                .expect("steps")
                .record()
                .to_vec();
        }
    }
    buf
}

fn replay<'a>(frames: impl IntoIterator<Item = &'a Vec<u8>>) -> State {
    let mut state = State::default();
    for frame in frames {
        state.apply(Record::decode(frame).expect("decodes"));
    }
    state
}

#[test]
fn old_and_new_encodings_recover_the_same_state() {
    let history = history();
    let old: Vec<Vec<u8>> = history.iter().map(old_frame).collect();
    let new: Vec<Vec<u8>> = history.iter().map(new_frame).collect();
    let from_old = replay(&old);
    assert_eq!(replay(&new), from_old);
    // The state is the one the history describes.
    let s1 = &from_old.sessions[&1];
    assert_eq!(s1.outbound.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert_eq!(s1.outbound[&3].stage, OutStage::Released(3));
    assert_eq!(s1.qos2_in.iter().copied().collect::<Vec<_>>(), vec![77]);
    assert!(!from_old.sessions.contains_key(&2), "ended");
    let s3 = &from_old.sessions[&3];
    assert_eq!(s3.outbound[&((1 << 40) + 1)].stage, OutStage::Sent(12));
    assert_eq!(s3.outbound[&((1 << 40) + 1)].record.body, 1 << 35);
    assert_eq!(from_old.bodies[&10], message(10, Family::V5));
    assert_eq!(from_old.bodies[&11].family, Family::V3);
    assert_eq!(from_old.max_body_id, 1 << 35);
    // A log written partly by an older broker, then by this one, recovers the same too.
    for upgrade_at in 0..=history.len() {
        let mixed = old[..upgrade_at].iter().chain(&new[upgrade_at..]);
        assert_eq!(replay(mixed), from_old, "upgraded at {upgrade_at}");
    }
    // The compact form is smaller.
    let bytes = |frames: &[Vec<u8>]| frames.iter().map(Vec::len).sum::<usize>();
    assert!(
        bytes(&new) * 10 < bytes(&old) * 7,
        "{} vs {}",
        bytes(&new),
        bytes(&old)
    );
}

/// A data directory whose log an older broker wrote, then this one after an upgrade,
/// recovers through `open` what the history describes.
#[test]
fn an_older_brokers_log_recovers_through_open() {
    let history = history();
    let expected = replay(&history.iter().map(old_frame).collect::<Vec<_>>());
    let dir = temp_dir("journal-compat");
    let on_fatal = || -> crate::wal::OnFatal { Box::new(|_| {}) };
    for (i, op) in history.iter().enumerate() {
        let (journal, _, _) =
            super::open::open(&crate::test_support::persistence_config(&dir), on_fatal())
                .expect("opens");
        let frame = if i < history.len() / 2 {
            old_frame(op)
        } else {
            new_frame(op)
        };
        journal.append_with(|buf| buf.extend_from_slice(&frame));
        journal.close().expect("closes");
    }
    let (journal, mut state, recovery) =
        super::open::open(&crate::test_support::persistence_config(&dir), on_fatal())
            .expect("opens");
    assert_eq!(recovery.bad_records, 0);
    state.records = expected.records;
    assert_eq!(state, expected);
    journal.close().expect("closes");
}
