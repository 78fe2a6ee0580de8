//! A fleet of separate `clawnode run` processes on loopback (200 by default), on the defaults a
//! provider runs with (announcing every 10 s), except that every node may connect to peers on
//! its own address (they all live on 127.0.0.1): how long the fleet takes to form, and what each
//! node costs when idle, in memory (RSS) and CPU.
//!
//! Each node starts with one simulated GPU and joins through the first node and one other
//! already running. Measured: the time from the last start until every sampled node's fleet
//! view holds every node; then, after 30 s to settle, the CPU each process used over 60 s,
//! read from `/proc`; over the next 60 s or so, from every node's metrics read at both ends of
//! its own window, the announcements it accepted (against the (N − 1) per interval the others
//! signed: 10 s, paced beyond 50 nodes) and how old each was on arrival (`clawnode_gossip_delivery_age_seconds`, exact here:
//! one clock); each process's memory (RSS, PSS and USS, from `smaps_rollup`: RSS counts in
//! full the binary's pages, which every node shares); and last, Kademlia walks from the
//! sampled nodes towards other nodes (`network.lookup`), timed by the walking node.
//!
//! ```text
//! cargo build --release -p clawnode
//! cargo bench -p claw-tests --bench process_fleet
//! # CLAW_BENCH_NODES (default 200), CLAW_BENCH_CONVERGE_SECS (how long to wait, default 600),
//! # CLAW_BENCH_LOOKUPS (Kademlia walks, default 100)
//! ```

use std::time::{Duration, Instant};

use claw_tests::{Clawnode, RunningNode, metric};

/// Nodes whose view is sampled for convergence.
const SAMPLED: usize = 10;
const SETTLE: Duration = Duration::from_secs(30);
const IDLE_WINDOW: Duration = Duration::from_secs(60);

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A process's memory, MiB: resident (RSS, which counts in full the pages of the binary that
/// every node shares), its proportional share (PSS: shared pages divided among the processes
/// mapping them) and its own (USS: pages no other process maps).
struct Memory {
    rss: f64,
    pss: f64,
    uss: f64,
}

fn memory(pid: u32) -> Memory {
    let rollup =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("process smaps");
    let field = |name: &str| -> f64 {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .expect("smaps_rollup field")
            / 1024.0
    };
    Memory {
        rss: field("Rss:"),
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

fn clock_ticks_per_second() -> f64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn percentile(samples: &mut [f64], share: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * share).round() as usize;
    samples[index]
}

/// A node's inventory delivery-age histogram: (upper bound in seconds, cumulative count).
fn inventory_ages(scraped: &str) -> Vec<(f64, f64)> {
    scraped
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("clawnode_gossip_delivery_age_seconds_bucket{le=\"")?;
            let (bound, rest) = rest.split_once('"')?;
            let count = rest.strip_prefix(",topic=\"inventory\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound holding `share` of the messages (cumulative counts summed over
/// nodes).
fn bucket_quantile(cumulative: &[(f64, f64)], share: f64) -> f64 {
    let total = cumulative.last().map_or(0.0, |(_, n)| *n);
    cumulative
        .iter()
        .find(|(_, n)| *n >= total * share)
        .map_or(f64::NAN, |(bound, _)| *bound)
}

fn view_size(node: &Clawnode) -> usize {
    let finished = node.run(&["fleet", "--json"]);
    if !finished.success {
        return 0;
    }
    finished.json()["members"]
        .as_array()
        .map_or(0, |members| members.len())
}

fn main() {
    let count: usize = std::env::var("CLAW_BENCH_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let nodes: Vec<Clawnode> = (0..count)
        .map(|i| {
            let node = Clawnode::new(&dir.path().join(format!("n{i}")));
            node.ok(&["init", "--simulated-gpu", "NVIDIA L4:1:23034"]);
            node.edit_config(|text| {
                text.replace(
                    "allow_colocated_peers = false",
                    "allow_colocated_peers = true",
                )
            });
            node
        })
        .collect();
    eprintln!("{count} data directories in {:?}", started.elapsed());

    let mut running: Vec<RunningNode> = Vec::with_capacity(count);
    let starting = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let mut seeds = Vec::new();
        if let Some(first) = running.first() {
            seeds.push(first.listen_addrs[0].clone());
        }
        if i > 1 {
            // A deterministic spread over those already running.
            let other = &running[(i * 7919) % i];
            seeds.push(other.listen_addrs[0].clone());
        }
        running.push(RunningNode::start(node, &seeds));
    }
    let all_started = starting.elapsed();
    eprintln!("{count} processes started in {all_started:?}");

    let sampled: Vec<usize> = (0..SAMPLED.min(count))
        .map(|k| k * count / SAMPLED.min(count))
        .collect();
    let converging = Instant::now();
    let deadline = Duration::from_secs(
        std::env::var("CLAW_BENCH_CONVERGE_SECS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(600),
    );
    let mut sizes: Vec<usize>;
    let converged = loop {
        sizes = sampled.iter().map(|&i| view_size(&nodes[i])).collect();
        if sizes.iter().all(|&s| s == count) {
            break Some(converging.elapsed());
        }
        if converging.elapsed() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    match converged {
        Some(took) => eprintln!("every sampled view holds all {count} after {took:?}"),
        None => eprintln!("not converged after {deadline:?}: sampled view sizes {sizes:?}"),
    }

    std::thread::sleep(SETTLE);
    let pids: Vec<u32> = running.iter().map(RunningNode::pid).collect();
    // Each node's counters are read at the start and the end of its own window: under load,
    // reading 200 nodes takes a while.
    let scrape_all = || -> Vec<(Instant, String)> {
        running
            .iter()
            .map(|node| (Instant::now(), node.scrape_metrics()))
            .collect()
    };
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let window = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let seconds = window.elapsed().as_secs_f64();
    let ticks = clock_ticks_per_second();
    let mut cpu: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) as f64 / ticks / seconds * 100.0)
        .collect();
    let scraped_before = scrape_all();
    std::thread::sleep(IDLE_WINDOW);
    let scraped_after = scrape_all();
    let memories: Vec<Memory> = pids.iter().map(|&p| memory(p)).collect();
    let mut rss: Vec<f64> = memories.iter().map(|m| m.rss).collect();
    let mut pss: Vec<f64> = memories.iter().map(|m| m.pss).collect();
    let mut uss: Vec<f64> = memories.iter().map(|m| m.uss).collect();
    let series = r#"clawnode_gossip_delivery_age_seconds_count{topic="inventory"}"#;
    // Each node announces every 10 s (the default), paced to the fleet's size beyond 50.
    let interval = claw_mesh::paced_interval(Duration::from_secs(10), count).as_secs_f64();
    let expected = (count - 1) as f64 * IDLE_WINDOW.as_secs_f64() / interval;
    let mut delivered: Vec<f64> = scraped_before
        .iter()
        .zip(&scraped_after)
        .map(|((t0, b), (t1, a))| {
            let own = (count - 1) as f64 * (*t1 - *t0).as_secs_f64() / interval;
            (metric(a, series).unwrap_or(0.0) - metric(b, series).unwrap_or(0.0)) / own * 100.0
        })
        .collect();
    let mut window_ages: Vec<(f64, f64)> = Vec::new();
    for ((_, b), (_, a)) in scraped_before.iter().zip(&scraped_after) {
        let (b, a) = (inventory_ages(b), inventory_ages(a));
        for (i, (bound, after)) in a.iter().enumerate() {
            let before = b.get(i).map_or(0.0, |(_, n)| *n);
            match window_ages.get_mut(i) {
                Some((_, n)) => *n += after - before,
                None => window_ages.push((*bound, after - before)),
            }
        }
    }
    let delivered_mean = delivered.iter().sum::<f64>() / count as f64;
    let delivered_min = percentile(&mut delivered, 0.0);
    let total_cpu: f64 = cpu.iter().sum();
    let lookups = dht_lookups(&nodes, &running, &sampled);

    println!("| measurement ({count} `clawnode run` processes) | value |");
    println!("|---|---|");
    println!("| processes started, one after another | {all_started:.1?} |");
    println!(
        "| every sampled view ({} nodes) holds all {count} | {} |",
        sampled.len(),
        converged.map_or_else(
            || format!("not within {deadline:?} (sizes {sizes:?})"),
            |d| format!("{d:.1?} after the last start")
        )
    );
    for (what, values) in [
        ("RSS", &mut rss),
        ("PSS (shared pages divided among the nodes)", &mut pss),
        ("USS (its own pages)", &mut uss),
    ] {
        let total: f64 = values.iter().sum();
        println!(
            "| idle {what} per node, mean / p95 / max | {:.1} / {:.1} / {:.1} MiB ({total:.0} MiB in all) |",
            total / count as f64,
            percentile(values, 0.95),
            values.last().copied().unwrap_or(0.0),
        );
    }
    println!(
        "| idle CPU per node over {IDLE_WINDOW:?}, mean / p95 / max | {:.2} / {:.2} / {:.2} % of a core ({:.2} cores in all) |",
        total_cpu / count as f64,
        percentile(&mut cpu, 0.95),
        cpu.last().copied().unwrap_or(0.0),
        total_cpu / 100.0
    );
    println!(
        "| announcements accepted per node over about {IDLE_WINDOW:?}, of the ~{expected:.0} the others signed, mean / lowest | {delivered_mean:.1} % / {delivered_min:.1} % |"
    );
    println!(
        "| an announcement's age on arrival (all nodes, bucket bounds), p50 / p95 / p99 | ≤ {} / ≤ {} / ≤ {} s |",
        bucket_quantile(&window_ages, 0.5),
        bucket_quantile(&window_ages, 0.95),
        bucket_quantile(&window_ages, 0.99)
    );
    println!("{lookups}");
    drop(running);
}

/// Kademlia walks (`network.lookup`) from the sampled nodes towards other nodes' peer ids:
/// each walk's time as the node measured it, and how many found their target first.
fn dht_lookups(nodes: &[Clawnode], running: &[RunningNode], sampled: &[usize]) -> String {
    let walks: usize = std::env::var("CLAW_BENCH_LOOKUPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let mut took: Vec<f64> = Vec::with_capacity(walks);
    let (mut found, mut failed) = (0, 0);
    for k in 0..walks {
        let asker = sampled[k % sampled.len()];
        let target = (asker + 1 + (k * 7919) % (running.len() - 1)) % running.len();
        let params = serde_json::json!({ "peer": running[target].peer_id }).to_string();
        let finished =
            nodes[asker].run(&["invoke", "network.lookup", "--params", &params, "--json"]);
        if !finished.success {
            failed += 1;
            continue;
        }
        let answer = finished.json();
        took.push(answer["took_ms"].as_f64().unwrap_or(f64::NAN));
        if answer["closest"][0] == running[target].peer_id.as_str() {
            found += 1;
        }
    }
    if took.is_empty() {
        return format!("| Kademlia walks | all {walks} failed |");
    }
    format!(
        "| Kademlia walk (`network.lookup`, get_closest_peers) from the sampled nodes, p50 / p95 / max | {:.0} / {:.0} / {:.0} ms ({walks} walks, {found} found their target first, {failed} failed) |",
        percentile(&mut took, 0.5),
        percentile(&mut took, 0.95),
        took.last().copied().unwrap_or(f64::NAN)
    )
}
