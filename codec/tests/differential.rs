//! Differential tests against `mqttbytes` 0.6 (rumqtt's codec): the same bytes (the hex
//! fixtures, proptest-generated packets, and a malformed corpus) go through both decoders,
//! which must agree on accept/reject and, when both accept, on every field they both model.
//!
//! mqttbytes has known defects. Each is a named [`Defect`] with its evidence; a case that
//! hits one must actually show it (so a fixed mqttbytes makes the test say so), and nothing
//! else may differ.

mod common;

use bytes::BytesMut;
use common::fixture_data::{v3_fixtures, v5_fixtures};
use common::{hex, strategies, unhex};
use proptest::prelude::*;
use tern_codec::{DecodeError, Packet, ProtocolVersion};

/// The fields both decoders model, as `(name, Debug of the value)` pairs in a fixed order.
type Summary = Vec<(&'static str, String)>;

fn push(s: &mut Summary, name: &'static str, value: impl std::fmt::Debug) {
    s.push((name, format!("{value:?}")));
}

/// mqttbytes' known defects, each with evidence from its 0.6.0 source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    /// `v5::read` returns `PayloadRequired` for every remaining length of 0 except PINGREQ
    /// and PINGRESP, so the legal 2-byte 5.0 DISCONNECT `e0 00` (3.14.2.1: "the Reason Code
    /// and Property Length can be omitted") is rejected.
    V5RejectsEmptyDisconnect,
    /// `DisconnectProperties::extract` reads a property length unconditionally, so a 5.0
    /// DISCONNECT with a reason code and no property length (`e0 01 04`, also legal) fails
    /// with `InsufficientBytes`.
    V5RejectsDisconnectWithoutPropertyLength,
    /// `FixedHeader::packet_type` has no AUTH (15): every 5.0 AUTH is rejected.
    RejectsAuth,
    /// No fixed-header flag checks ([MQTT-2.1.3-1]): e.g. PUBREL with flags 0000 is accepted.
    AcceptsWrongHeaderFlags,
    /// `Connect::read` only knows `MQTT` 4/5: MQTT 3.1 (`MQIsdp`/3) is rejected.
    NoMqtt31,
    /// `Login::read` reads the password with `read_mqtt_string`: a non-UTF-8 password (binary
    /// data per 3.1.3.5) is rejected.
    PasswordMustBeUtf8,
    /// `Login::read` returns `None` when user name and password are both empty or absent, so
    /// `username: Some("")` and `None` cannot be told apart.
    EmptyLoginIsAbsent,
    /// No topic name / filter validation: wildcards in a PUBLISH topic, `a#`, `#/a`, bad
    /// `$share/` are accepted (4.7.1, 4.8.2, [MQTT-3.3.2-2]).
    NoTopicValidation,
    /// No check for an empty SUBSCRIBE / UNSUBSCRIBE payload ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    AcceptsEmptySubscribe,
    /// The CONNECT reserved flag is not checked ([MQTT-3.1.2-3]).
    AcceptsConnectReservedFlag,
    /// U+0000 in a string is accepted ([MQTT-1.5.4-2]); `String::from_utf8` allows it.
    AcceptsNullCharacter,
    /// DUP with QoS 0 is accepted ([MQTT-3.3.1-2]).
    AcceptsDupWithQos0,
    /// 5.0 subscription option reserved bits are ignored ([MQTT-3.8.3-5]).
    IgnoresSubscribeReservedBits,
    /// 3.1.1 SUBSCRIBE: the upper six bits of the options byte are ignored ([MQTT-3-8.3-4]).
    V4IgnoresSubscribeReservedBits,
    /// 3.1.1 CONNECT: a password without a user name is accepted ([MQTT-3.1.2-22]).
    AcceptsPasswordWithoutUsername,
    /// 5.0 duplicate properties overwrite instead of being a protocol error (2.2.2.2).
    AcceptsDuplicateProperties,
}

// ---------------------------------------------------------------------------------------
// Summaries
// ---------------------------------------------------------------------------------------

fn ours(packet: &Packet) -> Summary {
    let mut s = Summary::new();
    push(&mut s, "type", packet.name());
    match packet {
        Packet::Connect(c) => {
            push(&mut s, "level", c.protocol.level());
            push(&mut s, "client_id", c.client_id.as_str());
            push(&mut s, "keep_alive", c.keep_alive_secs);
            push(&mut s, "clean", c.clean_start);
            if let Some(w) = &c.will {
                push(&mut s, "will_topic", w.topic.as_str());
                push(&mut s, "will_payload", &w.payload);
                push(&mut s, "will_qos", w.qos as u8);
                push(&mut s, "will_retain", w.retain);
                if c.protocol.is_v5() {
                    let p = &w.properties;
                    push(&mut s, "will_delay", p.will_delay_interval_secs);
                    push(&mut s, "pfi", p.payload_format_indicator);
                    push(&mut s, "expiry", p.message_expiry_interval_secs);
                    push(&mut s, "content_type", opt_str(&p.content_type));
                    push(&mut s, "response_topic", opt_str(&p.response_topic));
                    push(&mut s, "correlation", &p.correlation_data);
                    push(&mut s, "will_users", users(&p.user_properties));
                }
            }
            // mqttbytes models the credentials as one optional (user name, password) pair.
            if c.username.is_some() || c.password.is_some() {
                let user = c.username.as_deref().unwrap_or("");
                let pass = c.password.as_deref().unwrap_or(b"");
                push(&mut s, "username", user);
                push(&mut s, "password", String::from_utf8_lossy(pass));
            }
            if c.protocol.is_v5() {
                let p = &c.properties;
                push(&mut s, "session_expiry", p.session_expiry_interval_secs);
                push(&mut s, "receive_max", p.receive_maximum);
                push(&mut s, "max_packet", p.maximum_packet_size_bytes);
                push(&mut s, "alias_max", p.topic_alias_maximum);
                push(
                    &mut s,
                    "req_response",
                    p.request_response_information.map(u8::from),
                );
                push(
                    &mut s,
                    "req_problem",
                    p.request_problem_information.map(u8::from),
                );
                push(&mut s, "users", users(&p.user_properties));
                push(&mut s, "auth_method", opt_str(&p.authentication_method));
                push(&mut s, "auth_data", &p.authentication_data);
            }
        }
        Packet::ConnAck(c) => {
            push(&mut s, "session_present", c.session_present);
            push(&mut s, "code", c.code.0);
            let p = &c.properties;
            push(&mut s, "session_expiry", p.session_expiry_interval_secs);
            push(&mut s, "receive_max", p.receive_maximum);
            push(&mut s, "max_qos", p.maximum_qos);
            push(&mut s, "retain_available", p.retain_available.map(u8::from));
            push(&mut s, "max_packet", p.maximum_packet_size_bytes);
            push(
                &mut s,
                "assigned_id",
                opt_str(&p.assigned_client_identifier),
            );
            push(&mut s, "alias_max", p.topic_alias_maximum);
            push(&mut s, "reason", opt_str(&p.reason_string));
            push(&mut s, "users", users(&p.user_properties));
            push(
                &mut s,
                "wildcard",
                p.wildcard_subscription_available.map(u8::from),
            );
            push(
                &mut s,
                "sub_ids",
                p.subscription_identifiers_available.map(u8::from),
            );
            push(
                &mut s,
                "shared",
                p.shared_subscription_available.map(u8::from),
            );
            push(&mut s, "keep_alive", p.server_keep_alive_secs);
            push(&mut s, "response_info", opt_str(&p.response_information));
            push(&mut s, "server_ref", opt_str(&p.server_reference));
            push(&mut s, "auth_method", opt_str(&p.authentication_method));
            push(&mut s, "auth_data", &p.authentication_data);
        }
        Packet::Publish(p) => {
            push(&mut s, "dup", p.dup);
            push(&mut s, "qos", p.qos() as u8);
            push(&mut s, "retain", p.retain);
            push(&mut s, "topic", p.topic());
            push(&mut s, "pkid", p.packet_id().map_or(0, |id| id.get()));
            push(&mut s, "payload", p.shared_payload());
            let pp = &p.properties().to_properties();
            push(&mut s, "pfi", pp.payload_format_indicator);
            push(&mut s, "expiry", pp.message_expiry_interval_secs);
            push(&mut s, "alias", pp.topic_alias);
            push(&mut s, "response_topic", opt_str(&pp.response_topic));
            push(&mut s, "correlation", &pp.correlation_data);
            push(&mut s, "users", users(&pp.user_properties));
            push(&mut s, "sub_ids", &pp.subscription_identifiers);
            push(&mut s, "content_type", opt_str(&pp.content_type));
        }
        Packet::PubAck(a) => ack(&mut s, a.packet_id.get(), a.reason_code.0, &a.properties),
        Packet::PubRec(a) => ack(&mut s, a.packet_id.get(), a.reason_code.0, &a.properties),
        Packet::PubRel(a) => ack(&mut s, a.packet_id.get(), a.reason_code.0, &a.properties),
        Packet::PubComp(a) => ack(&mut s, a.packet_id.get(), a.reason_code.0, &a.properties),
        Packet::Subscribe(sub) => {
            push(&mut s, "pkid", sub.packet_id.get());
            for (filter, o) in &sub.filters {
                push(
                    &mut s,
                    "filter",
                    (
                        filter.as_str(),
                        o.qos as u8,
                        o.no_local,
                        o.retain_as_published,
                        o.retain_handling as u8,
                    ),
                );
            }
            push(&mut s, "sub_id", sub.properties.subscription_identifier);
            push(&mut s, "users", users(&sub.properties.user_properties));
        }
        Packet::SubAck(a) => {
            push(&mut s, "pkid", a.packet_id.get());
            push(
                &mut s,
                "codes",
                a.reason_codes.iter().map(|c| c.0).collect::<Vec<_>>(),
            );
            push(&mut s, "reason", opt_str(&a.properties.reason_string));
            push(&mut s, "users", users(&a.properties.user_properties));
        }
        Packet::Unsubscribe(u) => {
            push(&mut s, "pkid", u.packet_id.get());
            push(
                &mut s,
                "filters",
                u.filters.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            );
            push(&mut s, "users", users(&u.properties.user_properties));
        }
        Packet::UnsubAck(a) => {
            push(&mut s, "pkid", a.packet_id.get());
            push(
                &mut s,
                "codes",
                a.reason_codes.iter().map(|c| c.0).collect::<Vec<_>>(),
            );
            push(&mut s, "reason", opt_str(&a.properties.reason_string));
            push(&mut s, "users", users(&a.properties.user_properties));
        }
        Packet::Disconnect(d) => {
            push(&mut s, "code", d.reason_code.0);
            let p = &d.properties;
            push(&mut s, "session_expiry", p.session_expiry_interval_secs);
            push(&mut s, "reason", opt_str(&p.reason_string));
            push(&mut s, "users", users(&p.user_properties));
            push(&mut s, "server_ref", opt_str(&p.server_reference));
        }
        Packet::PingReq | Packet::PingResp | Packet::Auth(_) => {}
    }
    s
}

fn opt_str(v: &Option<tern_codec::ByteStr>) -> Option<&str> {
    v.as_deref()
}

fn users(u: &[(tern_codec::ByteStr, tern_codec::ByteStr)]) -> Vec<(&str, &str)> {
    u.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn ack(s: &mut Summary, pkid: u16, code: u8, p: &tern_codec::AckProperties) {
    push(s, "pkid", pkid);
    push(s, "code", code);
    push(s, "reason", opt_str(&p.reason_string));
    push(s, "users", users(&p.user_properties));
}

fn their_users(u: &[(String, String)]) -> Vec<(&str, &str)> {
    u.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Summary of a 3.1.1 packet decoded by mqttbytes, in our field order and defaults.
fn theirs_v4(packet: &mqttbytes::v4::Packet) -> Summary {
    use mqttbytes::v4::Packet as P;
    let mut s = Summary::new();
    let none_u32: Option<u32> = None;
    let none_u16: Option<u16> = None;
    let none_u8: Option<u8> = None;
    let none_str: Option<&str> = None;
    let none_bytes: Option<bytes::Bytes> = None;
    let no_users: Vec<(&str, &str)> = vec![];
    match packet {
        P::Connect(c) => {
            push(&mut s, "type", "CONNECT");
            push(&mut s, "level", 4u8);
            push(&mut s, "client_id", c.client_id.as_str());
            push(&mut s, "keep_alive", c.keep_alive);
            push(&mut s, "clean", c.clean_session);
            if let Some(w) = &c.last_will {
                push(&mut s, "will_topic", w.topic.as_str());
                push(&mut s, "will_payload", &w.message);
                push(&mut s, "will_qos", w.qos as u8);
                push(&mut s, "will_retain", w.retain);
            }
            if let Some(l) = &c.login {
                push(&mut s, "username", l.username.as_str());
                push(&mut s, "password", l.password.as_str());
            }
        }
        P::ConnAck(c) => {
            push(&mut s, "type", "CONNACK");
            push(&mut s, "session_present", c.session_present);
            push(&mut s, "code", c.code as u8);
            // 3.1.1 has no properties: every one absent.
            push(&mut s, "session_expiry", none_u32);
            push(&mut s, "receive_max", none_u16);
            push(&mut s, "max_qos", none_u8);
            push(&mut s, "retain_available", none_u8);
            push(&mut s, "max_packet", none_u32);
            push(&mut s, "assigned_id", none_str);
            push(&mut s, "alias_max", none_u16);
            push(&mut s, "reason", none_str);
            push(&mut s, "users", &no_users);
            push(&mut s, "wildcard", none_u8);
            push(&mut s, "sub_ids", none_u8);
            push(&mut s, "shared", none_u8);
            push(&mut s, "keep_alive", none_u16);
            push(&mut s, "response_info", none_str);
            push(&mut s, "server_ref", none_str);
            push(&mut s, "auth_method", none_str);
            push(&mut s, "auth_data", &none_bytes);
        }
        P::Publish(p) => {
            push(&mut s, "type", "PUBLISH");
            push(&mut s, "dup", p.dup);
            push(&mut s, "qos", p.qos as u8);
            push(&mut s, "retain", p.retain);
            push(&mut s, "topic", p.topic.as_str());
            push(&mut s, "pkid", p.pkid);
            push(&mut s, "payload", &p.payload);
            push(&mut s, "pfi", none_u8);
            push(&mut s, "expiry", none_u32);
            push(&mut s, "alias", none_u16);
            push(&mut s, "response_topic", none_str);
            push(&mut s, "correlation", &none_bytes);
            push(&mut s, "users", &no_users);
            push(&mut s, "sub_ids", Vec::<u32>::new());
            push(&mut s, "content_type", none_str);
        }
        P::PubAck(a) => v4_ack(&mut s, "PUBACK", a.pkid),
        P::PubRec(a) => v4_ack(&mut s, "PUBREC", a.pkid),
        P::PubRel(a) => v4_ack(&mut s, "PUBREL", a.pkid),
        P::PubComp(a) => v4_ack(&mut s, "PUBCOMP", a.pkid),
        P::Subscribe(sub) => {
            push(&mut s, "type", "SUBSCRIBE");
            push(&mut s, "pkid", sub.pkid);
            for f in &sub.filters {
                push(
                    &mut s,
                    "filter",
                    (f.path.as_str(), f.qos as u8, false, false, 0u8),
                );
            }
            push(&mut s, "sub_id", none_u32);
            push(&mut s, "users", &no_users);
        }
        P::SubAck(a) => {
            push(&mut s, "type", "SUBACK");
            push(&mut s, "pkid", a.pkid);
            let codes: Vec<u8> = a
                .return_codes
                .iter()
                .map(|c| match c {
                    mqttbytes::v4::SubscribeReasonCode::Success(q) => *q as u8,
                    mqttbytes::v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            push(&mut s, "codes", codes);
            push(&mut s, "reason", none_str);
            push(&mut s, "users", &no_users);
        }
        P::Unsubscribe(u) => {
            push(&mut s, "type", "UNSUBSCRIBE");
            push(&mut s, "pkid", u.pkid);
            push(
                &mut s,
                "filters",
                u.topics.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            );
            push(&mut s, "users", &no_users);
        }
        P::UnsubAck(a) => {
            push(&mut s, "type", "UNSUBACK");
            push(&mut s, "pkid", a.pkid);
            push(&mut s, "codes", Vec::<u8>::new());
            push(&mut s, "reason", none_str);
            push(&mut s, "users", &no_users);
        }
        P::PingReq => push(&mut s, "type", "PINGREQ"),
        P::PingResp => push(&mut s, "type", "PINGRESP"),
        P::Disconnect => {
            push(&mut s, "type", "DISCONNECT");
            push(&mut s, "code", 0u8);
            push(&mut s, "session_expiry", none_u32);
            push(&mut s, "reason", none_str);
            push(&mut s, "users", &no_users);
            push(&mut s, "server_ref", none_str);
        }
    }
    s
}

fn v4_ack(s: &mut Summary, name: &'static str, pkid: u16) {
    push(s, "type", name);
    push(s, "pkid", pkid);
    push(s, "code", 0u8);
    push(s, "reason", None::<&str>);
    push(s, "users", Vec::<(&str, &str)>::new());
}

/// Summary of a 5.0 packet decoded by mqttbytes.
fn theirs_v5(packet: &mqttbytes::v5::Packet) -> Summary {
    use mqttbytes::v5::Packet as P;
    let mut s = Summary::new();
    match packet {
        P::Connect(c) => {
            push(&mut s, "type", "CONNECT");
            push(&mut s, "level", 5u8);
            push(&mut s, "client_id", c.client_id.as_str());
            push(&mut s, "keep_alive", c.keep_alive);
            push(&mut s, "clean", c.clean_session);
            if let Some(w) = &c.last_will {
                push(&mut s, "will_topic", w.topic.as_str());
                push(&mut s, "will_payload", &w.message);
                push(&mut s, "will_qos", w.qos as u8);
                push(&mut s, "will_retain", w.retain);
                let p = w.properties.as_ref();
                push(&mut s, "will_delay", p.and_then(|p| p.delay_interval));
                push(&mut s, "pfi", p.and_then(|p| p.payload_format_indicator));
                push(&mut s, "expiry", p.and_then(|p| p.message_expiry_interval));
                push(
                    &mut s,
                    "content_type",
                    p.and_then(|p| p.content_type.as_deref()),
                );
                push(
                    &mut s,
                    "response_topic",
                    p.and_then(|p| p.response_topic.as_deref()),
                );
                push(
                    &mut s,
                    "correlation",
                    p.and_then(|p| p.correlation_data.clone()),
                );
                push(
                    &mut s,
                    "will_users",
                    p.map(|p| their_users(&p.user_properties))
                        .unwrap_or_default(),
                );
            }
            if let Some(l) = &c.login {
                push(&mut s, "username", l.username.as_str());
                push(&mut s, "password", l.password.as_str());
            }
            let p = c.properties.as_ref();
            push(
                &mut s,
                "session_expiry",
                p.and_then(|p| p.session_expiry_interval),
            );
            push(&mut s, "receive_max", p.and_then(|p| p.receive_maximum));
            push(&mut s, "max_packet", p.and_then(|p| p.max_packet_size));
            push(&mut s, "alias_max", p.and_then(|p| p.topic_alias_max));
            push(
                &mut s,
                "req_response",
                p.and_then(|p| p.request_response_info),
            );
            push(
                &mut s,
                "req_problem",
                p.and_then(|p| p.request_problem_info),
            );
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
            push(
                &mut s,
                "auth_method",
                p.and_then(|p| p.authentication_method.as_deref()),
            );
            push(
                &mut s,
                "auth_data",
                p.and_then(|p| p.authentication_data.clone()),
            );
        }
        P::ConnAck(c) => {
            push(&mut s, "type", "CONNACK");
            push(&mut s, "session_present", c.session_present);
            push(&mut s, "code", c.code as u8);
            let p = c.properties.as_ref();
            push(
                &mut s,
                "session_expiry",
                p.and_then(|p| p.session_expiry_interval),
            );
            push(&mut s, "receive_max", p.and_then(|p| p.receive_max));
            push(&mut s, "max_qos", p.and_then(|p| p.max_qos));
            push(
                &mut s,
                "retain_available",
                p.and_then(|p| p.retain_available),
            );
            push(&mut s, "max_packet", p.and_then(|p| p.max_packet_size));
            push(
                &mut s,
                "assigned_id",
                p.and_then(|p| p.assigned_client_identifier.as_deref()),
            );
            push(&mut s, "alias_max", p.and_then(|p| p.topic_alias_max));
            push(&mut s, "reason", p.and_then(|p| p.reason_string.as_deref()));
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
            push(
                &mut s,
                "wildcard",
                p.and_then(|p| p.wildcard_subscription_available),
            );
            push(
                &mut s,
                "sub_ids",
                p.and_then(|p| p.subscription_identifiers_available),
            );
            push(
                &mut s,
                "shared",
                p.and_then(|p| p.shared_subscription_available),
            );
            push(&mut s, "keep_alive", p.and_then(|p| p.server_keep_alive));
            push(
                &mut s,
                "response_info",
                p.and_then(|p| p.response_information.as_deref()),
            );
            push(
                &mut s,
                "server_ref",
                p.and_then(|p| p.server_reference.as_deref()),
            );
            push(
                &mut s,
                "auth_method",
                p.and_then(|p| p.authentication_method.as_deref()),
            );
            push(
                &mut s,
                "auth_data",
                p.and_then(|p| p.authentication_data.clone()),
            );
        }
        P::Publish(x) => {
            push(&mut s, "type", "PUBLISH");
            push(&mut s, "dup", x.dup);
            push(&mut s, "qos", x.qos as u8);
            push(&mut s, "retain", x.retain);
            push(&mut s, "topic", x.topic.as_str());
            push(&mut s, "pkid", x.pkid);
            push(&mut s, "payload", &x.payload);
            let p = x.properties.as_ref();
            push(&mut s, "pfi", p.and_then(|p| p.payload_format_indicator));
            push(&mut s, "expiry", p.and_then(|p| p.message_expiry_interval));
            push(&mut s, "alias", p.and_then(|p| p.topic_alias));
            push(
                &mut s,
                "response_topic",
                p.and_then(|p| p.response_topic.as_deref()),
            );
            push(
                &mut s,
                "correlation",
                p.and_then(|p| p.correlation_data.clone()),
            );
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
            push(
                &mut s,
                "sub_ids",
                p.map(|p| p.subscription_identifiers.clone())
                    .unwrap_or_default(),
            );
            push(
                &mut s,
                "content_type",
                p.and_then(|p| p.content_type.as_deref()),
            );
        }
        P::PubAck(a) => {
            let p = a.properties.as_ref();
            v5_ack(
                &mut s,
                "PUBACK",
                a.pkid,
                a.reason as u8,
                p.and_then(|p| p.reason_string.as_deref()),
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            )
        }
        P::PubRec(a) => {
            let p = a.properties.as_ref();
            v5_ack(
                &mut s,
                "PUBREC",
                a.pkid,
                a.reason as u8,
                p.and_then(|p| p.reason_string.as_deref()),
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            )
        }
        P::PubRel(a) => {
            let p = a.properties.as_ref();
            v5_ack(
                &mut s,
                "PUBREL",
                a.pkid,
                a.reason as u8,
                p.and_then(|p| p.reason_string.as_deref()),
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            )
        }
        P::PubComp(a) => {
            let p = a.properties.as_ref();
            v5_ack(
                &mut s,
                "PUBCOMP",
                a.pkid,
                a.reason as u8,
                p.and_then(|p| p.reason_string.as_deref()),
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            )
        }
        P::Subscribe(sub) => {
            use mqttbytes::v5::RetainForwardRule as R;
            push(&mut s, "type", "SUBSCRIBE");
            push(&mut s, "pkid", sub.pkid);
            for f in &sub.filters {
                let rh = match f.retain_forward_rule {
                    R::OnEverySubscribe => 0u8,
                    R::OnNewSubscribe => 1,
                    R::Never => 2,
                };
                push(
                    &mut s,
                    "filter",
                    (
                        f.path.as_str(),
                        f.qos as u8,
                        f.nolocal,
                        f.preserve_retain,
                        rh,
                    ),
                );
            }
            let p = sub.properties.as_ref();
            push(&mut s, "sub_id", p.and_then(|p| p.id));
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
        }
        P::SubAck(a) => {
            push(&mut s, "type", "SUBACK");
            push(&mut s, "pkid", a.pkid);
            push(
                &mut s,
                "codes",
                a.return_codes.iter().map(|c| *c as u8).collect::<Vec<_>>(),
            );
            let p = a.properties.as_ref();
            push(&mut s, "reason", p.and_then(|p| p.reason_string.as_deref()));
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
        }
        P::Unsubscribe(u) => {
            push(&mut s, "type", "UNSUBSCRIBE");
            push(&mut s, "pkid", u.pkid);
            push(
                &mut s,
                "filters",
                u.filters.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            );
            let p = u.properties.as_ref();
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
        }
        P::UnsubAck(a) => {
            push(&mut s, "type", "UNSUBACK");
            push(&mut s, "pkid", a.pkid);
            push(
                &mut s,
                "codes",
                a.reasons.iter().map(|c| *c as u8).collect::<Vec<_>>(),
            );
            let p = a.properties.as_ref();
            push(&mut s, "reason", p.and_then(|p| p.reason_string.as_deref()));
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
        }
        P::PingReq => push(&mut s, "type", "PINGREQ"),
        P::PingResp => push(&mut s, "type", "PINGRESP"),
        P::Disconnect(d) => {
            push(&mut s, "type", "DISCONNECT");
            push(&mut s, "code", d.reason_code as u8);
            let p = d.properties.as_ref();
            push(
                &mut s,
                "session_expiry",
                p.and_then(|p| p.session_expiry_interval),
            );
            push(&mut s, "reason", p.and_then(|p| p.reason_string.as_deref()));
            push(
                &mut s,
                "users",
                p.map(|p| their_users(&p.user_properties))
                    .unwrap_or_default(),
            );
            push(
                &mut s,
                "server_ref",
                p.and_then(|p| p.server_reference.as_deref()),
            );
        }
    }
    s
}

fn v5_ack(
    s: &mut Summary,
    name: &'static str,
    pkid: u16,
    code: u8,
    reason: Option<&str>,
    users: Vec<(&str, &str)>,
) {
    push(s, "type", name);
    push(s, "pkid", pkid);
    push(s, "code", code);
    push(s, "reason", reason);
    push(s, "users", users);
}

// ---------------------------------------------------------------------------------------
// Running both
// ---------------------------------------------------------------------------------------

/// Decodes with mqttbytes: `Err(description)` on reject.
fn mqttbytes_decode(version: ProtocolVersion, bytes: &[u8]) -> Result<Summary, String> {
    let mut buf = BytesMut::from(bytes);
    let summary = if version.is_v5() {
        mqttbytes::v5::read(&mut buf, 1 << 20)
            .map(|p| theirs_v5(&p))
            .map_err(|e| format!("{e:?}"))?
    } else {
        mqttbytes::v4::read(&mut buf, 1 << 20)
            .map(|p| theirs_v4(&p))
            .map_err(|e| format!("{e:?}"))?
    };
    if !buf.is_empty() {
        return Err(format!("left {} bytes", buf.len()));
    }
    Ok(summary)
}

/// The defects a valid packet (one we accept) hits in mqttbytes, judged from the packet.
fn defects_of_valid(version: ProtocolVersion, packet: &Packet, bytes: &[u8]) -> Vec<Defect> {
    let mut out = Vec::new();
    match packet {
        Packet::Auth(_) => out.push(Defect::RejectsAuth),
        Packet::Disconnect(_) if version.is_v5() && bytes.len() == 2 => {
            out.push(Defect::V5RejectsEmptyDisconnect)
        }
        Packet::Disconnect(_) if version.is_v5() && bytes.len() == 3 => {
            out.push(Defect::V5RejectsDisconnectWithoutPropertyLength)
        }
        Packet::Connect(c) => {
            if c.protocol == ProtocolVersion::V3_1 {
                out.push(Defect::NoMqtt31);
            }
            if c.password
                .as_ref()
                .is_some_and(|p| std::str::from_utf8(p).is_err())
            {
                out.push(Defect::PasswordMustBeUtf8);
            }
            let user_empty = c.username.as_ref().is_none_or(|u| u.is_empty());
            let pass_empty = c.password.as_ref().is_none_or(|p| p.is_empty());
            if (c.username.is_some() || c.password.is_some()) && user_empty && pass_empty {
                out.push(Defect::EmptyLoginIsAbsent);
            }
        }
        _ => {}
    }
    out
}

/// Runs one valid input through both. Agreement is required unless a named defect applies,
/// in which case mqttbytes must really differ.
fn check_valid(version: ProtocolVersion, packet: &Packet, bytes: &[u8]) -> Result<(), String> {
    let expected = ours(packet);
    let got = mqttbytes_decode(version, bytes);
    let defects = defects_of_valid(version, packet, bytes);
    let agree = got.as_ref() == Ok(&expected);
    if defects.is_empty() && !agree {
        return Err(format!(
            "mqttbytes disagrees on {}:\n  ours:      {expected:?}\n  mqttbytes: {got:?}",
            hex(bytes)
        ));
    }
    if !defects.is_empty() && agree {
        return Err(format!(
            "{defects:?} expected but mqttbytes agrees on {}",
            hex(bytes)
        ));
    }
    Ok(())
}

#[test]
fn fixtures_agree_with_mqttbytes() {
    let sets = [
        (ProtocolVersion::V3_1_1, v3_fixtures()),
        (ProtocolVersion::V5, v5_fixtures()),
    ];
    for (version, fixtures) in sets {
        for (hex_text, packet) in fixtures {
            let bytes = unhex(hex_text);
            if let Err(e) = check_valid(version, &packet, &bytes) {
                panic!("{version:?}: {e}");
            }
        }
    }
}

#[test]
fn known_defects_are_still_there() {
    use ProtocolVersion::*;
    // V5RejectsEmptyDisconnect: `e0 00`.
    assert!(mqttbytes_decode(V5, &[0xe0, 0x00]).is_err());
    // V5RejectsDisconnectWithoutPropertyLength: `e0 01 04`.
    assert!(mqttbytes_decode(V5, &[0xe0, 0x01, 0x04]).is_err());
    // RejectsAuth: `f0 00`.
    assert!(mqttbytes_decode(V5, &[0xf0, 0x00]).is_err());
    // NoMqtt31.
    let (hex_text, _) = common::fixture_data::v3_1_connect();
    assert!(mqttbytes_decode(V3_1_1, &unhex(hex_text)).is_err());
}

/// Inputs we reject and what mqttbytes does with them: reject too, or a named defect.
#[test]
fn malformed_inputs_agree_or_are_named_defects() {
    use DecodeError as E;
    use ProtocolVersion::*;
    let cases: &[(ProtocolVersion, &str, DecodeError, Option<Defect>)] = &[
        // [MQTT-2.1.3-1] PUBREL with flags 0000.
        (
            V3_1_1,
            "60 02 00 01",
            E::InvalidHeaderFlags {
                packet_type: 6,
                flags: 0,
            },
            Some(Defect::AcceptsWrongHeaderFlags),
        ),
        (
            V5,
            "60 02 00 01",
            E::InvalidHeaderFlags {
                packet_type: 6,
                flags: 0,
            },
            Some(Defect::AcceptsWrongHeaderFlags),
        ),
        // SUBSCRIBE with flags 0000.
        (
            V3_1_1,
            "80 06 00 01 00 01 61 00",
            E::InvalidHeaderFlags {
                packet_type: 8,
                flags: 0,
            },
            Some(Defect::AcceptsWrongHeaderFlags),
        ),
        // Wildcards in a PUBLISH topic; bad filters.
        (
            V3_1_1,
            "30 05 00 03 61 2f 2b",
            E::InvalidTopicName,
            Some(Defect::NoTopicValidation),
        ),
        (
            V3_1_1,
            "82 07 00 01 00 02 61 23 00",
            E::InvalidTopicFilter,
            Some(Defect::NoTopicValidation),
        ),
        (
            V5,
            "82 0e 00 01 00 00 08 24 73 68 61 72 65 2f 67 00",
            E::InvalidTopicFilter,
            Some(Defect::NoTopicValidation),
        ),
        // Empty SUBSCRIBE / UNSUBSCRIBE.
        (
            V3_1_1,
            "82 02 00 01",
            E::EmptySubscription,
            Some(Defect::AcceptsEmptySubscribe),
        ),
        (
            V3_1_1,
            "a2 02 00 01",
            E::EmptySubscription,
            Some(Defect::AcceptsEmptySubscribe),
        ),
        // CONNECT reserved flag.
        (
            V3_1_1,
            "10 0f 00 04 4d 51 54 54 04 03 00 3c 00 03 63 6c 69",
            E::InvalidConnectFlags,
            Some(Defect::AcceptsConnectReservedFlag),
        ),
        // Password without user name (3.1.1).
        (
            V3_1_1,
            "10 13 00 04 4d 51 54 54 04 42 00 3c 00 03 63 6c 69 00 02 70 77",
            E::PasswordWithoutUsername,
            Some(Defect::AcceptsPasswordWithoutUsername),
        ),
        // U+0000 in a topic.
        (
            V3_1_1,
            "30 04 00 02 61 00",
            E::InvalidUtf8,
            Some(Defect::AcceptsNullCharacter),
        ),
        // DUP with QoS 0.
        (
            V3_1_1,
            "38 03 00 01 61",
            E::DupWithQoS0,
            Some(Defect::AcceptsDupWithQos0),
        ),
        // SUBSCRIBE option reserved bits.
        (
            V5,
            "82 07 00 01 00 00 01 61 c1",
            E::InvalidSubscriptionOptions,
            Some(Defect::IgnoresSubscribeReservedBits),
        ),
        (
            V3_1_1,
            "82 06 00 01 00 01 61 05",
            E::InvalidSubscriptionOptions,
            Some(Defect::V4IgnoresSubscribeReservedBits),
        ),
        // Duplicate Message Expiry Interval.
        (
            V5,
            "30 0e 00 01 74 0a 02 00 00 00 01 02 00 00 00 02",
            E::DuplicateProperty(0x02),
            Some(Defect::AcceptsDuplicateProperties),
        ),
        // Both reject: remaining length of five bytes, surrogate, QoS 3, zero packet id,
        // invalid reason codes, unsupported level, bad protocol name, unknown property.
        (
            V3_1_1,
            "30 ff ff ff ff 01",
            E::MalformedRemainingLength,
            None,
        ),
        (V3_1_1, "30 05 00 03 ed a0 80", E::InvalidUtf8, None),
        (V3_1_1, "36 05 00 01 61 00 01", E::InvalidQoS, None),
        (V3_1_1, "32 05 00 01 61 00 00", E::ZeroPacketId, None),
        (V5, "40 03 00 01 05", E::InvalidReasonCode(0x05), None),
        (V5, "e0 02 05 00", E::InvalidReasonCode(0x05), None),
        (
            V3_1_1,
            "10 0f 00 04 4d 51 54 54 06 02 00 3c 00 03 63 6c 69",
            E::UnsupportedProtocolVersion(6),
            None,
        ),
        (
            V3_1_1,
            "10 0f 00 04 4d 51 54 58 04 02 00 3c 00 03 63 6c 69",
            E::InvalidProtocolName,
            None,
        ),
        (
            V5,
            "30 06 00 01 74 02 04 00",
            E::UnknownProperty(0x04),
            None,
        ),
    ];
    for (version, hex_text, error, defect) in cases {
        let bytes = unhex(hex_text);
        let ours = common::decode_one(Some(*version), &bytes);
        assert_eq!(ours, Err(*error), "{hex_text}");
        let theirs = mqttbytes_decode(*version, &bytes);
        match defect {
            None => assert!(
                theirs.is_err(),
                "mqttbytes accepts {hex_text} ({version:?}): {theirs:?}"
            ),
            Some(defect) => assert!(
                theirs.is_ok(),
                "{defect:?} no longer shows on {hex_text}: {theirs:?}"
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Generated valid packets (3.1.1 and 5.0; mqttbytes has no 3.1): same accept/reject and
    /// same fields, except for named defects.
    #[test]
    fn generated_packets_agree_with_mqttbytes(
        (version, packet) in proptest::sample::select(vec![ProtocolVersion::V3_1_1, ProtocolVersion::V5])
            .prop_flat_map(|v| strategies::any_packet(v).prop_map(move |p| (v, p)))
    ) {
        let bytes = packet.to_bytes(version);
        // Our decoder accepts what we generate (roundtrip.rs checks equality).
        prop_assert!(common::decode_one(common::decode_version(&packet, version), &bytes).is_ok());
        check_valid(version, &packet, &bytes).map_err(TestCaseError::fail)?;
    }
}

/// The comparison is not vacuous: a field that differs is reported.
#[test]
fn a_field_difference_is_detected() {
    use tern_codec::{PacketId, PubAck};
    let one = Packet::PubAck(PubAck::new(PacketId::MIN));
    let two = Packet::PubAck(PubAck::new(PacketId::new(2).expect("non-zero")));
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let bytes = two.to_bytes(version);
        assert!(check_valid(version, &two, &bytes).is_ok());
        assert!(check_valid(version, &one, &bytes).is_err());
    }
    let mut publish = tern_codec::Publish::new("a/b", "x");
    publish.properties_mut().content_type = Some("text".into());
    let bytes = Packet::Publish(publish.clone()).to_bytes(ProtocolVersion::V5);
    publish.properties_mut().content_type = Some("json".into());
    assert!(check_valid(ProtocolVersion::V5, &Packet::Publish(publish), &bytes).is_err());
}
