//! The fuzz target's property on stable, so CI runs it without nightly: arbitrary bytes and
//! mutated valid frames through a server-side decoder and one decoder per version.
//! Decoding never panics; whatever decodes re-encodes and decodes to the same packet; and
//! feeding the same bytes in chunks gives the same packets and the same error.

mod common;

use bytes::BytesMut;
use common::{hex, strategies};
use proptest::prelude::*;
use tern_codec::{DecodeError, Decoder, Packet, ProtocolVersion};

const MAX_BYTES: u32 = 64 * 1024;

fn decoders() -> [Decoder; 4] {
    [
        Decoder::new(MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V3_1, MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V3_1_1, MAX_BYTES),
        Decoder::with_version(ProtocolVersion::V5, MAX_BYTES),
    ]
}

/// Everything a decoder makes of `data` fed in pieces ending at `cuts`: the packets, then
/// how it stopped (`Ok(())` = ran out of bytes).
fn run(
    mut decoder: Decoder,
    data: &[u8],
    cuts: &[usize],
) -> (Vec<(Packet, ProtocolVersion)>, Result<(), DecodeError>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    let mut packets = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for point in points {
        buf.extend_from_slice(&data[fed..point]);
        fed = point;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let version = decoder.version().unwrap_or(ProtocolVersion::V3_1_1);
                    packets.push((packet, version));
                }
                Ok(None) => break,
                Err(e) => return (packets, Err(e)),
            }
        }
    }
    (packets, Ok(()))
}

fn round_trip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = packet.to_bytes(version);
    let mut decoder = match packet {
        Packet::Connect(_) => Decoder::new(u32::MAX),
        _ => Decoder::with_version(version, u32::MAX),
    };
    let mut buf = BytesMut::from(&bytes[..]);
    match decoder.decode(&mut buf) {
        Ok(Some(again)) => {
            prop_assert_eq!(&again, packet, "re-encoded as {}", hex(&bytes));
            prop_assert!(buf.is_empty());
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "{other:?} re-decoding {packet:?} from {}",
            hex(&bytes)
        ))),
    }
}

fn check(data: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    for decoder in decoders() {
        let whole = run(decoder.clone(), data, &[]);
        for (packet, version) in &whole.0 {
            round_trip(packet, *version)?;
        }
        let chunked = run(decoder, data, cuts);
        prop_assert_eq!(&chunked, &whole, "chunked at {:?}: {}", cuts, hex(data));
    }
    Ok(())
}

/// A mutation of a valid frame.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: &usize| i % bytes.len();
    match mutation {
        Mutation::Set(i, b) => {
            let i = at(i);
            bytes[i] = *b;
        }
        Mutation::Flip(i, mask) => {
            let i = at(i);
            bytes[i] ^= mask;
        }
        Mutation::Insert(i, b) => {
            let i = at(i);
            bytes.insert(i, *b);
        }
        Mutation::Remove(i) => {
            let i = at(i);
            bytes.remove(i);
        }
        Mutation::Truncate(i) => {
            let i = at(i);
            bytes.truncate(i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        check(&data, &cuts)?;
    }

    /// Random bodies behind a plausible fixed header, so that most inputs reach the packet
    /// decoders rather than stopping at the header.
    #[test]
    fn random_bodies(
        packet_type in 1u8..16,
        body in proptest::collection::vec(any::<u8>(), 0..120),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let flags = match packet_type {
            3 => body.first().map_or(0, |b| b & 0x0f),
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        let mut data = vec![packet_type << 4 | flags, body.len() as u8];
        data.extend_from_slice(&body);
        check(&data, &cuts)?;
    }

    #[test]
    fn mutated_valid_frames(
        (version, packets) in proptest::sample::select(strategies::VERSIONS.to_vec())
            .prop_flat_map(|v| (Just(v), proptest::collection::vec(strategies::any_packet(v), 1..4))),
        mutations in proptest::collection::vec(mutation(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut data = Vec::new();
        for p in &packets {
            data.extend_from_slice(&p.to_bytes(version));
        }
        for m in &mutations {
            apply(&mut data, m);
        }
        check(&data, &cuts)?;
    }
}

/// Regression inputs found while writing these properties (kept as plain tests).
#[test]
fn regressions() {
    let cases: &[&str] = &[
        // Empty input, lone header byte, all-continuation remaining length.
        "",
        "30",
        "30 ff ff ff ff",
        // 5.0 PUBACK with Success and an empty property block re-encodes in short form.
        "40 04 00 01 00 00",
        // Non-minimal remaining length and property identifier encodings.
        "30 80 00",
        "30 85 00 00 01 74 00 00",
    ];
    for hex_text in cases {
        let data = common::unhex(hex_text);
        check(&data, &[1, 2, 3]).unwrap_or_else(|e| panic!("{hex_text}: {e}"));
    }
}
