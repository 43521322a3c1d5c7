//! The guard of the journal records a connection's thread holds back while it handles one
//! input buffer or one QoS 2 routing ([`crate::journal::batch`]): it owns nothing but the
//! moment the held records go into the log as one frame.

use crate::broker::Broker;

/// Journal records this thread holds back ([`crate::journal::batch`]): an atomic batch
/// ([`crate::journal::batch::PENDING`], one QoS 2 routing) or the deferred steps of one
/// input buffer (`DEFERRED`). Closed when dropped (also on unwinding, so that this thread's later
/// records never land in a forgotten buffer): the records are appended as one frame and
/// the output they held is given its position.
pub(super) struct HeldRecords {
    broker: Broker,
    kind: u64,
}

impl HeldRecords {
    pub(super) fn begin(broker: &Broker, kind: u64) -> Option<HeldRecords> {
        broker
            .journal()
            .is_some_and(|journal| journal.begin_held(kind))
            .then(|| HeldRecords {
                broker: broker.clone(),
                kind,
            })
    }
}

impl Drop for HeldRecords {
    fn drop(&mut self) {
        let position = self.broker.journal().map_or(0, |j| j.end_held(self.kind));
        crate::delivery::pending_holds::release(self.kind, position);
    }
}
