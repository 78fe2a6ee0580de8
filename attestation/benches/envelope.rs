//! Envelope costs: sign, verify, batch verify, and encode+decode of an offer-sized envelope.
//!
//! `cargo bench -p claw-attestation --bench envelope`

use std::hint::black_box;
use std::time::Duration;

use claw_attestation::{Envelope, NodeIdentity, PayloadKind, SignedPayload, Validity, Verifier};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

/// The fields a market offer carries (model, count, VRAM, price, hours, availability window,
/// network, settlement wallet, inventory digest, interruptible), at realistic sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OfferSized {
    gpu_model: String,
    gpus: u16,
    vram_mib: u32,
    price_per_gpu_hour: u64,
    min_hours: u16,
    max_hours: u16,
    available_from_s: u64,
    available_until_s: u64,
    network: String,
    wallet: [u8; 32],
    inventory_digest: [u8; 32],
    interruptible: bool,
}

impl SignedPayload for OfferSized {
    const KIND: PayloadKind = PayloadKind::Inventory;
}

fn offer() -> OfferSized {
    OfferSized {
        gpu_model: "NVIDIA H100 80GB HBM3".into(),
        gpus: 8,
        vram_mib: 81_559,
        price_per_gpu_hour: 1_200_000,
        min_hours: 1,
        max_hours: 72,
        available_from_s: 1_795_000_000,
        available_until_s: 1_795_086_400,
        network: "localnet".into(),
        wallet: [3; 32],
        inventory_digest: [4; 32],
        interruptible: false,
    }
}

fn validity() -> Validity {
    Validity::from_now(Duration::from_secs(600))
}

fn benches(c: &mut Criterion) {
    let identity = NodeIdentity::generate();
    let sample = Envelope::seal(&identity, 1, validity(), &offer());
    let wire = sample.to_bytes();
    println!("offer-sized envelope: {} bytes", wire.len());
    let verifier = Verifier::new();
    let now = sample.issued_at_ms();

    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| {
        let payload = offer();
        let validity = validity();
        b.iter(|| Envelope::seal(&identity, black_box(2), validity, &payload));
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            verifier
                .verify_at(black_box(&wire), None, now)
                .expect("valid")
        });
    });
    group.bench_function("encode_decode", |b| {
        // What a gossip hop costs besides the signature: encode the payload and the envelope,
        // then decode both.
        let payload = offer();
        let config = bincode::config::standard();
        b.iter(|| {
            let payload_bytes =
                bincode::serde::encode_to_vec(black_box(&payload), config).expect("encodes");
            let bytes = black_box(&sample).to_bytes();
            let decoded = Envelope::from_bytes(black_box(&bytes)).expect("valid");
            let (back, _): (OfferSized, usize) =
                bincode::serde::decode_from_slice(&payload_bytes, config).expect("decodes");
            (decoded, back)
        });
    });
    group.finish();

    for n in [64usize, 256] {
        let envelopes: Vec<Vec<u8>> = (0..n as u64)
            .map(|seq| Envelope::seal(&identity, seq + 1, validity(), &offer()).to_bytes())
            .collect();
        let mut group = c.benchmark_group(format!("verify_batch_{n}"));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function("batch", |b| {
            b.iter_batched(
                || envelopes.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                |refs| {
                    let results = verifier.verify_batch_at(&refs, now);
                    assert!(results.iter().all(Result::is_ok));
                    results
                },
                BatchSize::SmallInput,
            );
        });
        group.finish();
    }
}

criterion_group! {
    name = envelope;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(envelope);
