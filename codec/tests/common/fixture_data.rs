//! The hand-written byte fixtures, shared by `fixtures.rs` (decode/encode checks) and
//! `differential.rs` (the same bytes through mqttbytes). `rl` remaining length, `pl`
//! property length.

use bytes::Bytes;
use tern_codec::ProtocolVersion::*;
use tern_codec::{
    AckProperties, Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Disconnect, DisconnectProperties, LastWill, Packet, PacketId, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, PublishQoS, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck,
    Unsubscribe, UnsubscribeProperties, WillProperties,
};

pub fn b(text: &str) -> ByteStr {
    ByteStr::from(text)
}

pub fn bin(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("fixture packet ids are non-zero")
}

pub fn kv() -> Vec<(ByteStr, ByteStr)> {
    vec![(b("k"), b("v"))]
}

pub fn publish(
    qos: QoS,
    dup: bool,
    retain: bool,
    topic: &str,
    id: Option<u16>,
    payload: &[u8],
) -> Publish {
    let mut p = Publish::new(b(topic), bin(payload));
    p.set_qos(PublishQoS::new(qos, id.map(pid)).expect("a packet id exactly when QoS > 0"));
    p.dup = dup;
    p.retain = retain;
    p
}

pub fn v3_1_connect() -> (&'static str, Packet) {
    let hex = "10 1b
               00 06 4d 51 49 73 64 70  03  c2  00 3c
               00 03 63 6c 69
               00 04 75 73 65 72
               00 02 70 77";
    let mut c = Connect::new(V3_1, "cli");
    c.username = Some(b("user"));
    c.password = Some(bin(b"pw"));
    (hex, Packet::Connect(Box::new(c)))
}

pub fn v3_fixtures() -> Vec<(&'static str, Packet)> {
    let mut connect = Connect::new(V3_1_1, "id");
    connect.keep_alive_secs = 10;
    connect.will = Some(LastWill {
        topic: b("a/b"),
        payload: bin(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    connect.username = Some(b("u"));
    connect.password = Some(bin(&[1, 2]));
    vec![
        (
            // flags ee: user, password, will retain, will QoS 1, will, clean session.
            "10 1f  00 04 4d 51 54 54  04  ee  00 0a
             00 02 69 64
             00 03 61 2f 62  00 03 62 79 65
             00 01 75  00 02 01 02",
            Packet::Connect(Box::new(connect)),
        ),
        (
            "20 02 01 00",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: true,
                code: ReasonCode::SUCCESS,
                properties: ConnAckProperties::default(),
            })),
        ),
        (
            "20 02 00 05",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                code: ReasonCode(5),
                properties: ConnAckProperties::default(),
            })),
        ),
        (
            "30 0a 00 03 61 2f 62 68 65 6c 6c 6f",
            Packet::Publish(publish(
                QoS::AtMostOnce,
                false,
                false,
                "a/b",
                None,
                b"hello",
            )),
        ),
        (
            "33 07 00 01 74 00 0a 68 69",
            Packet::Publish(publish(QoS::AtLeastOnce, false, true, "t", Some(10), b"hi")),
        ),
        (
            "3c 05 00 01 74 ff ff",
            Packet::Publish(publish(
                QoS::ExactlyOnce,
                true,
                false,
                "t",
                Some(0xffff),
                b"",
            )),
        ),
        ("40 02 00 01", Packet::PubAck(PubAck::new(pid(1)))),
        ("50 02 12 34", Packet::PubRec(PubRec::new(pid(0x1234)))),
        ("62 02 00 02", Packet::PubRel(PubRel::new(pid(2)))),
        ("70 02 ff ff", Packet::PubComp(PubComp::new(pid(0xffff)))),
        (
            "82 0c 00 0a  00 03 61 2f 2b 01  00 01 23 02",
            Packet::Subscribe(Box::new(Subscribe {
                packet_id: pid(10),
                properties: SubscribeProperties::default(),
                filters: vec![
                    (b("a/+"), SubscriptionOptions::with_qos(QoS::AtLeastOnce)),
                    (b("#"), SubscriptionOptions::with_qos(QoS::ExactlyOnce)),
                ],
            })),
        ),
        (
            "90 05 00 0a 01 02 80",
            Packet::SubAck(Box::new(SubAck {
                packet_id: pid(10),
                properties: AckProperties::default(),
                reason_codes: vec![ReasonCode(1), ReasonCode(2), ReasonCode(0x80)],
            })),
        ),
        (
            "a2 0a 00 0b  00 03 61 2f 2b  00 01 23",
            Packet::Unsubscribe(Box::new(Unsubscribe {
                packet_id: pid(11),
                properties: UnsubscribeProperties::default(),
                filters: vec![b("a/+"), b("#")],
            })),
        ),
        (
            "b0 02 00 0b",
            Packet::UnsubAck(Box::new(UnsubAck {
                packet_id: pid(11),
                properties: AckProperties::default(),
                reason_codes: vec![],
            })),
        ),
        ("c0 00", Packet::PingReq),
        ("d0 00", Packet::PingResp),
        ("e0 00", Packet::Disconnect(Disconnect::default())),
    ]
}

pub fn v5_fixtures() -> Vec<(&'static str, Packet)> {
    let mut full_connect = Connect::new(V5, "id");
    full_connect.properties = ConnectProperties {
        session_expiry_interval_secs: Some(120),
        authentication_method: Some(b("SCRM")),
        authentication_data: Some(bin(&[1, 2])),
        request_problem_information: Some(false),
        request_response_information: Some(true),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(10),
        maximum_packet_size_bytes: Some(4096),
        user_properties: kv(),
    };
    full_connect.will = Some(LastWill {
        topic: b("w"),
        payload: bin(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: WillProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval_secs: Some(60),
            content_type: Some(b("text")),
            response_topic: Some(b("r/1")),
            correlation_data: Some(bin(&[0xab, 0xcd])),
            will_delay_interval_secs: Some(5),
            user_properties: vec![(b("a"), b("b"))],
        },
    });
    full_connect.username = Some(b("u"));
    full_connect.password = Some(bin(&[1, 2]));

    let mut min_connect = Connect::new(V5, "");
    min_connect.keep_alive_secs = 60;

    let mut full_publish = publish(QoS::AtLeastOnce, false, false, "a/b", Some(7), b"hi");
    *full_publish.properties_mut() = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval_secs: Some(10),
        content_type: Some(b("text")),
        response_topic: Some(b("r/1")),
        correlation_data: Some(bin(&[0xab, 0xcd])),
        subscription_identifiers: vec![5, 128],
        topic_alias: Some(2),
        user_properties: kv(),
    };

    let mut alias_publish = publish(QoS::ExactlyOnce, false, true, "", Some(5), b"x");
    alias_publish.properties_mut().topic_alias = Some(5);

    let reason_ok = AckProperties {
        reason_string: Some(b("ok")),
        user_properties: vec![],
    };

    vec![
        (
            // flags f6: user, password, will retain, will QoS 2, will, clean start.
            "10 6b  00 04 4d 51 54 54  05  f6  00 3c
             27
                11 00 00 00 78
                15 00 04 53 43 52 4d
                16 00 02 01 02
                17 00
                19 01
                21 00 14
                22 00 0a
                27 00 00 10 00
                26 00 01 6b 00 01 76
             00 02 69 64
             25
                01 01
                02 00 00 00 3c
                03 00 04 74 65 78 74
                08 00 03 72 2f 31
                09 00 02 ab cd
                18 00 00 00 05
                26 00 01 61 00 01 62
             00 01 77  00 03 62 79 65
             00 01 75  00 02 01 02",
            Packet::Connect(Box::new(full_connect)),
        ),
        (
            "10 0d  00 04 4d 51 54 54  05  02  00 3c  00  00 00",
            Packet::Connect(Box::new(min_connect)),
        ),
        (
            "20 4a  00 00
             47
                11 00 00 01 2c
                12 00 03 63 69 64
                13 00 1e
                15 00 04 53 43 52 4d
                16 00 01 ff
                1a 00 04 69 6e 66 6f
                1c 00 03 73 72 76
                1f 00 02 6f 6b
                21 00 64
                22 00 05
                24 01
                25 00
                27 00 01 00 00
                28 00
                29 01
                2a 00
                26 00 01 6b 00 01 76",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                code: ReasonCode::SUCCESS,
                properties: ConnAckProperties {
                    session_expiry_interval_secs: Some(300),
                    assigned_client_identifier: Some(b("cid")),
                    server_keep_alive_secs: Some(30),
                    authentication_method: Some(b("SCRM")),
                    authentication_data: Some(bin(&[0xff])),
                    response_information: Some(b("info")),
                    server_reference: Some(b("srv")),
                    reason_string: Some(b("ok")),
                    receive_maximum: Some(100),
                    topic_alias_maximum: Some(5),
                    maximum_qos: Some(1),
                    retain_available: Some(false),
                    maximum_packet_size_bytes: Some(65_536),
                    wildcard_subscription_available: Some(false),
                    subscription_identifiers_available: Some(true),
                    shared_subscription_available: Some(false),
                    user_properties: kv(),
                },
            })),
        ),
        (
            "20 03 01 87 00",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: true,
                code: ReasonCode::NOT_AUTHORIZED,
                properties: ConnAckProperties::default(),
            })),
        ),
        (
            // Server to client: two subscription identifiers (5 and 128).
            "32 32  00 03 61 2f 62  00 07
             28
                01 01
                02 00 00 00 0a
                03 00 04 74 65 78 74
                08 00 03 72 2f 31
                09 00 02 ab cd
                0b 05
                0b 80 01
                23 00 02
                26 00 01 6b 00 01 76
             68 69",
            Packet::Publish(full_publish),
        ),
        (
            "30 04 00 01 74 00",
            Packet::Publish(publish(QoS::AtMostOnce, false, false, "t", None, b"")),
        ),
        (
            // Empty topic name standing for topic alias 5.
            "35 09  00 00  00 05  03 23 00 05  78",
            Packet::Publish(alias_publish),
        ),
        ("40 02 00 01", Packet::PubAck(PubAck::new(pid(1)))),
        (
            "40 03 00 01 10",
            Packet::PubAck(PubAck {
                packet_id: pid(1),
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: AckProperties::default(),
            }),
        ),
        (
            "40 10 00 01 80  0c 1f 00 02 6e 6f 26 00 01 6b 00 01 76",
            Packet::PubAck(PubAck {
                packet_id: pid(1),
                reason_code: ReasonCode::UNSPECIFIED_ERROR,
                properties: AckProperties {
                    reason_string: Some(b("no")),
                    user_properties: kv(),
                },
            }),
        ),
        (
            "50 03 00 02 10",
            Packet::PubRec(PubRec {
                packet_id: pid(2),
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: AckProperties::default(),
            }),
        ),
        (
            "62 03 00 02 92",
            Packet::PubRel(PubRel {
                packet_id: pid(2),
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                properties: AckProperties::default(),
            }),
        ),
        (
            // Success with properties: the reason code byte must be present.
            "70 09 00 03 00  05 1f 00 02 6f 6b",
            Packet::PubComp(PubComp {
                packet_id: pid(3),
                reason_code: ReasonCode::SUCCESS,
                properties: reason_ok.clone(),
            }),
        ),
        (
            // a/+: QoS 1, No Local, Retain As Published, Retain Handling 2;
            // $share/g/#: QoS 2, Retain Handling 1.
            "82 1f  00 0c
             09 0b 2a 26 00 01 6b 00 01 76
             00 03 61 2f 2b  2d
             00 0a 24 73 68 61 72 65 2f 67 2f 23  12",
            Packet::Subscribe(Box::new(Subscribe {
                packet_id: pid(12),
                properties: SubscribeProperties {
                    subscription_identifier: Some(42),
                    user_properties: kv(),
                },
                filters: vec![
                    (
                        b("a/+"),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                    ),
                    (
                        b("$share/g/#"),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: RetainHandling::SendIfNew,
                        },
                    ),
                ],
            })),
        ),
        (
            "90 0b 00 0c  05 1f 00 02 6f 6b  01 02 9e",
            Packet::SubAck(Box::new(SubAck {
                packet_id: pid(12),
                properties: reason_ok,
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                ],
            })),
        ),
        (
            "a2 0f 00 0d  07 26 00 01 6b 00 01 76  00 03 61 2f 2b",
            Packet::Unsubscribe(Box::new(Unsubscribe {
                packet_id: pid(13),
                properties: UnsubscribeProperties {
                    user_properties: kv(),
                },
                filters: vec![b("a/+")],
            })),
        ),
        (
            "b0 05 00 0d 00 00 11",
            Packet::UnsubAck(Box::new(UnsubAck {
                packet_id: pid(13),
                properties: AckProperties::default(),
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            })),
        ),
        ("c0 00", Packet::PingReq),
        ("d0 00", Packet::PingResp),
        ("e0 00", Packet::Disconnect(Disconnect::default())),
        (
            "e0 01 04",
            Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
        ),
        (
            "e0 19 9c
             17
                11 00 00 00 00
                1c 00 03 73 72 76
                1f 00 02 6f 6b
                26 00 01 6b 00 01 76",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::USE_ANOTHER_SERVER,
                properties: DisconnectProperties {
                    session_expiry_interval_secs: Some(0),
                    server_reference: Some(b("srv")),
                    reason_string: Some(b("ok")),
                    user_properties: kv(),
                },
            }),
        ),
        ("f0 00", Packet::Auth(Box::default())),
        (
            "f0 1a 18
             18
                15 00 04 53 43 52 4d
                16 00 02 01 02
                1f 00 02 6f 6b
                26 00 01 6b 00 01 76",
            Packet::Auth(Box::new(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some(b("SCRM")),
                    authentication_data: Some(bin(&[1, 2])),
                    reason_string: Some(b("ok")),
                    user_properties: kv(),
                },
            })),
        ),
    ]
}
