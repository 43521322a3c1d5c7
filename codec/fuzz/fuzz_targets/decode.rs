//! Fuzz target `decode`: arbitrary bytes through a server-side decoder and one decoder per
//! protocol version. Decoding never panics, and every packet that decodes re-encodes to
//! bytes that decode to the same packet (the invariant, not just "no crash").
//!
//! The same property runs on stable as proptests in `codec/tests/fuzz_props.rs`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_codec::{Decoder, Packet, ProtocolVersion};

/// Small enough that the size check is exercised, large enough for real packets.
const MAX_BYTES: u32 = 64 * 1024;

fn decoders() -> [Decoder; 4] {
    [
        Decoder::new(MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V3_1, MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V3_1_1, MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V5, MAX_BYTES),
    ]
}

/// Re-encodes `packet` for `version` and checks it decodes back to itself.
fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let bytes = packet.to_bytes(version);
    let mut decoder = match packet {
        Packet::Connect(_) => Decoder::new(u32::MAX),
        _ => Decoder::with_version(version, u32::MAX),
    };
    let mut buf = BytesMut::from(&bytes[..]);
    match decoder.decode(&mut buf) {
        Ok(Some(again)) => {
            assert_eq!(&again, packet, "re-encoded as {bytes:02x?}");
            assert!(buf.is_empty(), "re-encoding has trailing bytes");
        }
        other => panic!("{other:?} re-decoding {packet:?} from {bytes:02x?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for mut decoder in decoders() {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            // After a CONNECT the decoder knows the version; before it, it decodes as 3.1.1.
            let version = decoder.version().unwrap_or(ProtocolVersion::V3_1_1);
            check_round_trip(&packet, version);
        }
    }
});
