//! Publish templates against the one-shot encoder and an independent decoder.
//!
//! For every combination of inbound version, outbound version, publish QoS, granted QoS,
//! RETAIN, Retain As Published, DUP, inbound topic alias (5.0 only) and message expiry, the
//! bytes that `PublishTemplates::get(..).write_to(..)` produces
//! - decode (our decoder) to exactly the packet `encode_publish` produces, byte for byte;
//! - decode with `mqttbytes` (v4 for 3.1.1, v5 for 5.0) to the same fields;
//! - follow DESIGN.md's patching checklist: QoS = min(publish, granted), a downgrade to QoS 0
//!   uses the QoS 0 layout (2 bytes shorter, the other layout is refused), RETAIN =
//!   retain-as-published ? original : 0, DUP only with QoS > 0, the inbound alias stripped;
//! - leave the shared template bytes (and the received frame) unchanged.

mod common;

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use common::{assert_bytes_eq, hex};
use tern_codec::{
    encode_publish, ByteStr, Decoder, Family, Outbound, Packet, ProtocolVersion, Publish,
    PublishQoS, PublishTemplates, QoS, TemplateError,
};

const TOPIC: &str = "a/b/c";
const PAYLOAD: &[u8] = b"{\"temp\":21.5}";
const INBOUND_ID: u16 = 99;
const OUTBOUND_ID: u16 = 0x1234;

#[derive(Debug, Clone, Copy)]
struct Case {
    inbound: ProtocolVersion,
    outbound: ProtocolVersion,
    publish_qos: QoS,
    granted_qos: QoS,
    retain: bool,
    retain_as_published: bool,
    dup: bool,
    alias: bool,
    expiry: bool,
}

impl Case {
    fn delivery_qos(&self) -> QoS {
        self.publish_qos.min(self.granted_qos)
    }
    fn out_qos(&self) -> PublishQoS {
        let id = NonZeroU16::new(OUTBOUND_ID);
        let qos = self.delivery_qos();
        PublishQoS::new(qos, if qos == QoS::AtMostOnce { None } else { id }).expect("consistent")
    }
    fn out_retain(&self) -> bool {
        self.retain_as_published && self.retain
    }
    fn out_dup(&self) -> bool {
        self.dup && self.delivery_qos() != QoS::AtMostOnce
    }
}

fn all_cases() -> Vec<Case> {
    const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V3_1_1, ProtocolVersion::V5];
    let mut cases = Vec::new();
    for inbound in VERSIONS {
        for outbound in VERSIONS {
            for publish_qos in QOS {
                for granted_qos in QOS {
                    for bits in 0u8..32 {
                        let alias = bits & 8 != 0;
                        let expiry = bits & 16 != 0;
                        // Aliases and message expiry exist only in 5.0.
                        if !inbound.is_v5() && (alias || expiry) {
                            continue;
                        }
                        cases.push(Case {
                            inbound,
                            outbound,
                            publish_qos,
                            granted_qos,
                            retain: bits & 1 != 0,
                            retain_as_published: bits & 2 != 0,
                            dup: bits & 4 != 0,
                            alias,
                            expiry,
                        });
                    }
                }
            }
        }
    }
    cases
}

/// The inbound PUBLISH as received: encoded for the inbound version, then decoded, so that
/// it keeps its frame. Returns the frame's bytes too.
fn receive(case: &Case) -> (Publish, Vec<u8>) {
    let mut p = Publish::new(ByteStr::from(TOPIC), Bytes::from_static(PAYLOAD));
    p.set_qos(PublishQoS::with_id(
        case.publish_qos,
        NonZeroU16::new(INBOUND_ID).expect("non-zero"),
    ));
    p.retain = case.retain;
    if case.publish_qos != QoS::AtMostOnce {
        // A resend inbound: the template must not carry its DUP over.
        p.dup = case.dup;
    }
    if case.inbound.is_v5() {
        p.properties_mut().content_type = Some("application/json".into());
        p.properties_mut().user_properties = vec![("k".into(), "v".into())];
        if case.expiry {
            p.properties_mut().message_expiry_interval_secs = Some(30);
        }
        if case.alias {
            p.set_topic(ByteStr::default());
            p.properties_mut().topic_alias = Some(3);
        }
    }
    let bytes = Packet::Publish(p).to_bytes(case.inbound).to_vec();
    let mut buf = BytesMut::from(&bytes[..]);
    match Decoder::with_version(case.inbound, 1 << 20).decode(&mut buf) {
        Ok(Some(Packet::Publish(p))) => (p, bytes),
        other => panic!("{other:?} decoding {}", hex(&bytes)),
    }
}

fn decode_publish(version: ProtocolVersion, bytes: &[u8]) -> Publish {
    let mut buf = BytesMut::from(bytes);
    match Decoder::with_version(version, 1 << 20).decode(&mut buf) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
        other => panic!("{other:?} decoding {}", hex(bytes)),
    }
}

/// Checks the bytes with mqttbytes, the independent decoder.
fn check_with_mqttbytes(case: &Case, bytes: &[u8]) {
    let ctx = || format!("{case:?}: {}", hex(bytes));
    let mut buf = BytesMut::from(bytes);
    let qos = case.delivery_qos() as u8;
    let pkid = if qos == 0 { 0 } else { OUTBOUND_ID };
    if case.outbound.is_v5() {
        let packet = mqttbytes::v5::read(&mut buf, 1 << 20).unwrap_or_else(|e| {
            panic!("mqttbytes v5 rejects: {e:?}: {}", ctx());
        });
        let mqttbytes::v5::Packet::Publish(p) = packet else {
            panic!("mqttbytes v5: not a PUBLISH: {}", ctx())
        };
        assert_eq!(p.topic, TOPIC, "{}", ctx());
        assert_eq!(p.qos as u8, qos, "{}", ctx());
        assert_eq!(p.retain, case.out_retain(), "{}", ctx());
        assert_eq!(p.dup, case.out_dup(), "{}", ctx());
        assert_eq!(p.pkid, pkid, "{}", ctx());
        assert_eq!(&p.payload[..], PAYLOAD, "{}", ctx());
        let props = p.properties.unwrap_or(mqttbytes::v5::PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
            subscription_identifiers: vec![],
            content_type: None,
        });
        assert_eq!(props.topic_alias, None, "inbound alias stripped: {}", ctx());
        let from_v5 = case.inbound.is_v5();
        assert_eq!(
            props.message_expiry_interval,
            (from_v5 && case.expiry).then_some(30),
            "{}",
            ctx()
        );
        assert_eq!(
            props.content_type.as_deref(),
            from_v5.then_some("application/json"),
            "{}",
            ctx()
        );
        let users = if from_v5 {
            vec![("k".to_string(), "v".to_string())]
        } else {
            vec![]
        };
        assert_eq!(props.user_properties, users, "{}", ctx());
        assert!(props.subscription_identifiers.is_empty(), "{}", ctx());
    } else {
        let packet = mqttbytes::v4::read(&mut buf, 1 << 20).unwrap_or_else(|e| {
            panic!("mqttbytes v4 rejects: {e:?}: {}", ctx());
        });
        let mqttbytes::v4::Packet::Publish(p) = packet else {
            panic!("mqttbytes v4: not a PUBLISH: {}", ctx())
        };
        assert_eq!(p.topic, TOPIC, "{}", ctx());
        assert_eq!(p.qos as u8, qos, "{}", ctx());
        assert_eq!(p.retain, case.out_retain(), "{}", ctx());
        assert_eq!(p.dup, case.out_dup(), "{}", ctx());
        assert_eq!(p.pkid, pkid, "{}", ctx());
        assert_eq!(&p.payload[..], PAYLOAD, "{}", ctx());
    }
    assert!(buf.is_empty(), "mqttbytes left bytes: {}", ctx());
}

fn run(case: &Case) {
    let ctx = format!("{case:?}");
    let (mut received, frame) = receive(case);
    if case.alias {
        // The broker resolves an inbound alias before building templates.
        received.resolve_alias(ByteStr::from(TOPIC));
    }
    let templates = PublishTemplates::new(received.clone());
    let family = Family::of(case.outbound);
    let with_id = case.delivery_qos() != QoS::AtMostOnce;

    // Raw reuse: exactly when the received frame already has this layout and no alias.
    let expect_raw = family == Family::of(case.inbound)
        && (case.publish_qos != QoS::AtMostOnce) == with_id
        && !case.alias;
    assert_eq!(templates.is_raw(family, with_id), expect_raw, "{ctx}");

    let template = templates.get(family, with_id);
    assert_eq!(template.has_packet_id(), with_id, "{ctx}");
    if expect_raw {
        assert_bytes_eq(template.as_bytes(), &frame, &format!("raw template {ctx}"));
    }
    let shared_before = template.as_bytes().to_vec();

    let mut out = Vec::new();
    template
        .write_to(&mut out, case.out_qos(), case.out_retain(), case.dup)
        .unwrap_or_else(|e| panic!("{e:?}: {ctx}"));

    // The one-shot encoding of the same delivery.
    let mut expected = BytesMut::new();
    let layout = encode_publish(
        &mut expected,
        &received,
        case.outbound,
        case.out_qos(),
        case.out_retain(),
        case.dup,
        &Outbound::default(),
    );
    assert_eq!(layout.len, expected.len(), "{ctx}");
    let ours = decode_publish(case.outbound, &out);
    let theirs = decode_publish(case.outbound, &expected);
    assert_eq!(
        ours,
        theirs,
        "{ctx}\n  template: {}\n  one-shot: {}",
        hex(&out),
        hex(&expected)
    );
    assert_bytes_eq(&out, &expected, &ctx);

    // The checklist, field by field.
    assert_eq!(ours.qos(), case.delivery_qos(), "{ctx}");
    assert_eq!(ours.retain, case.out_retain(), "{ctx}");
    assert_eq!(ours.dup, case.out_dup(), "{ctx}");
    assert_eq!(ours.packet_id(), case.out_qos().packet_id(), "{ctx}");
    assert_eq!(ours.topic(), TOPIC, "{ctx}");
    assert_eq!(ours.properties().topic_alias(), None, "{ctx}");
    assert_eq!(ours.payload(), PAYLOAD, "{ctx}");

    check_with_mqttbytes(case, &out);

    // Shared bytes never change: the template, and the frame it may share.
    assert_bytes_eq(
        template.as_bytes(),
        &shared_before,
        &format!("template {ctx}"),
    );
    assert_bytes_eq(
        templates.get(family, with_id).as_bytes(),
        &shared_before,
        &ctx,
    );
    if expect_raw {
        assert_bytes_eq(template.as_bytes(), &frame, &format!("frame {ctx}"));
    }

    // Writing twice into the same buffer appends an identical second copy.
    template
        .write_to(&mut out, case.out_qos(), case.out_retain(), case.dup)
        .expect("same layout");
    let (first, second) = out.split_at(out.len() / 2);
    assert_bytes_eq(second, first, &format!("second copy {ctx}"));
}

#[test]
fn every_combination_matches_the_one_shot_encoder_and_mqttbytes() {
    let cases = all_cases();
    // 2 outbound x 9 QoS pairs x (8 for 3.1.1 inbound + 32 for 5.0 inbound) x ... :
    // 2 x 9 x 8 + 2 x 9 x 32.
    assert_eq!(cases.len(), 2 * 9 * 8 + 2 * 9 * 32);
    for case in &cases {
        run(case);
    }
}

/// DESIGN.md: "A downgrade to QoS 0 changes the layout": the QoS 0 template is the QoS > 0
/// one minus the two packet identifier bytes, and writing with the wrong layout is refused
/// without writing anything.
#[test]
fn downgrade_to_qos_0_drops_the_packet_id_and_wrong_layout_is_refused() {
    for case in all_cases()
        .into_iter()
        .filter(|c| c.publish_qos != QoS::AtMostOnce && c.granted_qos == QoS::AtMostOnce)
    {
        let (mut received, _) = receive(&case);
        if case.alias {
            received.resolve_alias(ByteStr::from(TOPIC));
        }
        let templates = PublishTemplates::new(received);
        let family = Family::of(case.outbound);
        let qos0 = templates.get(family, false);
        let with_id = templates.get(family, true);
        // The remaining length stays below 128 here, so only the packet id differs.
        assert_eq!(qos0.len() + 2, with_id.len(), "{case:?}");

        let mut out = vec![0xAA];
        assert_eq!(
            with_id.write_to(&mut out, PublishQoS::AtMostOnce, false, false),
            Err(TemplateError::LayoutMismatch),
            "{case:?}"
        );
        let id = PublishQoS::AtLeastOnce(NonZeroU16::new(1).expect("non-zero"));
        assert_eq!(
            qos0.write_to(&mut out, id, false, false),
            Err(TemplateError::LayoutMismatch),
            "{case:?}"
        );
        assert_eq!(out, [0xAA], "nothing written on a mismatch");
        qos0.write_to(&mut out, PublishQoS::AtMostOnce, false, true)
            .expect("QoS 0 layout");
        let p = decode_publish(case.outbound, &out[1..]);
        assert_eq!(
            (p.qos(), p.packet_id(), p.dup),
            (QoS::AtMostOnce, None, false)
        );
    }
}

/// A received frame is reused as is (no encoding) only for its own layout; a resolved alias
/// or subscription identifiers in the message force an encoding.
#[test]
fn raw_publish_reuse() {
    let case = Case {
        inbound: ProtocolVersion::V5,
        outbound: ProtocolVersion::V5,
        publish_qos: QoS::AtLeastOnce,
        granted_qos: QoS::ExactlyOnce,
        retain: true,
        retain_as_published: true,
        dup: false,
        alias: false,
        expiry: true,
    };
    let (received, frame) = receive(&case);
    let templates = PublishTemplates::new(received.clone());
    assert!(templates.is_raw(Family::V5, true));
    assert!(!templates.is_raw(Family::V5, false));
    assert!(!templates.is_raw(Family::V3, true));
    assert!(!templates.is_raw(Family::V3, false));
    // Shares the received bytes rather than copying them: the payload of the decoded
    // message is the tail of the template's own buffer.
    let raw = templates.get(Family::V5, true).as_bytes();
    assert_eq!(
        raw.as_ptr() as usize + raw.len() - received.payload().len(),
        received.payload().as_ptr() as usize
    );
    assert_bytes_eq(templates.get(Family::V5, true).as_bytes(), &frame, "raw");

    // With subscription identifiers kept on the message (they are per subscriber): not raw,
    // and the template carries none.
    let mut with_sub_ids = received.clone();
    with_sub_ids.properties_mut().subscription_identifiers = vec![7];
    let templates = PublishTemplates::new(with_sub_ids);
    assert!(!templates.is_raw(Family::V5, true));
    let p = decode_publish(
        ProtocolVersion::V5,
        templates.get(Family::V5, true).as_bytes(),
    );
    assert!(!p.properties().has_subscription_identifiers());

    // A message built locally (no received frame) is never raw.
    let templates = PublishTemplates::new(Publish::new("t", "x"));
    assert!(!templates.is_raw(Family::V5, false));
    assert!(!templates.is_raw(Family::V3, false));

    // Changing the flags, QoS or packet identifier keeps the frame (write_to patches them);
    // changing the topic, the properties or the payload forgets it.
    let mut flags = received.clone();
    flags.dup = true;
    flags.retain = false;
    flags.set_qos(PublishQoS::with_id(
        flags.qos(),
        NonZeroU16::new(99).expect("non-zero"),
    ));
    assert!(PublishTemplates::new(flags).is_raw(Family::V5, true));
    let mut topic = received.clone();
    topic.set_topic("other");
    assert!(!PublishTemplates::new(topic).is_raw(Family::V5, true));
    let mut payload = received.clone();
    payload.set_payload("other");
    assert!(!PublishTemplates::new(payload).is_raw(Family::V5, true));
    let mut changed = received;
    changed.properties_mut().content_type = None;
    assert!(!changed.is_received());
    assert!(!PublishTemplates::new(changed).is_raw(Family::V5, true));
}
