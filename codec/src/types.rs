//! Small value types shared by every packet: protocol version, QoS, packet identifiers,
//! subscription options and [`ByteStr`], a UTF-8 string that is a zero-copy slice of a frame.

use std::fmt;
use std::num::NonZeroU16;
use std::ops::Deref;

use bytes::Bytes;

use crate::error::DecodeError;

/// A packet identifier: never zero ([MQTT-2.2.1-3]).
pub type PacketId = NonZeroU16;

/// The protocol level a client announced in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// Whether packets carry 5.0 properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service of a PUBLISH or granted to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is malformed ([MQTT-3.3.1-4]).
    pub fn from_u8(value: u8) -> Result<QoS, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// Retain Handling subscription option (5.0, section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription does not exist yet.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry. In 3.1.1 only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the client accepts on this subscription.
    pub qos: QoS,
    /// No Local: do not send messages published by this same client (5.0).
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of live messages (5.0).
    pub retain_as_published: bool,
    /// When to send retained messages (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given QoS and the 5.0 defaults for everything else.
    pub fn with_qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    /// Parses the options byte; reserved bits must be zero ([MQTT-3.8.3-5]) and retain
    /// handling 3 is a protocol error.
    pub(crate) fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if version.is_v5() {
            if byte & 0b1100_0000 != 0 {
                return Err(DecodeError::InvalidSubscriptionOptions);
            }
            let retain_handling = match (byte >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                // A protocol error, not a malformed packet (3.8.3.1): its own variant so
                // that it maps to reason code 0x82.
                _ => return Err(DecodeError::InvalidRetainHandling),
            };
            Ok(SubscriptionOptions {
                qos: QoS::from_u8(byte & 0b11)?,
                no_local: byte & 0b0100 != 0,
                retain_as_published: byte & 0b1000 != 0,
                retain_handling,
            })
        } else {
            // [MQTT-3-8.3-4] (3.1.1): the upper 6 bits are reserved and must be zero.
            if byte & 0b1111_1100 != 0 {
                return Err(DecodeError::InvalidSubscriptionOptions);
            }
            Ok(SubscriptionOptions::with_qos(QoS::from_u8(byte)?))
        }
    }

    /// The options byte as sent for `version`.
    pub(crate) fn encode(&self, version: ProtocolVersion) -> u8 {
        if version.is_v5() {
            self.qos as u8
                | (self.no_local as u8) << 2
                | (self.retain_as_published as u8) << 3
                | (self.retain_handling as u8) << 4
        } else {
            self.qos as u8
        }
    }
}

/// A UTF-8 string that is a zero-copy slice of a received frame (or owned static text).
///
/// Construction validates the MQTT string rules once ([MQTT-1.5.4-1]: well formed UTF-8,
/// [MQTT-1.5.4-2]: no U+0000), so reading it back as `&str` costs nothing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Validates `bytes` as an MQTT UTF-8 string.
    pub fn from_bytes(bytes: Bytes) -> Result<ByteStr, DecodeError> {
        // Fast path for the common case, ASCII without U+0000: one branch-free pass (so it
        // vectorises) instead of `from_utf8` plus a search for NUL. `b - 1` has its top bit
        // set exactly for 0x00 and for 0x81..=0xFF; 0x80 is caught by `b` itself.
        let high = bytes
            .iter()
            .fold(0u8, |acc, &b| acc | b | b.wrapping_sub(1));
        if high & 0x80 == 0 {
            return Ok(ByteStr(bytes));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        // Surrogates cannot appear in well formed UTF-8, so from_utf8 already rejects them
        // ([MQTT-1.5.4-1]); U+0000 is legal UTF-8 but forbidden by [MQTT-1.5.4-2].
        if text.as_bytes().contains(&0) {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(ByteStr(bytes))
    }

    /// A string from static text (no copy).
    pub const fn from_static(text: &'static str) -> ByteStr {
        ByteStr(Bytes::from_static(text.as_bytes()))
    }

    /// The string as `&str`.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validated the bytes as UTF-8, and `Bytes` is immutable.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ByteStr {
    /// Copies `text`. Panics never: a `&str` is valid UTF-8; a U+0000 inside is kept
    /// (callers building packets from user input should use [`ByteStr::from_bytes`]).
    fn from(text: &str) -> ByteStr {
        ByteStr(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(text: String) -> ByteStr {
        ByteStr(Bytes::from(text))
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
