//! An autoscaler across `clawnode run` processes on the real Docker Engine: a deployment scales
//! up when the number its workload publishes rises, and back down once the cooldown passed,
//! with each decision and its reason recorded; a member that does not control the deployment
//! cannot plant a scale record.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::Duration;

use claw_tests::deployments::{Member, outsider_and_target, settled};
use claw_tests::{eventually, required_part};
use serde_json::{Value, json};

/// Sets the load every replica of `status` publishes, through the operator.
fn publish_load(operator: &Member, status: &Value, load: u32) {
    for replica in status["replicas"].as_array().expect("replicas") {
        let node = replica["node"].as_str().expect("node");
        let workload = replica["workload"].as_str().expect("workload");
        operator
            .cli
            .invoke(
                Some(node),
                "container.exec",
                &json!({"workload": workload, "argv": ["sh", "-c", format!("echo {load} > /tmp/load")]}),
            )
            .expect("exec");
    }
}

#[test]
fn a_deployment_scales_up_on_its_published_load_and_down_after_the_cooldown() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let members = Member::fleet(3);
    let ids: Vec<String> = members.iter().map(|m| m.peer_id.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "every member to see the others",
        || {
            members
                .iter()
                .all(|m| ids.iter().all(|id| *id == m.peer_id || m.sees(id)))
                .then_some(())
        },
    );
    let spec = json!({
        "replicas": 1,
        "template": {
            "image": image,
            "command": ["sh", "-c", "echo 10 > /tmp/load; trap 'exit 0' TERM; sleep 600 & wait"],
        },
    });
    eventually(Duration::from_secs(30), "the deployment", || {
        members[0]
            .invoke("deploy.create", &json!({"name": "scaled", "spec": spec}))
            .ok()
    });
    settled(
        &members[0],
        "scaled",
        1,
        1,
        Duration::from_secs(60),
        "one replica",
    );
    let autoscaler = json!({
        "deployment": "scaled", "min": 1, "max": 3,
        "metric": {"type": "file", "path": "/tmp/load"},
        "target": 50.0, "cooldown_secs": 20,
    });
    members[0]
        .invoke(
            "autoscale.create",
            &json!({"name": "scaled-load", "spec": autoscaler}),
        )
        .expect("autoscaler");
    let second = members[0].invoke(
        "autoscale.create",
        &json!({"name": "scaled-other", "spec": autoscaler}),
    );
    assert!(
        second.as_ref().is_err_and(|e| e.contains("CONFLICT")),
        "one autoscaler per deployment: {second:?}"
    );

    // At a tenth of the target and the minimum already, the count stays.
    let status = eventually(Duration::from_secs(30), "the autoscaler's record", || {
        let status = members[0].status("scaled")?;
        (status["autoscaled"] == json!(1)).then_some(status)
    });
    std::thread::sleep(Duration::from_secs(6));
    settled(
        &members[0],
        "scaled",
        1,
        1,
        Duration::from_secs(5),
        "still one replica",
    );

    // The load rises to twice the target: a second replica, and the mean (100 and 10) is
    // near the target again, so no third.
    publish_load(&members[0], &status, 100);
    let (status, took) = settled(
        &members[0],
        "scaled",
        1,
        2,
        Duration::from_secs(60),
        "the autoscaler to add a replica",
    );
    eprintln!("scaled up {took:?} after the load rose");
    assert_eq!(status["autoscaled"], json!(2), "{status:#}");

    // The load falls: back to one replica, but not before the cooldown.
    publish_load(&members[0], &status, 10);
    settled(
        &members[0],
        "scaled",
        1,
        1,
        Duration::from_secs(90),
        "the autoscaler to remove a replica",
    );
    let scale = members[0]
        .invoke("autoscale.status", &json!({"name": "scaled-load"}))
        .expect("autoscale status");
    let decisions = scale["scale"]["decisions"].as_array().expect("decisions");
    let up = decisions
        .iter()
        .find(|d| d["from"] == 1 && d["to"] == 2)
        .expect("an up decision");
    let down = decisions
        .iter()
        .find(|d| d["from"] == 2 && d["to"] == 1)
        .expect("a down decision");
    assert!(
        up["reason"].as_str().is_some_and(|r| r.contains("over")),
        "{scale:#}"
    );
    assert!(
        down["reason"].as_str().is_some_and(|r| r.contains("under")),
        "{scale:#}"
    );
    let waited = down["at_ms"].as_u64().expect("at") - up["at_ms"].as_u64().expect("at");
    assert!(waited >= 20_000, "down {waited} ms after up: {scale:#}");

    // A member that does not control the deployment cannot plant a scale record.
    let (outsider, target) = outsider_and_target(&members, "deployment/scaled");
    let planted = json!({
        "fence": {"epoch": 1_000_000, "controller": outsider.peer_id},
        "version": 1, "replicas": 64, "changed_ms": 0, "decisions": [],
    });
    let refused = outsider
        .cli
        .invoke(
            Some(&target.peer_id),
            "deploy.replicas",
            &json!({"name": "scaled", "epoch": 1_000_000, "scale": planted}),
        )
        .expect_err("an outsider cannot plant a record");
    assert!(refused.contains("UNAUTHORIZED"), "{refused}");
    let status = members[0].status("scaled").expect("status");
    assert_eq!(status["autoscaled"], json!(1), "{status:#}");
    // Nor can any member name a metric of its own for a node to read in a replica (a file of
    // its choosing): the node reads only the autoscaler it keeps.
    let named = outsider.cli.invoke(
        Some(&target.peer_id),
        "deploy.replicas",
        &json!({"name": "scaled", "measure": {"type": "file", "path": "/etc/passwd"}}),
    );
    assert!(
        named.as_ref().is_err_and(|e| e.contains("INVALID_PARAMS")),
        "{named:?}"
    );
}
