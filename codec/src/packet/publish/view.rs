//! [`PublishPropertiesRef`]: read access to the properties of a [`super::Publish`], whether
//! they were decoded lazily from the received frame or set by hand as a
//! [`PublishProperties`].
//!
//! Reading never touches a reference count: strings and binary data come back as borrowed
//! slices of the frame. [`PublishPropertiesRef::to_properties`] materialises an owned set
//! (one `Bytes` handle per string) for callers that keep or change them.

use std::fmt;

use bytes::{BufMut, Bytes};

use super::received::{Eager, RawProp, RawProps, Received, Span};
use crate::property::{id, PropertySet, PublishProperties, UserProperty};
use crate::types::{str_from_validated, ByteStr};
use crate::varint;

/// The properties of a PUBLISH (3.3.2.3), borrowed from it. One received over 3.x has none.
///
/// Obtained from [`super::Publish::properties`]. The integer properties are plain reads;
/// Content Type, Response Topic, Correlation Data, Subscription Identifiers and User
/// Properties of a received publish are found by a short walk over its property block.
#[derive(Clone, Copy)]
pub struct PublishPropertiesRef<'a>(Source<'a>);

#[derive(Clone, Copy)]
enum Source<'a> {
    /// Set by hand (or materialised after a change).
    Owned(&'a PublishProperties),
    /// Still in the received frame.
    Received(&'a Received),
}

/// The string and binary properties of one set, found in one walk.
#[derive(Clone, Copy, Default)]
pub(crate) struct Strings<'a> {
    pub(crate) content_type: Option<&'a [u8]>,
    pub(crate) response_topic: Option<&'a [u8]>,
    pub(crate) correlation_data: Option<&'a [u8]>,
}

impl<'a> PublishPropertiesRef<'a> {
    pub(crate) fn owned(properties: &'a PublishProperties) -> Self {
        PublishPropertiesRef(Source::Owned(properties))
    }

    pub(crate) fn received(received: &'a Received) -> Self {
        PublishPropertiesRef(Source::Received(received))
    }

    fn eager(&self) -> Option<&'a Eager> {
        match self.0 {
            Source::Owned(_) => None,
            Source::Received(r) => Some(&r.eager),
        }
    }

    /// Payload Format Indicator: 0 bytes, 1 UTF-8.
    pub fn payload_format_indicator(&self) -> Option<u8> {
        match self.0 {
            Source::Owned(p) => p.payload_format_indicator,
            Source::Received(r) => r.eager.payload_format_indicator,
        }
    }

    /// Message Expiry Interval in seconds.
    pub fn message_expiry_interval_secs(&self) -> Option<u32> {
        match self.0 {
            Source::Owned(p) => p.message_expiry_interval_secs,
            Source::Received(r) => r.eager.message_expiry_interval_secs,
        }
    }

    /// Topic Alias.
    pub fn topic_alias(&self) -> Option<u16> {
        match self.0 {
            Source::Owned(p) => p.topic_alias,
            Source::Received(r) => r.eager.topic_alias,
        }
    }

    /// Whether any Subscription Identifier is present (no walk for a received publish).
    pub fn has_subscription_identifiers(&self) -> bool {
        match self.eager() {
            Some(eager) => eager.has_subscription_identifiers,
            None => self.subscription_identifiers().next().is_some(),
        }
    }

    /// Content Type.
    pub fn content_type(&self) -> Option<&'a str> {
        // SAFETY: `strings` returns a `ByteStr` (owned) or a validated span of a `Received`
        // (invariant in `received`).
        #[allow(unsafe_code)]
        self.strings()
            .content_type
            .map(|s| unsafe { str_from_validated(s) })
    }

    /// Response Topic.
    pub fn response_topic(&self) -> Option<&'a str> {
        // SAFETY: as in `content_type`.
        #[allow(unsafe_code)]
        self.strings()
            .response_topic
            .map(|s| unsafe { str_from_validated(s) })
    }

    /// Correlation Data.
    pub fn correlation_data(&self) -> Option<&'a [u8]> {
        self.strings().correlation_data
    }

    /// The string and binary properties, in one walk.
    pub(crate) fn strings(&self) -> Strings<'a> {
        match self.0 {
            Source::Owned(p) => Strings {
                content_type: p.content_type.as_ref().map(|s| s.as_bytes().as_ref()),
                response_topic: p.response_topic.as_ref().map(|s| s.as_bytes().as_ref()),
                correlation_data: p.correlation_data.as_deref(),
            },
            Source::Received(r) => {
                let mut strings = Strings::default();
                let props = r.props();
                for prop in props.clone() {
                    if let RawProp::Data(ident, span) = prop {
                        let slot = match ident {
                            id::CONTENT_TYPE => &mut strings.content_type,
                            id::RESPONSE_TOPIC => &mut strings.response_topic,
                            _ => &mut strings.correlation_data,
                        };
                        *slot = Some(props.at(span));
                    }
                }
                strings
            }
        }
    }

    /// Subscription Identifiers, in order (server to client only; may repeat).
    pub fn subscription_identifiers(&self) -> SubscriptionIdentifiers<'a> {
        SubscriptionIdentifiers(match self.0 {
            Source::Owned(p) => Ids::Owned(p.subscription_identifiers.iter()),
            Source::Received(r) => Ids::Received(r.props()),
        })
    }

    /// User Properties, in order (names may repeat).
    pub fn user_properties(&self) -> UserProperties<'a> {
        UserProperties(match self.0 {
            Source::Owned(p) => Users::Owned(p.user_properties.iter()),
            Source::Received(r) => Users::Received(r.props()),
        })
    }

    /// Whether no property is present.
    pub fn is_empty(&self) -> bool {
        match self.0 {
            Source::Owned(p) => p.is_empty(),
            Source::Received(r) => r.props.start == r.props.end,
        }
    }

    /// An owned copy: strings and binary data become `Bytes` handles on the frame (no byte
    /// is copied), lists are allocated.
    pub fn to_properties(&self) -> PublishProperties {
        let r = match self.0 {
            Source::Owned(p) => return p.clone(),
            Source::Received(r) => r,
        };
        let slice = |span: Span| r.frame.slice(span.range());
        // SAFETY: used only on the string properties of a `Received`, UTF-8 by its invariant.
        #[allow(unsafe_code)]
        let str = |span: Span| unsafe { ByteStr::from_validated(slice(span)) };
        let mut out = PublishProperties {
            payload_format_indicator: r.eager.payload_format_indicator,
            message_expiry_interval_secs: r.eager.message_expiry_interval_secs,
            topic_alias: r.eager.topic_alias,
            ..PublishProperties::default()
        };
        for prop in r.props() {
            match prop {
                RawProp::Int(id::SUBSCRIPTION_IDENTIFIER, v) => {
                    out.subscription_identifiers.push(v);
                }
                RawProp::Int(..) => {}
                RawProp::Data(id::CONTENT_TYPE, s) => out.content_type = Some(str(s)),
                RawProp::Data(id::RESPONSE_TOPIC, s) => out.response_topic = Some(str(s)),
                RawProp::Data(_, s) => out.correlation_data = Some(slice(s)),
                RawProp::User(k, v) => out.user_properties.push((str(k), str(v))),
            }
        }
        out
    }

    /// The whole encoded block, length varint included (as received, for a received one).
    pub(crate) fn block_len(&self) -> usize {
        match self.0 {
            Source::Owned(p) => p.block_len(),
            Source::Received(r) => {
                let len = r.props.end - r.props.start;
                varint::len(len) + len as usize
            }
        }
    }

    /// Writes the whole block; a received one is copied as it came.
    pub(crate) fn encode(&self, dst: &mut impl BufMut) {
        match self.0 {
            Source::Owned(p) => p.encode(dst),
            Source::Received(r) => {
                varint::write(dst, r.props.end - r.props.start);
                dst.put_slice(&r.frame[r.props.range()]);
            }
        }
    }
}

impl PartialEq for PublishPropertiesRef<'_> {
    /// The same properties, whatever holds them.
    fn eq(&self, other: &Self) -> bool {
        self.payload_format_indicator() == other.payload_format_indicator()
            && self.message_expiry_interval_secs() == other.message_expiry_interval_secs()
            && self.topic_alias() == other.topic_alias()
            && self.content_type() == other.content_type()
            && self.response_topic() == other.response_topic()
            && self.correlation_data() == other.correlation_data()
            && self
                .subscription_identifiers()
                .eq(other.subscription_identifiers())
            && self.user_properties().eq(other.user_properties())
    }
}

impl PartialEq<PublishProperties> for PublishPropertiesRef<'_> {
    fn eq(&self, other: &PublishProperties) -> bool {
        *self == PublishPropertiesRef::owned(other)
    }
}

impl fmt::Debug for PublishPropertiesRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishProperties")
            .field("payload_format_indicator", &self.payload_format_indicator())
            .field(
                "message_expiry_interval_secs",
                &self.message_expiry_interval_secs(),
            )
            .field("content_type", &self.content_type())
            .field("response_topic", &self.response_topic())
            .field(
                "correlation_data",
                &self.correlation_data().map(Bytes::copy_from_slice),
            )
            .field(
                "subscription_identifiers",
                &self.subscription_identifiers().collect::<Vec<_>>(),
            )
            .field("topic_alias", &self.topic_alias())
            .field(
                "user_properties",
                &self.user_properties().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The Subscription Identifiers of a PUBLISH: see
/// [`PublishPropertiesRef::subscription_identifiers`].
#[derive(Clone, Debug)]
pub struct SubscriptionIdentifiers<'a>(Ids<'a>);

#[derive(Clone, Debug)]
enum Ids<'a> {
    Owned(std::slice::Iter<'a, u32>),
    Received(RawProps<'a>),
}

impl Iterator for SubscriptionIdentifiers<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match &mut self.0 {
            Ids::Owned(iter) => iter.next().copied(),
            Ids::Received(props) => props.find_map(|prop| match prop {
                RawProp::Int(id::SUBSCRIPTION_IDENTIFIER, v) => Some(v),
                _ => None,
            }),
        }
    }
}

/// The User Properties of a PUBLISH, as `(name, value)`: see
/// [`PublishPropertiesRef::user_properties`].
#[derive(Clone, Debug)]
pub struct UserProperties<'a>(Users<'a>);

#[derive(Clone, Debug)]
enum Users<'a> {
    Owned(std::slice::Iter<'a, UserProperty>),
    Received(RawProps<'a>),
}

impl<'a> Iterator for UserProperties<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        match &mut self.0 {
            Users::Owned(iter) => iter.next().map(|(k, v)| (k.as_str(), v.as_str())),
            Users::Received(props) => {
                let bytes = props.bytes;
                props.find_map(|prop| match prop {
                    // SAFETY: a User Property name and value in a `Received` are UTF-8 by its
                    // invariant, and `bytes` is its property block.
                    #[allow(unsafe_code)]
                    RawProp::User(k, v) => unsafe {
                        Some((
                            str_from_validated(&bytes[k.range()]),
                            str_from_validated(&bytes[v.range()]),
                        ))
                    },
                    _ => None,
                })
            }
        }
    }
}
