//! UNSUBSCRIBE (section 3.10).

use bytes::{BufMut, Bytes};

use super::kind;
use crate::error::DecodeError;
use crate::property::{PropertySet, UnsubscribeProperties};
use crate::topic;
use crate::types::{ByteStr, PacketId, ProtocolVersion};
use crate::wire::{binary_len, read_packet_id, read_str, write_binary, write_fixed_header};

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: UnsubscribeProperties,
    /// Topic filters, in order.
    pub filters: Vec<ByteStr>,
}

impl Unsubscribe {
    pub(crate) fn decode(
        mut body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if version.is_v5() {
            UnsubscribeProperties::decode(&mut body)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !body.is_empty() {
            let filter = read_str(&mut body)?;
            topic::validate_filter(&filter)?;
            filters.push(filter);
        }
        // [MQTT-3.10.3-2]: at least one filter.
        if filters.is_empty() {
            return Err(DecodeError::EmptySubscription);
        }
        Ok(Unsubscribe {
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
            .map(|f| binary_len(f.as_bytes()))
            .sum::<usize>();
        write_fixed_header(dst, kind::UNSUBSCRIBE << 4 | 0b0010, len);
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
        }
        for filter in &self.filters {
            write_binary(dst, filter.as_bytes());
        }
    }
}
