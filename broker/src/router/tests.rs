//! Unit tests of [`Router::route`]: matching, merging of overlapping subscriptions, No Local,
//! Retain As Published, QoS downgrade, shared groups and bridge sinks, with sessions attached
//! to SharedWriters and the packets they received decoded.

// Test-only code (compiled under cfg(test) by its parent):
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tern_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use tokio::time::Instant;

use super::*;
use crate::metrics::Metrics;
use crate::test_support::{attach, ctx, message, packets, publishes, session, Attach};

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::with_qos(qos)
}

fn ids(publish: &tern_codec::Publish) -> Vec<u32> {
    publish
        .properties()
        .subscription_identifiers()
        .collect::<Vec<_>>()
}

/// [MQTT-3.3.4-2], [MQTT-3.3.4-3], [MQTT-3.3.4-5]: a client whose subscriptions overlap gets
/// one copy, at the highest granted QoS, carrying every matching subscription identifier.
#[test]
fn overlapping_subscriptions_merge_into_one_copy() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let s = session(1, 10);
    let out = attach(&s, Attach::default(), 1, ctx(&metrics, now));
    assert!(router.subscribe("a/+", &s, options(QoS::AtMostOnce), Some(7)));
    assert!(router.subscribe("a/#", &s, options(QoS::AtLeastOnce), Some(9)));
    let mut scratch = RouteScratch::default();
    let m = message("a/b", QoS::ExactlyOnce, false, None);
    assert_eq!(router.route(&m, &mut scratch, ctx(&metrics, now)), 1);
    let got = publishes(packets(&out, ProtocolVersion::V5));
    assert_eq!(got.len(), 1, "one copy: {got:?}");
    assert_eq!(got[0].qos(), QoS::AtLeastOnce, "min(2, max granted 1)");
    let mut sub_ids = ids(&got[0]);
    sub_ids.sort_unstable();
    assert_eq!(sub_ids, vec![7, 9]);
}

/// Two matching subscriptions carrying the same Subscription Identifier put it in the
/// delivered PUBLISH once ([MQTT-3.3.4-3] merging; issue #13), next to a distinct one.
#[test]
fn shared_subscription_identifier_delivered_once() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let s = session(1, 10);
    let out = attach(&s, Attach::default(), 1, ctx(&metrics, now));
    assert!(router.subscribe("a/+", &s, options(QoS::AtMostOnce), Some(7)));
    assert!(router.subscribe("a/#", &s, options(QoS::AtMostOnce), Some(7)));
    assert!(router.subscribe("+/b", &s, options(QoS::AtMostOnce), Some(3)));
    let m = message("a/b", QoS::AtMostOnce, false, None);
    assert_eq!(
        router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now)),
        1
    );
    let got = publishes(packets(&out, ProtocolVersion::V5));
    assert_eq!(got.len(), 1, "one copy: {got:?}");
    let mut sub_ids = ids(&got[0]);
    sub_ids.sort_unstable();
    assert_eq!(sub_ids, vec![3, 7]);
}

/// [MQTT-3.8.3-3]: No Local keeps a client's own messages from it; others still get them.
#[test]
fn no_local_skips_the_publisher_only() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (me, other) = (session(1, 10), session(2, 10));
    let my_out = attach(&me, Attach::default(), 1, ctx(&metrics, now));
    let other_out = attach(&other, Attach::default(), 1, ctx(&metrics, now));
    let mut no_local = options(QoS::AtMostOnce);
    no_local.no_local = true;
    router.subscribe("t", &me, no_local, None);
    router.subscribe("t", &other, no_local, None);
    let m = message("t", QoS::AtMostOnce, false, Some(me.id));
    assert_eq!(
        router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now)),
        1
    );
    assert!(packets(&my_out, ProtocolVersion::V5).is_empty());
    assert_eq!(publishes(packets(&other_out, ProtocolVersion::V5)).len(), 1);
}

/// [MQTT-3.3.1-12], [MQTT-3.3.1-13]: RETAIN stays set on live delivery only with Retain As
/// Published.
#[test]
fn retain_as_published() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (keep, clear) = (session(1, 10), session(2, 10));
    let keep_out = attach(&keep, Attach::default(), 1, ctx(&metrics, now));
    let clear_out = attach(&clear, Attach::default(), 1, ctx(&metrics, now));
    let mut rap = options(QoS::AtMostOnce);
    rap.retain_as_published = true;
    router.subscribe("t", &keep, rap, None);
    router.subscribe("t", &clear, options(QoS::AtMostOnce), None);
    let m = message("t", QoS::AtMostOnce, true, None);
    router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now));
    assert!(publishes(packets(&keep_out, ProtocolVersion::V5))[0].retain);
    assert!(!publishes(packets(&clear_out, ProtocolVersion::V5))[0].retain);
}

/// [MQTT-4.7.2-1]: a `$` topic is not matched by a filter starting with a wildcard.
#[test]
fn dollar_topics_skip_leading_wildcards() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let s = session(1, 10);
    let out = attach(&s, Attach::default(), 1, ctx(&metrics, now));
    router.subscribe("#", &s, options(QoS::AtMostOnce), None);
    router.subscribe("+/x", &s, options(QoS::AtMostOnce), None);
    let m = message("$SYS/x", QoS::AtMostOnce, false, None);
    assert_eq!(
        router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now)),
        0
    );
    assert!(packets(&out, ProtocolVersion::V5).is_empty());
}

/// 5.0 section 4.8.2: each message of a shared subscription goes to one member, in turn;
/// a member's own overlapping non-shared subscription still gets its own copy.
#[test]
fn shared_group_delivers_to_one_member_each() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (a, b) = (session(1, 10), session(2, 10));
    let a_out = attach(&a, Attach::default(), 1, ctx(&metrics, now));
    let b_out = attach(&b, Attach::default(), 1, ctx(&metrics, now));
    router.subscribe("$share/g/t/#", &a, options(QoS::AtMostOnce), None);
    router.subscribe("$share/g/t/#", &b, options(QoS::AtMostOnce), None);
    router.subscribe("t/1", &a, options(QoS::AtMostOnce), None);
    let mut scratch = RouteScratch::default();
    for _ in 0..4 {
        let m = message("t/1", QoS::AtMostOnce, false, None);
        router.route(&m, &mut scratch, ctx(&metrics, now));
    }
    let (from_a, from_b) = (
        publishes(packets(&a_out, ProtocolVersion::V5)).len(),
        publishes(packets(&b_out, ProtocolVersion::V5)).len(),
    );
    assert_eq!(from_b, 2, "round robin: half the shared copies");
    assert_eq!(from_a, 2 + 4, "half the shared copies and its own four");
    let group = router.shared_group("$share/g/t/#").expect("group");
    assert_eq!(group.key().as_ref(), "$share/g/t/#");
    assert_eq!(group.len(), 2);
}

/// Delivery QoS is min(publish QoS, granted QoS), and a 3.1.1 subscriber gets 3.1.1 bytes.
#[test]
fn qos_downgrade_and_protocol_per_subscriber() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (v5, v3) = (session(1, 10), session(2, 10));
    let v5_out = attach(&v5, Attach::default(), 1, ctx(&metrics, now));
    let how = Attach {
        version: ProtocolVersion::V3_1_1,
        ..Attach::default()
    };
    let v3_out = attach(&v3, how, 1, ctx(&metrics, now));
    router.subscribe("t", &v5, options(QoS::AtMostOnce), None);
    router.subscribe("t", &v3, options(QoS::ExactlyOnce), None);
    let m = message("t", QoS::AtLeastOnce, false, None);
    router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now));
    let got = publishes(packets(&v5_out, ProtocolVersion::V5));
    assert_eq!((got[0].qos(), got[0].packet_id()), (QoS::AtMostOnce, None));
    let got = publishes(packets(&v3_out, ProtocolVersion::V3_1_1));
    assert_eq!(got[0].qos(), QoS::AtLeastOnce);
    assert!(got[0].packet_id().is_some());
}

/// A sink counting what it takes.
#[derive(Debug)]
pub(super) struct CountingSink {
    pub(super) id: u64,
    pub(super) taken: AtomicUsize,
}

impl BridgeSink for CountingSink {
    fn id(&self) -> u64 {
        self.id
    }

    fn push(&self, _message: &Message, encoded: &mut Option<bytes::Bytes>) -> Option<usize> {
        encoded.get_or_insert_with(|| bytes::Bytes::from_static(b"x"));
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(0)
    }
}

/// A bridge sink gets each matching message once, however many of its filters match; an
/// unsubscribed sink gets nothing.
#[test]
fn bridge_sinks_get_each_message_once() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let sink = Arc::new(CountingSink {
        id: 3,
        taken: AtomicUsize::new(0),
    });
    router.subscribe_bridge("a/#", sink.clone());
    router.subscribe_bridge("a/b", sink.clone());
    let m = message("a/b", QoS::AtMostOnce, false, None);
    assert_eq!(
        router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now)),
        1
    );
    assert_eq!(sink.taken.load(Ordering::Relaxed), 1);
    assert_eq!(Metrics::get(&metrics.bridge_messages), 1);
    router.unsubscribe_bridge("a/#", 3);
    router.unsubscribe_bridge("a/b", 3);
    router.route(&m, &mut RouteScratch::default(), ctx(&metrics, now));
    assert_eq!(sink.taken.load(Ordering::Relaxed), 1);
    assert!(router.is_empty());
}

/// Unsubscribing removes exactly the session's entry; a group goes when its last member
/// leaves.
#[test]
fn unsubscribe_removes_entries_and_empty_groups() {
    let router = Router::default();
    let (a, b) = (session(1, 10), session(2, 10));
    router.subscribe("t", &a, options(QoS::AtMostOnce), None);
    router.subscribe("t", &b, options(QoS::AtMostOnce), None);
    router.subscribe("$share/g/t", &a, options(QoS::AtMostOnce), None);
    assert_eq!(router.len(), 3);
    assert!(router.unsubscribe("t", a.id));
    assert!(!router.unsubscribe("t", a.id), "already gone");
    assert!(router.unsubscribe("$share/g/t", a.id));
    assert!(router.shared_group("$share/g/t").is_none());
    assert_eq!(router.len(), 1);
}

/// Each subscription of a session is one `(SubKey, SubValue)` in its filter's entry set,
/// allocated exactly (most filters have one subscriber): 48 bytes is jemalloc's class for
/// it, one byte more costs 16 per subscription.
#[test]
fn a_trie_entry_is_small() {
    let entry = std::mem::size_of::<(SubKey, SubValue)>();
    assert!(entry <= 48, "a trie entry grew to {entry} bytes");
}
