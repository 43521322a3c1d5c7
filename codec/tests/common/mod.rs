//! Shared support for the integration tests: hex helpers, decode helpers and the proptest
//! strategies that generate valid packets for every version.
//!
//! Each test binary includes this module with `mod common;` and uses only part of it.
#![allow(dead_code, unreachable_pub)]

pub mod fixture_data;
pub mod strategies;

use bytes::BytesMut;
use tern_codec::{DecodeError, Decoder, Packet, ProtocolVersion};

/// Large enough for every generated packet; the size limit has its own tests.
pub const MAX_BYTES: u32 = 1 << 20;

/// Space-separated lowercase hex, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses hex written with optional whitespace, e.g. `"30 05 00 01 61"`.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?} in {text:?}"))
        })
        .collect()
}

/// Asserts byte equality, printing both sides as hex on mismatch.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], context: &str) {
    if actual != expected {
        panic!(
            "{context}: bytes differ\n  actual:   {}\n  expected: {}",
            hex(actual),
            hex(expected)
        );
    }
}

/// A decoder for `version`, or a server-side one (version learnt from CONNECT) for `None`.
pub fn decoder(version: Option<ProtocolVersion>) -> Decoder {
    match version {
        Some(v) => Decoder::with_version(v, MAX_BYTES),
        None => Decoder::new(MAX_BYTES),
    }
}

/// Decodes exactly one packet from `bytes`, requiring that it uses every byte.
pub fn decode_one(version: Option<ProtocolVersion>, bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut dec = decoder(version);
    let mut buf = BytesMut::from(bytes);
    match dec.decode(&mut buf)? {
        Some(packet) => {
            assert!(
                buf.is_empty(),
                "decoder left {} bytes: {}",
                buf.len(),
                hex(&buf)
            );
            Ok(packet)
        }
        None => panic!("incomplete frame: {}", hex(bytes)),
    }
}

/// The version a packet's client->server encoding needs to be decoded server-side: `None`
/// (learn it) for CONNECT, the version otherwise.
pub fn decode_version(packet: &Packet, version: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    }
}
