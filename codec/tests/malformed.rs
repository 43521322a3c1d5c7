//! Malformed and forbidden inputs: one test per validation rule, each asserting the exact
//! [`DecodeError`] and the reason code it maps to, with the spec statement it enforces.
//!
//! Frames are built with two tiny helpers ([`frame`] computes the remaining length, [`s`]
//! writes a length-prefixed string) so that each test shows only the bytes it is about.

mod common;

use bytes::BytesMut;
use common::{decoder, hex};
use tern_codec::{DecodeError, Decoder, Packet, ProtocolVersion, ReasonCode};

const V3: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
/// A server-side decoder that has not seen CONNECT yet.
const SERVER: Option<ProtocolVersion> = None;

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const UNSUPPORTED_VERSION: u8 = 0x84;
const TOPIC_FILTER_INVALID: u8 = 0x8F;
const TOPIC_NAME_INVALID: u8 = 0x90;
const PACKET_TOO_LARGE: u8 = 0x95;
const TOPIC_ALIAS_INVALID: u8 = 0x94;

/// A length-prefixed string or binary field.
fn s(text: impl AsRef<[u8]>) -> Vec<u8> {
    let text = text.as_ref();
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

/// A whole frame: `byte0`, the remaining length, then the parts.
fn frame(byte0: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = vec![byte0];
    tern_codec::varint::write(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}

/// A CONNECT frame with the given protocol name, level and flags; `props` for 5.0.
fn connect(name: &str, level: u8, flags: u8, props: Option<&[u8]>, payload: &[&[u8]]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let name = s(name);
    parts.push(&name);
    let header = [level, flags, 0x00, 0x3c];
    parts.push(&header);
    if let Some(props) = props {
        parts.push(props);
    }
    parts.extend_from_slice(payload);
    frame(0x10, &parts)
}

/// Asserts that `bytes` fails with exactly `expected`, which maps to reason code `code`.
#[track_caller]
fn rejects(version: Option<ProtocolVersion>, bytes: &[u8], expected: DecodeError, code: u8) {
    let mut dec = decoder(version);
    let mut buf = BytesMut::from(bytes);
    let got = dec.decode(&mut buf);
    assert_eq!(got, Err(expected), "decoding {}", hex(bytes));
    assert_eq!(
        expected.reason_code(),
        ReasonCode(code),
        "reason code of {expected:?}"
    );
}

/// Asserts that `bytes` decodes to one packet, using every byte.
#[track_caller]
fn accepts(version: Option<ProtocolVersion>, bytes: &[u8]) -> Packet {
    let mut dec = decoder(version);
    let mut buf = BytesMut::from(bytes);
    match dec.decode(&mut buf) {
        Ok(Some(packet)) if buf.is_empty() => packet,
        other => panic!("{other:?} decoding {}", hex(bytes)),
    }
}

// ---------------------------------------------------------------------------------------
// Fixed header
// ---------------------------------------------------------------------------------------

/// [MQTT-2.1.3-1]: reserved flag bits must be exactly as listed in table 2.2, for every
/// packet type but PUBLISH; every other nibble is rejected from the fixed header alone.
#[test]
fn mqtt_2_1_3_1_reserved_header_flags_every_packet_type() {
    for packet_type in 1u8..=15 {
        if packet_type == 3 {
            continue; // PUBLISH: the nibble is DUP, QoS, RETAIN.
        }
        let required = match packet_type {
            6 | 8 | 10 => 0b0010, // PUBREL, SUBSCRIBE, UNSUBSCRIBE
            _ => 0,
        };
        for flags in (0u8..16).filter(|&f| f != required) {
            let bytes = [packet_type << 4 | flags, 0x00];
            rejects(
                V5,
                &bytes,
                DecodeError::InvalidHeaderFlags { packet_type, flags },
                MALFORMED,
            );
        }
    }
}

/// [MQTT-3.6.1-1]: PUBREL flags must be 0010 (mqttbytes does not check this).
#[test]
fn mqtt_3_6_1_1_pubrel_with_flags_0000() {
    rejects(
        V3,
        &[0x60, 0x02, 0x00, 0x01],
        DecodeError::InvalidHeaderFlags {
            packet_type: 6,
            flags: 0,
        },
        MALFORMED,
    );
}

/// [MQTT-2.1.2]: packet type 0 is reserved.
#[test]
fn packet_type_0_is_reserved() {
    rejects(
        V5,
        &[0x00, 0x00],
        DecodeError::InvalidPacketType(0),
        MALFORMED,
    );
}

/// [MQTT-1.5.5-1]: the remaining length is a variable byte integer of at most four bytes.
#[test]
fn mqtt_1_5_5_1_remaining_length_of_five_bytes() {
    rejects(
        V3,
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        DecodeError::MalformedRemainingLength,
        MALFORMED,
    );
    // Four continuation bytes are already wrong, before the fifth arrives.
    rejects(
        V3,
        &[0x30, 0x80, 0x80, 0x80, 0x80],
        DecodeError::MalformedRemainingLength,
        MALFORMED,
    );
    // Three continuation bytes: still a valid prefix, so "need more".
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff][..]);
    assert_eq!(decoder(V3).decode(&mut buf), Ok(None));
}

/// [MQTT-3.2.2-15] / [MQTT-3.1.2-24]: a packet above the Maximum Packet Size is rejected from
/// the fixed header alone, before its body is buffered (nothing else is fed).
#[test]
fn mqtt_3_1_2_24_packet_too_large_from_the_fixed_header_alone() {
    let mut dec = Decoder::new(128);
    let mut buf = BytesMut::from(&[0x30, 0xff, 0x7f][..]); // remaining length 16,383
    let capacity = buf.capacity();
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 16_386,
            max: 128
        })
    );
    assert_eq!(buf.len(), 3, "the header is all there was");
    assert_eq!(buf.capacity(), capacity, "no room reserved for the body");
    assert_eq!(
        DecodeError::PacketTooLarge { size: 0, max: 0 }.reason_code(),
        ReasonCode(PACKET_TOO_LARGE)
    );

    // The largest remaining length the format allows, with a 5-byte fixed header.
    rejects(
        SERVER,
        &[0x10, 0xff, 0xff, 0xff, 0x7f],
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: common::MAX_BYTES,
        },
        PACKET_TOO_LARGE,
    );
}

/// The limit counts the whole packet, fixed header included: exactly at it is fine.
#[test]
fn packet_size_limit_is_inclusive_of_the_fixed_header() {
    let bytes = [0x30, 0x03, 0x00, 0x01, 0x61]; // 5 bytes
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        Decoder::with_version(ProtocolVersion::V3_1_1, 5).decode(&mut buf),
        Ok(Some(Packet::Publish(_)))
    ));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Decoder::with_version(ProtocolVersion::V3_1_1, 4).decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 5, max: 4 })
    );
}

#[test]
fn field_past_the_end_is_truncated_and_extra_bytes_are_trailing() {
    rejects(V3, &[0x40, 0x01, 0x00], DecodeError::Truncated, MALFORMED);
    rejects(
        V3,
        &[0x30, 0x03, 0x00, 0x05, 0x61],
        DecodeError::Truncated,
        MALFORMED,
    );
    // [MQTT-3.12]: PINGREQ has no variable header or payload.
    rejects(
        V3,
        &[0xc0, 0x01, 0x00],
        DecodeError::TrailingBytes,
        MALFORMED,
    );
    // 3.1.1 DISCONNECT has no body.
    rejects(
        V3,
        &[0xe0, 0x01, 0x00],
        DecodeError::TrailingBytes,
        MALFORMED,
    );
    rejects(
        V3,
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        DecodeError::TrailingBytes,
        MALFORMED,
    );
}

// ---------------------------------------------------------------------------------------
// UTF-8 strings
// ---------------------------------------------------------------------------------------

/// [MQTT-1.5.4-1]: strings must be well formed UTF-8.
#[test]
fn mqtt_1_5_4_1_invalid_utf8() {
    rejects(
        V3,
        &frame(0x30, &[&s([0xc3, 0x28])]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
    // In a CONNECT client identifier, learnt server-side.
    rejects(
        SERVER,
        &connect("MQTT", 4, 0x02, None, &[&s([0xff])]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
    // In a user property value.
    let props = [&[0x08, 0x26][..], &s("k"), &s([0xc0, 0x80])].concat();
    rejects(
        V5,
        &frame(0x30, &[&s("t"), &props]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
}

/// [MQTT-1.5.4-2]: a string must not contain U+0000.
#[test]
fn mqtt_1_5_4_2_null_character() {
    rejects(
        V3,
        &frame(0x30, &[&s("a\0")]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
    rejects(
        SERVER,
        &connect("MQTT", 5, 0x02, Some(&[0]), &[&s("id\0")]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
}

/// [MQTT-1.5.4-1]: UTF-16 surrogates (U+D800..U+DFFF) encoded as UTF-8 are not well formed.
#[test]
fn mqtt_1_5_4_1_surrogate_encoded_as_utf8() {
    rejects(
        V3,
        &frame(0x30, &[&s([0xed, 0xa0, 0x80])]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
    rejects(
        V5,
        &frame(0x30, &[&s([0x61, 0xed, 0xbf, 0xbf]), &[0]]),
        DecodeError::InvalidUtf8,
        MALFORMED,
    );
}

// ---------------------------------------------------------------------------------------
// Topic names and filters
// ---------------------------------------------------------------------------------------

/// [MQTT-3.3.2-2]: the Topic Name in a PUBLISH must not contain wildcard characters.
#[test]
fn mqtt_3_3_2_2_topic_name_with_wildcards() {
    for topic in ["a/+", "#", "a/#", "+", "a+b", "sport/tennis#"] {
        rejects(
            V3,
            &frame(0x30, &[&s(topic)]),
            DecodeError::InvalidTopicName,
            TOPIC_NAME_INVALID,
        );
        rejects(
            V5,
            &frame(0x30, &[&s(topic), &[0]]),
            DecodeError::InvalidTopicName,
            TOPIC_NAME_INVALID,
        );
    }
}

/// [MQTT-4.7.3-1] (3.1.1): "All Topic Names and Topic Filters MUST be at least one character
/// long": an empty topic name is invalid (3.1.1 has no reason codes; the connection closes).
/// 5.0, 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
/// Topic Alias": 0x82, not 0x90 (Topic Name invalid).
#[test]
fn mqtt_4_7_3_1_empty_topic_without_alias() {
    rejects(
        V3,
        &frame(0x30, &[&s("")]),
        DecodeError::InvalidTopicName,
        TOPIC_NAME_INVALID,
    );
    rejects(
        V5,
        &frame(0x30, &[&s(""), &[0]]),
        DecodeError::EmptyTopicWithoutAlias,
        PROTOCOL_ERROR,
    );
    // With a property that is not a Topic Alias.
    rejects(
        V5,
        &frame(0x32, &[&s(""), &[0, 1], &[2, 0x01, 0x01]]),
        DecodeError::EmptyTopicWithoutAlias,
        PROTOCOL_ERROR,
    );
}

/// 5.0 3.3.2.3.4: an empty topic name with a Topic Alias is legal.
#[test]
fn empty_topic_with_alias_is_ok_in_5_0() {
    let packet = accepts(V5, &frame(0x30, &[&s(""), &[3, 0x23, 0, 5], b"hi"]));
    let Packet::Publish(publish) = packet else {
        panic!("not a PUBLISH: {packet:?}")
    };
    assert!(publish.topic().is_empty());
    assert_eq!(publish.properties().topic_alias(), Some(5));
    assert_eq!(publish.payload(), b"hi");
}

/// [MQTT-3.1.3-11]: the Will Topic is a topic name: no wildcards, not empty.
#[test]
fn mqtt_3_1_3_11_will_topic_is_a_topic_name() {
    for topic in ["a/#", ""] {
        rejects(
            SERVER,
            &connect("MQTT", 4, 0x06, None, &[&s("c"), &s(topic), &s("m")]),
            DecodeError::InvalidTopicName,
            TOPIC_NAME_INVALID,
        );
    }
}

/// [MQTT-3.3.2-14]: the Response Topic is a topic name (no wildcards).
#[test]
fn mqtt_3_3_2_14_response_topic_without_wildcards() {
    let props = [&[0x08, 0x08][..], &s("r/+/x")].concat();
    rejects(
        V5,
        &frame(0x30, &[&s("t"), &props]),
        DecodeError::InvalidResponseTopic,
        PROTOCOL_ERROR,
    );
}

/// [MQTT-3.3.2-14] for the will: its Response Topic ends up in a PUBLISH, so it is a topic
/// name too.
#[test]
fn mqtt_3_3_2_14_will_response_topic_without_wildcards() {
    // Property length 8, Response Topic (0x08), "r/+/x".
    let block = [&[0x08, 0x08][..], &s("r/+/x")].concat();
    rejects(
        SERVER,
        &connect(
            "MQTT",
            5,
            0x06,
            Some(&[0x00]),
            &[&s("c"), &block, &s("w"), &s("m")],
        ),
        DecodeError::InvalidResponseTopic,
        PROTOCOL_ERROR,
    );
}

const BAD_FILTERS: &[(&str, &str)] = &[
    ("", "[MQTT-4.7.3-1] at least one character"),
    ("a/#/b", "[MQTT-4.7.1-1] # must be the last character"),
    ("#/a", "[MQTT-4.7.1-1] # must be the last character"),
    ("a#", "[MQTT-4.7.1-1] # must occupy a whole level"),
    ("a/b#", "[MQTT-4.7.1-1] # must occupy a whole level"),
    ("+a", "[MQTT-4.7.1-2] + must occupy a whole level"),
    ("a/b+/c", "[MQTT-4.7.1-2] + must occupy a whole level"),
    ("$share/g", "[MQTT-4.8.2-2] $share/{group} needs a filter"),
    (
        "$share/g/",
        "[MQTT-4.8.2-2] the filter after the group is not empty",
    ),
    (
        "$share//a",
        "[MQTT-4.8.2-1] the share name is at least one character",
    ),
    (
        "$share/g+/a",
        "[MQTT-4.8.2-2] no wildcard in the share name",
    ),
    ("$share/#/a", "[MQTT-4.8.2-2] no wildcard in the share name"),
    (
        "$share/g/a#",
        "[MQTT-4.7.1-1] the inner filter obeys the rules too",
    ),
];

/// Section 4.7.1 and 4.8.2 filter rules, in SUBSCRIBE (3.1.1 and 5.0).
#[test]
fn mqtt_4_7_1_and_4_8_2_bad_filters_in_subscribe() {
    for (filter, rule) in BAD_FILTERS {
        let bytes = frame(0x82, &[&[0, 1], &s(filter), &[1]]);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decoder(V3).decode(&mut buf),
            Err(DecodeError::InvalidTopicFilter),
            "{filter:?}: {rule}"
        );
        rejects(
            V5,
            &frame(0x82, &[&[0, 1], &[0], &s(filter), &[1]]),
            DecodeError::InvalidTopicFilter,
            TOPIC_FILTER_INVALID,
        );
    }
}

/// The same filter rules in UNSUBSCRIBE ([MQTT-3.10.3-1]: the filters are UTF-8 filters).
#[test]
fn mqtt_4_7_1_and_4_8_2_bad_filters_in_unsubscribe() {
    for (filter, rule) in BAD_FILTERS {
        let bytes = frame(0xa2, &[&[0, 1], &s(filter)]);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decoder(V3).decode(&mut buf),
            Err(DecodeError::InvalidTopicFilter),
            "{filter:?}: {rule}"
        );
        rejects(
            V5,
            &frame(0xa2, &[&[0, 1], &[0], &s(filter)]),
            DecodeError::InvalidTopicFilter,
            TOPIC_FILTER_INVALID,
        );
    }
}

#[test]
fn good_filters_are_accepted() {
    for filter in [
        "#",
        "+",
        "a/#",
        "+/+/#",
        "/",
        "a//b",
        "$SYS/#",
        "$share/g/#",
    ] {
        accepts(V3, &frame(0x82, &[&[0, 1], &s(filter), &[2]]));
        accepts(V5, &frame(0xa2, &[&[0, 1], &[0], &s(filter)]));
    }
}

// ---------------------------------------------------------------------------------------
// Packet identifiers, QoS, DUP
// ---------------------------------------------------------------------------------------

/// [MQTT-2.2.1-3]: SUBSCRIBE, UNSUBSCRIBE and QoS > 0 PUBLISH need a non-zero packet
/// identifier (and so do the acknowledgements that echo it).
#[test]
fn mqtt_2_2_1_3_zero_packet_id() {
    let cases: [Vec<u8>; 9] = [
        frame(0x32, &[&s("a"), &[0, 0]]),
        frame(0x34, &[&s("a"), &[0, 0]]),
        frame(0x82, &[&[0, 0], &s("a"), &[0]]),
        frame(0xa2, &[&[0, 0], &s("a")]),
        vec![0x40, 0x02, 0x00, 0x00],
        vec![0x50, 0x02, 0x00, 0x00],
        vec![0x62, 0x02, 0x00, 0x00],
        vec![0x70, 0x02, 0x00, 0x00],
        vec![0x90, 0x03, 0x00, 0x00, 0x00],
    ];
    for bytes in &cases {
        rejects(V3, bytes, DecodeError::ZeroPacketId, MALFORMED);
    }
    rejects(
        V3,
        &[0xb0, 0x02, 0x00, 0x00],
        DecodeError::ZeroPacketId,
        MALFORMED,
    );
}

/// [MQTT-3.3.1-4]: a PUBLISH must not have both QoS bits set.
#[test]
fn mqtt_3_3_1_4_publish_qos_3() {
    rejects(
        V3,
        &frame(0x36, &[&s("a"), &[0, 1]]),
        DecodeError::InvalidQoS,
        MALFORMED,
    );
    rejects(
        V5,
        &frame(0x3e, &[&s("a"), &[0, 1], &[0]]),
        DecodeError::InvalidQoS,
        MALFORMED,
    );
}

/// [MQTT-3.1.2-12] (5.0: 3.1.2.6): Will QoS 3 is malformed.
#[test]
fn mqtt_3_1_2_12_will_qos_3() {
    // Will flag, will QoS 3, clean session.
    rejects(
        SERVER,
        &connect("MQTT", 4, 0x1e, None, &[&s("c"), &s("t"), &s("m")]),
        DecodeError::InvalidQoS,
        MALFORMED,
    );
}

/// [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
#[test]
fn mqtt_3_3_1_2_dup_with_qos_0() {
    rejects(
        V3,
        &frame(0x38, &[&s("a")]),
        DecodeError::DupWithQoS0,
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &frame(0x39, &[&s("a"), &[0]]),
        DecodeError::DupWithQoS0,
        PROTOCOL_ERROR,
    );
}

// ---------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------------------

/// [MQTT-3.8.3-5] (5.0): bits 6 and 7 of the subscription options are reserved.
#[test]
fn mqtt_3_8_3_5_subscribe_reserved_option_bits_v5() {
    for options in [0x40, 0x80, 0xc0, 0x41] {
        rejects(
            V5,
            &frame(0x82, &[&[0, 1], &[0], &s("a"), &[options]]),
            DecodeError::InvalidSubscriptionOptions,
            MALFORMED,
        );
    }
}

/// [MQTT-3-8.3-4] (3.1.1): the upper six bits of the requested QoS byte are reserved.
#[test]
fn mqtt_3_8_3_4_v3_subscribe_reserved_option_bits() {
    for options in [0x04, 0x08, 0x10, 0x80] {
        rejects(
            V3,
            &frame(0x82, &[&[0, 1], &s("a"), &[options]]),
            DecodeError::InvalidSubscriptionOptions,
            MALFORMED,
        );
    }
}

/// [MQTT-3.8.3-2] (3.1.1) / 3.8.3.1 (5.0): requested QoS 3 is malformed.
#[test]
fn subscribe_requested_qos_3() {
    rejects(
        V3,
        &frame(0x82, &[&[0, 1], &s("a"), &[3]]),
        DecodeError::InvalidQoS,
        MALFORMED,
    );
    rejects(
        V5,
        &frame(0x82, &[&[0, 1], &[0], &s("a"), &[3]]),
        DecodeError::InvalidQoS,
        MALFORMED,
    );
}

/// 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
#[test]
fn retain_handling_3_is_a_protocol_error() {
    rejects(
        V5,
        &frame(0x82, &[&[0, 1], &[0], &s("a"), &[0x30]]),
        DecodeError::InvalidRetainHandling,
        PROTOCOL_ERROR,
    );
}

/// [MQTT-3.8.3-4] (5.0): "It is a Protocol Error to set the No Local bit to 1 on a Shared
/// Subscription."
#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription() {
    rejects(
        V5,
        &frame(0x82, &[&[0, 1], &[0], &s("$share/g/a"), &[0x04]]),
        DecodeError::NoLocalOnSharedSubscription,
        PROTOCOL_ERROR,
    );
    // No Local on an ordinary filter is fine.
    accepts(V5, &frame(0x82, &[&[0, 1], &[0], &s("a"), &[0x04]]));
}

/// [MQTT-3.8.3-3] (3.1.1; 5.0 [MQTT-3.8.3-2]): a SUBSCRIBE has at least one filter.
#[test]
fn mqtt_3_8_3_3_empty_subscribe() {
    rejects(
        V3,
        &[0x82, 0x02, 0x00, 0x01],
        DecodeError::EmptySubscription,
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        DecodeError::EmptySubscription,
        PROTOCOL_ERROR,
    );
}

/// [MQTT-3.10.3-2]: an UNSUBSCRIBE has at least one filter.
#[test]
fn mqtt_3_10_3_2_empty_unsubscribe() {
    rejects(
        V3,
        &[0xa2, 0x02, 0x00, 0x01],
        DecodeError::EmptySubscription,
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &[0xa2, 0x03, 0x00, 0x01, 0x00],
        DecodeError::EmptySubscription,
        PROTOCOL_ERROR,
    );
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// A 5.0 PUBLISH (QoS 1, id 1, topic "t") with the given property block contents.
fn publish_v5(props: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    tern_codec::varint::write(&mut block, props.len() as u32);
    block.extend_from_slice(props);
    frame(0x32, &[&s("t"), &[0, 1], &block, b"p"])
}

/// A 5.0 CONNECT with the given property block contents.
fn connect_v5(props: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    tern_codec::varint::write(&mut block, props.len() as u32);
    block.extend_from_slice(props);
    connect("MQTT", 5, 0x02, Some(&block), &[&s("c")])
}

/// 2.2.2.2: "It is a Protocol Error to include the X more than once", for every
/// single-valued property, in a packet where it is allowed.
#[test]
fn duplicate_properties_are_a_protocol_error() {
    let publish_props: &[(u8, &[u8])] = &[
        (0x01, &[0x01, 0x01]),
        (0x02, &[0x02, 0, 0, 0, 9]),
        (0x03, &[0x03, 0, 1, b'x']),
        (0x08, &[0x08, 0, 1, b'r']),
        (0x09, &[0x09, 0, 1, 7]),
        (0x23, &[0x23, 0, 1]),
    ];
    for (ident, prop) in publish_props {
        rejects(
            V5,
            &publish_v5(&[*prop, *prop].concat()),
            DecodeError::DuplicateProperty(*ident),
            PROTOCOL_ERROR,
        );
    }
    let connect_props: &[(u8, &[u8])] = &[
        (0x11, &[0x11, 0, 0, 0, 9]),
        (0x15, &[0x15, 0, 1, b'm']),
        (0x16, &[0x16, 0, 1, 1]),
        (0x17, &[0x17, 1]),
        (0x19, &[0x19, 1]),
        (0x21, &[0x21, 0, 9]),
        (0x22, &[0x22, 0, 9]),
        (0x27, &[0x27, 0, 0, 1, 0]),
    ];
    for (ident, prop) in connect_props {
        rejects(
            SERVER,
            &connect_v5(&[*prop, *prop].concat()),
            DecodeError::DuplicateProperty(*ident),
            PROTOCOL_ERROR,
        );
    }
    // SUBSCRIBE: Subscription Identifier once ([MQTT-3.8.2.1.2]).
    rejects(
        V5,
        &frame(0x82, &[&[0, 1], &[4, 0x0b, 1, 0x0b, 2], &s("a"), &[0]]),
        DecodeError::DuplicateProperty(0x0b),
        PROTOCOL_ERROR,
    );
    // CONNACK, DISCONNECT, AUTH, PUBACK: Reason String once.
    let rs = [0x1f, 0, 1, b'x'];
    let twice = [&[8][..], &rs, &rs].concat();
    rejects(
        V5,
        &frame(0x20, &[&[0, 0], &twice]),
        DecodeError::DuplicateProperty(0x1f),
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &frame(0xe0, &[&[0x80], &twice]),
        DecodeError::DuplicateProperty(0x1f),
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &frame(0xf0, &[&[0x18], &twice]),
        DecodeError::DuplicateProperty(0x1f),
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &frame(0x40, &[&[0, 1, 0x80], &twice]),
        DecodeError::DuplicateProperty(0x1f),
        PROTOCOL_ERROR,
    );
}

/// 3.3.2.3.7: User Property may appear more than once, even with the same name; order kept.
#[test]
fn user_properties_may_repeat() {
    let up = |k: &str, v: &str| [&[0x26][..], &s(k), &s(v)].concat();
    let props = [up("k", "1"), up("k", "2"), up("j", "3")].concat();
    let Packet::Publish(p) = accepts(V5, &publish_v5(&props)) else {
        panic!("not a PUBLISH")
    };
    let pairs: Vec<(&str, &str)> = p.properties().user_properties().collect();
    assert_eq!(pairs, [("k", "1"), ("k", "2"), ("j", "3")]);
}

/// 3.3.2.3.8: a server-sent PUBLISH carries one Subscription Identifier per matching
/// subscription: it may repeat there.
#[test]
fn subscription_identifiers_may_repeat_in_a_server_sent_publish() {
    let props = [0x0b, 0x01, 0x0b, 0x80, 0x01, 0x0b, 0x01];
    let Packet::Publish(p) = accepts(V5, &publish_v5(&props)) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        p.properties()
            .subscription_identifiers()
            .collect::<Vec<_>>(),
        [1, 128, 1]
    );
}

/// 2.2.2.2: "A Control Packet which contains an Identifier which is not valid for its
/// packet type ... is a Malformed Packet."
#[test]
fn property_not_allowed_in_packet() {
    // Session Expiry Interval in PUBLISH.
    rejects(
        V5,
        &publish_v5(&[0x11, 0, 0, 0, 1]),
        DecodeError::PropertyNotAllowed(0x11),
        MALFORMED,
    );
    // Topic Alias in CONNECT.
    rejects(
        SERVER,
        &connect_v5(&[0x23, 0, 1]),
        DecodeError::PropertyNotAllowed(0x23),
        MALFORMED,
    );
    // Session Expiry Interval in the Will properties.
    rejects(
        SERVER,
        &connect(
            "MQTT",
            5,
            0x06,
            Some(&[0]),
            &[&s("c"), &[5, 0x11, 0, 0, 0, 1], &s("t"), &s("m")],
        ),
        DecodeError::PropertyNotAllowed(0x11),
        MALFORMED,
    );
    // Message Expiry Interval in SUBSCRIBE.
    rejects(
        V5,
        &frame(0x82, &[&[0, 1], &[5, 0x02, 0, 0, 0, 1], &s("a"), &[0]]),
        DecodeError::PropertyNotAllowed(0x02),
        MALFORMED,
    );
    // Subscription Identifier in UNSUBSCRIBE.
    rejects(
        V5,
        &frame(0xa2, &[&[0, 1], &[2, 0x0b, 1], &s("a")]),
        DecodeError::PropertyNotAllowed(0x0b),
        MALFORMED,
    );
    // Receive Maximum in DISCONNECT, Session Expiry in AUTH, Topic Alias in PUBACK.
    rejects(
        V5,
        &frame(0xe0, &[&[0], &[3, 0x21, 0, 1]]),
        DecodeError::PropertyNotAllowed(0x21),
        MALFORMED,
    );
    rejects(
        V5,
        &frame(0xf0, &[&[0x18], &[5, 0x11, 0, 0, 0, 1]]),
        DecodeError::PropertyNotAllowed(0x11),
        MALFORMED,
    );
    rejects(
        V5,
        &frame(0x40, &[&[0, 1, 0], &[3, 0x23, 0, 1]]),
        DecodeError::PropertyNotAllowed(0x23),
        MALFORMED,
    );
    // Will Delay Interval in CONNACK.
    rejects(
        V5,
        &frame(0x20, &[&[0, 0], &[5, 0x18, 0, 0, 0, 1]]),
        DecodeError::PropertyNotAllowed(0x18),
        MALFORMED,
    );
}

/// 2.2.2.2: an identifier the spec does not define is malformed.
#[test]
fn unknown_property_id() {
    for ident in [0x00u8, 0x04, 0x0a, 0x14, 0x2b, 0x7f] {
        rejects(
            V5,
            &publish_v5(&[ident, 0]),
            DecodeError::UnknownProperty(ident),
            MALFORMED,
        );
    }
}

/// Property values the spec forbids are protocol errors: Receive Maximum 0
/// (3.1.2.11.3), Maximum Packet Size 0 (3.1.2.11.4), Topic Alias 0 (3.3.2.3.4, 0x94),
/// Subscription Identifier 0 (3.3.2.3.8), a boolean byte other than 0 or 1.
#[test]
fn forbidden_property_values() {
    rejects(
        SERVER,
        &connect_v5(&[0x21, 0, 0]),
        DecodeError::InvalidPropertyValue(0x21),
        PROTOCOL_ERROR,
    );
    rejects(
        SERVER,
        &connect_v5(&[0x27, 0, 0, 0, 0]),
        DecodeError::InvalidPropertyValue(0x27),
        PROTOCOL_ERROR,
    );
    rejects(
        SERVER,
        &connect_v5(&[0x17, 2]),
        DecodeError::InvalidPropertyValue(0x17),
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &publish_v5(&[0x23, 0, 0]),
        DecodeError::TopicAliasZero,
        TOPIC_ALIAS_INVALID,
    );
    rejects(
        V5,
        &publish_v5(&[0x0b, 0]),
        DecodeError::InvalidPropertyValue(0x0b),
        PROTOCOL_ERROR,
    );
    rejects(
        V5,
        &publish_v5(&[0x01, 2]),
        DecodeError::InvalidPropertyValue(0x01),
        PROTOCOL_ERROR,
    );
}

/// The property length must match the properties inside it and fit in the packet.
#[test]
fn property_length_mismatch() {
    // Says 5 bytes, the packet has 1 left.
    rejects(
        V5,
        &frame(0x30, &[&s("t"), &[5, 0x01]]),
        DecodeError::PropertyLength,
        MALFORMED,
    );
    // Says 2 bytes, but the property inside needs 5.
    rejects(
        V5,
        &frame(0x30, &[&s("t"), &[2, 0x02, 0, 0, 0, 1]]),
        DecodeError::PropertyLength,
        MALFORMED,
    );
}

// ---------------------------------------------------------------------------------------
// Reason codes
// ---------------------------------------------------------------------------------------

/// Each packet accepts only the reason codes its section lists.
#[test]
fn invalid_reason_codes() {
    let cases: &[(Option<ProtocolVersion>, Vec<u8>, u8)] = &[
        (V5, vec![0x40, 0x03, 0, 1, 0x05], 0x05), // PUBACK 3.4.2.1
        (V5, vec![0x50, 0x03, 0, 1, 0x92], 0x92), // PUBREC 3.5.2.1
        (V5, vec![0x62, 0x03, 0, 1, 0x10], 0x10), // PUBREL 3.6.2.1
        (V5, vec![0x70, 0x03, 0, 1, 0x80], 0x80), // PUBCOMP 3.7.2.1
        (V5, vec![0x20, 0x03, 0, 0x01, 0], 0x01), // CONNACK 3.2.2.2
        (V3, vec![0x20, 0x02, 0, 0x06], 0x06),    // 3.1.1 CONNACK table 3.1
        (V5, vec![0x90, 0x04, 0, 1, 0, 0x03], 0x03), // SUBACK 3.9.3
        (V3, vec![0x90, 0x03, 0, 1, 0x83], 0x83), // 3.1.1 SUBACK: 0, 1, 2, 0x80
        (V5, vec![0xb0, 0x04, 0, 1, 0, 0x01], 0x01), // UNSUBACK 3.11.3
        (V5, vec![0xe0, 0x01, 0x05], 0x05),       // DISCONNECT 3.14.2.1
        (V5, vec![0xe0, 0x01, 0x84], 0x84),       // CONNACK-only code in DISCONNECT
        (V5, vec![0xf0, 0x01, 0x01], 0x01),       // AUTH 3.15.2.1
        (V5, vec![0xf0, 0x01, 0x80], 0x80),
    ];
    for (version, bytes, code) in cases {
        rejects(
            *version,
            bytes,
            DecodeError::InvalidReasonCode(*code),
            MALFORMED,
        );
    }
}

// ---------------------------------------------------------------------------------------
// CONNECT and CONNACK
// ---------------------------------------------------------------------------------------

/// [MQTT-3.1.2-3]: the reserved CONNECT flag must be 0.
#[test]
fn mqtt_3_1_2_3_connect_reserved_flag() {
    rejects(
        SERVER,
        &connect("MQTT", 4, 0x03, None, &[&s("c")]),
        DecodeError::InvalidConnectFlags,
        MALFORMED,
    );
    rejects(
        SERVER,
        &connect("MQTT", 5, 0x01, Some(&[0]), &[&s("c")]),
        DecodeError::InvalidConnectFlags,
        MALFORMED,
    );
}

/// [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]: without the Will Flag, Will QoS and
/// Will Retain must be 0.
#[test]
fn mqtt_3_1_2_11_13_15_will_flags_without_will() {
    for flags in [0x0a, 0x12, 0x1a, 0x22, 0x3a] {
        rejects(
            SERVER,
            &connect("MQTT", 4, flags, None, &[&s("c")]),
            DecodeError::InvalidConnectFlags,
            MALFORMED,
        );
    }
}

/// [MQTT-3.1.2-22] (3.1.1 and 3.1): no password without a user name. 5.0 allows it.
#[test]
fn mqtt_3_1_2_22_password_without_username() {
    rejects(
        SERVER,
        &connect("MQTT", 4, 0x42, None, &[&s("c"), &s("pw")]),
        DecodeError::PasswordWithoutUsername,
        MALFORMED,
    );
    rejects(
        SERVER,
        &connect("MQIsdp", 3, 0x42, None, &[&s("c"), &s("pw")]),
        DecodeError::PasswordWithoutUsername,
        MALFORMED,
    );
    let Packet::Connect(c) = accepts(
        SERVER,
        &connect("MQTT", 5, 0x42, Some(&[0]), &[&s("c"), &s("pw")]),
    ) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

/// [MQTT-3.2.2-1]: CONNACK acknowledge flags bits 7-1 are reserved.
#[test]
fn mqtt_3_2_2_1_connack_reserved_flags() {
    rejects(
        V3,
        &[0x20, 0x02, 0x02, 0x00],
        DecodeError::InvalidConnectFlags,
        MALFORMED,
    );
}

/// [MQTT-3.1.2-1]: the protocol name must be `MQTT` (or `MQIsdp` for 3.1).
#[test]
fn mqtt_3_1_2_1_bad_protocol_name() {
    for name in ["MQTX", "mqtt", "MQIsdq", ""] {
        rejects(
            SERVER,
            &connect(name, 4, 0x02, None, &[&s("c")]),
            DecodeError::InvalidProtocolName,
            MALFORMED,
        );
    }
}

/// [MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK 0x84 (3.1.1: return code 1).
#[test]
fn mqtt_3_1_2_2_protocol_level_6() {
    rejects(
        SERVER,
        &connect("MQTT", 6, 0x02, None, &[&s("c")]),
        DecodeError::UnsupportedProtocolVersion(6),
        UNSUPPORTED_VERSION,
    );
    // A known name with a level that does not go with it.
    rejects(
        SERVER,
        &connect("MQTT", 3, 0x02, None, &[&s("c")]),
        DecodeError::UnsupportedProtocolVersion(3),
        UNSUPPORTED_VERSION,
    );
    rejects(
        SERVER,
        &connect("MQIsdp", 4, 0x02, None, &[&s("c")]),
        DecodeError::UnsupportedProtocolVersion(4),
        UNSUPPORTED_VERSION,
    );
    assert_eq!(ReasonCode(UNSUPPORTED_VERSION).to_v3_connack(), 0x01);
}

/// [MQTT-2.1.2] / 3.15: AUTH exists only in 5.0.
#[test]
fn auth_in_3_1_1() {
    rejects(
        V3,
        &[0xf0, 0x00],
        DecodeError::InvalidPacketType(15),
        MALFORMED,
    );
    // Server side, before CONNECT: no version yet, still not accepted.
    rejects(
        SERVER,
        &[0xf0, 0x00],
        DecodeError::InvalidPacketType(15),
        MALFORMED,
    );
    // After a 3.1.1 CONNECT on the same decoder.
    let mut dec = decoder(SERVER);
    let mut buf = BytesMut::from(&connect("MQTT", 4, 0x02, None, &[&s("c")])[..]);
    buf.extend_from_slice(&[0xf0, 0x00]);
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::InvalidPacketType(15))
    );
    // And accepted in 5.0.
    assert_eq!(accepts(V5, &[0xf0, 0x00]), Packet::Auth(Box::default()));
}
