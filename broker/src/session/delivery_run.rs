//! Delivering a run of QoS 0 messages of one topic to one session at once: the publisher's
//! burst, matched once by the router ([`crate::router::Router::route_run`]) and written
//! under one lock of the session's writer. Owns no state: it is [`Delivery::deliver`]
//! applied to each message of the run, in order, with the work shared.

use std::sync::Arc;

use tern_codec::QoS;

use super::{DeliverCtx, Delivery};
use crate::message::Message;
use crate::session::write::write_qos0_run;

impl Delivery {
    /// Delivers `messages` (QoS 0, not retained, one topic, in the publisher's order) at
    /// QoS 0 with `subscription_ids`: as [`Delivery::deliver`] would one by one.
    pub fn deliver_qos0_run(
        &mut self,
        messages: &[Arc<Message>],
        subscription_ids: &[u32],
        ctx: DeliverCtx<'_>,
    ) {
        if self.flow().replays.is_some() {
            // Retained messages these must not overtake go first, message by message.
            for message in messages {
                self.deliver(message, QoS::AtMostOnce, false, subscription_ids, ctx);
            }
            return;
        }
        // QoS 0 is not queued for offline sessions (as Mosquitto by default).
        if let Some(link) = self.link.as_mut() {
            write_qos0_run(link, messages, subscription_ids, ctx);
        }
    }
}
