//! Configs and secrets across `clawnode run` processes on the real Docker Engine: a secret
//! sealed to two of three members reaches a workload's environment and files on a member it is
//! sealed to, and nowhere else: not in any command's answer, any node's log (down to `debug`),
//! the audit log, or any file of any member's data directory. The member it is not sealed to
//! cannot start a workload that uses it, nor re-seal it to itself, and nothing starts there. A
//! deployment using the secret runs only on its nodes, and a rotation rolls it onto the new
//! value.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use claw_tests::deployments::Member;
use claw_tests::{eventually, required_part, run_with_deadline};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

fn docker(args: &[&str]) -> String {
    let output = run_with_deadline(Command::new("docker").args(args), Duration::from_secs(30));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The running containers carrying `label` (`key=value`).
fn running_with(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    docker(&["ps", "-q", "--filter", &filter])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What `script` prints inside `container`.
fn inside(container: &str, script: &str) -> String {
    docker(&["exec", container, "sh", "-c", script])
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                // The first line holding it, with the value masked, says where it leaked.
                let text = String::from_utf8_lossy(&bytes);
                let needle = String::from_utf8_lossy(needle);
                let line = text
                    .lines()
                    .find(|l| l.contains(needle.as_ref()))
                    .map(|l| l.replace(needle.as_ref(), "<SECRET>"))
                    .unwrap_or_default();
                found.push(format!(
                    "{}: {}",
                    path.display(),
                    line.chars().take(600).collect::<String>()
                ));
            }
        }
    }
    found
}

#[test]
fn a_secret_reaches_only_its_nodes_workloads_and_nothing_else_and_rotation_rolls() {
    let Some(image) = test_image() else { return };
    let logs = tempfile::tempdir().expect("log dir");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let first = format!("pw-first-{stamp:x}");
    let second = format!("pw-second-{stamp:x}");

    let mut operator = Member::new(None);
    operator.start_logged(&[], &logs.path().join("0.log"));
    let seed = operator.joinable();
    let mut members = vec![operator];
    for index in 1..3 {
        let mut member = Member::new(Some(&members[0].peer_id.clone()));
        member.start_logged(&seed, &logs.path().join(format!("{index}.log")));
        members.push(member);
    }
    let peers: Vec<String> = members.iter().map(|m| m.peer_id.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "every member to see the others",
        || {
            members
                .iter()
                .all(|m| peers.iter().all(|p| m.sees(p)))
                .then_some(())
        },
    );
    let (allowed, outsider) = (&members[1], &members[2]);

    // The secret, sealed to the operator and member 1; its value goes in through the CLI's
    // standard input, as an operator would give it.
    let secret_file = logs.path().join("password");
    std::fs::write(&secret_file, &first).expect("secret file");
    let created = members[0].cli.ok(&[
        "--json",
        "secret",
        "create",
        "db",
        "--from-file",
        &format!("password={}", secret_file.display()),
        "--node",
        &peers[0],
        "--node",
        &peers[1],
    ]);
    std::fs::remove_file(&secret_file).expect("secret file removed");
    let created = created.json();
    assert_eq!(created["keys"], json!(["password"]));
    let mut nodes: Vec<String> = vec![peers[0].clone(), peers[1].clone()];
    nodes.sort();
    assert_eq!(created["nodes"], json!(nodes));
    members[0]
        .invoke(
            "config.create",
            &json!({"name": "app", "data": {"mode": "fast", "app.toml": "threads = 4\n"}}),
        )
        .expect("config.create");
    for member in &members {
        eventually(Duration::from_secs(30), "every member to keep both", || {
            let secret = member
                .invoke("secret.describe", &json!({"name": "db"}))
                .ok()?;
            let config = member.invoke("config.get", &json!({"name": "app"})).ok()?;
            (secret["revision"] == 1 && config["data"]["mode"] == "fast").then_some(())
        });
    }

    // On a node it is sealed to, the workload gets it as env and as a file.
    let workload = json!({
        "image": image,
        "command": ["sleep", "600"],
        "name": "uses-db",
        "env_from": {
            "DB_PASSWORD": {"secret": "db", "key": "password"},
            "MODE": {"config": "app", "key": "mode"},
        },
        "files": [
            {"secret": "db", "path": "/run/secrets/db"},
            {"config": "app", "path": "/etc/app"},
        ],
    });
    let run = allowed
        .invoke("workload.run", &workload)
        .expect("workload.run on a node the secret is sealed to");
    let id = run["id"].as_str().expect("workload id").to_owned();
    let containers = running_with(&format!("io.clawbernetes.workload={id}"));
    assert_eq!(containers.len(), 1, "one running container for {id}");
    let seen = inside(
        &containers[0],
        "echo \"$DB_PASSWORD\"; echo \"$MODE\"; cat /run/secrets/db/password; echo; \
         cat /etc/app/app.toml; touch /run/secrets/db/x 2>/dev/null && echo writable",
    );
    assert_eq!(seen, format!("{first}\nfast\n{first}\nthreads = 4"));

    // On the node it is not sealed to, nothing starts.
    let refused = outsider
        .invoke("workload.run", &workload)
        .expect_err("a node the secret is not sealed to cannot use it");
    assert!(
        refused.contains("not one of the nodes secret \"db\" is sealed to"),
        "{refused}"
    );
    let listed = outsider
        .invoke("workload.list", &json!({}))
        .expect("workload.list");
    assert_eq!(
        listed["workloads"],
        json!([]),
        "nothing was started or recorded"
    );
    // Nor can that member, with only its own key, seal the secret to itself anew.
    let resealed = outsider
        .invoke(
            "secret.rotate",
            &json!({"name": "db", "data": {"password": "mine"}, "nodes": [peers[2]]}),
        )
        .expect_err("a member that is not an operator signs no secret");
    assert!(resealed.contains("not a fleet operator"), "{resealed}");
    assert_eq!(
        members[0]
            .invoke("secret.describe", &json!({"name": "db"}))
            .expect("describe")["revision"],
        1
    );

    // A deployment using it runs only on the nodes it is sealed to.
    let deployment = json!({
        "name": "web",
        "spec": {
            "replicas": 2,
            "template": {
                "image": image,
                "command": ["sleep", "600"],
                "env_from": {"DB_PASSWORD": {"secret": "db", "key": "password"}},
                "files": [{"secret": "db", "path": "/run/secrets/db"}],
            },
        },
    });
    members[0]
        .invoke("deploy.create", &deployment)
        .expect("deploy.create");
    let replicas_with = |value: &str| {
        running_with("clawbernetes-deployment=web")
            .into_iter()
            .filter(|c| {
                inside(c, "echo \"$DB_PASSWORD\"; cat /run/secrets/db/password")
                    == format!("{value}\n{value}")
            })
            .count()
    };
    eventually(
        Duration::from_secs(90),
        "two replicas with the secret",
        || (replicas_with(&first) == 2).then_some(()),
    );
    assert_eq!(
        outsider.active_replicas("web"),
        0,
        "no replica on the outsider"
    );

    // A rotation through the CLI rolls the deployment onto the new value.
    let rotated_file = logs.path().join("rotated");
    std::fs::write(&rotated_file, &second).expect("rotated file");
    let rotated = members[0]
        .cli
        .ok(&[
            "--json",
            "secret",
            "rotate",
            "db",
            "--from-file",
            &format!("password={}", rotated_file.display()),
        ])
        .json();
    std::fs::remove_file(&rotated_file).expect("rotated file removed");
    assert_eq!(rotated["revision"], 2);
    assert_eq!(rotated["rolled"], json!(["web"]));
    assert_eq!(rotated["nodes"], json!(nodes), "the same nodes as before");
    eventually(
        Duration::from_secs(120),
        "the replicas to roll onto the rotation",
        || {
            let running = running_with("clawbernetes-deployment=web").len();
            (replicas_with(&second) == 2 && running == 2).then_some(())
        },
    );
    let status = members[1].status("web").expect("deploy.status");
    assert_eq!(status["spec"]["secret_revisions"], json!({"db": 2}));

    // Nothing shows either value: answers, audit logs, node logs, data directories.
    let mut answers: Vec<Value> = Vec::new();
    for member in &members {
        for (command, params) in [
            ("secret.describe", json!({"name": "db"})),
            ("secret.list", json!({})),
            ("workload.list", json!({})),
            ("deploy.status", json!({"name": "web"})),
            ("deploy.history", json!({"name": "web"})),
            ("object.sync", json!({})),
        ] {
            answers.push(member.invoke(command, &params).expect(command));
        }
        answers.push(member.cli.ok(&["--json", "audit", "--limit", "500"]).json());
    }
    answers.push(
        allowed
            .invoke("workload.inspect", &json!({"workload": id}))
            .expect("inspect"),
    );
    let text = serde_json::to_string(&answers).expect("answers");
    for value in [&first, &second] {
        assert!(!text.contains(value.as_str()), "an answer shows the secret");
    }
    // Stopping the workload removes its files from memory.
    allowed
        .invoke("workload.stop", &json!({"workload": id, "remove": true}))
        .expect("workload.stop");
    for member in &mut members {
        member.kill();
    }
    for value in [&first, &second] {
        let in_logs = files_holding(logs.path(), value.as_bytes());
        assert!(in_logs.is_empty(), "node logs show the secret: {in_logs:?}");
        for member in &members {
            let stored = files_holding(member.cli.data_dir(), value.as_bytes());
            assert!(
                stored.is_empty(),
                "a data directory holds the secret: {stored:?}"
            );
        }
    }
    let shm = Path::new("/dev/shm").join(format!("clawbernetes-{}", peers[1]));
    assert!(
        !shm.join(&id).exists(),
        "the stopped workload's files are gone from memory"
    );
    let log_lines: usize = (0..3)
        .map(|i| {
            std::fs::read_to_string(logs.path().join(format!("{i}.log")))
                .map_or(0, |t| t.lines().count())
        })
        .sum();
    assert!(
        log_lines > 100,
        "the nodes logged at debug ({log_lines} lines)"
    );
}
