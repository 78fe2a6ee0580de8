//! How long a provider behind NAT takes to become reachable through a relay, and how long a
//! connection to it then takes to go direct by hole punching, on an internet the bench builds
//! from network namespaces: a public relay, and two hosts each behind its own
//! endpoint-independent NAT (masquerade; nothing let in that was not asked for), with 20 ms of
//! delay and 0.5 % loss on their links (loss only where the kernel has no netem).
//!
//! Each round starts the two NAT'd nodes afresh (new keys, new data directories, new ports),
//! the relay staying up, and times:
//! - **relayed**: from `a`'s start until `b`'s fleet view lists `a` as `relayed` (AutoNAT found
//!   `a` private, `a` reserved a slot at the relay and announced the relayed address);
//! - **direct**: from `b`'s first invoke on `a` (which goes through the relay) until `b`'s view
//!   shows its connection to `a` as `direct` (DCUtR punched through both NATs).
//!
//! ```text
//! scripts/test.sh's setup, then, as root:
//! cargo build --release --workspace --bins
//! cargo bench -p claw-tests --bench nat_reachability
//! ```

use std::time::{Duration, Instant};

use claw_tests::nat_nodes::{member, node_on, relay_settings};
use claw_tests::{Internet, Link, RunningNode, eventually, namespace_or_skip};
use serde_json::json;

const ROUNDS: usize = 5;
const LINK: Link = Link {
    delay_ms: 20,
    loss_percent: 0.5,
};

fn percentile(samples: &mut [f64], share: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * share).round() as usize;
    samples[index]
}

/// TCP and QUIC on `port` of every address.
fn listen_on(port: u16) -> Vec<String> {
    vec![
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ]
}

fn main() {
    let Some(mut internet) = namespace_or_skip(Internet::create()) else {
        return;
    };
    let relay_host = internet
        .public_host("relay", Link::default())
        .expect("relay host");
    let a_host = internet.host_behind_nat("a", LINK).expect("host a");
    let b_host = internet.host_behind_nat("b", LINK).expect("host b");
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = node_on(
        dir.path(),
        "relay",
        &relay_host,
        &relay_settings(&relay_host),
    );
    let relay_run = RunningNode::start_listening(&relay, &listen_on(4001), &[]);
    let seed = vec![format!(
        "/ip4/{}/tcp/4001/p2p/{}",
        relay_host.address, relay_run.peer_id
    )];

    let (mut relayed, mut direct) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let port = 4100 + round as u16;
        let a = node_on(dir.path(), &format!("a{round}"), &a_host, &[]);
        let b = node_on(dir.path(), &format!("b{round}"), &b_host, &[]);
        let b_run = RunningNode::start_listening(&b, &listen_on(port), &seed);
        let started = Instant::now();
        let a_run = RunningNode::start_listening(&a, &listen_on(port), &seed);
        eventually(
            Duration::from_secs(120),
            "a listed as relayed in b's view",
            || member(&b, &a_run.peer_id).filter(|m| m["reachability"] == "relayed"),
        );
        let to_relayed = started.elapsed().as_secs_f64();
        let punching = Instant::now();
        eventually(
            Duration::from_secs(120),
            "a direct connection from b to a",
            || {
                let _ = b.invoke(Some(&a_run.peer_id), "node.health", &json!({}));
                member(&b, &a_run.peer_id).filter(|m| m["path"] == "direct")
            },
        );
        let to_direct = punching.elapsed().as_secs_f64();
        println!("round {round}: relayed after {to_relayed:.2} s, direct {to_direct:.2} s later");
        relayed.push(to_relayed);
        direct.push(to_direct);
        drop((a_run, b_run));
    }
    let report = |name: &str, samples: &mut Vec<f64>| {
        println!(
            "{name}: p50 {:.2} s, p95 {:.2} s (n = {}; min {:.2} s, max {:.2} s)",
            percentile(samples, 0.5),
            percentile(samples, 0.95),
            samples.len(),
            samples.iter().copied().fold(f64::INFINITY, f64::min),
            samples.iter().copied().fold(0.0, f64::max),
        );
    };
    report("NAT'd node listed as relayed, from its start", &mut relayed);
    report(
        "relayed connection turned direct, from the first invoke",
        &mut direct,
    );
    drop(relay_run);
    drop(internet);
}
