//! UNSUBACK (section 3.11). In 3.x it carries only the packet identifier.

use bytes::{BufMut, Bytes};

use super::{check_reason, expect_end, kind};
use crate::error::DecodeError;
use crate::property::{AckProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion};
use crate::wire::{read_packet_id, read_u8, write_fixed_header};

/// UNSUBACK: one reason code per filter (5.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// One code per filter (5.0; empty in 3.x).
    pub reason_codes: Vec<ReasonCode>,
}

const LEGAL: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

impl UnsubAck {
    pub(crate) fn decode(
        mut body: Bytes,
        version: ProtocolVersion,
    ) -> Result<UnsubAck, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        if !version.is_v5() {
            expect_end(&body)?;
            return Ok(UnsubAck {
                packet_id,
                properties: AckProperties::default(),
                reason_codes: Vec::new(),
            });
        }
        let properties = AckProperties::decode(&mut body)?;
        let mut reason_codes = Vec::with_capacity(body.len());
        while !body.is_empty() {
            reason_codes.push(check_reason(read_u8(&mut body)?, LEGAL)?);
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    /// Appends the packet encoded for `version`.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        if !version.is_v5() {
            write_fixed_header(dst, kind::UNSUBACK << 4, 2);
            dst.put_u16(self.packet_id.get());
            return;
        }
        let len = 2 + self.properties.block_len() + self.reason_codes.len();
        write_fixed_header(dst, kind::UNSUBACK << 4, len);
        dst.put_u16(self.packet_id.get());
        self.properties.encode(dst);
        for code in &self.reason_codes {
            dst.put_u8(code.0);
        }
    }
}
