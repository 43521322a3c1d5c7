//! CONNACK (section 3.2).

use bytes::{BufMut, Bytes};

use super::{check_reason, expect_end, kind};
use crate::error::DecodeError;
use crate::property::{ConnAckProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::{read_u8, write_fixed_header};

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// 5.0 reason code, or for 3.x the return code byte (0 to 5) as received/sent.
    pub code: ReasonCode,
    /// 5.0 properties.
    pub properties: ConnAckProperties,
}

/// 5.0 CONNACK reason codes (3.2.2.2).
const LEGAL_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// 3.1.1 return codes (table 3.1).
const LEGAL_V3: &[u8] = &[0, 1, 2, 3, 4, 5];

impl ConnAck {
    pub(crate) fn decode(
        mut body: Bytes,
        version: ProtocolVersion,
    ) -> Result<ConnAck, DecodeError> {
        let flags = read_u8(&mut body)?;
        // [MQTT-3.2.2-1]: bits 7-1 are reserved.
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidConnectFlags);
        }
        let code = read_u8(&mut body)?;
        let code = check_reason(code, if version.is_v5() { LEGAL_V5 } else { LEGAL_V3 })?;
        let properties = if version.is_v5() {
            ConnAckProperties::decode(&mut body)?
        } else {
            ConnAckProperties::default()
        };
        expect_end(&body)?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            code,
            properties,
        })
    }

    /// Appends the packet encoded for `version`.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        let len = 2 + if version.is_v5() {
            self.properties.block_len()
        } else {
            0
        };
        write_fixed_header(dst, kind::CONNACK << 4, len);
        dst.put_u8(self.session_present as u8);
        dst.put_u8(self.code.0);
        if version.is_v5() {
            self.properties.encode(dst);
        }
    }
}
