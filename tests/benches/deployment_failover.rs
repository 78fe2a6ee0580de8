//! How long a deployment is short of replicas when a node dies, and how long it is without a
//! controller when its controller dies, on a fleet of four `clawnode run` processes announcing
//! every second (so a silent member leaves the view after about 3 s) on the real Docker Engine.
//!
//! Each round creates a 3-replica deployment and waits until it runs, then:
//! - kills (`-9`) a member that runs a replica but does not control the deployment, and times
//!   until a witness's `deploy.status` shows 3 replicas running on 3 live members again;
//! - kills the deployment's controller, and times until a live member's fence names another
//!   controller (the takeover), and until the deployment runs 3 replicas again.
//!
//! The killed members are started again and the deployment deleted before the next round.
//!
//! ```text
//! scripts/test.sh's setup (Docker and the test image), then
//! cargo build --release --workspace --bins
//! CLAW_TEST_IMAGE=clawbernetes/busybox:test cargo bench -p claw-tests --bench deployment_failover
//! ```

use std::time::{Duration, Instant};

use claw_tests::deployments::{Member, placement, settled};
use claw_tests::eventually;
use serde_json::{Value, json};

const ROUNDS: usize = 5;

fn percentile(samples: &mut [f64], share: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * share).round() as usize;
    samples[index]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A member other than those listed, still running.
fn other(members: &[Member], not: &[&str]) -> usize {
    members
        .iter()
        .position(|m| m.alive() && !not.contains(&m.peer_id.as_str()))
        .expect("another running member")
}

fn controller_of(status: &Value) -> String {
    status["controller"]
        .as_str()
        .expect("a controller")
        .to_owned()
}

/// One round on deployment `name`: (node death → 3 running again, controller death → another
/// controller fenced in, controller death → 3 running again), in ms.
fn round(members: &mut [Member], image: &str, name: &str) -> (f64, f64, f64) {
    let spec = json!({
        "replicas": 3,
        "template": {"image": image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]},
    });
    members[0]
        .invoke("deploy.create", &json!({"name": name, "spec": spec}))
        .expect("create");
    let (status, _) = settled(
        &members[0],
        name,
        1,
        3,
        Duration::from_secs(60),
        "the start",
    );
    let controller = controller_of(&status);
    let (nodes, _) = placement(&status);
    let victim = members
        .iter()
        .position(|m| m.peer_id != controller && nodes.contains_key(&m.peer_id))
        .expect("a replica outside the controller");
    let witness = other(members, &[&controller, &members[victim].peer_id.clone()]);
    members[victim].kill();
    let killed = Instant::now();
    settled(
        &members[witness],
        name,
        1,
        3,
        Duration::from_secs(60),
        "the replacement",
    );
    let node_death = ms(killed.elapsed());
    let join = members[witness].joinable();
    members[victim].start(&join);
    let victim_id = members[victim].peer_id.clone();
    eventually(Duration::from_secs(60), "the member to rejoin", || {
        members[witness].sees(&victim_id).then_some(())
    });
    settled(
        &members[witness],
        name,
        1,
        3,
        Duration::from_secs(60),
        "the surplus to go",
    );

    let controller_index = members
        .iter()
        .position(|m| m.peer_id == controller)
        .expect("the controller");
    let witness = other(members, &[&controller]);
    members[controller_index].kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(60), "another controller", || {
        let report = members[witness]
            .invoke("deploy.replicas", &json!({ "name": name }))
            .ok()?;
        let fenced_by = report["fence"]["controller"].as_str()?;
        (fenced_by != controller).then_some(())
    });
    let takeover = ms(killed.elapsed());
    settled(
        &members[witness],
        name,
        1,
        3,
        Duration::from_secs(60),
        "3 replicas again",
    );
    let controller_death = ms(killed.elapsed());
    let join = members[witness].joinable();
    members[controller_index].start(&join);
    eventually(
        Duration::from_secs(60),
        "the old controller to rejoin",
        || members[witness].sees(&controller).then_some(()),
    );
    members[0]
        .invoke("deploy.delete", &json!({ "name": name }))
        .expect("delete");
    eventually(Duration::from_secs(60), "the replicas to go", || {
        members
            .iter()
            .all(|m| !m.alive() || m.active_replicas(name) == 0)
            .then_some(())
    });
    (node_death, takeover, controller_death)
}

fn main() {
    let Ok(image) = std::env::var("CLAW_TEST_IMAGE") else {
        eprintln!("CLAW_TEST_IMAGE is not set: this bench needs Docker and the local test image");
        std::process::exit(2);
    };
    let mut members = Member::fleet(4);
    let (mut node_death, mut takeover, mut controller_death) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..ROUNDS {
        let (a, b, c) = round(&mut members, &image, &format!("bench-{index}"));
        eprintln!(
            "round {index}: node death {a:.0} ms, takeover {b:.0} ms, controller death {c:.0} ms"
        );
        node_death.push(a);
        takeover.push(b);
        controller_death.push(c);
    }
    println!("deployment failover, 4 clawnode processes, announce every 1 s, {ROUNDS} rounds");
    println!("| from the kill (-9) to | p50 | p95 |");
    println!("|---|---|---|");
    for (what, samples) in [
        (
            "a dead node's replica running elsewhere (3 of 3 again)",
            &mut node_death,
        ),
        ("another member fenced in as controller", &mut takeover),
        (
            "3 of 3 running again after the controller died",
            &mut controller_death,
        ),
    ] {
        println!(
            "| {what} | {:.0} ms | {:.0} ms |",
            percentile(samples, 0.5),
            percentile(samples, 0.95)
        );
    }
}
