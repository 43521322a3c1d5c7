//! AUTH (section 3.15), 5.0 only: enhanced authentication exchanges.

use bytes::{BufMut, Bytes};

use super::{check_reason, expect_end, kind};
use crate::error::DecodeError;
use crate::property::{AuthProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::wire::{read_u8, write_fixed_header};

/// AUTH: one step of an enhanced authentication exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Reason code: Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

const LEGAL: &[u8] = &[0x00, 0x18, 0x19];

impl Auth {
    pub(crate) fn decode(mut body: Bytes) -> Result<Auth, DecodeError> {
        let mut packet = Auth::default();
        // [MQTT-3.15.2-1]: remaining length 0 means Success with no properties.
        if !body.is_empty() {
            packet.reason_code = check_reason(read_u8(&mut body)?, LEGAL)?;
        }
        if !body.is_empty() {
            packet.properties = AuthProperties::decode(&mut body)?;
        }
        expect_end(&body)?;
        Ok(packet)
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let byte0 = kind::AUTH << 4;
        if self.reason_code == ReasonCode::SUCCESS && self.properties == AuthProperties::default() {
            write_fixed_header(dst, byte0, 0);
        } else {
            write_fixed_header(dst, byte0, 1 + self.properties.block_len());
            dst.put_u8(self.reason_code.0);
            self.properties.encode(dst);
        }
    }
}
