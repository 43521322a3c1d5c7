//! The decode error: a small `Copy` enum (no strings, no boxing: this is the hot path), each
//! variant mapped to its MQTT 5.0 reason code in [`DecodeError::reason_code`], the one place
//! that mapping lives.

use crate::reason::ReasonCode;

/// Why a frame could not be decoded.
///
/// Running short of bytes is *not* an error: [`crate::Decoder::decode`] returns `Ok(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Packet type 0, or AUTH (15) outside 5.0 ([MQTT-2.1.2]).
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed-header flag bits are wrong ([MQTT-2.1.3-1]).
    #[error("invalid fixed header flags 0x{flags:X} for packet type {packet_type}")]
    InvalidHeaderFlags {
        /// The packet type nibble.
        packet_type: u8,
        /// The flags nibble received.
        flags: u8,
    },
    /// The remaining length takes more than 4 bytes ([MQTT-1.5.5-1]).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A variable byte integer takes more than 4 bytes.
    #[error("malformed variable byte integer")]
    MalformedVarint,
    /// The packet is larger than the receiver's maximum packet size ([MQTT-3.2.2-15]).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// The whole packet size (fixed header included).
        size: u32,
        /// The receiver's maximum.
        max: u32,
    },
    /// A field runs past the end of the packet's remaining length.
    #[error("field runs past the end of the packet")]
    Truncated,
    /// Bytes are left after the last field of a packet that has no payload.
    #[error("unexpected trailing bytes")]
    TrailingBytes,
    /// A string is not well formed UTF-8 or contains U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The CONNECT protocol name is neither `MQTT` nor `MQIsdp` ([MQTT-3.1.2-1]).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The CONNECT protocol level is not 3, 4 or 5 ([MQTT-3.1.2-2]).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The CONNECT flags reserved bit is set, or the will flags are inconsistent
    /// ([MQTT-3.1.2-3], [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]).
    #[error("invalid CONNECT flags")]
    InvalidConnectFlags,
    /// 3.1.1: a password without a user name ([MQTT-3.1.2-22]).
    #[error("password flag set without user name flag")]
    PasswordWithoutUsername,
    /// QoS 3 ([MQTT-3.3.1-4]).
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// QoS 0 PUBLISH with DUP set ([MQTT-3.3.1-2]).
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A packet identifier of zero ([MQTT-2.2.1-3]).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A property identifier the spec does not define.
    #[error("unknown property identifier 0x{0:02X}")]
    UnknownProperty(u8),
    /// A property that is not allowed in this packet.
    #[error("property 0x{0:02X} not allowed in this packet")]
    PropertyNotAllowed(u8),
    /// A property that may appear once appears twice.
    #[error("property 0x{0:02X} included more than once")]
    DuplicateProperty(u8),
    /// A property with a value the spec forbids (e.g. Receive Maximum 0).
    #[error("invalid value for property 0x{0:02X}")]
    InvalidPropertyValue(u8),
    /// The property length does not match the properties that follow.
    #[error("property length mismatch")]
    PropertyLength,
    /// A topic name with wildcards ([MQTT-3.3.2-2]), or (3.x) an empty one ([MQTT-4.7.3-1]).
    #[error("invalid topic name")]
    InvalidTopicName,
    /// 5.0: an empty topic name without a Topic Alias (3.3.2.1: "It is a Protocol Error if
    /// the Topic Name is zero length and there is no Topic Alias").
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// A topic filter breaking the wildcard rules ([MQTT-4.7.1-1], [MQTT-4.7.1-2]) or the
    /// shared subscription syntax ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    #[error("no topic filter in SUBSCRIBE/UNSUBSCRIBE")]
    EmptySubscription,
    /// Subscription options with reserved bits set ([MQTT-3.8.3-5]; 3.1.1 [MQTT-3-8.3-4]):
    /// the spec calls this malformed.
    #[error("invalid subscription options")]
    InvalidSubscriptionOptions,
    /// Retain Handling 3 (3.8.3.1: "It is a Protocol Error to send a Retain Handling value
    /// of 3").
    #[error("retain handling 3")]
    InvalidRetainHandling,
    /// No Local set on a shared subscription ([MQTT-3.8.3-4]: "It is a Protocol Error").
    #[error("no local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// Topic Alias 0 in a PUBLISH ([MQTT-3.3.2-8]).
    #[error("topic alias 0")]
    TopicAliasZero,
    /// A Response Topic with wildcards ([MQTT-3.3.2-14]).
    #[error("response topic with wildcards")]
    InvalidResponseTopic,
    /// A reason code that is not legal in this packet.
    #[error("invalid reason code 0x{0:02X}")]
    InvalidReasonCode(u8),
}

impl DecodeError {
    /// The 5.0 reason code to put in the CONNACK or DISCONNECT that answers this error.
    ///
    /// The spec distinguishes Malformed Packet (the bytes cannot be parsed) from Protocol
    /// Error (they parse but break a rule); section 4.13 lets a receiver that cannot tell use
    /// either, we follow the wording of each statement.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            // 0x94 Topic Alias invalid names an alias the receiver cannot take; 0 is one.
            TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            InvalidTopicFilter => ReasonCode::TOPIC_FILTER_INVALID,
            UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            // [MQTT-3.3.1-2] and [MQTT-3.3.2-14] break a rule of well-formed fields.
            DuplicateProperty(_)
            | DupWithQoS0
            | InvalidResponseTopic
            | InvalidPropertyValue(_)
            | EmptyTopicWithoutAlias
            | EmptySubscription
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription => ReasonCode::PROTOCOL_ERROR,
            InvalidPacketType(_)
            | InvalidHeaderFlags { .. }
            | MalformedRemainingLength
            | MalformedVarint
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | InvalidProtocolName
            | InvalidConnectFlags
            | PasswordWithoutUsername
            | InvalidQoS
            | ZeroPacketId
            | UnknownProperty(_)
            | PropertyNotAllowed(_)
            | PropertyLength
            | InvalidSubscriptionOptions
            | InvalidReasonCode(_) => ReasonCode::MALFORMED_PACKET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_small() {
        assert!(std::mem::size_of::<DecodeError>() <= 12);
    }
}
