//! `clawnode up` from the command to a usable fleet (chain, 3 providers with offers in the
//! buyer's book, a funded buyer), against the issue's target of well under 30 s after the build.
//! The first round starts from an empty data directory (identities, wallets, mint and airdrops
//! are created); the later rounds reuse it, as a second `clawnode up` does. Each round ends with
//! SIGTERM, timed too: every node drains and every process stops.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p claw-tests --bench up_start
//! ```

use std::time::Instant;

use claw_tests::{Up, free_port_pair};

const ROUNDS: usize = 6;

/// One `clawnode up`: (wall ms to the ready line, the ms it reports, ms from SIGTERM to exit).
fn round(dir: &std::path::Path, port: u16) -> (f64, f64, f64) {
    let started = Instant::now();
    let (up, ready) = Up::start(dir, 3, port);
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        ready["offers"].as_array().map(Vec::len),
        Some(3),
        "every provider's offer is in the book: {ready}"
    );
    let reported = ready["ready_ms"].as_f64().expect("ready_ms");
    let stopping = Instant::now();
    up.stop();
    (wall, reported, stopping.elapsed().as_secs_f64() * 1000.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet");
    let port = free_port_pair();
    let cold = round(&fleet, port);
    let mut warm: Vec<(f64, f64, f64)> = (1..ROUNDS).map(|_| round(&fleet, port)).collect();
    warm.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = warm[warm.len() / 2];
    let worst = warm.last().copied().unwrap_or(median);
    println!("clawnode up --nodes 3 (release build), {ROUNDS} rounds");
    println!("| run | command → ready (wall) | reported by up | SIGTERM → all stopped |");
    println!("|---|---|---|---|");
    println!(
        "| first (empty data directory) | {:.0} ms | {:.0} ms | {:.0} ms |",
        cold.0, cold.1, cold.2
    );
    println!(
        "| again, p50 of {} | {:.0} ms | {:.0} ms | {:.0} ms |",
        warm.len(),
        median.0,
        median.1,
        median.2
    );
    println!(
        "| again, slowest | {:.0} ms | {:.0} ms | {:.0} ms |",
        worst.0, worst.1, worst.2
    );
    println!("target: well under 30,000 ms after the build");
}
