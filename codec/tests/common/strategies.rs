//! proptest strategies for *valid* packets of every type and version.
//!
//! "Valid" means what our decoder accepts: topic names without wildcards, filters that obey
//! section 4.7, non-zero packet and subscription identifiers, property values in range,
//! reason codes legal for their packet, and for 3.x no properties and Success-only acks.

use std::num::NonZeroU16;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tern_codec::{
    AckProperties, Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Disconnect, DisconnectProperties, LastWill, Packet, PacketId, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, WillProperties,
};
use tern_codec::{ProtocolVersion, PublishQoS, UserProperty};

/// Every version, for packets other than CONNECT (3.1 shares the 3.1.1 layout).
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// A UTF-8 string without U+0000, including multi-byte characters.
pub fn text() -> impl Strategy<Value = ByteStr> {
    "[a-zA-Z0-9 _/é日🦀]{0,12}".prop_map(ByteStr::from)
}

/// A non-empty topic name: levels without wildcards, possibly empty levels.
pub fn topic_name() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9$é日]{1,6}(/[a-z0-9é日]{0,6}){0,3}".prop_map(ByteStr::from)
}

/// A valid topic filter, sometimes a shared subscription.
pub fn topic_filter() -> impl Strategy<Value = ByteStr> {
    let level = prop_oneof![Just("+".to_string()), "[a-z0-9é]{0,5}"];
    (
        vec(level, 1..4),
        any::<bool>(),
        of("[a-z0-9]{1,4}"),
        any::<bool>(),
    )
        .prop_map(|(levels, hash, group, shared)| {
            let mut filter = levels.join("/");
            if filter.is_empty() {
                // [MQTT-4.7.3-1]: a filter has at least one character.
                filter.push('x');
            }
            if hash {
                filter.push_str("/#");
            }
            match group {
                Some(group) if shared => format!("$share/{group}/{filter}").into(),
                _ => filter.into(),
            }
        })
}

/// Binary data.
pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

/// A non-zero packet identifier.
pub fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| NonZeroU16::new(id).expect("range starts at 1"))
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A subscription identifier (1 to 268,435,455), biased to the varint length boundaries.
pub fn subscription_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(1u32),
        Just(127),
        Just(128),
        Just(16_383),
        Just(16_384),
        Just(268_435_455),
        1u32..=268_435_455,
    ]
}

pub fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<bool>> {
    of(any::<bool>())
}

fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn nonzero_u32() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

/// 0 (unspecified bytes) or 1 (UTF-8).
fn payload_format() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(text()),
        of(binary()),
        flag(),
        flag(),
        of(nonzero_u16()),
        of(any::<u16>()),
        of(nonzero_u32()),
        users(),
    )
        .prop_map(
            |(sei, am, ad, rpi, rri, rm, tam, mps, up)| ConnectProperties {
                session_expiry_interval_secs: sei,
                authentication_method: am,
                authentication_data: ad,
                request_problem_information: rpi,
                request_response_information: rri,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                maximum_packet_size_bytes: mps,
                user_properties: up,
            },
        )
}

pub fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        payload_format(),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(binary()),
        of(any::<u32>()),
        users(),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, wdi, up)| WillProperties {
            payload_format_indicator: pfi,
            message_expiry_interval_secs: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            will_delay_interval_secs: wdi,
            user_properties: up,
        })
}

pub fn last_will(v5: bool) -> impl Strategy<Value = LastWill> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 { properties } else { Default::default() },
        })
}

/// CONNECT for `version`; a 3.x password comes only with a user name ([MQTT-3.1.2-22]).
pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        connect_properties(),
        text(),
        of(last_will(v5)),
        of(text()),
        of(binary()),
    )
        .prop_map(
            move |(clean, keep_alive, props, client_id, will, user, pass)| {
                let password = if v5 || user.is_some() { pass } else { None };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start: clean,
                    keep_alive_secs: keep_alive,
                    properties: if v5 { props } else { Default::default() },
                    client_id,
                    will,
                    username: user,
                    password,
                }))
            },
        )
}

pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(text()),
            of(any::<u16>()),
            of(text()),
            of(binary()),
            of(text()),
            of(text()),
            of(text()),
        ),
        (
            of(nonzero_u16()),
            of(any::<u16>()),
            of(0u8..=1),
            flag(),
            of(nonzero_u32()),
            flag(),
            flag(),
            flag(),
            users(),
        ),
    )
        .prop_map(
            |((sei, aci, ska, am, ad, ri, sr, rs), (rm, tam, mq, ra, mps, wsa, sia, ssa, up))| {
                ConnAckProperties {
                    session_expiry_interval_secs: sei,
                    assigned_client_identifier: aci,
                    server_keep_alive_secs: ska,
                    authentication_method: am,
                    authentication_data: ad,
                    response_information: ri,
                    server_reference: sr,
                    reason_string: rs,
                    receive_maximum: rm,
                    topic_alias_maximum: tam,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size_bytes: mps,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    user_properties: up,
                }
            },
        )
}

pub fn reason(legal: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(legal).prop_map(ReasonCode)
}

const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const CONNACK_V3: &[u8] = &[0, 1, 2, 3, 4, 5];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

pub fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        any::<bool>(),
        reason(if v5 { CONNACK_V5 } else { CONNACK_V3 }),
        connack_properties(),
    )
        .prop_map(move |(session_present, code, props)| {
            Packet::ConnAck(Box::new(ConnAck {
                session_present,
                code,
                properties: if v5 { props } else { Default::default() },
            }))
        })
}

pub fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        payload_format(),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(binary()),
        vec(subscription_id(), 0..3),
        of(nonzero_u16()),
        users(),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, sids, ta, up)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval_secs: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: sids,
            topic_alias: ta,
            user_properties: up,
        })
}

/// A PUBLISH; in 5.0 the topic may be empty when a topic alias is present.
pub fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    let v5 = version.is_v5();
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        publish_properties(),
        vec(any::<u8>(), 0..200),
    )
        .prop_map(
            move |(qos, dup, retain, topic, empty_topic, id, props, payload)| {
                let mut p = Publish::new(topic, payload);
                p.set_qos(PublishQoS::with_id(qos, id));
                p.retain = retain;
                if qos != QoS::AtMostOnce {
                    p.dup = dup;
                }
                if v5 {
                    if empty_topic && props.topic_alias.is_some() {
                        p.set_topic(ByteStr::default());
                    }
                    *p.properties_mut() = props;
                }
                p
            },
        )
}

pub fn ack_properties(v5: bool) -> impl Strategy<Value = AckProperties> {
    (of(text()), users()).prop_map(move |(rs, up)| {
        if v5 {
            AckProperties {
                reason_string: rs,
                user_properties: up,
            }
        } else {
            AckProperties::default()
        }
    })
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn pub_ack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        0..4u8,
        packet_id(),
        reason(PUBACK),
        reason(PUBREL),
        ack_properties(v5),
    )
        .prop_map(move |(which, packet_id, ack_code, rel_code, properties)| {
            let code = |c| if v5 { c } else { ReasonCode::SUCCESS };
            match which {
                0 => Packet::PubAck(PubAck {
                    packet_id,
                    reason_code: code(ack_code),
                    properties,
                }),
                1 => Packet::PubRec(PubRec {
                    packet_id,
                    reason_code: code(ack_code),
                    properties,
                }),
                2 => Packet::PubRel(PubRel {
                    packet_id,
                    reason_code: code(rel_code),
                    properties,
                }),
                _ => Packet::PubComp(PubComp {
                    packet_id,
                    reason_code: code(rel_code),
                    properties,
                }),
            }
        })
}

pub fn subscription_options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(move |(qos, nl, rap, rh)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::with_qos(qos)
            }
        })
}

pub fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        packet_id(),
        of(subscription_id()),
        users(),
        vec((topic_filter(), subscription_options(v5)), 1..4),
    )
        .prop_map(move |(packet_id, sid, up, mut filters)| {
            // [MQTT-3.8.3-4]: No Local is not allowed on a shared subscription.
            for (filter, options) in &mut filters {
                if filter.starts_with("$share/") {
                    options.no_local = false;
                }
            }
            let properties = if v5 {
                SubscribeProperties {
                    subscription_identifier: sid,
                    user_properties: up,
                }
            } else {
                SubscribeProperties::default()
            };
            Packet::Subscribe(Box::new(Subscribe {
                packet_id,
                properties,
                filters,
            }))
        })
}

pub fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        packet_id(),
        ack_properties(v5),
        vec(reason(if v5 { SUBACK_V5 } else { SUBACK_V3 }), 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(Box::new(SubAck {
                packet_id,
                properties,
                reason_codes,
            }))
        })
}

pub fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (packet_id(), users(), vec(topic_filter(), 1..4)).prop_map(move |(packet_id, up, filters)| {
        Packet::Unsubscribe(Box::new(Unsubscribe {
            packet_id,
            properties: UnsubscribeProperties {
                user_properties: if v5 { up } else { Vec::new() },
            },
            filters,
        }))
    })
}

pub fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (packet_id(), ack_properties(v5), vec(reason(UNSUBACK), 1..5)).prop_map(
        move |(packet_id, properties, codes)| {
            Packet::UnsubAck(Box::new(UnsubAck {
                packet_id,
                properties,
                reason_codes: if v5 { codes } else { Vec::new() },
            }))
        },
    )
}

pub fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        reason(DISCONNECT),
        of(any::<u32>()),
        of(text()),
        of(text()),
        users(),
    )
        .prop_map(move |(code, sei, sr, rs, up)| {
            if v5 {
                Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: DisconnectProperties {
                        session_expiry_interval_secs: sei,
                        server_reference: sr,
                        reason_string: rs,
                        user_properties: up,
                    },
                })
            } else {
                Packet::Disconnect(Disconnect::default())
            }
        })
}

pub fn auth() -> impl Strategy<Value = Packet> {
    (reason(AUTH), of(text()), of(binary()), of(text()), users()).prop_map(
        |(code, am, ad, rs, up)| {
            Packet::Auth(Box::new(Auth {
                reason_code: code,
                properties: AuthProperties {
                    authentication_method: am,
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: up,
                },
            }))
        },
    )
}

/// Any packet except CONNECT that `version` has.
pub fn non_connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut options: Vec<BoxedStrategy<Packet>> = vec![
        connack(version).boxed(),
        publish(version).prop_map(Packet::Publish).boxed(),
        pub_ack(version).boxed(),
        subscribe(version).boxed(),
        suback(version).boxed(),
        unsubscribe(version).boxed(),
        unsuback(version).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version).boxed(),
    ];
    if version.is_v5() {
        options.push(auth().boxed());
    }
    proptest::strategy::Union::new(options).boxed()
}

/// Any packet of `version`, CONNECT included.
pub fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    prop_oneof![1 => connect(version), 9 => non_connect(version)].boxed()
}

/// A version and a packet of that version.
pub fn versioned_packet() -> BoxedStrategy<(ProtocolVersion, Packet)> {
    proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| any_packet(v).prop_map(move |p| (v, p)))
        .boxed()
}
