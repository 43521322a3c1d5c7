//! One frame for the records of one step. While a batch is open on this thread, the
//! records [`super::Journal::append_with`] is given go into it instead of the log; closing
//! it appends them as one [`super::record::Record::Batch`] frame, which a crash leaves in
//! the log whole or not at all (its CRC covers every record in it).
//!
//! The routing of an inbound QoS 2 message from a persistent session uses it: the copies
//! queued for subscribers and the publisher's received packet id are then either all
//! recovered or none, so the publisher's resend after a crash is routed exactly once.
//!
//! A record appended into a batch has no log position yet: its caller gets [`PENDING`],
//! and output that must wait for it is held until the batch is closed and its position
//! known (see `delivery::shared_writer`).

use std::cell::RefCell;

/// The position of a record appended into an open batch: not known until it closes.
pub const PENDING: u64 = u64::MAX;

/// Tag of a batch record (see `record.rs`).
pub(super) const BATCH_TAG: u8 = 16;

thread_local! {
    /// The open batch's encoding: the tag, the number of records (`u32 LE`, patched when
    /// it closes), then each record as `len: u32 LE | record`.
    static OPEN: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Opens a batch on this thread; false if one is open already (batches do not nest).
pub(super) fn begin() -> bool {
    OPEN.with_borrow_mut(|open| {
        if open.is_some() {
            return false;
        }
        *open = Some(vec![BATCH_TAG, 0, 0, 0, 0]);
        true
    })
}

/// Appends the record `encode` writes to the open batch and returns [`PENDING`]; gives
/// `encode` back when no batch is open.
pub(super) fn append<F: FnOnce(&mut Vec<u8>)>(encode: F) -> Result<u64, F> {
    OPEN.with_borrow_mut(|open| match open {
        Some(buf) => {
            let start = buf.len();
            buf.extend_from_slice(&[0; 4]);
            encode(buf);
            let len = (buf.len() - start - 4) as u32;
            buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            let count = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) + 1;
            buf[1..5].copy_from_slice(&count.to_le_bytes());
            Ok(PENDING)
        }
        None => Err(encode),
    })
}

/// Closes the open batch: its encoding, or `None` when it holds no record (or none is
/// open).
pub(super) fn take() -> Option<Vec<u8>> {
    OPEN.with_borrow_mut(Option::take)
        .filter(|buf| buf.len() > 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::Record;

    #[test]
    fn records_appended_in_a_batch_come_back_as_one_record() {
        assert!(append(|_| {}).is_err(), "no batch open");
        assert!(begin());
        assert!(!begin(), "batches do not nest");
        let records = [
            Record::Qos2Received {
                session: 1,
                packet_id: 9,
            },
            Record::Done { session: 2, seq: 3 },
        ];
        for r in &records {
            assert_eq!(append(|buf| r.encode(buf)).ok(), Some(PENDING));
        }
        let bytes = take().expect("two records");
        assert_eq!(Record::decode(&bytes), Ok(Record::Batch(records.to_vec())));
        assert!(append(|_| {}).is_err(), "closed");
        assert!(begin());
        assert_eq!(take(), None, "an empty batch is nothing to append");
    }
}
