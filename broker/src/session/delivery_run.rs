//! Delivering a run of messages of one topic and QoS to one session at once: the
//! publisher's burst, matched once by the router ([`crate::router::Router::route_run`]),
//! delivered under one lock of the session's delivery state and, at QoS 0, written under
//! one lock of its writer. Owns no state: it is [`Delivery::deliver`] applied to each
//! message of the run, in order, with the work shared.

use std::sync::Arc;

use tern_codec::QoS;

use super::{DeliverCtx, Delivery};
use crate::message::Message;
use crate::session::write::write_qos0_run;

impl Delivery {
    /// Delivers `messages` (one topic, not retained, in the publisher's order) at `qos` (the
    /// subscription's, at most the messages'; never 2: QoS 2 is not run) with
    /// `subscription_ids`: as [`Delivery::deliver`] would one by one. At QoS 1 each message
    /// still takes its own way (window, queue, journal): the run saves the matching and the
    /// locking, not that.
    pub fn deliver_run(
        &mut self,
        messages: &[Arc<Message>],
        qos: QoS,
        subscription_ids: &[u32],
        ctx: DeliverCtx<'_>,
    ) {
        if qos == QoS::AtMostOnce {
            return self.deliver_qos0_run(messages, subscription_ids, ctx);
        }
        for message in messages {
            self.deliver_via(message, qos, false, subscription_ids, None, ctx);
        }
    }

    /// Delivers `messages` (not retained, one topic, in the publisher's order) at QoS 0
    /// with `subscription_ids`: as [`Delivery::deliver`] would one by one.
    fn deliver_qos0_run(
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
