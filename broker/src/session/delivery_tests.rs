//! Unit tests of the outbound side of a session ([`Delivery`]): the inflight window and the
//! client's Receive Maximum, the queue bounds, QoS 1 and 2 out, resend with DUP on resume,
//! outbound topic aliases, Maximum Packet Size and message expiry, with the time passed in.

// Test-only code (compiled under cfg(test) by its parent):
#[cfg(test)]
use std::time::Duration;

use tern_codec::{Packet, ProtocolVersion, PubRel, QoS, ReasonCode};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::test_support::{attach, ctx, message, packets, publishes, session, Attach};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn window(n: usize) -> Attach {
    Attach {
        window: n,
        ..Attach::default()
    }
}

/// [MQTT-3.3.4-7], [MQTT-4.9.0-2]: no more QoS 1/2 PUBLISH packets in flight than the
/// client's Receive Maximum; the rest wait in the queue and go out as acknowledgements come.
#[test]
fn inflight_window_follows_receive_maximum() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let out = attach(&s, window(2), 1, ctx(&metrics, now));
    for topic in ["a", "b", "c"] {
        let m = message(topic, QoS::AtLeastOnce, false, None);
        s.delivery()
            .deliver(&m, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
    }
    let sent = publishes(packets(&out, V5));
    assert_eq!(sent.len(), 2);
    let delivery = s.delivery();
    assert_eq!((delivery.inflight(), delivery.queued()), (2, 1));
    drop(delivery);
    let first = sent[0].packet_id().expect("id");
    s.delivery().handle_puback(first, ctx(&metrics, now));
    let next = publishes(packets(&out, V5));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].topic(), "c");
    assert_ne!(
        next[0].packet_id(),
        sent[1].packet_id(),
        "ids in flight are unique"
    );
}

/// The queue is bounded (`max_queued_messages`): past it a message is dropped and counted,
/// never silently.
#[test]
fn queue_bound_drops_and_counts() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 2);
    for _ in 0..3 {
        let m = message("t", QoS::AtLeastOnce, false, None);
        s.delivery()
            .deliver(&m, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
    }
    assert_eq!(s.delivery().queued(), 2, "offline: queued up to the bound");
    assert_eq!(Metrics::get(&metrics.dropped_queue_full), 1);
    let m = message("t", QoS::AtMostOnce, false, None);
    s.delivery()
        .deliver(&m, QoS::AtMostOnce, false, &[], ctx(&metrics, now));
    assert_eq!(
        s.delivery().queued(),
        2,
        "QoS 0 is not queued for an offline session"
    );
}

/// [MQTT-4.4.0-1]: on resume, unacknowledged PUBLISH packets are sent again with DUP=1 and
/// their packet identifiers, and a PUBREL for a QoS 2 message past PUBREC.
#[test]
fn resume_resends_with_dup() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let out = attach(&s, window(10), 1, ctx(&metrics, now));
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::ExactlyOnce] {
        let m = message("t", qos, false, None);
        s.delivery()
            .deliver(&m, qos, false, &[], ctx(&metrics, now));
    }
    let sent = publishes(packets(&out, V5));
    assert!(sent.iter().all(|p| !p.dup), "DUP=0 on first send");
    let released = sent[2].packet_id().expect("id");
    s.delivery()
        .handle_pubrec(released, ReasonCode::SUCCESS, ctx(&metrics, now));
    assert!(matches!(packets(&out, V5).as_slice(), [Packet::PubRel(r)] if r.packet_id == released));
    assert!(s.delivery().detach(1));
    let out = attach(&s, window(10), 2, ctx(&metrics, now));
    let again = packets(&out, V5);
    let resent = publishes(again.clone());
    assert_eq!(resent.len(), 2);
    assert!(resent.iter().all(|p| p.dup));
    assert_eq!(resent[0].packet_id(), sent[0].packet_id());
    assert_eq!(resent[1].packet_id(), sent[1].packet_id());
    assert!(again.contains(&Packet::PubRel(PubRel::new(released))));
}

/// QoS 2 out: PUBREC -> PUBREL, PUBCOMP frees the slot; a PUBREC for an unknown id gets
/// PUBREL 0x92; a PUBREC with an error code ends the exchange (5.0 section 4.3.3).
#[test]
fn qos2_outbound_exchange() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let out = attach(&s, window(10), 1, ctx(&metrics, now));
    let m = message("t", QoS::ExactlyOnce, false, None);
    s.delivery()
        .deliver(&m, QoS::ExactlyOnce, false, &[], ctx(&metrics, now));
    let sent = publishes(packets(&out, V5));
    let pid = sent[0].packet_id().expect("id");
    s.delivery()
        .handle_pubrec(pid, ReasonCode::SUCCESS, ctx(&metrics, now));
    assert_eq!(packets(&out, V5), [Packet::PubRel(PubRel::new(pid))]);
    s.delivery().handle_pubcomp(pid, ctx(&metrics, now));
    assert_eq!(s.delivery().inflight(), 0);
    s.delivery()
        .handle_pubrec(pid, ReasonCode::SUCCESS, ctx(&metrics, now));
    match packets(&out, V5).as_slice() {
        [Packet::PubRel(r)] => assert_eq!(r.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        other => panic!("{other:?}"),
    }
    s.delivery()
        .deliver(&m, QoS::ExactlyOnce, false, &[], ctx(&metrics, now));
    let pid = publishes(packets(&out, V5))[0].packet_id().expect("id");
    s.delivery()
        .handle_pubrec(pid, ReasonCode::UNSPECIFIED_ERROR, ctx(&metrics, now));
    assert!(
        packets(&out, V5).is_empty(),
        "no PUBREL after an error PUBREC"
    );
    assert_eq!(s.delivery().inflight(), 0);
}

/// Outbound topic aliases within the client's Topic Alias Maximum: the first message on a
/// topic carries topic and alias, later ones the alias alone ([MQTT-3.3.2-12]); past the
/// maximum a topic goes without one.
#[test]
fn outbound_topic_aliases() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let how = Attach {
        alias_max: 2,
        ..Attach::default()
    };
    let out = attach(&s, how, 1, ctx(&metrics, now));
    for topic in ["a", "b", "a", "c"] {
        let m = message(topic, QoS::AtMostOnce, false, None);
        s.delivery()
            .deliver(&m, QoS::AtMostOnce, false, &[], ctx(&metrics, now));
    }
    let sent = publishes(packets(&out, V5));
    let seen: Vec<(String, Option<u16>)> = sent
        .iter()
        .map(|p| (p.topic().to_string(), p.properties().topic_alias()))
        .collect();
    assert_eq!(
        seen,
        [
            ("a".to_string(), Some(1)),
            ("b".to_string(), Some(2)),
            (String::new(), Some(1)),
            ("c".to_string(), None),
        ]
    );
}

/// [MQTT-3.1.2-25]: a message larger than the client's Maximum Packet Size is not sent to
/// it (dropped as if delivered, counted), and the window does not keep it.
#[test]
fn too_large_for_the_client_is_dropped() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let how = Attach {
        max_packet_size_bytes: 8,
        ..Attach::default()
    };
    let out = attach(&s, how, 1, ctx(&metrics, now));
    let m = message("a/long/topic", QoS::AtLeastOnce, false, None);
    s.delivery()
        .deliver(&m, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
    assert!(packets(&out, V5).is_empty());
    assert_eq!(s.delivery().inflight(), 0);
    assert_eq!(Metrics::get(&metrics.dropped_too_large_for_client), 1);
}

/// [MQTT-3.3.2-5]: a message whose expiry passed while it was queued is not sent.
#[test]
fn expired_in_the_queue_is_not_sent() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let s = session(1, 100);
    let mut publish = tern_codec::Publish::new("t", bytes::Bytes::from_static(b"x")).with_qos(
        tern_codec::PublishQoS::AtLeastOnce(std::num::NonZeroU16::MIN),
    );
    publish.properties_mut().message_expiry_interval_secs = Some(5);
    let m = crate::message::Message::new(publish, now, None);
    s.delivery()
        .deliver(&m, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
    assert_eq!(s.delivery().queued(), 1);
    let later = now + Duration::from_secs(6);
    let out = attach(&s, window(10), 1, ctx(&metrics, later));
    assert!(packets(&out, V5).is_empty());
    assert_eq!(Metrics::get(&metrics.dropped_expired), 1);
}

/// The flow state (window, queue, budget credit) is let go when it holds nothing, giving
/// its credit back to the budget, and comes back at the next QoS 1 message with the same
/// behaviour; while a message is unacknowledged it stays.
#[test]
fn idle_flow_state_is_let_go_and_comes_back() {
    let metrics = Metrics::default();
    let now = Instant::now();
    let budget = std::sync::Arc::new(crate::delivery::budget::ByteBudget::new(0));
    let s = std::sync::Arc::new(crate::session::Session::new(
        1,
        std::sync::Arc::from("c1"),
        100,
        1 << 20,
        budget.clone(),
    ));
    let out = attach(&s, window(2), 1, ctx(&metrics, now));
    assert!(
        s.delivery().release_idle(),
        "nothing held yet: no flow state"
    );
    for round in 0..2 {
        let m = message("t", QoS::AtLeastOnce, false, None);
        s.delivery()
            .deliver(&m, QoS::AtLeastOnce, false, &[], ctx(&metrics, now));
        assert!(budget.used_bytes() > 0, "round {round}: bytes taken");
        assert!(!s.delivery().release_idle(), "a message in flight keeps it");
        let sent = publishes(packets(&out, V5));
        assert_eq!(sent.len(), 1);
        let id = sent[0].packet_id().expect("id");
        s.delivery().handle_puback(id, ctx(&metrics, now));
        assert_eq!(s.delivery().inflight(), 0);
        assert!(s.delivery().release_idle(), "round {round}: let go");
        assert_eq!(budget.used_bytes(), 0, "round {round}: credit given back");
    }
}

/// A persistent session's resend on resume waits until the journal is durable as far as
/// it was appended when the connection attached: the QoS 2 message's record may not be
/// durable yet, and a crash before it is would let the message come twice ([MQTT-4.3.3-1]:
/// exactly once; the publisher resends what it was not acknowledged).
#[test]
fn a_persistent_resume_waits_for_the_journal_before_resending() {
    use crate::delivery::shared_writer::Reached;
    let dir = crate::wal::tests::temp_dir("resume-hold");
    let config = crate::test_support::persistence_config(&dir);
    let (journal, _, _) =
        crate::journal::open::open(&config, Box::new(|_| {})).expect("journal opens");
    let metrics = Metrics::default();
    let now = Instant::now();
    let logged = |now| crate::session::delivery::DeliverCtx {
        journal: Some(&journal),
        ..ctx(&metrics, now)
    };
    let s = session(1, 100);
    s.delivery().set_log(Some((1, 0)));
    let out = attach(&s, window(10), 1, logged(now));
    let m = message("t", QoS::ExactlyOnce, false, None);
    s.delivery()
        .deliver(&m, QoS::ExactlyOnce, false, &[], logged(now));
    assert_eq!(publishes(packets(&out, V5)).len(), 1);
    assert!(s.delivery().detach(1));
    let out = attach(&s, window(10), 2, logged(now));
    let mut buf = bytes::BytesMut::new();
    let before = Reached {
        journal: 0,
        cluster: u64::MAX,
    };
    let held = out.take_durable(&mut buf, before);
    assert!(
        held.is_err(),
        "the resend left before the journal was durable"
    );
    let resent = publishes(packets(&out, V5));
    assert!(resent.len() == 1 && resent[0].dup);
}
