//! CONNECT (section 3.1): protocol detection for 3.1 (`MQIsdp`/3), 3.1.1 (`MQTT`/4) and 5.0
//! (`MQTT`/5), connect flags, will and credentials.

use bytes::{BufMut, Bytes};

use super::{expect_end, kind};
use crate::error::DecodeError;
use crate::property::{ConnectProperties, PropertySet, WillProperties};
use crate::topic;
use crate::types::{ByteStr, ProtocolVersion, QoS};
use crate::wire::{
    binary_len, read_binary, read_str, read_u16, read_u8, write_binary, write_fixed_header,
};

/// CONNECT: the first packet of every connection.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version announced by name and level.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive_secs: u16,
    /// 5.0 properties (empty for 3.x).
    pub properties: ConnectProperties,
    /// Client Identifier; may be empty (the server then assigns one, or rejects).
    pub client_id: ByteStr,
    /// Will message, when the Will Flag is set.
    pub will: Option<LastWill>,
    /// User Name.
    pub username: Option<ByteStr>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// The Will Message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will Topic (a topic name).
    pub topic: ByteStr,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: WillProperties,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: never print it.
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("properties", &self.properties)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

const FLAG_RESERVED: u8 = 0b0000_0001;
const FLAG_CLEAN: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

impl Connect {
    /// A CONNECT with the given version and client id and defaults for the rest.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<ByteStr>) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive_secs: 60,
            properties: ConnectProperties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Reads the protocol name and level at the start of a CONNECT body.
    pub(crate) fn decode_protocol(body: &mut Bytes) -> Result<ProtocolVersion, DecodeError> {
        let name = read_binary(body)?;
        let level = read_u8(body)?;
        match (name.as_ref(), level) {
            (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
            (b"MQTT", 5) => Ok(ProtocolVersion::V5),
            (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
            // [MQTT-3.1.2-2]: an unsupported level gets CONNACK 0x01 / 0x84.
            (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolVersion(level)),
            // [MQTT-3.1.2-1]: another protocol name; the server may close the connection.
            _ => Err(DecodeError::InvalidProtocolName),
        }
    }

    pub(crate) fn decode(mut body: Bytes) -> Result<Connect, DecodeError> {
        let protocol = Connect::decode_protocol(&mut body)?;
        let flags = read_u8(&mut body)?;
        // [MQTT-3.1.2-3]: the reserved flag must be zero.
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::InvalidConnectFlags);
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]: without a will, its QoS and
        // Retain must be zero; [MQTT-3.1.2-12]: QoS 3 is malformed.
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::InvalidConnectFlags);
        }
        let will_qos = QoS::from_u8(will_qos)?;
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        // [MQTT-3.1.2-22] (3.1.1 only; 5.0 allows a password alone).
        if !protocol.is_v5() && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive_secs = read_u16(&mut body)?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(&mut body)?
        } else {
            ConnectProperties::default()
        };
        // [MQTT-3.1.3-4]: the client identifier is a UTF-8 string.
        let client_id = read_str(&mut body)?;
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                let properties = WillProperties::decode(&mut body)?;
                // [MQTT-3.3.2-14]: the will becomes a PUBLISH, whose Response Topic is a
                // topic name (no wildcards), as PUBLISH's own property check says.
                if let Some(response_topic) = &properties.response_topic {
                    crate::topic::validate_name(response_topic)
                        .map_err(|_| DecodeError::InvalidResponseTopic)?;
                }
                properties
            } else {
                WillProperties::default()
            };
            let topic = read_str(&mut body)?;
            // [MQTT-3.1.3-11]: the will topic is a topic name.
            if topic.is_empty() {
                return Err(DecodeError::InvalidTopicName);
            }
            topic::validate_name(&topic)?;
            let payload = read_binary(&mut body)?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(read_str(&mut body)?)
        } else {
            None
        };
        let password = if has_password {
            Some(read_binary(&mut body)?)
        } else {
            None
        };
        expect_end(&body)?;
        Ok(Connect {
            protocol,
            clean_start: flags & FLAG_CLEAN != 0,
            keep_alive_secs,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let mut len = binary_len(self.protocol.protocol_name().as_bytes()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.block_len();
        }
        len += binary_len(self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.block_len();
            }
            len += binary_len(will.topic.as_bytes()) + binary_len(&will.payload);
        }
        len += self
            .username
            .as_ref()
            .map_or(0, |u| binary_len(u.as_bytes()));
        len += self.password.as_ref().map_or(0, |p| binary_len(p));
        len
    }

    /// Appends the packet for its own protocol version.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let v5 = self.protocol.is_v5();
        write_fixed_header(dst, kind::CONNECT << 4, self.body_len());
        write_binary(dst, self.protocol.protocol_name().as_bytes());
        dst.put_u8(self.protocol.level());
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos as u8) << 3;
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        dst.put_u8(flags);
        dst.put_u16(self.keep_alive_secs);
        if v5 {
            self.properties.encode(dst);
        }
        write_binary(dst, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(dst);
            }
            write_binary(dst, will.topic.as_bytes());
            write_binary(dst, &will.payload);
        }
        if let Some(username) = &self.username {
            write_binary(dst, username.as_bytes());
        }
        if let Some(password) = &self.password {
            write_binary(dst, password);
        }
    }
}
