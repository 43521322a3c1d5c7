//! Small value types shared by every packet: protocol version, QoS, packet identifiers,
//! subscription options and [`ByteStr`], a UTF-8 string that is a zero-copy slice of a frame.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
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

/// The QoS of a PUBLISH together with its packet identifier, which is present exactly when
/// QoS > 0 ([MQTT-2.2.1-2], [MQTT-2.2.1-3]): a QoS 1 or 2 PUBLISH without an identifier
/// cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PublishQoS {
    /// QoS 0: no packet identifier on the wire.
    #[default]
    AtMostOnce,
    /// QoS 1 with this packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with this packet identifier.
    ExactlyOnce(PacketId),
}

impl PublishQoS {
    /// The QoS level.
    #[inline]
    pub fn qos(self) -> QoS {
        match self {
            PublishQoS::AtMostOnce => QoS::AtMostOnce,
            PublishQoS::AtLeastOnce(_) => QoS::AtLeastOnce,
            PublishQoS::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, for QoS > 0.
    #[inline]
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            PublishQoS::AtMostOnce => None,
            PublishQoS::AtLeastOnce(id) | PublishQoS::ExactlyOnce(id) => Some(id),
        }
    }

    /// Builds from a QoS and (for QoS > 0) a packet identifier; `None` if they disagree.
    pub fn new(qos: QoS, packet_id: Option<PacketId>) -> Option<PublishQoS> {
        match (qos, packet_id) {
            (QoS::AtMostOnce, None) => Some(PublishQoS::AtMostOnce),
            (QoS::AtLeastOnce, Some(id)) => Some(PublishQoS::AtLeastOnce(id)),
            (QoS::ExactlyOnce, Some(id)) => Some(PublishQoS::ExactlyOnce(id)),
            _ => None,
        }
    }

    /// `qos` with `packet_id` if it needs one (the identifier is unused for QoS 0).
    pub fn with_id(qos: QoS, packet_id: PacketId) -> PublishQoS {
        match qos {
            QoS::AtMostOnce => PublishQoS::AtMostOnce,
            QoS::AtLeastOnce => PublishQoS::AtLeastOnce(packet_id),
            QoS::ExactlyOnce => PublishQoS::ExactlyOnce(packet_id),
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

    /// The options as one byte in the 5.0 layout (for storage).
    pub fn to_v5_byte(&self) -> u8 {
        self.encode(ProtocolVersion::V5)
    }

    /// Options from a byte in the 5.0 layout, checked as a 5.0 SUBSCRIBE would be.
    ///
    /// # Errors
    /// Reserved bits set, QoS 3 or retain handling 3.
    pub fn from_v5_byte(byte: u8) -> Result<Self, DecodeError> {
        Self::decode(byte, ProtocolVersion::V5)
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The string checks on the eight byte lanes of a word at once: the high bit of a lane is
/// set when the byte is not plain ASCII (0x80 and above), is NUL, or, for a topic name
/// (`TOPIC`), is `+` or `#` (`b | 8` is `+` exactly for those two). Only "some lane is
/// flagged" is meaningful: a borrow out of a zero lane may flag the lanes above it too.
#[inline(always)]
fn word_flags<const TOPIC: bool>(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let wildcard = if TOPIC {
        zero((w | (ONES * 8)) ^ (ONES * u64::from(b'+')))
    } else {
        0
    };
    w | zero(w) | wildcard
}

/// Whether no byte of `bytes` is flagged by [`word_flags`]: one pass over 8-byte words, the
/// last one overlapping the one before, with no per-byte loop and no early exit (strings
/// here are short).
#[inline(always)]
fn all_plain<const TOPIC: bool>(bytes: &[u8]) -> bool {
    let len = bytes.len();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let flags = if len > 32 {
        let mut acc = 0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            acc |= word_flags::<TOPIC>(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        if !chunks.remainder().is_empty() {
            acc |= word_flags::<TOPIC>(word(len - 8));
        }
        acc
    } else if len > 16 {
        word_flags::<TOPIC>(word(0))
            | word_flags::<TOPIC>(word(8))
            | word_flags::<TOPIC>(word(len - 16))
            | word_flags::<TOPIC>(word(len - 8))
    } else if len >= 8 {
        word_flags::<TOPIC>(word(0)) | word_flags::<TOPIC>(word(len - 8))
    } else if len >= 4 {
        word_flags::<TOPIC>(u64::from(half(0)) | u64::from(half(len - 4)) << 32)
    } else if len > 0 {
        // Three lanes cover every byte; the others are `a`, which nothing flags.
        let w =
            u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]) << 16;
        word_flags::<TOPIC>(w | 0x6161_6161_6100_0000)
    } else {
        0
    };
    flags & HIGHS == 0
}

/// Whether `bytes` is an MQTT UTF-8 string: well formed UTF-8 ([MQTT-1.5.4-1]) without
/// U+0000 ([MQTT-1.5.4-2]). The common case, ASCII without NUL, is a single branch-free pass.
#[inline]
pub(crate) fn is_mqtt_str(bytes: &[u8]) -> bool {
    all_plain::<false>(bytes) || is_mqtt_str_slow(bytes)
}

#[cold]
#[inline(never)]
fn is_mqtt_str_slow(bytes: &[u8]) -> bool {
    // Surrogates cannot appear in well formed UTF-8, so from_utf8 already rejects them
    // ([MQTT-1.5.4-1]); U+0000 is legal UTF-8 but forbidden by [MQTT-1.5.4-2].
    std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0)
}

/// Whether `bytes` is a valid topic name string: an MQTT UTF-8 string without `+` or `#`
/// ([MQTT-3.3.2-2]). One pass for the common case (ASCII), the two exact checks otherwise.
#[inline]
pub(crate) fn is_topic_name(bytes: &[u8]) -> bool {
    all_plain::<true>(bytes) || (is_mqtt_str_slow(bytes) && !has_wildcard(bytes))
}

/// Whether `bytes` holds a `+` or a `#` (a topic name may hold neither, [MQTT-3.3.2-2]).
/// Neither byte occurs inside a multi-byte UTF-8 sequence, so a byte scan is exact.
/// Branch-free so that it vectorises (topics are short; an early exit buys nothing).
#[inline]
pub(crate) fn has_wildcard(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |acc, &b| acc | ((b | 8) == b'+'))
}

/// Reads bytes already checked with [`is_mqtt_str`] as `&str`, with no second pass.
///
/// # Safety
///
/// `bytes` must be well formed UTF-8. Callers pass slices of a received frame at the
/// positions of strings the decoder validated (see the invariant on `Received`).
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) unsafe fn str_from_validated(bytes: &[u8]) -> &str {
    debug_assert!(is_mqtt_str(bytes));
    // SAFETY: the caller guarantees UTF-8 (this function's contract).
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// A UTF-8 string that is a zero-copy slice of a received frame (or owned static text).
///
/// Construction validates the MQTT string rules once ([MQTT-1.5.4-1]: well formed UTF-8,
/// [MQTT-1.5.4-2]: no U+0000), so reading it back as `&str` costs nothing.
///
/// It hashes, compares and orders as its `&str` (so that a map keyed by `ByteStr` can be
/// searched with a `&str`, e.g. [`crate::Publish::topic`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Validates `bytes` as an MQTT UTF-8 string.
    pub fn from_bytes(bytes: Bytes) -> Result<ByteStr, DecodeError> {
        if is_mqtt_str(&bytes) {
            Ok(ByteStr(bytes))
        } else {
            Err(DecodeError::InvalidUtf8)
        }
    }

    /// Wraps bytes the caller has already checked with [`is_mqtt_str`].
    ///
    /// # Safety
    ///
    /// `bytes` must be well formed UTF-8: [`ByteStr::as_str`] reads them unchecked.
    #[allow(unsafe_code)]
    #[inline(always)]
    pub(crate) unsafe fn from_validated(bytes: Bytes) -> ByteStr {
        debug_assert!(is_mqtt_str(&bytes));
        ByteStr(bytes)
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

impl Hash for ByteStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_mqtt_str_reference(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0)
    }

    fn bytes_near_ascii() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            8 => 0x20u8..0x7F,
            1 => Just(0u8),
            1 => Just(b'+'),
            1 => Just(b'#'),
            1 => Just(0x80u8),
            1 => Just(0x7Fu8),
            1 => Just(0x01u8),
            1 => Just(0xFFu8),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn word_scans_match_byte_scans(
            bytes in prop_oneof![
                bytes_near_ascii(),
                any::<String>().prop_map(String::into_bytes),
            ],
        ) {
            prop_assert_eq!(is_mqtt_str(&bytes), is_mqtt_str_reference(&bytes));
            let wildcard = bytes.iter().any(|&b| b == b'+' || b == b'#');
            prop_assert_eq!(has_wildcard(&bytes), wildcard);
            prop_assert_eq!(is_topic_name(&bytes), is_mqtt_str_reference(&bytes) && !wildcard);
        }
    }

    #[test]
    fn every_position_and_length() {
        for len in 0..=72 {
            for at in 0..len {
                for bad in [0u8, 0x80, 0xFF, b'+', b'#'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert_eq!(is_mqtt_str(&bytes), is_mqtt_str_reference(&bytes));
                    let wildcard = bad == b'+' || bad == b'#';
                    assert_eq!(has_wildcard(&bytes), wildcard);
                    assert_eq!(
                        is_topic_name(&bytes),
                        is_mqtt_str_reference(&bytes) && !wildcard
                    );
                }
            }
            assert!(is_mqtt_str(&vec![b'a'; len]));
            assert!(!has_wildcard(&vec![b'a'; len]));
        }
    }
}
