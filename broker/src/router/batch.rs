//! Routing a run of messages at once: consecutive PUBLISH packets of one publisher to one
//! topic with one QoS, 0 or 1, not retained (a burst, read from one buffer). The trie is
//! walked once for the run, and each matching session takes the whole run under one lock
//! of its delivery state (QoS 0: and one of its writer), which is where fan-out spends its
//! time (the release of each subscriber's writer lock, per message, dominated the
//! profile), and where fan-in contends (every publisher's thread locks the one
//! subscriber's delivery state).
//!
//! Every message still reaches every subscriber as if routed alone, in the publisher's
//! order: the deliveries of a run depend only on the topic, the publisher's session (No
//! Local) and the QoS, which the messages share; a QoS 1 delivery is still made message
//! by message (window, queue, journal), only under one lock. A shared group picks a
//! member per message, so a run that meets one goes message by message. QoS 2 is never
//! run: its PUBREC goes with the journal frame of its own message (`connection/publish.rs`).

use std::sync::Arc;

use super::{deliver_targets, deliver_to_bridges, Deliveries, RouteScratch, Router};
use crate::message::Message;
use crate::session::delivery::DeliverCtx;

impl Router {
    /// Delivers `messages` (one QoS, 0 or 1, not retained, one topic and one publisher, in
    /// order) to
    /// every matching subscriber, as [`Router::route`] would each; returns how many
    /// deliveries (sessions and bridge sinks, counted per message) were made.
    pub fn route_run(
        &self,
        messages: &[Arc<Message>],
        scratch: &mut RouteScratch,
        ctx: DeliverCtx<'_>,
    ) -> usize {
        let first = match messages {
            [] => return 0,
            // One message is routed as such (a shared group then costs no second walk).
            [one] => return self.route(one, scratch, ctx),
            [first, ..] => first,
        };
        debug_assert!(messages.iter().all(|m| is_run_member(m, first)));
        if !self.collect(first, scratch, ctx, true) {
            return messages
                .iter()
                .map(|message| self.route(message, scratch, ctx))
                .sum();
        }
        let sessions = deliver_targets(Deliveries::Run(messages), scratch, ctx);
        let delivered = sessions * messages.len();
        delivered + deliver_to_bridges(messages, &mut scratch.bridges, ctx.metrics)
    }
}

/// Whether `message` may be part of a run: QoS 0 or 1, not retained.
pub(crate) fn can_run(message: &Message) -> bool {
    let publish = message.publish();
    publish.qos() != tern_codec::QoS::ExactlyOnce && !publish.retain
}

/// Whether `message` may join a run that `first` started: [`can_run`], the same QoS, topic
/// and publisher.
pub(crate) fn is_run_member(message: &Message, first: &Message) -> bool {
    can_run(message)
        && message.qos() == first.qos()
        && message.origin_session == first.origin_session
        && message.publish().topic() == first.publish().topic()
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
