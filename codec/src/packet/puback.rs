//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7): one layout, four packets.
//!
//! In 5.0 the reason code and properties may be left out: remaining length 2 means Success
//! with no properties, 3 means a reason code with no properties ([MQTT-3.4.2-1] and peers).

use bytes::{BufMut, Bytes};

use super::{check_reason, expect_end, kind};
use crate::error::DecodeError;
use crate::property::{AckProperties, PropertySet};
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion};
use crate::wire::{read_packet_id, read_u8, write_fixed_header};

/// Reason codes of PUBACK and PUBREC (3.4.2.1, 3.5.2.1).
const LEGAL_PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// Reason codes of PUBREL and PUBCOMP (3.6.2.1, 3.7.2.1).
const LEGAL_PUBREL: &[u8] = &[0x00, 0x92];

macro_rules! ack_packet {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $flags:expr, $legal:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// Packet identifier of the PUBLISH this acknowledges.
            pub packet_id: PacketId,
            /// Reason code (5.0; always Success in 3.x).
            pub reason_code: ReasonCode,
            /// Properties (5.0).
            pub properties: AckProperties,
        }

        impl $name {
            /// A Success acknowledgement with no properties.
            pub fn new(packet_id: PacketId) -> Self {
                $name { packet_id, reason_code: ReasonCode::SUCCESS, properties: AckProperties::default() }
            }

            pub(crate) fn decode(mut body: Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
                let packet_id = read_packet_id(&mut body)?;
                let mut reason_code = ReasonCode::SUCCESS;
                let mut properties = AckProperties::default();
                if version.is_v5() {
                    if !body.is_empty() {
                        reason_code = check_reason(read_u8(&mut body)?, $legal)?;
                    }
                    if !body.is_empty() {
                        properties = AckProperties::decode(&mut body)?;
                    }
                }
                expect_end(&body)?;
                Ok($name { packet_id, reason_code, properties })
            }

            /// Appends the packet encoded for `version`, in the shortest legal form.
            pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
                let byte0 = $kind << 4 | $flags;
                let has_props = self.properties != AckProperties::default();
                if !version.is_v5() || (self.reason_code == ReasonCode::SUCCESS && !has_props) {
                    write_fixed_header(dst, byte0, 2);
                    dst.put_u16(self.packet_id.get());
                } else if !has_props {
                    write_fixed_header(dst, byte0, 3);
                    dst.put_u16(self.packet_id.get());
                    dst.put_u8(self.reason_code.0);
                } else {
                    write_fixed_header(dst, byte0, 3 + self.properties.block_len());
                    dst.put_u16(self.packet_id.get());
                    dst.put_u8(self.reason_code.0);
                    self.properties.encode(dst);
                }
            }
        }
    };
}

ack_packet!(
    /// PUBACK: acknowledges a QoS 1 PUBLISH.
    PubAck, kind::PUBACK, 0, LEGAL_PUBACK
);
ack_packet!(
    /// PUBREC: first acknowledgement of a QoS 2 PUBLISH.
    PubRec, kind::PUBREC, 0, LEGAL_PUBACK
);
ack_packet!(
    /// PUBREL: releases a QoS 2 packet identifier (fixed-header flags 0b0010).
    PubRel, kind::PUBREL, 0b0010, LEGAL_PUBREL
);
ack_packet!(
    /// PUBCOMP: completes a QoS 2 exchange.
    PubComp, kind::PUBCOMP, 0, LEGAL_PUBREL
);
