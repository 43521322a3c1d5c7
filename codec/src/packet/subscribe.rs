//! SUBSCRIBE (section 3.8).

use bytes::{BufMut, Bytes};

use super::kind;
use crate::error::DecodeError;
use crate::property::{PropertySet, SubscribeProperties};
use crate::topic;
use crate::types::{ByteStr, PacketId, ProtocolVersion, SubscriptionOptions};
use crate::wire::{
    binary_len, read_packet_id, read_str, read_u8, write_binary, write_fixed_header,
};

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: SubscribeProperties,
    /// Topic filters and their options, in order.
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(
        mut body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Subscribe, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if version.is_v5() {
            SubscribeProperties::decode(&mut body)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !body.is_empty() {
            let filter = read_str(&mut body)?;
            topic::validate_filter(&filter)?;
            let options = SubscriptionOptions::decode(read_u8(&mut body)?, version)?;
            // [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error.
            // (Was InvalidSubscriptionOptions, which maps to 0x81 Malformed Packet.)
            if options.no_local && topic::split_shared(&filter).is_some() {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push((filter, options));
        }
        // [MQTT-3.8.3-3]: at least one filter.
        if filters.is_empty() {
            return Err(DecodeError::EmptySubscription);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    /// Appends the packet encoded for `version`.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.block_len();
        }
        len += self
            .filters
            .iter()
            .map(|(f, _)| binary_len(f.as_bytes()) + 1)
            .sum::<usize>();
        write_fixed_header(dst, kind::SUBSCRIBE << 4 | 0b0010, len);
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
        }
        for (filter, options) in &self.filters {
            write_binary(dst, filter.as_bytes());
            dst.put_u8(options.encode(version));
        }
    }
}
