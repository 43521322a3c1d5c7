//! `tern-codec`: the MQTT 3.1, 3.1.1 and 5.0 wire format, sans-IO and zero-copy.
//!
//! This crate owns the bytes on the wire and nothing else: it has no networking code, no
//! runtime and no session state. Decoding works on a [`bytes::BytesMut`] that a connection
//! fills from its socket: [`Decoder::decode`] returns `Ok(None)` while a frame is still
//! incomplete, checks the maximum packet size from the fixed header before anything is
//! buffered, and hands out packets whose strings and payloads are [`bytes::Bytes`] slices of
//! the frame; a PUBLISH, the hot one, holds the frame itself as its only handle and reads
//! its topic, properties and payload in place (see [`Publish`]). Encoding appends to any
//! [`bytes::BufMut`].
//!
//! For fan-out, [`PublishTemplates`] encodes one PUBLISH at most once per *layout*
//! (3.x or 5.0 family, with or without a packet identifier) and [`PublishTemplate::write_to`]
//! copies a template into a destination buffer, patching the first byte and the packet
//! identifier there; the shared bytes never change.
//!
//! Layout:
//! - [`types`]: protocol versions, QoS, subscription options, validated strings.
//! - [`error`] and [`reason`]: the decode error enum and the reason codes it maps to.
//! - [`varint`], [`property`]: the variable byte integer and the 5.0 properties.
//! - [`topic`]: topic name and topic filter validation (shared subscriptions included).
//! - [`packet`]: one module per control packet, each with a `decode`/`encode` pair.
//! - [`decoder`]: the incremental frame decoder.
//! - [`template`]: PUBLISH templates for encode-once fan-out.

pub mod decoder;
pub mod error;
pub mod packet;
pub mod property;
pub mod reason;
pub mod template;
pub mod topic;
pub mod types;
pub mod varint;
mod wire;

pub use decoder::Decoder;
pub use error::DecodeError;
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishPropertiesRef, SubAck, Subscribe, SubscriptionIdentifiers, UnsubAck, Unsubscribe,
    UserProperties,
};
pub use property::*;
pub use reason::ReasonCode;
pub use template::{
    encode_publish, Family, Outbound, PatchBuf, PublishTemplate, PublishTemplates, TemplateError,
};
pub use types::{
    ByteStr, PacketId, ProtocolVersion, PublishQoS, QoS, RetainHandling, SubscriptionOptions,
};
