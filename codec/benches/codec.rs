//! Hot-path benchmarks of the codec: decoding a PUBLISH, building a publish template, and
//! `write_to` (copy + patch) into a reused buffer.
//!
//! Goals (DESIGN.md): `write_to` under 20 ns, decode under 60 ns.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tern_codec::{Decoder, Family, Packet, ProtocolVersion, Publish, PublishQoS, PublishTemplates};

/// A 5.0 QoS 1 PUBLISH with a message expiry, a content type and `payload_bytes` of payload.
fn publish_v5(payload_bytes: usize) -> Publish {
    let mut p = Publish::new("sensors/building-1/floor-2/temp", vec![0x5a; payload_bytes])
        .with_qos(PublishQoS::AtLeastOnce(
            NonZeroU16::new(42).expect("non-zero"),
        ));
    let props = p.properties_mut();
    props.message_expiry_interval_secs = Some(3600);
    props.content_type = Some("json".into());
    p
}

/// Decodes frames from one long read buffer, as a connection does: the buffer is promoted
/// to shared storage once, and each frame is split off it. Batches of frames are laid out
/// outside the timed section.
fn decode(c: &mut Criterion) {
    const BATCH: usize = 4096;
    let frame: Bytes = Packet::Publish(publish_v5(64))
        .to_bytes(ProtocolVersion::V5)
        .freeze();
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, 1 << 20);
    c.bench_function("decode/v5_publish_64B", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(BATCH);
                left -= n;
                let mut buf = BytesMut::with_capacity(n * frame.len());
                for _ in 0..n {
                    buf.extend_from_slice(&frame);
                }
                let start = Instant::now();
                for _ in 0..n {
                    black_box(decoder.decode(black_box(&mut buf)).ok());
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
}

/// Reads the strings of a received publish back as `&str` (the topic, a string property and
/// a user property): what routing and ACL checks do per message, on top of the decode.
fn read_strings(c: &mut Criterion) {
    let mut p = publish_v5(64);
    p.properties_mut()
        .user_properties
        .push(("trace".into(), "00-4bf92f3577b34da6".into()));
    let frame = Packet::Publish(p).to_bytes(ProtocolVersion::V5);
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, 1 << 20);
    let Ok(Some(Packet::Publish(received))) = decoder.decode(&mut frame.clone()) else {
        panic!("the bench frame decodes");
    };
    c.bench_function("read/v5_publish_strings", |b| {
        b.iter(|| {
            let p = black_box(&received);
            let props = p.properties();
            let user = props
                .user_properties()
                .next()
                .map_or(0, |(k, v)| k.len() + v.len());
            black_box(p.topic().len() + props.content_type().map_or(0, str::len) + user)
        })
    });
}

fn templates(c: &mut Criterion) {
    // Received as 5.0, so the 3.x layout is not raw: a real encoding.
    let frame = Packet::Publish(publish_v5(64)).to_bytes(ProtocolVersion::V5);
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, 1 << 20);
    let Ok(Some(Packet::Publish(received))) = decoder.decode(&mut frame.clone()) else {
        panic!("the bench frame decodes");
    };
    assert!(!PublishTemplates::new(received.clone()).is_raw(Family::V3, true));
    c.bench_function("template/new_and_get_non_raw", |b| {
        b.iter_batched(
            || received.clone(),
            |p| {
                let templates = PublishTemplates::new(p);
                black_box(templates.get(Family::V3, true).len());
                templates
            },
            BatchSize::SmallInput,
        )
    });
}

fn write_to(c: &mut Criterion) {
    // About 100 bytes on the wire.
    let publish = publish_v5(48);
    let templates = PublishTemplates::new(publish);
    let template = templates.get(Family::V5, true);
    assert!((90..=110).contains(&template.len()), "{}", template.len());
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let id = NonZeroU16::new(7).expect("non-zero");
    c.bench_function("template/write_to_100B", |b| {
        b.iter(|| {
            out.clear();
            template
                .write_to(
                    &mut out,
                    PublishQoS::AtLeastOnce(black_box(id)),
                    true,
                    false,
                )
                .expect("layout matches");
            black_box(out.len())
        })
    });
}

criterion_group!(benches, decode, read_strings, templates, write_to);
criterion_main!(benches);
