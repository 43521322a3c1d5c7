//! Unit tests of [`Router::route_run`]: a run of QoS 0 messages reaches every subscriber
//! as routing each message alone would (order, merged subscriptions, No Local, topic
//! aliases, expiry, shared groups, bridge sinks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{ProtocolVersion, Publish, QoS, SubscriptionOptions};
use tokio::time::Instant;

use super::super::tests::CountingSink;
use super::super::{RouteScratch, Router};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::test_support::{
    attach, ctx, decode_packets, packets, publishes, session, taken, Attach,
};

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::with_qos(qos)
}

/// `n` QoS 0 messages on `topic` from session `origin`, payloads "0", "1", ...
fn run(topic: &str, n: usize, origin: Option<u64>, now: Instant) -> Vec<Arc<Message>> {
    (0..n)
        .map(|i| Message::new(Publish::new(topic, Bytes::from(i.to_string())), now, origin))
        .collect()
}

fn payloads(got: &[Publish]) -> Vec<String> {
    got.iter()
        .map(|p| String::from_utf8_lossy(p.payload()).into_owned())
        .collect()
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Order, merging of overlapping subscriptions ([MQTT-3.3.4-2], [MQTT-3.3.4-3]: one copy
/// with both identifiers), No Local ([MQTT-3.8.3-3]), a 3.1.1 subscriber, and the outbound
/// topic alias: the first PUBLISH carries topic and alias, the next ones the alias alone
/// ([MQTT-3.3.2-12]).
#[test]
fn a_run_reaches_each_subscriber_in_order() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (v5, v3, me) = (session(1, 10), session(2, 10), session(3, 10));
    let with_aliases = Attach {
        alias_max: 4,
        ..Attach::default()
    };
    let v5_out = attach(&v5, with_aliases, 1, ctx(&metrics, now));
    let v3_how = Attach {
        version: ProtocolVersion::V3_1_1,
        ..Attach::default()
    };
    let v3_out = attach(&v3, v3_how, 1, ctx(&metrics, now));
    let me_out = attach(&me, Attach::default(), 1, ctx(&metrics, now));
    router.subscribe("a/+", &v5, options(QoS::AtMostOnce), Some(7));
    router.subscribe("a/#", &v5, options(QoS::AtLeastOnce), Some(9));
    router.subscribe("a/b", &v3, options(QoS::ExactlyOnce), None);
    let mut no_local = options(QoS::AtMostOnce);
    no_local.no_local = true;
    router.subscribe("a/b", &me, no_local, None);

    let messages = run("a/b", 5, Some(me.id), now);
    let mut scratch = RouteScratch::default();
    let delivered = router.route_run(&messages, &mut scratch, ctx(&metrics, now));
    assert_eq!(delivered, 10, "two sessions, five messages each");
    assert_eq!(Metrics::get(&metrics.messages_sent), 10);

    let got = publishes(packets(&v5_out, ProtocolVersion::V5));
    assert_eq!(payloads(&got), numbers(5));
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.qos(), QoS::AtMostOnce, "min(publish 0, granted 1)");
        let mut ids: Vec<u32> = p.properties().subscription_identifiers().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![7, 9], "one copy with both identifiers");
        assert_eq!(p.properties().topic_alias(), Some(1));
        let topic = if i == 0 { "a/b" } else { "" };
        assert_eq!(
            p.topic(),
            topic,
            "message {i}: topic only with the new alias"
        );
    }
    let got = publishes(packets(&v3_out, ProtocolVersion::V3_1_1));
    assert_eq!(payloads(&got), numbers(5));
    assert!(got.iter().all(|p| p.topic() == "a/b"));
    assert!(packets(&me_out, ProtocolVersion::V5).is_empty(), "No Local");
}

/// [MQTT-3.3.2-5]: an expired message of a run is dropped for each subscriber; the next
/// one written then introduces the topic alias.
#[test]
fn an_expired_message_in_a_run_is_dropped_alone() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let s = session(1, 10);
    let how = Attach {
        alias_max: 2,
        ..Attach::default()
    };
    let later = now + Duration::from_secs(6);
    let out = attach(&s, how, 1, ctx(&metrics, later));
    router.subscribe("t", &s, options(QoS::AtMostOnce), None);
    let mut expiring = Publish::new("t", Bytes::from_static(b"old"));
    expiring.properties_mut().message_expiry_interval_secs = Some(5);
    let mut messages = vec![Message::new(expiring, now, None)];
    messages.extend(run("t", 2, None, now));
    router.route_run(
        &messages,
        &mut RouteScratch::default(),
        ctx(&metrics, later),
    );
    let got = publishes(packets(&out, ProtocolVersion::V5));
    assert_eq!(payloads(&got), numbers(2));
    assert_eq!((got[0].topic(), got[1].topic()), ("t", ""));
    assert_eq!(Metrics::get(&metrics.dropped_expired), 1);
}

/// A shared group picks a member per message (5.0 section 4.8.2), so a run that meets one
/// is routed message by message: each message reaches the group once and the direct
/// subscriber every time, in order.
#[test]
fn a_run_meeting_a_shared_group_goes_message_by_message() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let (m1, m2, direct) = (session(1, 10), session(2, 10), session(3, 10));
    let outs: Vec<_> = [&m1, &m2, &direct]
        .iter()
        .map(|s| attach(s, Attach::default(), 1, ctx(&metrics, now)))
        .collect();
    router.subscribe("$share/g/a/b", &m1, options(QoS::AtMostOnce), None);
    router.subscribe("$share/g/a/b", &m2, options(QoS::AtMostOnce), None);
    router.subscribe("a/+", &direct, options(QoS::AtMostOnce), None);
    let messages = run("a/b", 6, None, now);
    let delivered = router.route_run(&messages, &mut RouteScratch::default(), ctx(&metrics, now));
    assert_eq!(delivered, 12);
    let g1 = payloads(&publishes(packets(&outs[0], ProtocolVersion::V5)));
    let g2 = payloads(&publishes(packets(&outs[1], ProtocolVersion::V5)));
    let mut group: Vec<String> = g1.iter().chain(&g2).cloned().collect();
    group.sort_unstable();
    assert_eq!(group, numbers(6), "each message once to the group");
    for member in [&g1, &g2] {
        let n: Vec<usize> = member
            .iter()
            .map(|p| p.parse().expect("a number"))
            .collect();
        assert!(n.windows(2).all(|w| w[0] < w[1]), "in order: {n:?}");
    }
    let got = payloads(&publishes(packets(&outs[2], ProtocolVersion::V5)));
    assert_eq!(got, numbers(6));
}

/// A bridge sink (SSE, WebSocket JSON) gets each message of a run once, however many of
/// its filters match.
#[test]
fn a_bridge_sink_gets_each_message_of_a_run_once() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let router = Router::default();
    let sink = Arc::new(CountingSink {
        id: 5,
        taken: AtomicUsize::new(0),
    });
    router.subscribe_bridge("a/#", sink.clone());
    router.subscribe_bridge("a/b", sink.clone());
    let messages = run("a/b", 4, None, now);
    let mut scratch = RouteScratch::default();
    assert_eq!(
        router.route_run(&messages, &mut scratch, ctx(&metrics, now)),
        4
    );
    assert_eq!(sink.taken.load(Ordering::Relaxed), 4);
    assert_eq!(Metrics::get(&metrics.bridge_messages), 4);
}

/// `n` QoS 1 messages on `topic` from session `origin`, payloads "0", "1", ...
fn qos1_run(topic: &str, n: usize, origin: Option<u64>, now: Instant) -> Vec<Arc<Message>> {
    let id = std::num::NonZeroU16::MIN;
    (0..n)
        .map(|i| {
            let publish = Publish::new(topic, Bytes::from(i.to_string()))
                .with_qos(crate::test_support::publish_qos(QoS::AtLeastOnce, id));
            Message::new(publish, now, origin)
        })
        .collect()
}

/// A QoS 1 run gives every subscriber the very bytes routing each message alone gives: the
/// same packet ids in order, QoS min(publish, granted) ([MQTT-3.8.4-8]), one copy with both
/// subscription identifiers for overlapping subscriptions ([MQTT-3.3.4-3]), No Local
/// ([MQTT-3.8.3-3]), and the window (Receive Maximum, [MQTT-3.3.4-9]): messages past it
/// wait in the queue and follow, in order, as acknowledgements come.
#[test]
fn a_qos1_run_gives_each_subscriber_what_routing_alone_gives() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let setup = || {
        let router = Router::default();
        let (v5, v3, me) = (session(1, 10), session(2, 10), session(3, 10));
        let small_window = Attach {
            window: 3,
            ..Attach::default()
        };
        let v3_how = Attach {
            version: ProtocolVersion::V3_1_1,
            ..Attach::default()
        };
        let writers = vec![
            attach(&v5, small_window, 1, ctx(&metrics, now)),
            attach(&v3, v3_how, 1, ctx(&metrics, now)),
            attach(&me, Attach::default(), 1, ctx(&metrics, now)),
        ];
        router.subscribe("a/#", &v5, options(QoS::AtLeastOnce), Some(5));
        router.subscribe("a/b", &v5, options(QoS::ExactlyOnce), Some(6));
        router.subscribe("a/+", &v3, options(QoS::AtMostOnce), None);
        let mut no_local = options(QoS::AtLeastOnce);
        no_local.no_local = true;
        router.subscribe("a/b", &me, no_local, None);
        (router, [v5, v3, me], writers)
    };
    let (run_router, run_sessions, run_writers) = setup();
    let (one_router, one_sessions, one_writers) = setup();
    let origin = Some(run_sessions[2].id);
    assert_eq!(origin, Some(one_sessions[2].id));
    let messages = qos1_run("a/b", 7, origin, now);

    let mut scratch = RouteScratch::default();
    let delivered = run_router.route_run(&messages, &mut scratch, ctx(&metrics, now));
    let mut alone = 0;
    for message in &messages {
        alone += one_router.route(message, &mut scratch, ctx(&metrics, now));
    }
    assert_eq!(
        (delivered, alone),
        (14, 14),
        "two sessions, seven messages each"
    );
    let bytes = |writers: &[Arc<_>]| writers.iter().map(|w| taken(w)).collect::<Vec<_>>();
    let (by_run, by_one) = (bytes(&run_writers), bytes(&one_writers));
    assert_eq!(by_run, by_one);
    let got = publishes(decode_packets(by_run[0].clone(), ProtocolVersion::V5));
    assert_eq!(payloads(&got), numbers(3), "the window holds three");
    for p in &got {
        assert_eq!(p.qos(), QoS::AtLeastOnce);
        let mut ids: Vec<u32> = p.properties().subscription_identifiers().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![5, 6]);
    }
    let v3_got = publishes(decode_packets(by_run[1].clone(), ProtocolVersion::V3_1_1));
    assert_eq!(payloads(&v3_got), numbers(7));
    assert!(v3_got.iter().all(|p| p.qos() == QoS::AtMostOnce));
    assert!(by_run[2].is_empty(), "No Local");
    assert_eq!(run_sessions[0].delivery().queued(), 4);

    // The queued four follow as the client acknowledges, in order, both ways alike.
    for (sessions, writers) in [(&run_sessions, &run_writers), (&one_sessions, &one_writers)] {
        for p in &got {
            let id = p.packet_id().expect("QoS 1 has an id");
            sessions[0].delivery().handle_puback(id, ctx(&metrics, now));
        }
        let rest = publishes(packets(&writers[0], ProtocolVersion::V5));
        assert_eq!(payloads(&rest), ["3", "4", "5"].map(String::from));
    }
}
