//! Benchmarks for the routing topic trie: matching against 10k / 100k
//! subscriptions with a mix of exact and wildcard filters, subscribe /
//! unsubscribe churn, and 100k subscribers on one filter.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use tern_broker::router::trie::Trie;

/// Tiny deterministic PRNG so runs are comparable.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const BUILDINGS: u64 = 100;
const FLOORS: u64 = 20;
const DEVICES: u64 = 50;

/// A subscription filter drawn from the mix: 70% exact, 30% wildcard.
fn filter(rng: &mut XorShift) -> String {
    let (b, f, d) = (rng.below(BUILDINGS), rng.below(FLOORS), rng.below(DEVICES));
    match rng.below(20) {
        0..=13 => format!("sensors/b{b}/f{f}/d{d}"),
        14 | 15 => format!("sensors/+/f{f}/d{d}/#"),
        16 | 17 => format!("sensors/b{b}/+/d{d}"),
        18 => format!("sensors/b{b}/f{f}/#"),
        _ => format!("+/b{b}/f{f}/+"),
    }
}

/// A publish topic name in the same space as [`filter`].
fn topic(rng: &mut XorShift) -> String {
    let (b, f, d) = (rng.below(BUILDINGS), rng.below(FLOORS), rng.below(DEVICES));
    format!("sensors/b{b}/f{f}/d{d}")
}

/// A trie of `n` subscriptions, one key (client id) each.
fn build(n: u64) -> Trie<u64, u8> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut trie = Trie::new();
    for key in 0..n {
        trie.insert(&filter(&mut rng), key, 1);
    }
    trie
}

fn bench_match(c: &mut Criterion) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let topics: Vec<String> = (0..1024).map(|_| topic(&mut rng)).collect();
    for n in [10_000u64, 100_000] {
        let trie = build(n);
        let mut total = 0usize;
        for t in &topics {
            trie.for_each_match(t, |_, _| total += 1);
        }
        eprintln!(
            "{n} subs: {} filters, {:.1} matches/topic",
            trie.filter_count(),
            total as f64 / topics.len() as f64
        );
        let mut i = 0;
        c.bench_function(&format!("match/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % topics.len();
                let mut hits = 0u64;
                trie.for_each_match(black_box(&topics[i]), |k, v| {
                    hits = hits.wrapping_add(*k ^ u64::from(*v));
                });
                hits
            })
        });
        c.bench_function(&format!("match_dollar_miss/{n}"), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                trie.for_each_match(black_box("$SYS/broker/load"), |_, _| hits += 1);
                hits
            })
        });
    }
}

fn bench_churn(c: &mut Criterion) {
    for n in [10_000u64, 100_000] {
        let mut trie = build(n);
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let ops: Vec<(String, u64)> = (0..4096).map(|i| (filter(&mut rng), n + i)).collect();
        let mut i = 0;
        c.bench_function(&format!("subscribe_unsubscribe/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % ops.len();
                let (f, k) = &ops[i];
                trie.insert(f, *k, 1);
                trie.remove(f, k)
            })
        });
    }
}

fn bench_one_filter(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut group = c.benchmark_group("one_filter_100k");
    group.sample_size(10);
    group.bench_function("insert_then_remove_all", |b| {
        b.iter_batched(
            Trie::<u64, u8>::new,
            |mut trie| {
                for k in 0..N {
                    trie.insert("sensors/+/f1/#", k, 1);
                }
                for k in 0..N {
                    trie.remove("sensors/+/f1/#", &k);
                }
                trie
            },
            BatchSize::LargeInput,
        )
    });
    let mut trie = Trie::new();
    for k in 0..N {
        trie.insert("sensors/+/f1/#", k, 1u8);
    }
    group.bench_function("match_fanout", |b| {
        b.iter(|| {
            let mut hits = 0u64;
            trie.for_each_match(black_box("sensors/b1/f1/d1"), |k, _| {
                hits = hits.wrapping_add(*k);
            });
            hits
        })
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_churn, bench_one_filter);
criterion_main!(benches);
