//! Taints across `clawnode run` processes on the real Docker Engine: a `NoSchedule` taint keeps
//! a deployment's replicas off a node unless the deployment tolerates it; a `NoExecute` taint
//! evicts the node's replicas that do not tolerate it, and their controller places them on the
//! nodes left; a member that is not an operator cannot taint another node. Also `system.which`.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::Duration;

use claw_tests::deployments::{Member, placement};
use claw_tests::{eventually, required_part};
use serde_json::json;

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

#[test]
fn taints_steer_placement_and_no_execute_evicts() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(3);
    let ids: Vec<String> = members.iter().map(|m| m.peer_id.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "every member to see the others",
        || {
            members
                .iter()
                .all(|m| ids.iter().all(|id| m.sees(id)))
                .then_some(())
        },
    );
    let (operator, kept_off, evicting) = (&members[0], &members[1], &members[2]);
    let tainted = kept_off
        .invoke(
            "node.taint",
            &json!({"key": "maint", "effect": "NoSchedule"}),
        )
        .expect("node.taint");
    assert_eq!(
        tainted["taints"],
        json!([{"key": "maint", "effect": "NoSchedule"}])
    );
    // A member that is not an operator on another node cannot taint it.
    let denied = evicting.cli.invoke(
        Some(&ids[0]),
        "node.taint",
        &json!({"key": "x", "effect": "NoExecute"}),
    );
    assert!(denied.is_err_and(|e| e.contains("UNAUTHORIZED")));
    // The taint reaches the others with the next announcements.
    std::thread::sleep(Duration::from_secs(4));

    let template =
        json!({"image": image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]});
    operator
        .invoke(
            "deploy.create",
            &json!({"name": "web", "spec": {"replicas": 2, "template": template}}),
        )
        .expect("deploy.create web");
    operator
        .invoke(
            "deploy.create",
            &json!({"name": "tol", "spec": {"replicas": 3, "template": template,
                "tolerations": [{"key": "maint"}]}}),
        )
        .expect("deploy.create tol");
    // `count` replicas ready, none of them on `not` (the deployment's status follows the
    // members' reports, so an eviction shows once they report it).
    let settled = |name: &str, count: usize, not: Option<&str>| {
        eventually(Duration::from_secs(90), "the replicas to run", || {
            let status = operator.status(name)?;
            let (nodes, _) = placement(&status);
            let placed = nodes.values().sum::<usize>() == count && status["ready"] == count;
            (placed && not.is_none_or(|n| !nodes.contains_key(n))).then_some(nodes)
        })
    };
    let web = settled("web", 2, None);
    assert!(
        !web.contains_key(&ids[1]),
        "no web replica on the tainted node: {web:?}"
    );
    let tol = settled("tol", 3, None);
    assert!(
        tol.contains_key(&ids[1]),
        "the tolerating deployment may use it: {tol:?}"
    );

    // NoExecute on the third node: its replicas go, and come back on the nodes left.
    let before = evicting.active_replicas("web") + evicting.active_replicas("tol");
    assert!(before > 0, "the third node ran replicas");
    let answer = evicting
        .invoke(
            "node.taint",
            &json!({"key": "decommission", "effect": "NoExecute"}),
        )
        .expect("node.taint NoExecute");
    assert_eq!(
        answer["evicted"].as_array().map(Vec::len),
        Some(before),
        "{answer}"
    );
    assert_eq!(
        evicting.active_replicas("web") + evicting.active_replicas("tol"),
        0
    );
    let web = settled("web", 2, Some(&ids[2]));
    assert_eq!(
        web.keys().collect::<Vec<_>>(),
        [&ids[0]],
        "web only where it may run: {web:?}"
    );
    let tol = settled("tol", 3, Some(&ids[2]));
    assert!(
        !tol.contains_key(&ids[2]),
        "nothing back on the evicting node: {tol:?}"
    );
    assert_eq!(
        evicting.active_replicas("web") + evicting.active_replicas("tol"),
        0
    );

    let untainted = kept_off
        .invoke("node.untaint", &json!({"key": "maint"}))
        .expect("node.untaint");
    assert_eq!(untainted["taints"], json!([]));

    let which = operator
        .invoke(
            "system.which",
            &json!({"programs": ["sh", "no-such-program-here"]}),
        )
        .expect("system.which");
    assert!(
        which["found"]["sh"]
            .as_str()
            .is_some_and(|p| p.ends_with("/sh")),
        "{which}"
    );
    assert!(which["found"]["no-such-program-here"].is_null());
    let refused = operator.invoke("system.which", &json!({"programs": ["../sh"]}));
    assert!(refused.is_err());
    for name in ["web", "tol"] {
        operator
            .invoke("deploy.delete", &json!({"name": name}))
            .expect("deploy.delete");
    }
}
