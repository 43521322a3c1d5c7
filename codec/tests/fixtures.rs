//! Hand-written byte fixtures: each decodes to the expected packet and the packet encodes back
//! to the same bytes. Every packet type for 3.1.1 and 5.0, the 3.1 CONNECT (`MQIsdp`/3), and
//! in 5.0 every one of the 27 properties in at least one packet it belongs to
//! ([`all_27_properties_appear`] checks that).
//!
//! The fixtures themselves live in `common/fixture_data.rs`, shared with `differential.rs`.

mod common;

use common::fixture_data::{v3_1_connect, v3_fixtures, v5_fixtures};
use common::{assert_bytes_eq, decode_one, hex, unhex};
use tern_codec::{Packet, ProtocolVersion, ProtocolVersion::*};

/// Decodes `hex_text` (server-side for CONNECT, so the version is detected), compares with
/// `expected`, then encodes `expected` for `version` and compares with the bytes.
#[track_caller]
fn fixture(version: ProtocolVersion, hex_text: &str, expected: &Packet) {
    let bytes = unhex(hex_text);
    let decode_as = common::decode_version(expected, version);
    match decode_one(decode_as, &bytes) {
        Ok(decoded) => assert_eq!(
            &decoded,
            expected,
            "decoding {} for {version:?}",
            hex(&bytes)
        ),
        Err(e) => panic!("{e:?} decoding {} for {version:?}", hex(&bytes)),
    }
    let encoded = expected.to_bytes(version);
    assert_bytes_eq(&encoded, &bytes, &format!("encoding {expected:?}"));
}

#[test]
fn v3_1_connect_mqisdp_3() {
    let (hex, packet) = v3_1_connect();
    fixture(V3_1, hex, &packet);
}

/// 3.1 shares the 3.1.1 layout for everything but CONNECT.
#[test]
fn v3_1_other_packets_use_the_3_1_1_layout() {
    for (hex, packet) in v3_fixtures().into_iter().skip(1) {
        fixture(V3_1, hex, &packet);
    }
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1
// ---------------------------------------------------------------------------------------

#[test]
fn v3_1_1_every_packet_type() {
    for (hex, packet) in v3_fixtures() {
        fixture(V3_1_1, hex, &packet);
    }
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0
// ---------------------------------------------------------------------------------------

#[test]
fn v5_every_packet_type() {
    for (hex, packet) in v5_fixtures() {
        fixture(V5, hex, &packet);
    }
}

/// Every packet type has a fixture in 3.1.1 and in 5.0.
#[test]
fn every_packet_type_has_a_fixture() {
    for (fixtures, auth) in [(v3_fixtures(), false), (v5_fixtures(), true)] {
        let mut names: Vec<&str> = fixtures.iter().map(|(_, p)| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), if auth { 15 } else { 14 }, "{names:?}");
    }
}

/// The property identifiers present in a decoded packet.
fn property_ids(packet: &Packet) -> Vec<u8> {
    fn some<T>(ids: &mut Vec<u8>, id: u8, v: &Option<T>) {
        if v.is_some() {
            ids.push(id);
        }
    }
    let mut ids = Vec::new();
    let users = |ids: &mut Vec<u8>, u: &Vec<_>| {
        if !u.is_empty() {
            ids.push(0x26)
        }
    };
    match packet {
        Packet::Connect(c) => {
            let p = &c.properties;
            some(&mut ids, 0x11, &p.session_expiry_interval_secs);
            some(&mut ids, 0x15, &p.authentication_method);
            some(&mut ids, 0x16, &p.authentication_data);
            some(&mut ids, 0x17, &p.request_problem_information);
            some(&mut ids, 0x19, &p.request_response_information);
            some(&mut ids, 0x21, &p.receive_maximum);
            some(&mut ids, 0x22, &p.topic_alias_maximum);
            some(&mut ids, 0x27, &p.maximum_packet_size_bytes);
            users(&mut ids, &p.user_properties);
            if let Some(w) = &c.will {
                let p = &w.properties;
                some(&mut ids, 0x01, &p.payload_format_indicator);
                some(&mut ids, 0x02, &p.message_expiry_interval_secs);
                some(&mut ids, 0x03, &p.content_type);
                some(&mut ids, 0x08, &p.response_topic);
                some(&mut ids, 0x09, &p.correlation_data);
                some(&mut ids, 0x18, &p.will_delay_interval_secs);
                users(&mut ids, &p.user_properties);
            }
        }
        Packet::ConnAck(c) => {
            let p = &c.properties;
            some(&mut ids, 0x11, &p.session_expiry_interval_secs);
            some(&mut ids, 0x12, &p.assigned_client_identifier);
            some(&mut ids, 0x13, &p.server_keep_alive_secs);
            some(&mut ids, 0x15, &p.authentication_method);
            some(&mut ids, 0x16, &p.authentication_data);
            some(&mut ids, 0x1a, &p.response_information);
            some(&mut ids, 0x1c, &p.server_reference);
            some(&mut ids, 0x1f, &p.reason_string);
            some(&mut ids, 0x21, &p.receive_maximum);
            some(&mut ids, 0x22, &p.topic_alias_maximum);
            some(&mut ids, 0x24, &p.maximum_qos);
            some(&mut ids, 0x25, &p.retain_available);
            some(&mut ids, 0x27, &p.maximum_packet_size_bytes);
            some(&mut ids, 0x28, &p.wildcard_subscription_available);
            some(&mut ids, 0x29, &p.subscription_identifiers_available);
            some(&mut ids, 0x2a, &p.shared_subscription_available);
            users(&mut ids, &p.user_properties);
        }
        Packet::Publish(x) => {
            let p = &x.properties().to_properties();
            some(&mut ids, 0x01, &p.payload_format_indicator);
            some(&mut ids, 0x02, &p.message_expiry_interval_secs);
            some(&mut ids, 0x03, &p.content_type);
            some(&mut ids, 0x08, &p.response_topic);
            some(&mut ids, 0x09, &p.correlation_data);
            if !p.subscription_identifiers.is_empty() {
                ids.push(0x0b);
            }
            some(&mut ids, 0x23, &p.topic_alias);
            users(&mut ids, &p.user_properties);
        }
        Packet::Subscribe(s) => {
            some(&mut ids, 0x0b, &s.properties.subscription_identifier);
            users(&mut ids, &s.properties.user_properties);
        }
        Packet::Disconnect(d) => {
            let p = &d.properties;
            some(&mut ids, 0x11, &p.session_expiry_interval_secs);
            some(&mut ids, 0x1c, &p.server_reference);
            some(&mut ids, 0x1f, &p.reason_string);
            users(&mut ids, &p.user_properties);
        }
        Packet::Auth(a) => {
            let p = &a.properties;
            some(&mut ids, 0x15, &p.authentication_method);
            some(&mut ids, 0x16, &p.authentication_data);
            some(&mut ids, 0x1f, &p.reason_string);
            users(&mut ids, &p.user_properties);
        }
        _ => {}
    }
    ids
}

/// 2.2.2.2 defines 27 property identifiers; each appears in at least one 5.0 fixture, and
/// the identifier byte really is in that fixture's bytes.
#[test]
fn all_27_properties_appear() {
    const ALL: [u8; 27] = [
        0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
        0x1c, 0x1f, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,
    ];
    let mut seen = Vec::new();
    for (hex_text, expected) in v5_fixtures() {
        let bytes = unhex(hex_text);
        let decoded =
            decode_one(common::decode_version(&expected, V5), &bytes).expect("fixtures decode");
        for id in property_ids(&decoded) {
            assert!(bytes.contains(&id), "0x{id:02x} not in {}", hex(&bytes));
            seen.push(id);
        }
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, ALL);
}

/// Encoding a packet for 3.1.1 never carries 5.0-only fields: a 5.0 PUBLISH with properties
/// encodes for 3.1.1 as the plain 3.1.1 layout.
#[test]
fn v5_fields_are_dropped_for_3_1_1() {
    let full = v5_fixtures()
        .into_iter()
        .find_map(|(_, p)| match p {
            Packet::Publish(p) if !p.properties().is_empty() => Some(p),
            _ => None,
        })
        .expect("there is a PUBLISH with properties");
    let bytes = Packet::Publish(full).to_bytes(V3_1_1);
    assert_bytes_eq(&bytes, &unhex("32 09 00 03 61 2f 62 00 07 68 69"), "3.1.1");
}
