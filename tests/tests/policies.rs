//! Policies across `clawnode run` processes on the real Docker Engine: an operator's policy
//! reaches every member, and each rule refuses a workload with the policy and the rule named,
//! on any member, before anything is started or a GPU allocated; `policy.validate` answers the
//! same without running anything, and each node's audit log finds the refusals; a deployment the policy refuses is not created; a member that
//! is not an operator cannot sign a policy away; deleting the policy admits the workload again.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::Duration;

use claw_tests::deployments::Member;
use claw_tests::{eventually, required_part};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

fn workloads(member: &Member) -> Vec<Value> {
    member
        .invoke("workload.list", &json!({}))
        .expect("workload.list")["workloads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn every_rule_refuses_by_name_on_every_member_before_anything_starts() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(2);
    let (operator, member) = (&members[0], &members[1]);
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (operator.sees(&member.peer_id) && member.sees(&operator.peer_id)).then_some(()),
    );
    let (repo, _) = image.split_once(':').expect("image:tag");
    let policy = json!({
        "images_allow": [format!("{repo}:*")],
        "images_deny": ["*:forbidden"],
        "max_gpus": 0,
        "required_labels": ["team"],
    });
    operator
        .invoke("policy.create", &json!({"name": "prod", "spec": policy}))
        .expect("policy.create");
    eventually(Duration::from_secs(30), "the policy on the member", || {
        let listed = member.invoke("policy.list", &json!({})).ok()?;
        (listed["policies"][0]["name"] == "prod").then_some(())
    });

    let tagged = |tag: &str| format!("{repo}:{tag}");
    let _ = std::process::Command::new("docker")
        .args(["tag", &image, &tagged("forbidden")])
        .status();
    let labelled = json!({"team": "ml"});
    for (rule, workload) in [
        (
            "required_labels",
            json!({"image": image, "command": ["true"]}),
        ),
        (
            "images_allow",
            json!({"image": "other/image:1", "labels": labelled}),
        ),
        (
            "images_deny",
            json!({"image": tagged("forbidden"), "labels": labelled}),
        ),
        (
            "max_gpus",
            json!({"image": image, "gpus": 1, "labels": labelled}),
        ),
    ] {
        for node in [operator, member] {
            let refused = node
                .invoke("workload.run", &workload)
                .expect_err("the policy refuses it");
            assert!(
                refused.contains(&format!("refused by policy \"prod\", rule {rule}")),
                "{rule}: {refused}"
            );
        }
        let verdict = member
            .invoke("policy.validate", &json!({"workload": workload}))
            .expect("policy.validate");
        assert_eq!(verdict["allowed"], false);
        assert_eq!(verdict["violations"][0]["rule"], rule, "{verdict}");
    }
    assert!(
        workloads(member).is_empty(),
        "nothing was started or recorded"
    );
    assert!(workloads(operator).is_empty());

    // The refusals are in each node's audit log, found by command family and outcome.
    let refusals = member
        .invoke(
            "audit.query",
            &json!({"command": "workload.", "outcome": "UNAUTHORIZED"}),
        )
        .expect("audit.query");
    let records = refusals["records"].as_array().expect("records");
    assert_eq!(records.len(), 4, "{refusals}");
    assert!(records.iter().all(|r| r["command"] == "workload.run"));
    let none = member
        .invoke(
            "audit.query",
            &json!({"command": "workload.", "actor": "someone-else", "limit": 5}),
        )
        .expect("audit.query");
    assert_eq!(none["records"], json!([]));

    // A deployment the policy refuses is not created.
    let refused = operator
        .invoke(
            "deploy.create",
            &json!({"name": "web", "spec": {"replicas": 1, "template": {"image": image}}}),
        )
        .expect_err("refused at creation");
    assert!(refused.contains("rule required_labels"), "{refused}");
    assert!(
        operator
            .invoke("deploy.status", &json!({"name": "web"}))
            .is_err()
    );

    // What the policy admits runs.
    let admitted = json!({"image": image, "command": ["true"], "labels": labelled});
    let verdict = member
        .invoke("policy.validate", &json!({"workload": admitted}))
        .expect("validate");
    assert_eq!(verdict, json!({"allowed": true, "violations": []}));
    member.invoke("workload.run", &admitted).expect("admitted");

    // The member, with only its own key, cannot delete the operator's policy.
    let denied = member
        .invoke("policy.delete", &json!({"name": "prod"}))
        .expect_err("a member is not an operator");
    assert!(denied.contains("not a fleet operator"), "{denied}");
    operator
        .invoke("policy.delete", &json!({"name": "prod"}))
        .expect("policy.delete");
    // The refused runs allocated nothing: the member's one GPU is free for this one.
    eventually(
        Duration::from_secs(30),
        "the deletion on the member",
        || {
            member
                .invoke(
                    "workload.run",
                    &json!({"image": image, "command": ["sleep", "2"], "gpus": 1}),
                )
                .ok()
        },
    );
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tagged("forbidden")])
        .status();
}

/// A namespace's quotas count what it holds across the fleet: a start on one member that would
/// pass a quota is refused with the quota named, whichever member holds the rest, and nothing
/// starts; a workload naming no namespace, or another one, is not counted.
#[test]
fn namespace_quotas_count_the_whole_fleet_and_refuse_by_name() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(2);
    let (operator, member) = (&members[0], &members[1]);
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (operator.sees(&member.peer_id) && member.sees(&operator.peer_id)).then_some(()),
    );
    operator
        .invoke(
            "namespace.create",
            &json!({"name": "ml", "spec": {"quota": {"gpus": 1, "workloads": 2}}}),
        )
        .expect("namespace.create");
    eventually(
        Duration::from_secs(30),
        "the namespace on the member",
        || {
            let listed = member.invoke("namespace.list", &json!({})).ok()?;
            (listed["namespaces"][0]["name"] == "ml").then_some(())
        },
    );
    let serve = json!(["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]);
    let run = |node: &Member, gpus: u32| {
        node.invoke(
            "workload.run",
            &json!({"image": image, "command": serve, "gpus": gpus, "namespace": "ml"}),
        )
    };
    run(operator, 1).expect("the first GPU of the namespace");
    let refused = run(member, 1).expect_err("a second GPU passes the quota");
    assert!(
        refused.contains("namespace \"ml\" quota gpus: 2 with this workload, at most 1"),
        "{refused}"
    );
    assert!(
        workloads(member).is_empty(),
        "nothing started on the member"
    );
    run(member, 0).expect("a second workload without a GPU");
    let refused = run(member, 0).expect_err("a third workload passes the quota");
    assert!(refused.contains("quota workloads"), "{refused}");
    let usage = member
        .invoke("namespace.usage", &json!({"name": "ml"}))
        .expect("namespace.usage");
    assert_eq!(
        (usage["workloads"].as_u64(), usage["gpus"].as_u64()),
        (Some(1), Some(0))
    );
    // Outside the namespace, nothing counts against it.
    member
        .invoke(
            "workload.run",
            &json!({"image": image, "command": serve, "gpus": 1}),
        )
        .expect("no namespace");
    let unknown = operator.invoke(
        "workload.run",
        &json!({"image": image, "command": serve, "namespace": "nope"}),
    );
    assert!(unknown.is_err_and(|e| e.contains("no namespace \"nope\"")));
}
