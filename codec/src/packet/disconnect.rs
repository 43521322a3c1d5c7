//! DISCONNECT (section 3.14). In 3.x it is two bytes; in 5.0 the reason code and properties
//! may be left out (remaining length 0 means Normal disconnection, [MQTT-3.14.2-1]).

use bytes::{BufMut, Bytes};

use super::{check_reason, expect_end, kind};
use crate::error::DecodeError;
use crate::property::{DisconnectProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::{read_u8, write_fixed_header};

/// DISCONNECT, from either side in 5.0, from the client only in 3.x.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0).
    pub reason_code: ReasonCode,
    /// Properties (5.0).
    pub properties: DisconnectProperties,
}

const LEGAL: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        mut body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Disconnect, DecodeError> {
        let mut packet = Disconnect::default();
        if version.is_v5() {
            if !body.is_empty() {
                packet.reason_code = check_reason(read_u8(&mut body)?, LEGAL)?;
            }
            if !body.is_empty() {
                packet.properties = DisconnectProperties::decode(&mut body)?;
            }
        }
        expect_end(&body)?;
        Ok(packet)
    }

    /// Appends the packet encoded for `version`, in the shortest legal form.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        let byte0 = kind::DISCONNECT << 4;
        let has_props = self.properties != DisconnectProperties::default();
        if !version.is_v5() || (self.reason_code == ReasonCode::SUCCESS && !has_props) {
            write_fixed_header(dst, byte0, 0);
        } else if !has_props {
            write_fixed_header(dst, byte0, 1);
            dst.put_u8(self.reason_code.0);
        } else {
            write_fixed_header(dst, byte0, 1 + self.properties.block_len());
            dst.put_u8(self.reason_code.0);
            self.properties.encode(dst);
        }
    }
}
