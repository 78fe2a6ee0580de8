//! Matching throughput against a 10,000-offer book, on one core (target ≥ 100,000 bids/s).
//!
//! `cargo bench -p claw-market --bench matching`. The book mixes 8 models, 1 to 8 GPUs per node,
//! prices from 0.5 to 5.5 MOLT per GPU-hour and 5 regions; the bids vary model, GPU count, region
//! and price limit, so that some match at once, some only deep in a model's list, and some not
//! at all (which measures the explanation too).

use std::hint::black_box;

use claw_market::Molt;
use claw_market::book::{BookEntry, OrderBook};
use claw_market::order::{Bid, Offer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const NOW: u64 = 1_800_000_000_000;
const MODELS: [&str; 8] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA L40S",
    "NVIDIA L4",
    "NVIDIA RTX 4090",
    "NVIDIA A10G",
    "NVIDIA H200",
    "NVIDIA B200",
];
const REGIONS: [&str; 5] = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"];

/// A small deterministic generator, so every run measures the same book.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

fn book(offers: usize, rng: &mut Lcg) -> OrderBook {
    let mut book = OrderBook::new("localnet");
    for i in 0..offers {
        let provider = (i as u64).to_le_bytes();
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&provider);
        let entry = BookEntry {
            provider: key,
            seq: 1,
            issued_ms: NOW - rng.next(3_600_000),
            expires_ms: NOW + 600_000,
            attested: rng.next(10) > 0,
            offer: Offer {
                offer_id: 1,
                gpu_model: MODELS[rng.next(8) as usize].to_owned(),
                gpus: 1 + rng.next(8) as u32,
                vram_mib: 24_576 + rng.next(4) * 20_480,
                price_per_gpu_hour: Molt::from_base_units(500_000 + rng.next(5_000_000)),
                min_hours: 1,
                max_hours: 24 + rng.next(48) as u32,
                available_from_ms: NOW - 1,
                available_until_ms: NOW + 96 * 3_600_000,
                network: "localnet".to_owned(),
                region: Some(REGIONS[rng.next(5) as usize].to_owned()),
                wallet: "provider-wallet".to_owned(),
                inventory_digest: [0; 32],
                interruptible: false,
                simulated: false,
                withdrawn: false,
                cpu_millis_per_gpu: 4000,
                memory_mib_per_gpu: 32_768,
                pids_limit: 4096,
            },
        };
        book.insert(entry).expect("valid offer");
    }
    book
}

fn bids(count: usize, rng: &mut Lcg) -> Vec<Bid> {
    (0..count)
        .map(|_| Bid {
            models: vec![MODELS[rng.next(8) as usize].to_owned()],
            gpus: 1 + rng.next(8) as u32,
            min_vram_mib: 24_576,
            region: (rng.next(2) == 0).then(|| REGIONS[rng.next(5) as usize].to_owned()),
            attested_only: rng.next(2) == 0,
            min_reputation: 0,
            max_price_per_gpu_hour: Molt::from_base_units(600_000 + rng.next(5_000_000)),
            hours: 1 + rng.next(24) as u32,
            wallet: "buyer-wallet".to_owned(),
            accept_simulated: false,
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut rng = Lcg(7);
    let book = book(10_000, &mut rng);
    let bids = bids(1_000, &mut rng);
    let matched = bids
        .iter()
        .filter(|b| book.best_match(b, NOW, &|_| 50).is_ok())
        .count();
    println!("10,000-offer book: {matched} of 1,000 bids match");
    let reputation = |_: &[u8; 32]| 50;
    let mut group = c.benchmark_group("matching");
    group.throughput(Throughput::Elements(bids.len() as u64));
    group.bench_function("1,000 bids against 10,000 offers", |b| {
        b.iter(|| {
            for bid in &bids {
                let _ = black_box(book.best_match(black_box(bid), NOW, &reputation));
            }
        });
    });
    let matching_only: Vec<Bid> = bids
        .iter()
        .filter(|b| book.best_match(b, NOW, &|_| 50).is_ok())
        .cloned()
        .collect();
    group.throughput(Throughput::Elements(matching_only.len() as u64));
    group.bench_function("bids that match", |b| {
        b.iter(|| {
            for bid in &matching_only {
                let _ = black_box(book.best_match(black_box(bid), NOW, &reputation));
            }
        });
    });
    // Priced below every offer: each answer is a full explanation over the model's offers.
    let hopeless: Vec<Bid> = bids
        .iter()
        .take(100)
        .cloned()
        .map(|mut b| {
            b.max_price_per_gpu_hour = Molt::from_base_units(400_000);
            b
        })
        .collect();
    assert!(
        hopeless
            .iter()
            .all(|b| book.best_match(b, NOW, &reputation).is_err())
    );
    group.throughput(Throughput::Elements(hopeless.len() as u64));
    group.bench_function("bids that match nothing, explained", |b| {
        b.iter(|| {
            for bid in &hopeless {
                let _ = black_box(book.best_match(black_box(bid), NOW, &reputation));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
