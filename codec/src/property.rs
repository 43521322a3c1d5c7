//! MQTT 5.0 properties (section 2.2.2): identifiers, typed values, the per-packet property
//! sets with their spec defaults, and the one generic place where duplicates are rejected.
//!
//! Each property set is a struct of named fields. Decoding reads `(identifier, value)` pairs
//! into a [`Prop`] and hands each to the set's `apply`, which accepts only the properties
//! allowed in that packet and rejects a second copy of a single-valued one via [`set_once`].
//! Encoding walks the fields once through a [`Sink`], which either counts or writes, so a
//! set's length and bytes come from the same description.

use bytes::{BufMut, Bytes};

use crate::error::DecodeError;
use crate::types::ByteStr;
use crate::varint;
use crate::wire::{self, read_binary, read_str, read_u16, read_u32, read_u8};

/// Property identifiers (section 2.2.2.2).
#[allow(missing_docs)]
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A User Property: a name/value pair of UTF-8 strings; may repeat, order kept.
pub type UserProperty = (ByteStr, ByteStr);

/// One decoded property value, before it is placed in a packet's property set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prop {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    Varint(u8, u32),
    Str(u8, ByteStr),
    Binary(u8, Bytes),
    User(ByteStr, ByteStr),
}

impl Prop {
    /// The identifier this value came with.
    pub(crate) fn id(&self) -> u8 {
        match self {
            Prop::Byte(id, _)
            | Prop::U16(id, _)
            | Prop::U32(id, _)
            | Prop::Varint(id, _)
            | Prop::Str(id, _)
            | Prop::Binary(id, _) => *id,
            Prop::User(..) => id::USER_PROPERTY,
        }
    }

    fn read(buf: &mut Bytes) -> Result<Prop, DecodeError> {
        // The identifier is a varint on the wire; every defined one fits in one byte.
        let ident = varint::read(buf)?;
        let ident = u8::try_from(ident).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
        Ok(match ident {
            id::PAYLOAD_FORMAT_INDICATOR
            | id::REQUEST_PROBLEM_INFORMATION
            | id::REQUEST_RESPONSE_INFORMATION
            | id::MAXIMUM_QOS
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_SUBSCRIPTION_AVAILABLE
            | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | id::SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = read_u8(buf)?;
                if v > 1 {
                    return Err(DecodeError::InvalidPropertyValue(ident));
                }
                Prop::Byte(ident, v)
            }
            id::SERVER_KEEP_ALIVE
            | id::RECEIVE_MAXIMUM
            | id::TOPIC_ALIAS_MAXIMUM
            | id::TOPIC_ALIAS => {
                let v = read_u16(buf)?;
                // Receive Maximum 0 is a protocol error (3.1.2.11.3).
                if v == 0 && ident == id::RECEIVE_MAXIMUM {
                    return Err(DecodeError::InvalidPropertyValue(ident));
                }
                // [MQTT-3.3.2-8]: Topic Alias 0 is not permitted (0x94 Topic Alias invalid).
                if v == 0 && ident == id::TOPIC_ALIAS {
                    return Err(DecodeError::TopicAliasZero);
                }
                Prop::U16(ident, v)
            }
            id::MESSAGE_EXPIRY_INTERVAL
            | id::SESSION_EXPIRY_INTERVAL
            | id::WILL_DELAY_INTERVAL
            | id::MAXIMUM_PACKET_SIZE => {
                let v = read_u32(buf)?;
                // Maximum Packet Size 0 is a protocol error (3.1.2.11.4).
                if v == 0 && ident == id::MAXIMUM_PACKET_SIZE {
                    return Err(DecodeError::InvalidPropertyValue(ident));
                }
                Prop::U32(ident, v)
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = varint::read(buf)?;
                // 0 is a protocol error (3.3.2.3.8).
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(ident));
                }
                Prop::Varint(ident, v)
            }
            id::CONTENT_TYPE
            | id::RESPONSE_TOPIC
            | id::ASSIGNED_CLIENT_IDENTIFIER
            | id::AUTHENTICATION_METHOD
            | id::RESPONSE_INFORMATION
            | id::SERVER_REFERENCE
            | id::REASON_STRING => Prop::Str(ident, read_str(buf)?),
            id::CORRELATION_DATA | id::AUTHENTICATION_DATA => {
                Prop::Binary(ident, read_binary(buf)?)
            }
            id::USER_PROPERTY => Prop::User(read_str(buf)?, read_str(buf)?),
            other => return Err(DecodeError::UnknownProperty(other)),
        })
    }
}

/// Reads a property block (length varint, then properties) and applies each one.
pub(crate) fn read_block(
    buf: &mut Bytes,
    mut apply: impl FnMut(Prop) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = varint::read(buf)? as usize;
    if buf.len() < len {
        return Err(DecodeError::PropertyLength);
    }
    let mut block = buf.split_to(len);
    while !block.is_empty() {
        let prop = Prop::read(&mut block).map_err(|e| match e {
            DecodeError::Truncated => DecodeError::PropertyLength,
            other => other,
        })?;
        apply(prop)?;
    }
    Ok(())
}

/// Stores a single-valued property, rejecting a second copy: "It is a Protocol Error to
/// include the X more than once" appears for every property but User Property and (in a
/// PUBLISH) Subscription Identifier.
pub(crate) fn set_once<T>(slot: &mut Option<T>, value: T, ident: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(ident));
    }
    *slot = Some(value);
    Ok(())
}

/// Where an encoder sends property fields: a [`Counter`] for the length, a writer for bytes.
pub(crate) trait Sink {
    fn byte(&mut self, ident: u8, v: Option<u8>);
    fn bool(&mut self, ident: u8, v: Option<bool>) {
        self.byte(ident, v.map(u8::from));
    }
    fn u16(&mut self, ident: u8, v: Option<u16>);
    fn u32(&mut self, ident: u8, v: Option<u32>);
    fn varint(&mut self, ident: u8, v: Option<u32>);
    fn binary(&mut self, ident: u8, v: Option<&[u8]>);
    fn str(&mut self, ident: u8, v: Option<&ByteStr>) {
        self.binary(ident, v.map(|s| s.as_bytes().as_ref()));
    }
    /// One User Property.
    fn user(&mut self, name: &[u8], value: &[u8]);
    fn users(&mut self, users: &[UserProperty]) {
        for (k, v) in users {
            self.user(k.as_bytes(), v.as_bytes());
        }
    }
}

/// Counts the encoded length of a property block's contents.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn byte(&mut self, _: u8, v: Option<u8>) {
        self.0 += v.map_or(0, |_| 2);
    }
    fn u16(&mut self, _: u8, v: Option<u16>) {
        self.0 += v.map_or(0, |_| 3);
    }
    fn u32(&mut self, _: u8, v: Option<u32>) {
        self.0 += v.map_or(0, |_| 5);
    }
    fn varint(&mut self, _: u8, v: Option<u32>) {
        self.0 += v.map_or(0, |v| 1 + varint::len(v));
    }
    fn binary(&mut self, _: u8, v: Option<&[u8]>) {
        self.0 += v.map_or(0, |v| 1 + wire::binary_len(v));
    }
    fn user(&mut self, name: &[u8], value: &[u8]) {
        self.0 += 1 + wire::binary_len(name) + wire::binary_len(value);
    }
}

/// Writes property fields to a buffer.
pub(crate) struct Writer<'a, B: BufMut>(pub(crate) &'a mut B);

impl<B: BufMut> Sink for Writer<'_, B> {
    fn byte(&mut self, ident: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.0.put_u8(ident);
            self.0.put_u8(v);
        }
    }
    fn u16(&mut self, ident: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.0.put_u8(ident);
            self.0.put_u16(v);
        }
    }
    fn u32(&mut self, ident: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.0.put_u8(ident);
            self.0.put_u32(v);
        }
    }
    fn varint(&mut self, ident: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.0.put_u8(ident);
            varint::write(self.0, v);
        }
    }
    fn binary(&mut self, ident: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            self.0.put_u8(ident);
            wire::write_binary(self.0, v);
        }
    }
    fn user(&mut self, name: &[u8], value: &[u8]) {
        self.0.put_u8(id::USER_PROPERTY);
        wire::write_binary(self.0, name);
        wire::write_binary(self.0, value);
    }
}

/// A property set: how to apply decoded values and how to walk the fields for encoding.
pub(crate) trait PropertySet: Default {
    /// Places one decoded property; rejects ones not allowed here and duplicates.
    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError>;
    /// Walks every present field through `sink`, in identifier order.
    fn visit<S: Sink>(&self, sink: &mut S);

    /// Decodes a property block (length included) into a new set.
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut set = Self::default();
        read_block(buf, |p| set.apply(p))?;
        Ok(set)
    }

    /// The length of the block's contents (without the length varint).
    fn content_len(&self) -> usize {
        let mut counter = Counter::default();
        self.visit(&mut counter);
        counter.0
    }

    /// The length of the whole block, length varint included.
    fn block_len(&self) -> usize {
        let len = self.content_len();
        varint::len(len as u32) + len
    }

    /// Writes the whole block: length varint, then the properties.
    fn encode(&self, dst: &mut impl BufMut) {
        varint::write(dst, self.content_len() as u32);
        self.visit(&mut Writer(dst));
    }
}

/// Declares a property set struct: its fields with docs, and the `apply`/`visit` pair, from
/// one list of `(field, identifier, kind)`. Every field is an `Option` (absent means the
/// spec default), except `user_properties`, a `Vec` in arrival order.
macro_rules! property_set {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$fdoc:meta])* $field:ident: $kind:ident = $ident:path, )*
        }
        $(users: $users:ident,)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: property_set!(@ty $kind), )*
            $(
                /// User Properties, in the order received; may repeat.
                pub $users: Vec<UserProperty>,
            )?
        }

        impl PropertySet for $name {
            fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
                match prop {
                    $( property_set!(@pat $kind, $ident, v) => set_once(&mut self.$field, property_set!(@conv $kind, v), $ident), )*
                    $( Prop::User(k, v) => { self.$users.push((k, v)); Ok(()) } )?
                    other => Err(DecodeError::PropertyNotAllowed(other.id())),
                }
            }

            fn visit<S: Sink>(&self, sink: &mut S) {
                $( property_set!(@visit sink, $kind, $ident, self.$field); )*
                $( sink.users(&self.$users); )?
            }
        }
    };
    (@ty byte) => { Option<u8> };
    (@ty bool) => { Option<bool> };
    (@ty u16) => { Option<u16> };
    (@ty u32) => { Option<u32> };
    (@ty varint) => { Option<u32> };
    (@ty str) => { Option<ByteStr> };
    (@ty binary) => { Option<Bytes> };
    (@pat byte, $id:path, $v:ident) => { Prop::Byte($id, $v) };
    (@pat bool, $id:path, $v:ident) => { Prop::Byte($id, $v) };
    (@pat u16, $id:path, $v:ident) => { Prop::U16($id, $v) };
    (@pat u32, $id:path, $v:ident) => { Prop::U32($id, $v) };
    (@pat varint, $id:path, $v:ident) => { Prop::Varint($id, $v) };
    (@pat str, $id:path, $v:ident) => { Prop::Str($id, $v) };
    (@pat binary, $id:path, $v:ident) => { Prop::Binary($id, $v) };
    (@conv bool, $v:ident) => { $v == 1 };
    (@conv $kind:ident, $v:ident) => { $v };
    (@visit $sink:ident, byte, $id:path, $f:expr) => { $sink.byte($id, $f) };
    (@visit $sink:ident, bool, $id:path, $f:expr) => { $sink.bool($id, $f) };
    (@visit $sink:ident, u16, $id:path, $f:expr) => { $sink.u16($id, $f) };
    (@visit $sink:ident, u32, $id:path, $f:expr) => { $sink.u32($id, $f) };
    (@visit $sink:ident, varint, $id:path, $f:expr) => { $sink.varint($id, $f) };
    (@visit $sink:ident, str, $id:path, $f:expr) => { $sink.str($id, $f.as_ref()) };
    (@visit $sink:ident, binary, $id:path, $f:expr) => { $sink.binary($id, $f.as_deref()) };
}

property_set! {
    /// CONNECT properties (3.1.2.11).
    ConnectProperties {
        /// Session Expiry Interval in seconds; absent means 0.
        session_expiry_interval_secs: u32 = id::SESSION_EXPIRY_INTERVAL,
        /// Authentication Method.
        authentication_method: str = id::AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: binary = id::AUTHENTICATION_DATA,
        /// Request Problem Information; absent means true.
        request_problem_information: bool = id::REQUEST_PROBLEM_INFORMATION,
        /// Request Response Information; absent means false.
        request_response_information: bool = id::REQUEST_RESPONSE_INFORMATION,
        /// Receive Maximum; absent means 65,535; 0 is a protocol error.
        receive_maximum: u16 = id::RECEIVE_MAXIMUM,
        /// Topic Alias Maximum; absent means 0 (no aliases to the client).
        topic_alias_maximum: u16 = id::TOPIC_ALIAS_MAXIMUM,
        /// Maximum Packet Size in bytes the client accepts; absent means no limit.
        maximum_packet_size_bytes: u32 = id::MAXIMUM_PACKET_SIZE,
    }
    users: user_properties,
}

property_set! {
    /// Will properties (3.1.3.2).
    WillProperties {
        /// Payload Format Indicator: 1 means UTF-8.
        payload_format_indicator: byte = id::PAYLOAD_FORMAT_INDICATOR,
        /// Message Expiry Interval in seconds.
        message_expiry_interval_secs: u32 = id::MESSAGE_EXPIRY_INTERVAL,
        /// Content Type.
        content_type: str = id::CONTENT_TYPE,
        /// Response Topic.
        response_topic: str = id::RESPONSE_TOPIC,
        /// Correlation Data.
        correlation_data: binary = id::CORRELATION_DATA,
        /// Will Delay Interval in seconds; absent means 0.
        will_delay_interval_secs: u32 = id::WILL_DELAY_INTERVAL,
    }
    users: user_properties,
}

property_set! {
    /// CONNACK properties (3.2.2.3).
    ConnAckProperties {
        /// Session Expiry Interval the server uses, in seconds.
        session_expiry_interval_secs: u32 = id::SESSION_EXPIRY_INTERVAL,
        /// Client identifier the server assigned to an empty one.
        assigned_client_identifier: str = id::ASSIGNED_CLIENT_IDENTIFIER,
        /// Server Keep Alive in seconds, overriding the client's.
        server_keep_alive_secs: u16 = id::SERVER_KEEP_ALIVE,
        /// Authentication Method.
        authentication_method: str = id::AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: binary = id::AUTHENTICATION_DATA,
        /// Response Information.
        response_information: str = id::RESPONSE_INFORMATION,
        /// Server Reference.
        server_reference: str = id::SERVER_REFERENCE,
        /// Reason String.
        reason_string: str = id::REASON_STRING,
        /// Receive Maximum of the server; absent means 65,535.
        receive_maximum: u16 = id::RECEIVE_MAXIMUM,
        /// Topic Alias Maximum of the server; absent means 0.
        topic_alias_maximum: u16 = id::TOPIC_ALIAS_MAXIMUM,
        /// Maximum QoS; absent means 2 (only 0 or 1 may be sent).
        maximum_qos: byte = id::MAXIMUM_QOS,
        /// Retain Available; absent means true.
        retain_available: bool = id::RETAIN_AVAILABLE,
        /// Maximum Packet Size in bytes the server accepts.
        maximum_packet_size_bytes: u32 = id::MAXIMUM_PACKET_SIZE,
        /// Wildcard Subscription Available; absent means true.
        wildcard_subscription_available: bool = id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        /// Subscription Identifiers Available; absent means true.
        subscription_identifiers_available: bool = id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        /// Shared Subscription Available; absent means true.
        shared_subscription_available: bool = id::SHARED_SUBSCRIPTION_AVAILABLE,
    }
    users: user_properties,
}

property_set! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    AckProperties {
        /// Reason String.
        reason_string: str = id::REASON_STRING,
    }
    users: user_properties,
}

property_set! {
    /// SUBSCRIBE properties (3.8.2.1).
    SubscribeProperties {
        /// Subscription Identifier (1 to 268,435,455).
        subscription_identifier: varint = id::SUBSCRIPTION_IDENTIFIER,
    }
    users: user_properties,
}

property_set! {
    /// UNSUBSCRIBE properties (3.10.2.1): only User Properties.
    UnsubscribeProperties {}
    users: user_properties,
}

property_set! {
    /// DISCONNECT properties (3.14.2.2).
    DisconnectProperties {
        /// New Session Expiry Interval in seconds.
        session_expiry_interval_secs: u32 = id::SESSION_EXPIRY_INTERVAL,
        /// Server Reference.
        server_reference: str = id::SERVER_REFERENCE,
        /// Reason String.
        reason_string: str = id::REASON_STRING,
    }
    users: user_properties,
}

property_set! {
    /// AUTH properties (3.15.2.2).
    AuthProperties {
        /// Authentication Method.
        authentication_method: str = id::AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: binary = id::AUTHENTICATION_DATA,
        /// Reason String.
        reason_string: str = id::REASON_STRING,
    }
    users: user_properties,
}

/// PUBLISH properties (3.3.2.3). Written by hand rather than by `property_set!` because
/// Subscription Identifier may repeat here (server to client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator: 0 bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval_secs: Option<u32>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
    /// Response Topic.
    pub response_topic: Option<ByteStr>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// Subscription Identifiers (server to client only; may repeat).
    pub subscription_identifiers: Vec<u32>,
    /// Topic Alias (1..=Topic Alias Maximum).
    pub topic_alias: Option<u16>,
    /// User Properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl PropertySet for PublishProperties {
    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::Byte(id::PAYLOAD_FORMAT_INDICATOR, v) => set_once(
                &mut self.payload_format_indicator,
                v,
                id::PAYLOAD_FORMAT_INDICATOR,
            ),
            Prop::U32(id::MESSAGE_EXPIRY_INTERVAL, v) => set_once(
                &mut self.message_expiry_interval_secs,
                v,
                id::MESSAGE_EXPIRY_INTERVAL,
            ),
            Prop::Str(id::CONTENT_TYPE, v) => set_once(&mut self.content_type, v, id::CONTENT_TYPE),
            Prop::Str(id::RESPONSE_TOPIC, v) => {
                // [MQTT-3.3.2-14]: the Response Topic is a topic name (no wildcards).
                crate::topic::validate_name(&v).map_err(|_| DecodeError::InvalidResponseTopic)?;
                set_once(&mut self.response_topic, v, id::RESPONSE_TOPIC)
            }
            Prop::Binary(id::CORRELATION_DATA, v) => {
                set_once(&mut self.correlation_data, v, id::CORRELATION_DATA)
            }
            Prop::Varint(id::SUBSCRIPTION_IDENTIFIER, v) => {
                self.subscription_identifiers.push(v);
                Ok(())
            }
            Prop::U16(id::TOPIC_ALIAS, v) => set_once(&mut self.topic_alias, v, id::TOPIC_ALIAS),
            Prop::User(k, v) => {
                self.user_properties.push((k, v));
                Ok(())
            }
            other => Err(DecodeError::PropertyNotAllowed(other.id())),
        }
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        sink.byte(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        sink.u32(
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval_secs,
        );
        sink.str(id::CONTENT_TYPE, self.content_type.as_ref());
        sink.str(id::RESPONSE_TOPIC, self.response_topic.as_ref());
        sink.binary(id::CORRELATION_DATA, self.correlation_data.as_deref());
        for sub_id in &self.subscription_identifiers {
            sink.varint(id::SUBSCRIPTION_IDENTIFIER, Some(*sub_id));
        }
        sink.u16(id::TOPIC_ALIAS, self.topic_alias);
        sink.users(&self.user_properties);
    }
}

impl PublishProperties {
    /// Whether no property is present.
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}
