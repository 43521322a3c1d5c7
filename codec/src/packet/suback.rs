//! SUBACK (section 3.9).

use bytes::{BufMut, Bytes};

use super::{check_reason, kind};
use crate::error::DecodeError;
use crate::property::{AckProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion};
use crate::wire::{read_packet_id, read_u8, write_fixed_header};

/// SUBACK: one reason code per filter of the SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// One code per filter: granted QoS (0, 1, 2) or a failure (0x80 and up).
    pub reason_codes: Vec<ReasonCode>,
}

const LEGAL_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const LEGAL_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];

impl SubAck {
    pub(crate) fn decode(mut body: Bytes, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if version.is_v5() {
            AckProperties::decode(&mut body)?
        } else {
            AckProperties::default()
        };
        let legal = if version.is_v5() { LEGAL_V5 } else { LEGAL_V3 };
        let mut reason_codes = Vec::with_capacity(body.len());
        while !body.is_empty() {
            reason_codes.push(check_reason(read_u8(&mut body)?, legal)?);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    /// Appends the packet encoded for `version`. For 3.x, failure codes are sent as 0x80.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        let props = if version.is_v5() {
            self.properties.block_len()
        } else {
            0
        };
        write_fixed_header(dst, kind::SUBACK << 4, 2 + props + self.reason_codes.len());
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
        }
        for code in &self.reason_codes {
            let byte = if !version.is_v5() && code.is_error() {
                0x80
            } else {
                code.0
            };
            dst.put_u8(byte);
        }
    }
}
