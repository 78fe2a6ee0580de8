//! Job and cron job controllers across `clawnode run` processes on the real Docker Engine: a
//! job with parallelism 2 and completions 4 completes once although one pod is killed and
//! another pod's node is killed with `-9`; members that do not control a job cannot act for
//! it; a cron job every minute runs once per scheduled time across a controller failover, and
//! a slow one under `forbid` skips the times that come while it runs.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use claw_tests::deployments::{Member, outsider_and_target};
use claw_tests::{eventually, required_part, run_with_deadline};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

/// `job.status` of `name` on `member`, when it answers.
fn job_status(member: &Member, name: &str) -> Option<Value> {
    member.invoke("job.status", &json!({ "name": name })).ok()
}

fn attempts(status: &Value) -> Vec<Value> {
    status["run"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every container of the owner's pods that one of `nodes` started, on this machine's Docker:
/// run id → how many.
fn containers_per_run(owner: &str, nodes: &[&str]) -> BTreeMap<String, usize> {
    let filter = format!("label=clawbernetes-owner={owner}");
    let listed = run_with_deadline(
        Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Label \"clawbernetes-run\"}} {{.Label \"io.clawbernetes.node\"}}",
        ]),
        Duration::from_secs(30),
    );
    let mut runs = BTreeMap::new();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        if let Some((run, node)) = line.split_once(' ')
            && nodes.contains(&node)
        {
            *runs.entry(run.to_owned()).or_insert(0) += 1;
        }
    }
    runs
}

#[test]
fn a_job_completes_once_though_a_pod_and_a_pods_node_are_killed() {
    let Some(image) = test_image() else { return };
    let mut members = Member::fleet(4);
    let spec = json!({
        "template": {
            "image": image,
            "command": ["sh", "-c", "sleep 6; echo done"],
        },
        "completions": 4,
        "parallelism": 2,
        "backoff_limit": 4,
    });
    eventually(Duration::from_secs(30), "the job to be created", || {
        members[0]
            .invoke("job.create", &json!({"name": "batch", "spec": spec}))
            .ok()
    });
    let started = Instant::now();
    let status = eventually(Duration::from_secs(60), "two pods running", || {
        let status = job_status(&members[0], "batch")?;
        (status["active"] == json!(2)).then_some(status)
    });
    let controller = status["controller"]
        .as_str()
        .expect("controller")
        .to_owned();
    let running: Vec<Value> = attempts(&status)
        .into_iter()
        .filter(|a| a["state"] == "running")
        .collect();

    // One pod's node is killed with -9 (the one that is not the controller); the other pod's
    // container is killed.
    let kill_container = |workload: &str| {
        let filter = format!("label=io.clawbernetes.workload={workload}");
        let ids = run_with_deadline(
            Command::new("docker").args(["ps", "-q", "--filter", &filter]),
            Duration::from_secs(30),
        );
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            run_with_deadline(
                Command::new("docker").args(["kill", id]),
                Duration::from_secs(30),
            );
        }
    };
    let on_node = |a: &Value| a["node"].as_str().is_some_and(|n| n != controller);
    let lost = running.iter().position(on_node).unwrap_or(1);
    let victim_node = running[lost]["node"].as_str().expect("node").to_owned();
    let victim = members
        .iter()
        .position(|m| m.peer_id == victim_node && m.peer_id != controller);
    if let Some(index) = victim {
        members[index].kill();
        eprintln!("killed the node of pod {}", running[lost]["workload"]);
    }
    // The machine went with its node (or, when both pods run on the controller, the pod
    // dies): its container stops too.
    kill_container(running[lost]["workload"].as_str().expect("workload"));
    kill_container(running[1 - lost]["workload"].as_str().expect("workload"));
    let witness = members
        .iter()
        .position(Member::alive)
        .expect("a live member");

    let done = eventually(Duration::from_secs(150), "the job to complete", || {
        let status = job_status(&members[witness], "batch")?;
        (status["run"]["phase"] == "complete").then_some(status)
    });
    eprintln!(
        "job complete {:?} after create: {}",
        started.elapsed(),
        done["run"]
    );
    assert_eq!(done["succeeded"], json!(4), "{done:#}");
    let failed = done["failed"].as_u64().expect("failed count");
    assert!(
        failed >= 2,
        "both killed pods count as failed or lost: {done:#}"
    );
    let total = attempts(&done).len() as u64;
    assert_eq!(total, 4 + failed, "no pod beyond the retries: {done:#}");

    // Complete once: nothing more starts, and nothing of it runs anywhere.
    std::thread::sleep(Duration::from_secs(5));
    let later = job_status(&members[witness], "batch").expect("status");
    assert_eq!(attempts(&later).len() as u64, total, "{later:#}");
    for member in members.iter().filter(|m| m.alive()) {
        let labels = json!({"clawbernetes-owner": "job/batch"});
        let active = member
            .invoke("workload.list", &json!({"labels": labels, "all": false}))
            .expect("list");
        assert_eq!(active["workloads"], json!([]), "{active}");
    }
    // The logs of each succeeded attempt are there, read through the operator (back if it
    // was the node killed), whose `workload.logs` every node answers.
    if !members[0].alive() {
        let join = members[witness].joinable();
        members[0].start(&join);
        let others: Vec<String> = members
            .iter()
            .skip(1)
            .filter(|m| m.alive())
            .map(|m| m.peer_id.clone())
            .collect();
        eventually(
            Duration::from_secs(60),
            "the operator back in the fleet",
            || others.iter().all(|p| members[0].sees(p)).then_some(()),
        );
    }
    let logs = members[0]
        .invoke("job.logs", &json!({"name": "batch"}))
        .expect("logs");
    let printed = logs["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|a| a["state"] == "succeeded")
        .filter(|a| {
            a["lines"]
                .as_array()
                .is_some_and(|l| l.iter().any(|line| line["line"] == "done"))
        })
        .count();
    assert_eq!(printed, 4, "{logs:#}");

    // A member that is neither the controller nor next in line cannot act for the job, nor
    // make a node keep a ledger or claim for a job it does not keep.
    let live: Vec<&Member> = members.iter().filter(|m| m.alive()).collect();
    let (outsider, target) = outsider_and_target(&members, "job/batch");
    for (command, params) in [
        (
            "job.pods",
            json!({"owner": "job/batch", "epoch": 1_000_000}),
        ),
        (
            "job.pod.start",
            json!({"owner": "job/batch", "run": "r1", "revision": 1, "epoch": 1_000_000}),
        ),
    ] {
        let refused = outsider
            .cli
            .invoke(Some(&target.peer_id), command, &params)
            .expect_err("an outsider cannot act");
        assert!(refused.contains("UNAUTHORIZED"), "{command}: {refused}");
    }
    for member in &live {
        let made_up = member.cli.invoke(
            Some(&target.peer_id),
            "job.pods",
            &json!({"owner": "job/made-up", "epoch": 7}),
        );
        assert!(
            made_up.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
            "{made_up:?}"
        );
    }

    // Deleted: members stop answering for it.
    members[0]
        .invoke("job.delete", &json!({"name": "batch"}))
        .expect("delete");
    eventually(Duration::from_secs(30), "the job to be gone", || {
        let gone = members[0].invoke("job.status", &json!({"name": "batch"}));
        gone.is_err_and(|e| e.contains("NOT_FOUND")).then_some(())
    });
}

#[test]
fn a_cron_job_runs_once_per_minute_across_a_controller_failover_and_respects_forbid() {
    let Some(image) = test_image() else { return };
    let mut members = Member::fleet(3);
    let quick = json!({
        "schedule": "* * * * *",
        "time_zone": "Europe/Paris",
        "job": {"template": {"image": image, "command": ["sh", "-c", "echo tick"]}},
    });
    let slow = json!({
        "schedule": "* * * * *",
        "concurrency_policy": "forbid",
        "job": {"template": {"image": image, "command": ["sh", "-c", "sleep 100"]}},
    });
    for (name, spec) in [("tick", quick), ("slow", slow)] {
        eventually(
            Duration::from_secs(30),
            "the cron job to be created",
            || {
                members[0]
                    .invoke("cron.create", &json!({"name": name, "spec": spec}))
                    .ok()
            },
        );
    }
    let status =
        |member: &Member, name: &str| member.invoke("cron.status", &json!({ "name": name })).ok();
    // The first scheduled run of `tick`; then its controller is killed with -9, and the test
    // reads through another member.
    let first = eventually(Duration::from_secs(90), "tick's first run", || {
        let status = status(&members[0], "tick")?;
        let runs = status["runs"].as_array()?;
        (!runs.is_empty()).then(|| status.clone())
    });
    let controller = first["controller"].as_str().expect("controller").to_owned();
    let killed = members
        .iter()
        .position(|m| m.peer_id == controller)
        .expect("the controller is a member");
    members[killed].kill();
    eprintln!("tick's controller killed");
    let reader = members
        .iter()
        .position(Member::alive)
        .expect("a live member");
    // Three more scheduled times.
    let first_slot = first["runs"][0]["cause"]["slot_ms"]
        .as_u64()
        .expect("a scheduled run");
    let last = eventually(Duration::from_secs(240), "three more runs of tick", || {
        let status = status(&members[reader], "tick")?;
        let slots: Vec<u64> = status["runs"]
            .as_array()?
            .iter()
            .filter_map(|r| r["cause"]["slot_ms"].as_u64())
            .collect();
        (slots.iter().any(|s| *s >= first_slot + 180_000)).then_some(status)
    });
    let slots: Vec<u64> = last["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["cause"]["slot_ms"].as_u64())
        .collect();
    let expected: Vec<u64> = (0..slots.len() as u64)
        .map(|i| first_slot + i * 60_000)
        .collect();
    assert_eq!(slots, expected, "one run per minute, none missed: {last:#}");
    for run in last["runs"].as_array().expect("runs") {
        let attempts = run["attempts"].as_array().expect("attempts");
        if run["phase"] == "complete" {
            let succeeded = attempts
                .iter()
                .filter(|a| a["state"] == "succeeded")
                .count();
            let lost = attempts.iter().filter(|a| a["state"] == "lost").count();
            assert_eq!(
                (succeeded, lost + succeeded),
                (1, attempts.len()),
                "one pod per run, besides one lost with the killed member: {run}"
            );
        }
    }
    // No pod started twice on the members that stayed (a pod on the killed member may have run
    // and been lost with it unseen; its run then ran again elsewhere, as a lost pod does).
    let stayed: Vec<&str> = members
        .iter()
        .filter(|m| m.alive())
        .map(|m| m.peer_id.as_str())
        .collect();
    for (run, containers) in containers_per_run("cron/tick", &stayed) {
        assert_eq!(containers, 1, "run {run} started {containers} pods");
    }

    // The slow one never ran two at once, and skipped the times that came while it ran.
    let slow = status(&members[reader], "slow").expect("slow's status");
    let running = slow["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["phase"] == "running")
        .count();
    assert!(running <= 1, "{slow:#}");
    assert!(
        slow["skipped"].as_array().is_some_and(|s| s
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("forbid")))),
        "{slow:#}"
    );
    // What a run printed, through the operator (back if it was the controller killed), whose
    // `workload.logs` every node answers.
    if !members[0].alive() {
        let join = members[reader].joinable();
        members[0].start(&join);
        let reader_id = members[reader].peer_id.clone();
        eventually(Duration::from_secs(60), "the operator back", || {
            members[0].sees(&reader_id).then_some(())
        });
    }
    let newest = last["runs"]
        .as_array()
        .and_then(|runs| runs.iter().rev().find(|r| r["phase"] == "complete"))
        .expect("a complete run");
    let logs = members[0]
        .invoke("cron.logs", &json!({"name": "tick", "run": newest["id"]}))
        .expect("cron logs");
    assert_eq!(logs["run"], newest["id"], "{logs:#}");
    assert!(
        logs["attempts"][0]["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|line| line["line"] == "tick")),
        "{logs:#}"
    );
    for name in ["tick", "slow"] {
        members[0]
            .invoke("cron.delete", &json!({ "name": name }))
            .expect("delete");
    }
}

#[test]
fn a_cron_job_bids_through_the_member_it_names_within_its_budget() {
    if test_image().is_none() {
        return;
    }
    let members = Member::fleet(3);
    let bidder = members[1].peer_id.clone();
    let cron = |max_price: &str| {
        json!({
            "schedule": "0 0 1 1 *",
            "bid": {
                "node": bidder,
                "budget": "10",
                "bid": {"models": ["NVIDIA H100 80GB HBM3"], "gpus": 1, "hours": 4,
                    "max_price": max_price, "accept_simulated": true},
            },
        })
    };
    eventually(Duration::from_secs(30), "the cron job", || {
        members[0]
            .invoke(
                "cron.create",
                &json!({"name": "nightly", "spec": cron("2.5")}),
            )
            .ok()
    });
    members[0]
        .invoke("cron.trigger", &json!({"name": "nightly"}))
        .expect("trigger");
    // Over its budget (5 × 1 × 4 > 10): refused before anything is signed.
    let greedy = members[0].invoke("cron.create", &json!({"name": "greedy", "spec": cron("5")}));
    assert!(
        greedy
            .as_ref()
            .is_err_and(|e| e.contains("INVALID_PARAMS") && e.contains("over the budget")),
        "{greedy:?}"
    );
    let finished = |name: &str| {
        eventually(
            Duration::from_secs(60),
            "the triggered run to finish",
            || {
                let status = members[2]
                    .invoke("cron.status", &json!({ "name": name }))
                    .ok()?;
                let run = status["runs"].as_array()?.first()?.clone();
                (run["phase"] != "running").then_some((status, run))
            },
        )
    };
    // Nothing is on sale in this fleet: the bid was placed by the member named, and said so.
    let (status, run) = finished("nightly");
    eprintln!("nightly's run: {run}");
    assert_eq!(run["id"], "t1", "{status:#}");
    assert_eq!(run["phase"], "failed", "{status:#}");
    assert!(
        run["reason"].as_str().is_some_and(|r| r.contains("offer")),
        "{status:#}"
    );
    // A member that does not control it cannot make the bidder bid.
    let (outsider, _) = outsider_and_target(&members, "cron/nightly");
    let refused = outsider
        .cli
        .invoke(
            Some(&bidder),
            "cron.bid",
            &json!({"name": "nightly", "run": "t9", "revision": 2, "epoch": 1_000_000}),
        )
        .expect_err("an outsider cannot make it bid");
    assert!(refused.contains("UNAUTHORIZED"), "{refused}");
    // The member next in line may call, but only for runs the signed spec asks for: made-up
    // run ids (a trigger never signed, a minute that is no scheduled time) place no bid.
    let peers = members.iter().map(|m| m.peer_id.parse().expect("peer id"));
    let next = clawnode::controller::plan::ranking("cron/nightly", peers)[1].to_string();
    let candidate = members
        .iter()
        .find(|m| m.peer_id == next)
        .expect("the member next in line");
    for run in ["t9", "s1"] {
        let made_up = candidate.cli.invoke(
            Some(&bidder),
            "cron.bid",
            &json!({"name": "nightly", "run": run, "revision": 2, "epoch": 1_000_000}),
        );
        assert!(
            made_up
                .as_ref()
                .is_err_and(|e| e.contains("INVALID_PARAMS")),
            "{run}: {made_up:?}"
        );
    }
}
