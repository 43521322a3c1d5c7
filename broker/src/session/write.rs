//! Writing one outbound packet of a session into its connection's SharedWriter: a PUBLISH
//! (the shared template patched in place, or a one-shot encoding), or a PUBREL; and what
//! became of it (written, dropped for this subscriber, connection closing).

use tern_codec::template::{encode_publish, PublishTemplate};
use tern_codec::{Family, Outbound, PacketId, PubRel, PublishQoS, QoS};

use super::delivery::{DeliverCtx, Link};
use crate::delivery::shared_writer::{Appended, SharedWriter, WriteGuard};
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
        hold_durable(&mut guard, &link.writer, hold);
    }
}

/// Holds what `guard` (the lock of `writer`) buffered until the journal is durable up to
/// `hold` (0: nothing), also when that is a position not known yet (held records).
fn hold_durable(guard: &mut WriteGuard<'_>, writer: &std::sync::Arc<SharedWriter>, hold: u64) {
    if is_pending(hold) {
        guard.hold_for_held_records(writer, hold, true);
    } else {
        guard.hold_until(hold);
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
    let alias = choose_alias(link, message);
    let Some(prepared) = prepare(link, message, out, subscription_ids, alias, ctx) else {
        return Written::Dropped;
    };
    let mut guard = link.writer.lock();
    let appended = append(
        &mut guard,
        link,
        &prepared,
        message,
        (out, retain, dup),
        ctx,
    );
    // Most deliveries hold nothing (0): not persistent, or QoS 0/1.
    if hold != 0 && appended == Appended::Yes {
        hold_durable(&mut guard, &link.writer, hold);
    }
    drop(guard);
    let written = account(&link.writer, message, appended, prepared.max_len, ctx);
    if written == Written::Yes {
        Metrics::add(&ctx.metrics.messages_sent, 1);
        remember_alias(link, message, alias);
    }
    written
}

/// Writes a run of QoS 0 messages of one topic (not retained) into the link's writer under
/// one lock, in order: what [`write_publish`] does for each, with one lock, one wake of the
/// connection and one count for the run. A topic alias the first written message makes
/// known is used by the ones after it (topic omitted, [MQTT-3.3.2-12]).
pub(super) fn write_qos0_run(
    link: &mut Link,
    messages: &[std::sync::Arc<Message>],
    subscription_ids: &[u32],
    ctx: DeliverCtx<'_>,
) {
    let Some(first) = messages.first() else {
        return;
    };
    let chosen = choose_alias(link, first);
    let mut alias = chosen;
    let out = PublishQoS::AtMostOnce;
    let mut sent = 0u64;
    let mut guard = link.writer.lock();
    for message in messages {
        let Some(prepared) = prepare(link, message, out, subscription_ids, alias, ctx) else {
            continue;
        };
        let appended = append(
            &mut guard,
            link,
            &prepared,
            message,
            (out, false, false),
            ctx,
        );
        match account(&link.writer, message, appended, prepared.max_len, ctx) {
            Written::Yes => {
                sent += 1;
                // The client knows the alias once one PUBLISH carried it with the topic.
                alias = alias.map(|(a, _)| (a, true));
            }
            Written::Dropped => {}
            Written::Closed => break,
        }
    }
    drop(guard);
    if sent > 0 {
        remember_alias(link, first, chosen);
    }
    Metrics::add(&ctx.metrics.messages_sent, sent);
}

/// The outbound topic alias for `message` on `link`, and whether the client knows it.
#[inline(always)]
fn choose_alias(link: &Link, message: &Message) -> Option<(u16, bool)> {
    if link.version.is_v5() {
        link.aliases.choose(message.publish().topic())
    } else {
        None
    }
}

/// Records an alias the client learnt from a PUBLISH just written.
#[inline(always)]
fn remember_alias(link: &mut Link, message: &Message, alias: Option<(u16, bool)>) {
    if let Some((alias, false)) = alias {
        link.aliases
            .map
            .get_or_insert_default()
            .insert(message.publish().shared_topic(), alias);
    }
}

/// What encoding one PUBLISH for one subscriber takes, decided before the writer's lock.
struct Prepared<'m> {
    /// The shared template, or `None`: a one-shot encoding with these properties.
    template: Option<PublishTemplate<'m>>,
    subscription_ids: &'m [u32],
    alias: Option<(u16, bool)>,
    reduced_expiry: Option<u32>,
    max_len: usize,
}

/// Decides the encoding of `message` for `link`; `None` when it expired (counted).
#[inline(always)]
fn prepare<'m>(
    link: &Link,
    message: &'m Message,
    out: PublishQoS,
    subscription_ids: &'m [u32],
    alias: Option<(u16, bool)>,
    ctx: DeliverCtx<'_>,
) -> Option<Prepared<'m>> {
    let publish = message.publish();
    let remaining_expiry = match message.remaining_expiry_secs(ctx.now) {
        Some(Err(())) => {
            Metrics::add(&ctx.metrics.dropped_expired, 1);
            return None;
        }
        Some(Ok(secs)) => Some(secs),
        None => None,
    };
    let v5 = link.version.is_v5();
    let reduced_expiry = remaining_expiry
        .filter(|&r| Some(r) != publish.properties().message_expiry_interval_secs());
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
    Some(Prepared {
        template,
        subscription_ids,
        alias,
        reduced_expiry,
        max_len: link.max_packet_size_bytes as usize,
    })
}

/// Appends one prepared PUBLISH under the writer's lock (`flags`: the QoS layout, RETAIN,
/// DUP). The size and cap checks are the SharedWriter's (`WriteGuard::append_packet`).
#[inline(always)]
fn append(
    guard: &mut WriteGuard<'_>,
    link: &Link,
    prepared: &Prepared<'_>,
    message: &Message,
    (out, retain, dup): (PublishQoS, bool, bool),
    ctx: DeliverCtx<'_>,
) -> Appended {
    let capped = out == PublishQoS::AtMostOnce;
    if let Some(template) = prepared.template {
        guard.append_packet(
            Some(template.len()),
            prepared.max_len,
            capped,
            ctx.now,
            |buf| {
                // The layout matches `out` by construction (same `packet_id().is_some()`).
                let _ = template.write_to(buf, out, retain, dup);
            },
        )
    } else {
        let outbound = Outbound {
            subscription_identifiers: prepared.subscription_ids,
            topic_alias: prepared.alias.map(|(a, _)| a),
            omit_topic: prepared.alias.is_some_and(|(_, known)| known),
            message_expiry_interval_secs: prepared.reduced_expiry,
        };
        let publish = message.publish();
        guard.append_packet(None, prepared.max_len, capped, ctx.now, |buf| {
            encode_publish(buf, publish, link.version, out, retain, dup, &outbound);
        })
    }
}

/// Counts what became of one append: sent, too large for the client, or over the writer's
/// cap (a slow consumer, kicked once it has been stuck past `slow_consumer_timeout`).
#[inline(always)]
fn account(
    writer: &SharedWriter,
    message: &Message,
    appended: Appended,
    max_len: usize,
    ctx: DeliverCtx<'_>,
) -> Written {
    match appended {
        Appended::Yes => Written::Yes,
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
                writer.control().kick(crate::error::Kick::SlowConsumer);
            }
            Written::Dropped
        }
    }
}
