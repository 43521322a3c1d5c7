//! proptest round trips: every generated valid packet, of every type and version, encodes
//! and decodes back to an equal packet; CONNECT goes through a server-side decoder so that
//! version detection is exercised. The same bytes fed in random-size chunks give `Ok(None)`
//! until the last byte arrives, and never an error.

mod common;

use bytes::BytesMut;
use common::strategies::{self, VERSIONS};
use common::{decode_one, decode_version, decoder, hex};
use proptest::prelude::*;
use tern_codec::{Packet, ProtocolVersion};

fn round_trip(version: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    let bytes = packet.to_bytes(version);
    let decoded = decode_one(decode_version(packet, version), &bytes)
        .map_err(|e| TestCaseError::fail(format!("{e:?} decoding {}", hex(&bytes))))?;
    prop_assert_eq!(&decoded, packet, "bytes: {}", hex(&bytes));
    // Re-encoding the decoded packet gives the same bytes.
    let again = decoded.to_bytes(version);
    prop_assert_eq!(hex(&again), hex(&bytes));
    Ok(())
}

/// Splits `bytes` at `cuts` (positions, any order) and feeds the pieces one by one.
fn chunked(version: ProtocolVersion, packet: &Packet, cuts: &[usize]) -> Result<(), TestCaseError> {
    let bytes = packet.to_bytes(version);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut dec = decoder(decode_version(packet, version));
    let mut buf = BytesMut::new();
    for window in points.windows(2) {
        buf.extend_from_slice(&bytes[window[0]..window[1]]);
        let result = dec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("{e:?} after {} bytes", window[1])))?;
        if window[1] < bytes.len() {
            prop_assert!(result.is_none(), "a packet after {} bytes", window[1]);
        } else {
            prop_assert_eq!(result.as_ref(), Some(packet));
            prop_assert!(buf.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn connect_v3_1(p in strategies::connect(ProtocolVersion::V3_1)) {
        round_trip(ProtocolVersion::V3_1, &p)?;
    }

    #[test]
    fn connect_v3_1_1(p in strategies::connect(ProtocolVersion::V3_1_1)) {
        round_trip(ProtocolVersion::V3_1_1, &p)?;
    }

    #[test]
    fn connect_v5(p in strategies::connect(ProtocolVersion::V5)) {
        round_trip(ProtocolVersion::V5, &p)?;
    }

    #[test]
    fn connack(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::connack(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn publish(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::publish(v)))) {
        round_trip(v.0, &Packet::Publish(v.1))?;
    }

    #[test]
    fn pub_acks(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::pub_ack(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn subscribe(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::subscribe(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn suback(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::suback(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn unsubscribe(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::unsubscribe(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn unsuback(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::unsuback(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn disconnect(v in proptest::sample::select(VERSIONS.to_vec())
        .prop_flat_map(|v| (Just(v), strategies::disconnect(v)))) {
        round_trip(v.0, &v.1)?;
    }

    #[test]
    fn auth_v5(p in strategies::auth()) {
        round_trip(ProtocolVersion::V5, &p)?;
    }

    #[test]
    fn pings(v in proptest::sample::select(VERSIONS.to_vec()), req in any::<bool>()) {
        round_trip(v, if req { &Packet::PingReq } else { &Packet::PingResp })?;
    }

    #[test]
    fn chunked_reads_never_error(
        (v, p) in strategies::versioned_packet(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        chunked(v, &p, &cuts)?;
    }

    #[test]
    fn byte_at_a_time((v, p) in strategies::versioned_packet()) {
        let len = p.to_bytes(v).len();
        let cuts: Vec<usize> = (1..len).collect();
        chunked(v, &p, &cuts)?;
    }

    /// Several packets back to back in one buffer decode in order (CONNECT first, so the
    /// server-side decoder learns the version from it).
    #[test]
    fn stream_of_packets(
        (v, connect, rest) in proptest::sample::select(VERSIONS.to_vec()).prop_flat_map(|v| (
            Just(v),
            strategies::connect(v),
            proptest::collection::vec(strategies::non_connect(v), 0..6),
        )),
    ) {
        let mut buf = BytesMut::new();
        connect.encode(v, &mut buf);
        for p in &rest {
            p.encode(v, &mut buf);
        }
        let mut dec = decoder(None);
        prop_assert_eq!(dec.decode(&mut buf).map_err(|e| TestCaseError::fail(format!("{e:?}")))?, Some(connect));
        prop_assert_eq!(dec.version(), Some(v));
        for p in rest {
            prop_assert_eq!(dec.decode(&mut buf).map_err(|e| TestCaseError::fail(format!("{e:?}")))?, Some(p));
        }
        prop_assert!(buf.is_empty());
    }
}

/// The short acknowledgements (a packet identifier only) are read in place, without a frame
/// handle: packets around them in the same buffer still decode whole and in order, and a
/// 5.0 acknowledgement with a reason code takes the general path.
#[test]
fn short_acks_between_other_packets_decode_in_order() {
    use tern_codec::{Decoder, PacketId, PubAck, PubComp, PubRec, PubRel};
    let id = |n| PacketId::new(n).expect("non-zero");
    let packets = [
        Packet::PubAck(PubAck::new(id(1))),
        Packet::PingReq,
        Packet::PubRec(PubRec::new(id(2))),
        Packet::PubRel(PubRel::new(id(3))),
        Packet::PubComp(PubComp::new(id(65535))),
        Packet::PubAck(PubAck {
            reason_code: tern_codec::ReasonCode(0x10),
            ..PubAck::new(id(4))
        }),
    ];
    let mut buf = BytesMut::new();
    for packet in &packets {
        buf.extend_from_slice(&packet.to_bytes(ProtocolVersion::V5));
    }
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, 1024);
    for packet in &packets {
        assert_eq!(
            decoder.decode(&mut buf).expect("valid").as_ref(),
            Some(packet)
        );
    }
    assert!(buf.is_empty());
    assert_eq!(decoder.decode(&mut buf).expect("empty"), None);
}
