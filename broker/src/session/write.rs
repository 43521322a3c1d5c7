//! Writing one outbound packet of a session into its connection's SharedWriter: a PUBLISH
//! (the shared template patched in place, or a one-shot encoding), or a PUBREL; and what
//! became of it (written, dropped for this subscriber, connection closing).

use tern_codec::template::encode_publish;
use tern_codec::{Family, Outbound, PacketId, PubRel, PublishQoS, QoS};

use super::delivery::{DeliverCtx, Link};
use crate::delivery::shared_writer::{note_pending_hold, Appended};
use crate::journal::batch::is_pending;
use crate::message::Message;
use crate::metrics::Metrics;

/// What happened to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Yes,
    /// Dropped for this subscriber: too large, expired, or over the cap (QoS 0).
    Dropped,
    /// The connection is closing.
    Closed,
}

pub(super) fn out_qos(qos: QoS, packet_id: PacketId) -> PublishQoS {
    if qos == QoS::ExactlyOnce {
        PublishQoS::ExactlyOnce(packet_id)
    } else {
        PublishQoS::AtLeastOnce(packet_id)
    }
}

/// Writes PUBREL; with a `hold`, the output waits until the journal is durable that far.
pub(super) fn write_pubrel(link: &Link, pubrel: PubRel, hold: u64) {
    let version = link.version;
    let mut guard = link.writer.lock();
    if !guard.is_closed() {
        pubrel.encode(version, guard.buf());
        guard.hold_until(hold);
        drop(guard);
        if is_pending(hold) {
            note_pending_hold(&link.writer, hold);
        }
    }
}

/// Encodes one PUBLISH into the link's writer (held until the journal is durable up to
/// `hold`, when not 0): the shared template patched in place, or a
/// one-shot encoding when this subscriber needs its own properties. Applies the client's
/// Maximum Packet Size, Message Expiry and (for QoS 0) the writer's byte cap.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_publish(
    link: &mut Link,
    message: &Message,
    out: PublishQoS,
    retain: bool,
    dup: bool,
    subscription_ids: &[u32],
    hold: u64,
    ctx: DeliverCtx<'_>,
) -> Written {
    let publish = message.publish();
    let remaining_expiry = match message.remaining_expiry_secs(ctx.now) {
        Some(Err(())) => {
            Metrics::add(&ctx.metrics.dropped_expired, 1);
            return Written::Dropped;
        }
        Some(Ok(secs)) => Some(secs),
        None => None,
    };
    let v5 = link.version.is_v5();
    let reduced_expiry = remaining_expiry
        .filter(|&r| Some(r) != publish.properties().message_expiry_interval_secs());
    let alias = if v5 {
        link.aliases.choose(publish.topic())
    } else {
        None
    };
    let own_properties =
        v5 && (!subscription_ids.is_empty() || alias.is_some() || reduced_expiry.is_some());
    let family = Family::of(link.version);
    let with_id = out.packet_id().is_some();
    let template = match (own_properties, ctx.cache_templates) {
        (true, _) => None,
        (false, true) => Some(message.templates.get(family, with_id)),
        // A replay: the shared template only if it costs no new encoding.
        (false, false) => message.templates.peek(family, with_id),
    };
    let capped = out == PublishQoS::AtMostOnce;
    let max_len = link.max_packet_size_bytes as usize;

    // The size and cap checks are the SharedWriter's (`WriteGuard::append_packet`).
    let mut guard = link.writer.lock();
    let appended = if let Some(template) = template {
        guard.append_packet(Some(template.len()), max_len, capped, ctx.now, |buf| {
            // The layout matches `out` by construction (same `packet_id().is_some()`).
            let _ = template.write_to(buf, out, retain, dup);
        })
    } else {
        let outbound = Outbound {
            subscription_identifiers: subscription_ids,
            topic_alias: alias.map(|(a, _)| a),
            omit_topic: alias.is_some_and(|(_, known)| known),
            message_expiry_interval_secs: reduced_expiry,
        };
        guard.append_packet(None, max_len, capped, ctx.now, |buf| {
            encode_publish(buf, publish, link.version, out, retain, dup, &outbound);
        })
    };
    // Most deliveries hold nothing (0): not persistent, or QoS 0/1.
    let held = hold != 0 && appended == Appended::Yes;
    if held {
        guard.hold_until(hold);
    }
    drop(guard);
    if held && is_pending(hold) {
        note_pending_hold(&link.writer, hold);
    }
    let written = account(link, message, appended, max_len, ctx);
    if written != Written::Yes {
        return written;
    }
    if let Some((alias, false)) = alias {
        link.aliases
            .map
            .get_or_insert_default()
            .insert(publish.shared_topic(), alias);
    }
    Written::Yes
}

/// Counts what became of one append: sent, too large for the client, or over the writer's
/// cap (a slow consumer, kicked once it has been stuck past `slow_consumer_timeout`).
fn account(
    link: &Link,
    message: &Message,
    appended: Appended,
    max_len: usize,
    ctx: DeliverCtx<'_>,
) -> Written {
    match appended {
        Appended::Yes => {
            Metrics::add(&ctx.metrics.messages_sent, 1);
            Written::Yes
        }
        Appended::Closed => Written::Closed,
        Appended::TooLarge(len) => {
            Metrics::add(&ctx.metrics.dropped_too_large_for_client, 1);
            tracing::debug!(
                topic = message.topic(),
                len,
                max_len,
                "message too large for client: dropped"
            );
            Written::Dropped
        }
        Appended::OverCap(stuck_since) => {
            Metrics::add(&ctx.metrics.dropped_qos0_slow_consumer, 1);
            if ctx.now.duration_since(stuck_since) >= ctx.slow_consumer_timeout {
                link.writer.control().kick(crate::error::Kick::SlowConsumer);
            }
            Written::Dropped
        }
    }
}
