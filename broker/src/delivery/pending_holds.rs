//! Output held for journal records this thread holds back (an open atomic batch, the
//! deferred records of one input buffer: `journal::batch`), whose log position is not known
//! until they are appended as one frame. It owns the thread's list of the writers it holds
//! that way, one entry per writer and kind of buffer however many records they wait for,
//! and their release when the frame is appended.
//!
//! A hold is either *durable* (an acknowledgement, a QoS 2 PUBLISH: the output waits until
//! the frame is durable) or *ordered* (a QoS 1 PUBLISH whose Out record is held back: the
//! output waits only until the frame is appended, so that whatever the client answers is
//! logged after it; a QoS 1 PUBLISH never waited for the disk).

use std::collections::HashMap;
use std::sync::Arc;

use super::shared_writer::SharedWriter;
use crate::journal::batch::{is_pending, PENDING};

/// One writer held for one kind of buffer.
struct Holder {
    writer: Arc<SharedWriter>,
    durable: bool,
}

/// The writers held for one kind of buffer, and where each is in the list.
#[derive(Default)]
struct Holders {
    list: Vec<Holder>,
    index: HashMap<usize, usize, foldhash::fast::FixedState>,
}

impl Holders {
    /// The entry of `writer`, if it is held: made durable with `durable`.
    fn note_again(&mut self, writer: &SharedWriter, durable: bool) -> bool {
        let key = std::ptr::from_ref(writer) as usize;
        let at = match self.list.last() {
            Some(last) if std::ptr::eq(&*last.writer, writer) => Some(self.list.len() - 1),
            _ => self.index.get(&key).copied(),
        };
        match at {
            Some(at) => {
                self.list[at].durable |= durable;
                true
            }
            None => false,
        }
    }

    fn push(&mut self, writer: &Arc<SharedWriter>, durable: bool) {
        let key = Arc::as_ptr(writer) as usize;
        self.index.insert(key, self.list.len());
        self.list.push(Holder {
            writer: writer.clone(),
            durable,
        });
    }
}

thread_local! {
    /// Writers held for the open atomic batch ([`PENDING`]) and for the deferred records.
    static HOLDERS: std::cell::RefCell<[Holders; 2]> =
        std::cell::RefCell::new([Holders::default(), Holders::default()]);
}

fn slot(kind: u64) -> usize {
    usize::from(kind != PENDING)
}

/// Whether `writer` is held for this thread's buffer of `kind` already (then it is made a
/// durable hold with `durable`); false means the caller must [`hold`] it.
pub fn is_held(writer: &SharedWriter, kind: u64, durable: bool) -> bool {
    HOLDERS.with_borrow_mut(|holders| holders[slot(kind)].note_again(writer, durable))
}

/// Registers `writer`, not held yet for this thread's buffer of `kind`; true when the
/// caller must count one more pending hold in it (under its lock).
pub(super) fn register(writer: &Arc<SharedWriter>, kind: u64, durable: bool) -> bool {
    debug_assert!(is_pending(kind));
    HOLDERS.with_borrow_mut(|holders| {
        let holders = &mut holders[slot(kind)];
        if holders.note_again(writer, durable) {
            return false;
        }
        holders.push(writer, durable);
        true
    })
}

/// Holds `writer`'s output until this thread's buffer of `kind` is appended (and, with
/// `durable`, durable), unless it is held for it already: one lock of the writer per
/// buffer, however many records it waits for.
pub fn hold(writer: &Arc<SharedWriter>, kind: u64, durable: bool) {
    if !is_held(writer, kind, durable) {
        writer.lock().hold_for_held_records(writer, kind, durable);
    }
}

/// The records of `kind` this thread held back were appended at `position` (0: there
/// were none): every durable hold of that kind becomes a hold until that position, every
/// ordered one ends, and the writers' connections are woken to look again.
///
/// The list is taken out while the writers are released (no borrow of this thread's
/// holders across their locks and wake-ups) and its allocation put back after.
pub fn release(kind: u64, position: u64) {
    let Some(mut holders) = HOLDERS.with_borrow_mut(|holders| {
        let holders = &mut holders[slot(kind)];
        holders.index.clear();
        (!holders.list.is_empty()).then(|| std::mem::take(&mut holders.list))
    }) else {
        return;
    };
    for Holder { writer, durable } in holders.drain(..) {
        let position = if durable { position } else { 0 };
        // And the writers of connections that took its session over meanwhile.
        let mut next = Some(writer);
        while let Some(writer) = next.take() {
            next = writer.lock().end_pending_hold(position);
            writer.control().wake();
        }
    }
    HOLDERS.with_borrow_mut(|kept| {
        let list = &mut kept[slot(kind)].list;
        if list.is_empty() {
            *list = holders;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use tokio::time::Instant;

    use super::*;
    use crate::delivery::shared_writer::{Reached, SharedWriter};
    use crate::journal::batch::DEFERRED;

    fn journal(journal: u64) -> Reached {
        Reached {
            journal,
            cluster: u64::MAX,
        }
    }

    /// A session taken over while its old connection's output waits for a publisher's
    /// held-back records: the new connection's output waits for them too, until they are
    /// appended and durable (else a QoS 2 message could reach the client before its record
    /// is durable, and come twice after a crash).
    #[test]
    fn a_takeover_passes_waits_for_held_records_to_the_new_writer() {
        let old = Arc::new(SharedWriter::new(1024));
        let new = Arc::new(SharedWriter::new(1024));
        old.append(3, true, Instant::now(), |b| b.extend_from_slice(b"pub"));
        hold(&old, DEFERRED, true);
        assert!(old.has_pending_holds());
        old.hand_pending_holds_to(&new);
        new.append(3, true, Instant::now(), |b| b.extend_from_slice(b"dup"));
        let mut out = BytesMut::new();
        assert_eq!(
            new.take_durable(&mut out, Reached::ALL)
                .map_err(|h| h.journal),
            Err(crate::journal::batch::PENDING),
            "the records are not appended yet"
        );
        release(DEFERRED, 500);
        assert!(!old.has_pending_holds());
        let held = new.take_durable(&mut out, journal(499));
        assert_eq!(
            held.map_err(|h| h.journal),
            Err(500),
            "appended, not durable"
        );
        assert_eq!(new.take_durable(&mut out, journal(500)), Ok(true));
        assert_eq!(&out[..], b"dup");
        new.append(3, true, Instant::now(), |b| b.extend_from_slice(b"new"));
        hold(&old, DEFERRED, true);
        release(DEFERRED, 600);
        let mut out = BytesMut::new();
        assert_eq!(
            new.take_durable(&mut out, journal(500)),
            Ok(true),
            "nothing passed on once the takeover's waits ended"
        );
    }
}
