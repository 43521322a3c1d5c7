//! What a connection's buffered output waits for in the journal ([`JournalHold`]): the
//! position all of it waits for, and a prefix of the buffer that waits only for an
//! earlier one.
//!
//! The prefix lets the acknowledgements of a publisher's earlier input buffers go once
//! their records are durable while those of its later buffers still wait. With one
//! position for the whole buffer, every new hold moved the wait of all the bytes before
//! it: a publisher whose acknowledgements were always a commit behind got none until it
//! stopped sending, so it sent its window and waited for it whole (`durability = "write"`
//! ran window-bound, with idle CPU).

use std::sync::Arc;

use super::shared_writer::SharedWriter;

/// See the module doc. One pointer in every connection's writer (whose size is kept
/// within an allocator size class): the positions are boxed at the first hold and kept
/// while the connection is active, since a connection that logs keeps logging.
#[derive(Debug, Default)]
pub(super) struct JournalHold(Option<Box<Holds>>);

#[derive(Debug, Default)]
struct Holds {
    /// Every buffered byte waits until the journal is durable this far (0: nothing).
    until: u64,
    /// The first `prefix_len` bytes wait only until here.
    prefix_until: u64,
    /// 0: no prefix.
    prefix_len: u32,
    /// The buffer's length when the last hold covered all of it and none of its bytes
    /// waited for records whose position was not known yet ([`UNSETTLED`]: unknown).
    /// Those bytes wait for `until` at most: the prefix the next higher hold leaves.
    settled_len: u32,
    /// The writer of the connection that took this one's session over while this one
    /// waited for records not appended yet: each such wait that ends here ends there too
    /// (`SharedWriter::hand_pending_holds_to`).
    successor: Option<Arc<SharedWriter>>,
}

/// `settled_len` when some buffered bytes wait for records not appended yet.
const UNSETTLED: u32 = u32::MAX;

/// What of the buffer may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ready {
    /// All of it.
    All,
    /// This many bytes at its start.
    Prefix(usize),
    /// Nothing before the journal is durable this far.
    Wait(u64),
}

impl JournalHold {
    /// The `len` bytes buffered so far wait until the journal is durable up to `position`
    /// (0: no further than before). `settled`: none of them waits for records whose
    /// position is not known yet.
    pub(super) fn raise(&mut self, position: u64, len: usize, settled: bool) {
        if position == 0 && self.0.is_none() {
            return; // nothing held: no prefix can come of it
        }
        self.0
            .get_or_insert_with(Box::default)
            .raise(position, len, settled);
    }

    /// What may go when the journal is durable up to `durable`; `whole`: whether
    /// everything else the buffer waits for (unknown positions, the cluster) allows all of
    /// it to go.
    pub(super) fn ready(&self, durable: u64, whole: bool) -> Ready {
        match &self.0 {
            Some(holds) => holds.ready(durable, whole),
            None if whole => Ready::All,
            None => Ready::Wait(0),
        }
    }

    /// The whole buffer was taken (or dropped).
    pub(super) fn clear(&mut self) {
        if let Some(holds) = &mut self.0 {
            let successor = holds.successor.take();
            **holds = Holds {
                successor,
                ..Holds::default()
            };
        }
    }

    /// Lets go of the boxed positions (an idle connection with nothing buffered: no byte
    /// waits for them), unless a successor waits with this writer.
    pub(super) fn release(&mut self) {
        if self.0.as_ref().is_none_or(|h| h.successor.is_none()) {
            self.0 = None;
        }
    }

    /// Each wait for held records that ends from now on ends for `next` too.
    pub(super) fn set_successor(&mut self, next: Arc<SharedWriter>) {
        self.0.get_or_insert_with(Box::default).successor = Some(next);
    }

    /// The successor, if any; with `last`, forgotten (no wait is left to pass on).
    pub(super) fn successor(&mut self, last: bool) -> Option<Arc<SharedWriter>> {
        let holds = self.0.as_mut()?;
        if last {
            holds.successor.take()
        } else {
            holds.successor.clone()
        }
    }

    /// The prefix was taken: the rest waits as before.
    pub(super) fn took_prefix(&mut self) {
        if let Some(holds) = &mut self.0 {
            holds.took_prefix();
        }
    }
}

impl Holds {
    fn raise(&mut self, position: u64, len: usize, settled: bool) {
        if position > self.until {
            if self.until != 0 && self.settled_len != UNSETTLED && self.settled_len > 0 {
                // Those bytes need no more than the hold they had (and any older prefix
                // is part of them).
                self.prefix_len = self.settled_len;
                self.prefix_until = self.until;
            }
            self.until = position;
        }
        self.settled_len = if settled {
            u32::try_from(len).unwrap_or(UNSETTLED)
        } else {
            UNSETTLED
        };
    }

    fn ready(&self, durable: u64, whole: bool) -> Ready {
        if whole && self.until <= durable {
            Ready::All
        } else if self.prefix_len > 0 && self.prefix_until <= durable {
            Ready::Prefix(self.prefix_len as usize)
        } else if self.prefix_len > 0 {
            Ready::Wait(self.prefix_until)
        } else {
            Ready::Wait(self.until)
        }
    }

    fn took_prefix(&mut self) {
        if self.settled_len != UNSETTLED {
            self.settled_len = self.settled_len.saturating_sub(self.prefix_len);
        }
        self.prefix_len = 0;
        self.prefix_until = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_bytes_go_when_their_own_hold_is_durable() {
        let mut hold = JournalHold::default();
        hold.raise(100, 10, true);
        assert_eq!(hold.ready(99, true), Ready::Wait(100));
        hold.raise(200, 25, true);
        assert_eq!(hold.ready(99, true), Ready::Wait(100));
        assert_eq!(hold.ready(150, true), Ready::Prefix(10));
        assert_eq!(hold.ready(200, true), Ready::All);
        hold.took_prefix();
        assert_eq!(hold.ready(150, true), Ready::Wait(200));
        hold.raise(300, 40, true);
        assert_eq!(
            hold.ready(250, true),
            Ready::Prefix(15),
            "what was left needs 200"
        );
        hold.clear();
        assert_eq!(hold.ready(0, true), Ready::All);
        hold.release();
        assert_eq!(hold.ready(0, false), Ready::Wait(0));
    }

    #[test]
    fn bytes_waiting_for_unknown_positions_are_never_in_a_prefix() {
        let mut hold = JournalHold::default();
        hold.raise(100, 10, false);
        hold.raise(200, 25, true);
        assert_eq!(hold.ready(150, true), Ready::Wait(200));
        hold.raise(300, 40, true);
        assert_eq!(hold.ready(250, true), Ready::Prefix(25));
        assert_eq!(hold.ready(300, false), Ready::Prefix(25), "only the prefix");
    }

    #[test]
    fn no_prefix_before_a_first_hold_nor_for_a_lower_one() {
        let mut hold = JournalHold::default();
        hold.raise(100, 10, true);
        hold.raise(50, 20, true);
        assert_eq!(hold.ready(60, true), Ready::Wait(100));
        hold.raise(0, 30, true);
        assert_eq!(hold.ready(100, true), Ready::All);
    }
}
