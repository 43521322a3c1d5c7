//! The judgement: from the [`LedgerData`] and the retained messages read back at the end,
//! what was lost, duplicated or reordered. Pure functions over recorded data.
//!
//! The rules, for every subscriber whose SUBACK arrived before a message was first sent,
//! and every message the broker acknowledged:
//! - it was delivered at least once (lost otherwise);
//! - at the QoS it was delivered with (the lower of the message's and the subscription's),
//!   QoS 2 at most once, whether acknowledged or not;
//! - first deliveries of acknowledged messages from one publisher come in the order sent;
//! - a retained topic holds the last acknowledged message of its publisher, or a later
//!   one.

use std::collections::{HashMap, HashSet};
use std::fmt;

use tern_codec::QoS;

use super::ledger::{LedgerData, MessageId, SubscriberLog};

/// At most this many examples of each kind are listed.
const EXAMPLES: usize = 10;

/// What the checker found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Broker starts (the first one included).
    pub starts: u32,
    /// Messages sent / acknowledged by the broker / refused with an error code.
    pub sent: u64,
    /// See `sent`.
    pub acked: u64,
    /// See `sent`.
    pub refused: u64,
    /// (subscriber, message) pairs owed: acknowledged after the subscription was.
    pub owed: u64,
    /// Deliveries recorded, all subscribers together.
    pub deliveries: u64,
    /// Owed and never delivered: (subscriber client id, message).
    pub lost: Vec<(String, MessageId)>,
    /// Total count of lost pairs (`lost` lists the first few).
    pub lost_count: u64,
    /// Delivered more than once at QoS 2: (subscriber, message, times, acknowledged) and
    /// how it happened.
    pub duplicates: Vec<(String, MessageId, u32, bool, String)>,
    /// Total count of QoS 2 duplicates.
    pub duplicate_count: u64,
    /// Of those, how many have the signature of a broker bug fixed since (a message sent
    /// before a restart delivered again under a new packet id after it: the routed copies
    /// journaled without the publisher's QoS 2 id). Shown to tell such a regression apart.
    pub known_bug_duplicates: u64,
    /// An acknowledged message first delivered after a later one of the same publisher:
    /// (subscriber, earlier message seen first, this one).
    pub out_of_order: Vec<(String, MessageId, MessageId)>,
    /// Total count of order violations.
    pub out_of_order_count: u64,
    /// Deliveries of ids never sent.
    pub phantoms: u64,
    /// Retained topics not holding their last acknowledged message or a later one:
    /// (topic, last acknowledged seq, what the topic held).
    pub retained_lost: Vec<(String, u64, Option<u64>)>,
    /// Subscriber reconnects that found their session gone after a SUBACK.
    pub subscriber_sessions_lost: u32,
    /// Publisher reconnects that found their session gone.
    pub publisher_sessions_lost: u32,
}

impl Report {
    /// Nothing acknowledged was lost, nothing duplicated or reordered.
    pub fn is_clean(&self) -> bool {
        self.lost_count == 0
            && self.duplicate_count == 0
            && self.out_of_order_count == 0
            && self.phantoms == 0
            && self.retained_lost.is_empty()
            && self.subscriber_sessions_lost == 0
    }

    /// Something acknowledged is missing: a message, a retained message or a session.
    pub fn loss_detected(&self) -> bool {
        self.lost_count > 0 || !self.retained_lost.is_empty() || self.subscriber_sessions_lost > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "starts {} | sent {} acked {} refused {} | owed {} delivered {} | lost {} dup(QoS 2) {} (known bug {}) out-of-order {} phantoms {} | retained lost {} | sessions lost: subscribers {} publishers {}",
            self.starts,
            self.sent,
            self.acked,
            self.refused,
            self.owed,
            self.deliveries,
            self.lost_count,
            self.duplicate_count,
            self.known_bug_duplicates,
            self.out_of_order_count,
            self.phantoms,
            self.retained_lost.len(),
            self.subscriber_sessions_lost,
            self.publisher_sessions_lost,
        )?;
        for (sub, m) in &self.lost {
            writeln!(f, "  lost: {sub} never got {m:?}")?;
        }
        for (sub, m, n, acked, how) in &self.duplicates {
            writeln!(
                f,
                "  duplicate: {sub} got {m:?} {n} times (acknowledged: {acked}): {how}"
            )?;
        }
        for (sub, before, m) in &self.out_of_order {
            writeln!(f, "  out of order: {sub} got {m:?} after {before:?}")?;
        }
        for (topic, acked, held) in &self.retained_lost {
            writeln!(
                f,
                "  retained: {topic} held {held:?}, last acknowledged {acked}"
            )?;
        }
        Ok(())
    }
}

/// Judges what was recorded. `retained` is what each retained topic held at the end.
pub fn judge(data: &LedgerData, retained: &HashMap<String, MessageId>, starts: u32) -> Report {
    let mut report = Report {
        starts,
        sent: data.sent.len() as u64,
        acked: data.sent.values().filter(|s| s.acked.is_some()).count() as u64,
        refused: data.refused,
        publisher_sessions_lost: data.publisher_sessions_lost,
        ..Report::default()
    };
    let retained_publishers: HashSet<u32> = data.retained_topics.keys().copied().collect();
    for sub in &data.subscribers {
        report.deliveries += sub.deliveries.len() as u64;
        report.subscriber_sessions_lost += sub.sessions_lost;
        let mut times: HashMap<MessageId, u32> = HashMap::new();
        let mut last_first: HashMap<u32, MessageId> = HashMap::new();
        for &m in &sub.deliveries {
            let Some(sent) = data.sent.get(&m) else {
                report.phantoms += 1;
                continue;
            };
            let n = times.entry(m).or_insert(0);
            *n += 1;
            if *n > 1 || sent.acked.is_none() {
                continue;
            }
            // The first delivery of an acknowledged message: in order per publisher.
            if let Some(&before) = last_first.get(&m.publisher) {
                if before.seq > m.seq {
                    report.out_of_order_count += 1;
                    if report.out_of_order.len() < EXAMPLES {
                        report.out_of_order.push((sub.client_id.clone(), before, m));
                    }
                    continue;
                }
            }
            last_first.insert(m.publisher, m);
        }
        for (&m, &n) in &times {
            let qos = data.sent[&m].qos.min(sub.max_qos);
            if qos == QoS::ExactlyOnce && n > 1 {
                report.duplicate_count += 1;
                if known_bug_signature(sub, m, data.sent[&m].run) {
                    report.known_bug_duplicates += 1;
                }
                if report.duplicates.len() < EXAMPLES {
                    let acked = data.sent[&m].acked.is_some();
                    let how = explain_duplicate(sub, m);
                    report
                        .duplicates
                        .push((sub.client_id.clone(), m, n, acked, how));
                }
            }
        }
        let Some(subscribed) = sub.subscribed else {
            continue;
        };
        let mut lost: Vec<MessageId> = data
            .sent
            .iter()
            .filter(|(m, s)| {
                s.acked.is_some()
                    && s.first_sent > subscribed
                    && !retained_publishers.contains(&m.publisher)
            })
            .map(|(&m, _)| m)
            .inspect(|_| report.owed += 1)
            .filter(|m| !times.contains_key(m))
            .collect();
        lost.sort();
        report.lost_count += lost.len() as u64;
        for m in lost {
            if report.lost.len() < EXAMPLES {
                report.lost.push((sub.client_id.clone(), m));
            }
        }
    }
    for (&publisher, topic) in &data.retained_topics {
        let last_acked = data
            .sent
            .iter()
            .filter(|(m, s)| m.publisher == publisher && s.acked.is_some())
            .map(|(m, _)| m.seq)
            .max();
        let Some(last_acked) = last_acked else {
            continue;
        };
        let held = retained.get(topic).map(|m| m.seq);
        if held.is_none_or(|seq| seq < last_acked) {
            report.retained_lost.push((topic.clone(), last_acked, held));
        }
    }
    report
}

/// Each delivery of `m` to `sub`: the broker run, packet id and DUP flag, and whether the
/// subscriber had been sent the PUBREL for that packet id (completing the QoS 2 flow)
/// before the next delivery.
fn explain_duplicate(sub: &SubscriberLog, m: MessageId) -> String {
    let mut out = Vec::new();
    for (i, _) in sub.deliveries.iter().enumerate().filter(|(_, &d)| d == m) {
        let a = sub.arrivals[i];
        let released = sub
            .releases
            .iter()
            .find(|&&(id, _, seen)| id == a.packet_id && seen > i)
            .map(|&(_, run, _)| format!("PUBREL in run {run}"))
            .unwrap_or_else(|| "no PUBREL".into());
        out.push(format!(
            "run {} packet id {} dup {} ({released})",
            a.run, a.packet_id, a.dup
        ));
    }
    out.join("; then ")
}

/// Whether the deliveries of `m` (first sent in broker run `sent_run`) to `sub` look like
/// the known bug: exactly two, under different packet ids, the second after a restart
/// that came after the message was first sent (the re-routed resend).
fn known_bug_signature(sub: &SubscriberLog, m: MessageId, sent_run: u32) -> bool {
    let arrivals: Vec<_> = sub
        .deliveries
        .iter()
        .zip(&sub.arrivals)
        .filter(|(&d, _)| d == m)
        .map(|(_, a)| *a)
        .collect();
    matches!(arrivals.as_slice(), [a, b] if b.run > sent_run && a.packet_id != b.packet_id)
}
