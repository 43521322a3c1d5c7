//! Messages larger than NATS's `max_payload` moving with a session (issue #12): a takeover
//! on another node hands them over in parts across handover forms, in order, with their
//! packet ids and PUBREL state; a node that does not say it reads parts is asked as
//! before. A real nats-server with JetStream on 127.0.0.1 and in-process nodes. Skipped
//! (with the reason printed) when nats-server is not installed; under `CI=true` it must be.

use std::time::Duration;

use futures_util::StreamExt as _;

use tern_codec::{
    Connect, Packet, ProtocolVersion, PubAck, PubComp, PubRec, Publish, PublishQoS, QoS,
    ReasonCode, SubscriptionOptions,
};
use tern_tests::cluster_support::NatsServer;
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// The NATS server's `max_payload` in these tests.
const MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// A large message: well over `max_payload`, so its body takes several handover forms.
const LARGE_BYTES: usize = 150 << 10;

/// A 5.0 client resuming or starting a persistent session (Clean Start 0, expiry 300 s),
/// with `receive_maximum`; returns it and Session Present.
async fn persistent(
    addr: std::net::SocketAddr,
    client_id: &str,
    receive_maximum: Option<u16>,
) -> (Client, bool) {
    let mut client = Client::tcp(addr, V5).await;
    let mut connect = Connect::new(V5, client_id);
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(300);
    connect.properties.receive_maximum = receive_maximum;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    (client, connack.session_present)
}

/// Waits (at most 10 s) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages of the test: QoS and payload size. 0–2 end up in flight (0 with PUBREL
/// sent), 3–7 queued behind a Receive Maximum of 3.
const MESSAGES: [(QoS, usize); 8] = [
    (QoS::ExactlyOnce, LARGE_BYTES),
    (QoS::AtLeastOnce, LARGE_BYTES),
    (QoS::ExactlyOnce, LARGE_BYTES),
    (QoS::AtLeastOnce, LARGE_BYTES),
    (QoS::AtLeastOnce, 100),
    (QoS::ExactlyOnce, LARGE_BYTES + 7),
    (QoS::ExactlyOnce, 100),
    (QoS::AtLeastOnce, 2 * LARGE_BYTES),
];

/// Message `n`'s payload: its number, then varied bytes (a cut or a shifted part shows).
fn payload(n: usize) -> Vec<u8> {
    let (_, bytes) = MESSAGES[n];
    let mut out: Vec<u8> = (0..bytes).map(|i| ((i * 7 + n) % 251) as u8).collect();
    out[..4].copy_from_slice(&(n as u32).to_be_bytes());
    out
}

/// Message `n` as the client got it: right bytes and QoS.
fn check_message(got: &Publish, n: usize) {
    assert_eq!(got.topic(), "L/1", "message {n}");
    assert_eq!(got.qos(), MESSAGES[n].0, "QoS of message {n}");
    assert_eq!(got.payload().len(), MESSAGES[n].1, "length of message {n}");
    assert!(got.payload() == &payload(n)[..], "bytes of message {n}");
}

/// What the resumed connection got, in order.
#[derive(Debug, PartialEq)]
enum Got {
    /// A PUBLISH: the message's number, DUP, its packet id.
    Publish(usize, bool, u16),
    /// A PUBREL, by packet id.
    PubRel(u16),
}

/// Reads `new` until it has had `publishes` PUBLISH packets, acknowledging each (PUBACK,
/// PUBREC; PUBCOMP for every PUBREL) and checking its bytes; returns what came in order.
async fn read_resumed(new: &mut Client, publishes: usize) -> Vec<Got> {
    let mut got = Vec::new();
    let mut count = 0;
    while count < publishes {
        match new.recv_within(Duration::from_secs(20)).await {
            Some(Packet::Publish(publish)) => {
                let n = u32::from_be_bytes(publish.payload()[..4].try_into().expect("4")) as usize;
                check_message(&publish, n);
                let id = match publish.publish_qos() {
                    PublishQoS::AtLeastOnce(id) => {
                        new.send(&Packet::PubAck(PubAck::new(id))).await;
                        id.get()
                    }
                    PublishQoS::ExactlyOnce(id) => {
                        new.send(&Packet::PubRec(PubRec::new(id))).await;
                        id.get()
                    }
                    PublishQoS::AtMostOnce => 0,
                };
                got.push(Got::Publish(n, publish.dup, id));
                count += 1;
            }
            Some(Packet::PubRel(rel)) => {
                new.send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await;
                got.push(Got::PubRel(rel.packet_id.get()));
            }
            other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    got
}

/// A persistent QoS 2 subscriber on node A with Receive Maximum 3 has three messages larger
/// than NATS's `max_payload` in flight — the first (QoS 2) acknowledged with PUBREC, so A
/// has sent its PUBREL — and five queued (three large, two small, QoS 1 and 2). It connects
/// again on node B with Clean Start 0: Session Present 1; B sends the PUBREL of the first
/// again with its packet id ([MQTT-4.4.0-1]) and does not deliver it again
/// ([MQTT-4.3.3-9]), resends the other two in flight with DUP and their packet ids, then
/// the queued ones, each once, in order ([MQTT-4.6.0-6]), with their exact bytes; A counts
/// no message dropped.
#[tokio::test]
async fn large_messages_move_with_the_session_in_order() {
    let config = format!("max_payload: {MAX_PAYLOAD_BYTES}\n");
    let Some(nats) = NatsServer::start_with_config(&config) else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let (mut old, _) = persistent(nodes[0].addr, "big", Some(3)).await;
    let options = SubscriptionOptions::with_qos(QoS::ExactlyOnce);
    old.subscribe_with(vec![("L/#", options)], None).await;
    let mut publisher = nodes[0].client(V5, "pub").await;
    for (n, (qos, _)) in MESSAGES.iter().enumerate() {
        let code = publisher.publish("L/1", &payload(n), *qos, false).await;
        assert_eq!(code, Some(ReasonCode::SUCCESS), "message {n}");
    }
    let mut in_flight = Vec::new();
    for n in 0..3 {
        let got = old.expect_publish().await;
        check_message(&got, n);
        in_flight.push(got.packet_id().expect("QoS > 0").get());
    }
    // The first is received: A sends PUBREL and waits for PUBCOMP, which never comes.
    let first = tern_codec::PacketId::new(in_flight[0]).expect("non-zero");
    old.send(&Packet::PubRec(PubRec::new(first))).await;
    match old.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, first),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    let a = nodes[0].broker().clone();
    let queued = a.session("big").expect("on A").delivery().queued();
    assert_eq!(queued, 5, "queued on A");

    let (mut new, present) = persistent(nodes[1].addr, "big", None).await;
    assert!(present, "[MQTT-3.2.2-3] Session Present 1 on the new node");
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    let got = read_resumed(&mut new, 7).await;
    assert_eq!(got[0], Got::PubRel(in_flight[0]), "{got:?}");
    assert_eq!(got[1], Got::Publish(1, true, in_flight[1]), "{got:?}");
    assert_eq!(got[2], Got::Publish(2, true, in_flight[2]), "{got:?}");
    let order: Vec<usize> = got
        .iter()
        .filter_map(|g| match g {
            Got::Publish(n, dup, _) => {
                assert!(*n < 3 || !dup, "message {n} was not sent before: no DUP");
                Some(*n)
            }
            Got::PubRel(_) => None,
        })
        .collect();
    assert_eq!(order, (1..8).collect::<Vec<_>>());
    // The PUBRELs of the QoS 2 messages acknowledged on B (answered in `read_resumed`).
    let mut extra = Vec::new();
    while let Some(packet) = new.recv_within(Duration::from_millis(500)).await {
        match packet {
            Packet::PubRel(rel) => {
                new.send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await;
                extra.push(rel.packet_id.get());
            }
            other => panic!("nothing but PUBREL expected, got {other:?}"),
        }
    }
    let rels = got.iter().filter(|g| matches!(g, Got::PubRel(_))).count() + extra.len();
    assert_eq!(
        rels, 4,
        "the first's PUBREL, then one per QoS 2 message received"
    );
    let stats = nodes[1].broker().cluster().expect("cluster").stats();
    assert_eq!(stats["handovers"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["handovers_incomplete"].as_u64(), Some(0), "{stats}");
    let stats = a.cluster().expect("cluster").stats();
    assert_eq!(
        stats["handover_messages_dropped"].as_u64(),
        Some(0),
        "{stats}"
    );
}

/// A plain NATS client standing in for node `fake` of `nats`, owner of `client_id` in the
/// owners bucket, that answers prepare requests with "no session" (with the header of a
/// node that sends parts if `parts`) and returns the kind of the takeover request that
/// follows (answered with "no session").
async fn takeover_kind_asked_by(node: &TestBroker, nats: &NatsServer, parts: bool) -> u8 {
    use base64::Engine as _;
    let client_id = if parts { "new-owner" } else { "old-owner" };
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client.clone());
    let owners = jetstream
        .get_key_value("tern_owners")
        .await
        .expect("owners bucket");
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id);
    owners.put(key, "fake".into()).await.expect("owner written");
    let mut prepares = client.subscribe("tern.prepare.fake").await.expect("sub");
    let mut takeovers = client.subscribe("tern.takeover.fake").await.expect("sub");
    client.flush().await.expect("flush");
    let fake = tokio::spawn(async move {
        let prepare = prepares.next().await.expect("a prepare request");
        let reply = prepare.reply.expect("a reply inbox");
        let mut headers = async_nats::HeaderMap::new();
        if parts {
            headers.insert("Tern-Handover", "parts");
        }
        client
            .publish_with_headers(reply, headers, bytes::Bytes::new())
            .await
            .expect("publish");
        let takeover = takeovers.next().await.expect("a takeover request");
        let reply = takeover.reply.expect("a reply inbox");
        client
            .publish(reply, bytes::Bytes::new())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        takeover.payload[0]
    });
    let (_client, present) = persistent(node.addr, client_id, None).await;
    assert!(!present, "the fake owner had no session");
    fake.await.expect("the fake owner answered")
}

/// The node taking a client over asks for bodies in parts (kind `P`) only of an owner
/// whose prepare answer says it sends them; an owner of the version before (no such
/// header) is asked with `N`, which it knows (an unknown kind would end the session there).
#[tokio::test]
async fn parts_are_asked_only_of_an_owner_that_says_it_sends_them() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(1).await;
    let b = nodes[0].broker().clone();
    until("the node joined", || b.cluster().is_some()).await;
    assert_eq!(takeover_kind_asked_by(&nodes[0], &nats, false).await, b'N');
    assert_eq!(takeover_kind_asked_by(&nodes[0], &nats, true).await, b'P');
}
