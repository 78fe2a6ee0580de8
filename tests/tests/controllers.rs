//! Deployment controllers across `clawnode run` processes on the real Docker Engine: a
//! deployment's replicas spread over the fleet, come back elsewhere when a node is killed with
//! `-9`, are trimmed when it returns, roll to a new template even when the controller itself is
//! killed halfway, cannot be touched by a member that does not control the deployment, and go
//! when it is deleted.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::{Duration, Instant};

use claw_tests::deployments::{Member, outsider_and_target, placement, settled};
use claw_tests::{eventually, required_part};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

#[test]
fn a_deployment_survives_a_killed_node_and_a_killed_controller_and_refuses_other_members() {
    let Some(image) = test_image() else { return };
    let mut members = Member::fleet(4);
    let operator_id = members[0].peer_id.clone();

    let spec = json!({
        "replicas": 3,
        "template": {
            "image": image,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
            "env": {"V": "1"},
        },
        "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
    });
    eventually(
        Duration::from_secs(30),
        "the deployment to be created",
        || {
            members[0]
                .invoke("deploy.create", &json!({"name": "web", "spec": spec}))
                .ok()
        },
    );
    let (status, took) = settled(
        &members[0],
        "web",
        1,
        3,
        Duration::from_secs(90),
        "3 replicas on 3 nodes",
    );
    eprintln!("3 replicas running on 3 nodes {took:?} after create");

    // Kill a node that runs a replica and does not control the deployment.
    let controller = status["controller"]
        .as_str()
        .expect("a controller")
        .to_owned();
    let (nodes, _) = placement(&status);
    let victim = members
        .iter()
        .position(|m| m.peer_id != controller && nodes.contains_key(&m.peer_id))
        .expect("a replica outside the controller");
    let witness = members
        .iter()
        .position(|m| m.peer_id != controller && m.peer_id != members[victim].peer_id)
        .expect("a third member");
    members[victim].kill();
    let (status, took) = settled(
        &members[witness],
        "web",
        1,
        3,
        Duration::from_secs(60),
        "the lost replica to run on another node",
    );
    eprintln!("node killed: its replica ran elsewhere after {took:?}");
    let (nodes, _) = placement(&status);
    assert!(!nodes.contains_key(&members[victim].peer_id), "{status}");

    // The node comes back with its container still running (a kill leaves Docker's
    // containers be): it is adopted, and the surplus replica goes.
    let join = members[witness].joinable();
    members[victim].start(&join);
    let victim_id = members[victim].peer_id.clone();
    eventually(
        Duration::from_secs(60),
        "the returning node in the fleet",
        || members[witness].sees(&victim_id).then_some(()),
    );
    settled(
        &members[witness],
        "web",
        1,
        3,
        Duration::from_secs(60),
        "3 replicas again once the surplus one stopped",
    );

    // A drain moves the node's replica before it stops it: it starts elsewhere first, and 3
    // serve throughout.
    let status = members[witness].status("web").expect("status");
    let controller = status["controller"]
        .as_str()
        .expect("controller")
        .to_owned();
    let (nodes, _) = placement(&status);
    let drained = members
        .iter()
        .position(|m| {
            m.peer_id != controller
                && m.peer_id != members[witness].peer_id
                && nodes.contains_key(&m.peer_id)
        })
        .expect("a replica to move");
    let report = members[drained]
        .invoke("node.drain", &json!({}))
        .expect("drain");
    assert!(
        report["workloads"].as_array().is_some_and(|w| w.len() == 1
            && w[0]["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("moving"))),
        "{report}"
    );
    let drained_id = members[drained].peer_id.clone();
    let started = Instant::now();
    let mut fewest = u64::MAX;
    loop {
        if let Some(status) = members[witness].status("web") {
            let ready = status["ready"].as_u64().unwrap_or(0);
            fewest = fewest.min(ready);
            let (nodes, _) = placement(&status);
            if ready == 3 && nodes.len() == 3 && !nodes.contains_key(&drained_id) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the drained node's replica to move"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fewest, 3, "a replica stopped before its replacement served");
    members[drained]
        .invoke("node.uncordon", &json!({}))
        .expect("uncordon");

    // A member that is neither the controller nor next in line cannot act for the deployment.
    let (outsider, target) = outsider_and_target(&members, "deployment/web");
    let fenced = outsider
        .cli
        .invoke(
            Some(&target.peer_id),
            "deploy.replicas",
            &json!({"name": "web", "epoch": 1_000_000}),
        )
        .expect_err("an outsider cannot raise the fence");
    assert!(fenced.contains("UNAUTHORIZED"), "{fenced}");
    let started = outsider.cli.invoke(
        Some(&target.peer_id),
        "deploy.replica.start",
        &json!({"name": "web", "revision": 1, "epoch": 1_000_000}),
    );
    assert!(
        started.as_ref().is_err_and(|e| e.contains("UNAUTHORIZED")),
        "{started:?}"
    );
    // Nor can any member make a node keep claims for deployments it does not keep (what
    // controllers make a node write stays bounded by its objects).
    for member in &members {
        if member.peer_id == target.peer_id {
            continue;
        }
        let made_up = member.cli.invoke(
            Some(&target.peer_id),
            "deploy.replicas",
            &json!({"name": "made-up", "epoch": 7, "failed": [1]}),
        );
        assert!(
            made_up.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
            "{made_up:?}"
        );
    }
    let untouched = target
        .invoke("deploy.replicas", &json!({"name": "made-up"}))
        .expect("a plain read");
    assert_eq!(
        (untouched["fence"].clone(), untouched["failed"].clone()),
        (Value::Null, json!([])),
        "{untouched}"
    );
    let report = target
        .invoke("deploy.replicas", &json!({"name": "web"}))
        .expect("the target's own report");
    assert!(
        report["fence"]["epoch"]
            .as_u64()
            .is_some_and(|e| e < 1_000_000),
        "{report}"
    );

    // A new template rolls out; the controller is killed as soon as the rollout has begun,
    // and the next member finishes it.
    let status = members[witness].status("web").expect("status");
    let controller = status["controller"]
        .as_str()
        .expect("controller")
        .to_owned();
    let updater = members
        .iter()
        .position(|m| m.peer_id == operator_id)
        .expect("the operator");
    members[updater]
        .invoke("deploy.update", &json!({"name": "web", "env": {"V": "2"}}))
        .expect("update");
    let controller_index = members
        .iter()
        .position(|m| m.peer_id == controller)
        .expect("controller member");
    let observer = members
        .iter()
        .position(|m| m.peer_id != controller && m.alive())
        .expect("an observer");
    eventually(Duration::from_secs(60), "the rollout to begin", || {
        let (_, revisions) = placement(&members[observer].status("web")?);
        revisions.contains(&2).then_some(())
    });
    members[controller_index].kill();
    let (status, took) = settled(
        &members[observer],
        "web",
        2,
        3,
        Duration::from_secs(90),
        "the rollout to finish under the next controller",
    );
    eprintln!("controller killed mid-rollout: finished {took:?} later");
    assert_ne!(status["controller"].as_str(), Some(controller.as_str()));
    let started: usize = members
        .iter()
        .filter(|m| m.alive())
        .map(|m| m.replicas_of("web", 2))
        .sum();
    assert_eq!(
        started, 3,
        "no replica of the new revision was started twice"
    );

    // The old controller returns (with its old replica's container): the deployment settles
    // on the new template again.
    let join = members[observer].joinable();
    members[controller_index].start(&join);
    eventually(
        Duration::from_secs(60),
        "the old controller in the fleet",
        || members[observer].sees(&controller).then_some(()),
    );
    settled(
        &members[observer],
        "web",
        2,
        3,
        Duration::from_secs(60),
        "the returning controller's old replica to stop",
    );

    // Deleted: every replica goes.
    members[updater]
        .invoke("deploy.delete", &json!({"name": "web"}))
        .expect("delete");
    eventually(Duration::from_secs(60), "every replica to stop", || {
        members
            .iter()
            .all(|m| !m.alive() || m.active_replicas("web") == 0)
            .then_some(())
    });
}

/// The replicas a status lists: (template, revision, available) each.
fn replica_views(status: &Value) -> Vec<(String, u64, bool)> {
    status["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["template"].as_str().unwrap_or_default().to_owned(),
                r["revision"].as_u64().unwrap_or_default(),
                r["state"] == "running" && r["health"] == "healthy",
            )
        })
        .collect()
}

/// Polls `member`'s status of `app` until `done` says so, and returns the fewest available
/// replicas seen meanwhile (with the status that showed it) and the last status.
fn watch(member: &Member, what: &str, done: impl Fn(&Value) -> bool) -> ((usize, Value), Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut fewest = (usize::MAX, Value::Null);
    loop {
        if let Some(status) = member.status("app")
            && status["unreachable"].as_array().is_some_and(Vec::is_empty)
        {
            let available = replica_views(&status).iter().filter(|r| r.2).count();
            if available < fewest.0 {
                fewest = (available, status.clone());
            }
            if done(&status) {
                return (fewest, status);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:#}"
            );
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn a_canary_is_promoted_a_failing_revision_rolls_back_by_itself_and_blue_green_switches_whole() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(4);
    let operator = &members[0];
    // Healthy while /tmp/ready exists, which the container makes unless V is "bad".
    let script =
        "if [ \"$V\" != bad ]; then touch /tmp/ready; fi; trap 'exit 0' TERM; sleep 600 & wait";
    let spec = json!({
        "replicas": 4,
        "template": {"image": image, "command": ["sh", "-c", script], "env": {"V": "1"}},
        "strategy": {"type": "canary", "steps": [25]},
        "health": {
            "probe": {"type": "exec", "argv": ["test", "-f", "/tmp/ready"]},
            "interval_secs": 1,
            "failure_threshold": 2,
        },
    });
    eventually(
        Duration::from_secs(30),
        "the deployment to be created",
        || {
            operator
                .invoke("deploy.create", &json!({"name": "app", "spec": spec}))
                .ok()
        },
    );
    let (_, first) = watch(operator, "4 healthy replicas", |s| {
        let views = replica_views(s);
        views.len() == 4 && views.iter().all(|r| r.2)
    });
    let stable = replica_views(&first)[0].0.clone();

    // A canary of a new revision: 1 of 4 on it, 3 stable, never fewer than 4 serving.
    operator
        .invoke("deploy.update", &json!({"name": "app", "env": {"V": "2"}}))
        .expect("update");
    let (fewest, canary) = watch(operator, "the canary at 1 of 4", |s| {
        let views = replica_views(s);
        let new = views.iter().filter(|r| r.1 == 2 && r.2).count();
        let old = views.iter().filter(|r| r.0 == stable && r.2).count();
        views.len() == 4 && new == 1 && old == 3
    });
    assert!(
        fewest.0 >= 4,
        "a replica stopped before the canary served: {fewest:#?}"
    );
    let new_template = replica_views(&canary)
        .into_iter()
        .find(|r| r.1 == 2)
        .expect("the canary")
        .0;

    // Promoted: every replica moves to the new template, one at a time.
    let promoted = operator
        .invoke("deploy.promote", &json!({"name": "app"}))
        .expect("promote");
    assert_eq!(promoted["revision"], json!(3));
    let (fewest, _) = watch(operator, "the promotion to finish", |s| {
        let views = replica_views(s);
        s["ready"] == json!(4) && views.len() == 4 && views.iter().all(|r| r.0 == new_template)
    });
    assert!(
        fewest.0 >= 4,
        "the promotion dropped a serving replica: {fewest:#?}"
    );
    operator
        .invoke("deploy.promote", &json!({"name": "app"}))
        .expect_err("nothing left to promote");

    // A revision whose replicas fail their health check is rolled back by the controller.
    operator
        .invoke(
            "deploy.update",
            &json!({"name": "app", "env": {"V": "bad"},
                "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0}}),
        )
        .expect("update to a failing revision");
    let (fewest, rolled_back) = watch(operator, "the rollback", |s| {
        let views = replica_views(s);
        s["failed_revisions"] == json!([4])
            && views.len() == 4
            && views.iter().all(|r| r.0 == new_template && r.2)
    });
    assert!(
        fewest.0 >= 4,
        "the failing rollout took a serving replica: {fewest:#?}"
    );
    let note = rolled_back["pending"].as_str().unwrap_or_default();
    assert!(note.contains("rolled back"), "{rolled_back:#}");

    // Blue-green: the whole new set serves before the old set stops.
    operator
        .invoke(
            "deploy.update",
            &json!({"name": "app", "env": {"V": "3"}, "strategy": {"type": "blue_green"}}),
        )
        .expect("update");
    let (fewest, switched) = watch(operator, "the blue-green switch", |s| {
        let views = replica_views(s);
        s["ready"] == json!(4) && views.len() == 4 && views.iter().all(|r| r.1 == 5)
    });
    assert!(
        fewest.0 >= 4,
        "fewer than the old count served during the switch: {fewest:#?}"
    );
    assert_eq!(switched["failed_revisions"], json!([4]));

    // From the command line: a change followed on stderr until it is rolled out, and a failing
    // one that ends in its rollback.
    let next = operator
        .cli
        .run(&["deploy", "update", "app", "--env", "V=4", "--wait"]);
    assert!(
        next.success && next.stderr.contains("app: rolled out"),
        "{}",
        next.stderr
    );
    let failing = operator
        .cli
        .run(&["deploy", "update", "app", "--env", "V=bad", "--wait"]);
    assert!(
        !failing.success
            && failing
                .stderr
                .contains("failed its health check and was rolled back"),
        "{}",
        failing.stderr
    );
}
