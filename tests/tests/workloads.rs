//! Workloads on the real Docker Engine, through `clawnode run` processes and the CLI: the
//! lifecycle (run, list, logs, stats, exec, stop), typed errors that change nothing, the GPU
//! allocator under concurrent requests, roles across the mesh, cordon and drain, and reconcile
//! after `kill -9`.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::process::Command;
use std::time::Duration;

use claw_tests::{
    Clawnode, RunningNode, eventually, node_containers, remove_node_containers, required_part,
    run_with_deadline, unmount_under,
};
use serde_json::{Value, json};

/// A node process on its own data directory; its containers are removed when it is dropped.
struct Node {
    cli: Clawnode,
    running: Option<RunningNode>,
    peer_id: String,
    dir: tempfile::TempDir,
}

impl Node {
    /// An initialised node with `gpus` simulated GPUs, its config edited by `configure`.
    fn start(gpus: u32, configure: impl FnOnce(String) -> String, bootstrap: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Clawnode::new(&dir.path().join("node"));
        cli.init_with_simulated_gpus(gpus);
        let path = cli.data_dir().join("config.toml");
        let text = std::fs::read_to_string(&path).expect("config written by init");
        let text = configure(
            text.replace("announce_interval_secs = 10", "announce_interval_secs = 1")
                .replace(
                    "allow_colocated_peers = false",
                    "allow_colocated_peers = true",
                ),
        );
        std::fs::write(&path, text).expect("config rewritten");
        let running = RunningNode::start(&cli, bootstrap);
        Self {
            peer_id: running.peer_id.clone(),
            running: Some(running),
            cli,
            dir,
        }
    }

    fn restart(&mut self) {
        self.running = Some(RunningNode::start(&self.cli, &[]));
    }

    fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
        }
    }

    /// Invokes `command` through the CLI; the result, or the error text on stderr.
    fn invoke(&self, command: &str, params: &Value) -> Result<Value, String> {
        self.invoke_on(None, command, params)
    }

    fn invoke_on(
        &self,
        node: Option<&str>,
        command: &str,
        params: &Value,
    ) -> Result<Value, String> {
        self.cli.invoke(node, command, params)
    }

    fn ok(&self, command: &str, params: &Value) -> Value {
        self.invoke(command, params)
            .unwrap_or_else(|e| panic!("{command} {params} failed: {e}"))
    }

    /// Asserts `command` fails with `code`; returns the message.
    fn fails(&self, command: &str, params: &Value, code: &str) -> String {
        match self.invoke(command, params) {
            Ok(value) => panic!("{command} {params} succeeded: {value}"),
            Err(text) => {
                assert!(
                    text.contains(code),
                    "{command} {params}: wanted {code}, got {text}"
                );
                text
            }
        }
    }

    /// Container ids Docker holds for this node.
    fn containers(&self) -> Vec<String> {
        node_containers(&self.peer_id, true)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        remove_node_containers(&self.peer_id);
        // A pinned host volume's staging mount outlives a killed node (its restart releases
        // it); this node does not start again.
        unmount_under(self.dir.path());
    }
}

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

fn workload_states(node: &Node) -> Vec<(String, String)> {
    node.ok("workload.list", &json!({}))["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_owned(),
                w["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_workload_runs_logs_execs_reports_stats_and_stops() {
    let Some(image) = test_image() else { return };
    let node = Node::start(2, |c| c, &[]);
    let run = node.ok(
        "workload.run",
        &json!({
            "image": image,
            "name": "trainer",
            "command": ["sh", "-c", "echo hello from the workload; echo warming up >&2; sleep 300"],
            "env": {"API_TOKEN": "s3cr3t-value"},
            "gpus": 1,
            "labels": {"team": "vision"},
            "memory_mib": 64,
            "cpus": 0.5,
            "ports": [{"container": 8080}],
        }),
    );
    assert_eq!(run["state"], "running", "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    let gpu = run["gpus"][0].as_str().expect("one GPU").to_owned();
    assert_eq!(run["gpus"].as_array().map(Vec::len), Some(1));
    assert_eq!(run["simulated_gpus"], true);
    assert_eq!(node.containers().len(), 1);

    // Docker holds the container with the node's labels and the limits asked for.
    let inspect = run_with_deadline(
        Command::new("docker").args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"io.clawbernetes.workload\"}} {{index .Config.Labels \"io.clawbernetes.gpus\"}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            &format!("claw-{id}"),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("{id} {gpu} {} 500000000", 64 * 1024 * 1024)
    );

    let listed = node.cli.ok(&["ps", "--json"]).json();
    assert_eq!(listed["workloads"][0]["id"], id);
    assert_eq!(listed["workloads"][0]["labels"]["team"], "vision");
    let table = node.cli.ok(&["ps"]).stdout;
    assert!(
        table.contains(&id) && table.contains("trainer") && table.contains("running"),
        "{table}"
    );

    let logs = eventually(Duration::from_secs(20), "the workload's output", || {
        let logs = node.ok("workload.logs", &json!({"workload": "trainer"}));
        let lines = logs["lines"].as_array()?.clone();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(logs.contains(&json!({"stream": "stdout", "line": "hello from the workload"})));
    assert!(logs.contains(&json!({"stream": "stderr", "line": "warming up"})));
    let cli_logs = node.cli.ok(&["logs", "trainer"]);
    assert!(cli_logs.stdout.contains("hello from the workload"));
    assert!(cli_logs.stderr.contains("warming up"));

    let exec = node.ok(
        "container.exec",
        &json!({"workload": id, "argv": ["sh", "-c", "echo $CLAWBERNETES_GPUS; echo $API_TOKEN | wc -c; exit 7"]}),
    );
    assert_eq!(exec["exit_code"], 7, "{exec}");
    assert_eq!(exec["stdout"], format!("{gpu}\n13\n"));

    let stats = node.ok("workload.stats", &json!({"workload": id}));
    assert!(
        stats["memory_used_bytes"].as_u64().is_some_and(|b| b > 0),
        "{stats}"
    );
    assert_eq!(stats["memory_limit_bytes"], 64 * 1024 * 1024);
    assert!(stats["pids"].as_u64().is_some_and(|p| p >= 1), "{stats}");

    let inspected = node.ok("workload.inspect", &json!({"workload": "trainer"}));
    assert_eq!(inspected["container"]["running"], true);
    let port = &inspected["container"]["ports"][0];
    assert_eq!(port["container"], 8080);
    assert!(port["host"].as_u64().is_some_and(|p| p > 0), "{inspected}");

    let metrics = node.ok("gpu.metrics", &json!({}));
    let holder = |metrics: &Value| {
        metrics["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .find(|g| g["uuid"] == gpu.as_str())
            .map(|g| g["workload"].clone())
    };
    assert_eq!(holder(&metrics), Some(json!(id)));

    let stopped = node.ok(
        "workload.stop",
        &json!({"workload": "trainer", "timeout_secs": 1}),
    );
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(
        holder(&node.ok("gpu.metrics", &json!({}))),
        Some(Value::Null)
    );
    let again = node.ok("workload.stop", &json!({"workload": id}));
    assert_eq!(
        again["state"], "stopped",
        "stopping twice answers the record"
    );
    let inspected = node.ok("workload.inspect", &json!({"workload": id}));
    assert_eq!(inspected["container"]["running"], false);
    node.fails(
        "container.exec",
        &json!({"workload": id, "argv": ["true"]}),
        "CONFLICT",
    );

    // Environment values never reach the audit log or the stored record.
    let audit = node.cli.ok(&["audit", "--json"]).stdout;
    assert!(audit.contains("workload.run") && !audit.contains("s3cr3t-value"));
    assert!(
        !node
            .ok("workload.inspect", &json!({"workload": id}))
            .to_string()
            .contains("s3cr3t")
    );

    node.ok("workload.stop", &json!({"workload": id, "remove": true}));
    assert!(node.containers().is_empty());
}

#[test]
fn bad_inputs_get_typed_errors_and_change_nothing() {
    let Some(image) = test_image() else { return };
    let roots = tempfile::tempdir().expect("volume root");
    let root = roots.path().display().to_string();
    let node = Node::start(
        2,
        |c| {
            c.replace("volume_roots = []", &format!("volume_roots = [{root:?}]"))
                .replace("allowlist = []", "allowlist = [\"/bin/echo\"]")
        },
        &[],
    );
    node.fails(
        "workload.run",
        &json!({"image": image, "gpu": 1}),
        "INVALID_PARAMS",
    );
    node.fails(
        "workload.run",
        &json!({"image": image, "gpus": "two"}),
        "INVALID_PARAMS",
    );
    node.fails("workload.run", &json!({"image": "-bad"}), "INVALID_PARAMS");
    let huge = "x".repeat(70 * 1024);
    let text = node.fails(
        "workload.run",
        &json!({"image": image, "command": [huge]}),
        "INVALID_PARAMS",
    );
    assert!(text.contains("byte limit"), "{text}");
    let text = node.fails(
        "workload.run",
        &json!({"image": image, "volumes": [{"host": "/etc", "container": "/host-etc"}]}),
        "UNAUTHORIZED",
    );
    assert!(text.contains("outside the node's volume roots"), "{text}");
    let text = node.fails(
        "workload.run",
        &json!({"image": image, "gpus": 3}),
        "CONFLICT",
    );
    assert!(text.contains("free GPUs: GPU-sim-"), "{text}");
    node.fails(
        "workload.run",
        &json!({"image": image, "gpu_uuids": ["GPU-nope"]}),
        "CONFLICT",
    );
    node.fails(
        "workload.run",
        &json!({"image": "clawbernetes/absent:none"}),
        "NOT_FOUND",
    );
    node.fails(
        "workload.stop",
        &json!({"workload": "wl-000000000000"}),
        "NOT_FOUND",
    );
    node.fails("workload.logs", &json!({"workload": "nobody"}), "NOT_FOUND");
    node.fails(
        "workload.inspect",
        &json!({"workload": "nobody", "x": 1}),
        "INVALID_PARAMS",
    );
    node.fails("workload.stats", &json!({}), "INVALID_PARAMS");
    node.fails(
        "container.exec",
        &json!({"workload": "nobody", "argv": []}),
        "INVALID_PARAMS",
    );
    let text = node.fails(
        "system.run",
        &json!({"argv": ["/bin/sh", "-c", "id"]}),
        "UNAUTHORIZED",
    );
    assert!(text.contains("allowlist"), "{text}");
    node.fails("gpu.metrics", &json!({"gpu": "GPU-nope"}), "NOT_FOUND");
    node.fails("node.label", &json!({"set": {"": "x"}}), "INVALID_PARAMS");
    node.fails("workload.melt", &json!({}), "UNKNOWN_COMMAND");

    // Nothing above left a workload, a container or an allocation behind, except the failed
    // pull, which is recorded as failed and holds nothing.
    let states = workload_states(&node);
    assert!(
        states.iter().all(|(_, state)| state == "failed"),
        "{states:?}"
    );
    assert!(states.len() <= 1, "{states:?}");
    assert!(node.containers().is_empty());
    let metrics = node.ok("gpu.metrics", &json!({}));
    assert!(
        metrics["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .all(|g| g["workload"].is_null())
    );

    // And the things that are allowed work.
    let data = roots.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("input.txt"), "mounted").expect("input");
    let run = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"], "volumes": [{"host": data.display().to_string(), "container": "/data", "read_only": true}]}),
    );
    let exec = node.ok(
        "container.exec",
        &json!({"workload": run["id"], "argv": ["cat", "/data/input.txt"]}),
    );
    assert_eq!(exec["stdout"], "mounted");
    let echo = node.ok("system.run", &json!({"argv": ["/bin/echo", "allowed"]}));
    assert_eq!(echo["stdout"], "allowed\n");
    assert_eq!(echo["exit_code"], 0);
}

#[test]
fn the_allocator_never_double_books_under_concurrent_requests() {
    let Some(image) = test_image() else { return };
    let node = Node::start(2, |c| c, &[]);
    let results: Vec<Result<Value, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    node.invoke(
                        "workload.run",
                        &json!({"image": image, "command": ["sleep", "300"], "gpus": 1}),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut granted: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|w| w["gpus"][0].as_str().expect("gpu").to_owned())
        .collect();
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    granted.sort();
    granted.dedup();
    assert_eq!(granted.len(), 2, "two distinct GPUs granted: {results:?}");
    assert_eq!(refused.len(), 4, "{results:?}");
    for text in refused {
        assert!(
            text.contains("CONFLICT") && text.contains("free GPUs: none"),
            "{text}"
        );
    }
    assert_eq!(node.containers().len(), 2);
}

#[test]
fn after_kill_9_a_restart_lists_every_workload_once_with_its_gpus() {
    let Some(image) = test_image() else { return };
    let mut node = Node::start(2, |c| c, &[]);
    let keep = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"], "gpus": 1, "name": "keeper"}),
    );
    let vanish = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"], "gpus": 1, "name": "vanisher"}),
    );
    let short = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sh", "-c", "exit 3"]}),
    );
    let keyed_params = json!({"image": image, "command": ["sleep", "300"]});
    let keyed = node
        .cli
        .invoke_with_key(None, "workload.run", &keyed_params, Some("retry-1"))
        .expect("a keyed run");
    // The node's own keys (of leased workloads) are not the caller's to use.
    let refused = node
        .cli
        .invoke_with_key(None, "workload.run", &keyed_params, Some("lease/ls-1"))
        .expect_err("a reserved key");
    assert!(refused.contains("INVALID_PARAMS"), "{refused}");
    node.kill();
    // While the node is down: one container disappears, one exits by itself.
    let removed = run_with_deadline(
        Command::new("docker").args([
            "rm",
            "-f",
            &format!("claw-{}", vanish["id"].as_str().expect("id")),
        ]),
        Duration::from_secs(30),
    );
    assert!(removed.status.success());
    node.restart();

    // A retry with the key after the restart answers with the first workload, starting none.
    let retried = node
        .cli
        .invoke_with_key(None, "workload.run", &keyed_params, Some("retry-1"))
        .expect("a retried run");
    assert_eq!(retried["id"], keyed["id"], "{retried}");
    let listed = node.ok("workload.list", &json!({}))["workloads"].clone();
    let listed = listed.as_array().expect("workloads");
    assert_eq!(listed.len(), 4, "each workload listed once: {listed:?}");
    assert_eq!(
        node.containers().len(),
        3,
        "no second container for the key"
    );
    let find = |id: &Value| {
        listed
            .iter()
            .find(|w| w["id"] == *id)
            .expect("listed")
            .clone()
    };
    let kept = find(&keep["id"]);
    assert_eq!(kept["state"], "running");
    assert_eq!(kept["gpus"], keep["gpus"]);
    let lost = find(&vanish["id"]);
    assert_eq!(lost["state"], "lost");
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.contains("gone from Docker")),
        "{lost}"
    );
    let exited = find(&short["id"]);
    assert_eq!(exited["state"], "exited");
    assert_eq!(exited["exit_code"], 3);

    // The kept workload still holds its GPU; the lost one's GPU is free again.
    let metrics = node.ok("gpu.metrics", &json!({}));
    let holders: Vec<Value> = metrics["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .map(|g| g["workload"].clone())
        .collect();
    assert_eq!(
        holders.iter().filter(|h| **h == keep["id"]).count(),
        1,
        "{metrics}"
    );
    assert_eq!(
        holders.iter().filter(|h| h.is_null()).count(),
        1,
        "{metrics}"
    );
    // A new workload gets exactly the freed GPU.
    let next = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"], "gpus": 1}),
    );
    assert_eq!(next["gpus"], vanish["gpus"]);
}

#[test]
fn peers_get_the_role_the_config_gives_them() {
    let Some(image) = test_image() else { return };
    let operator = Node::start(0, |c| c, &[]);
    let seed = operator
        .running
        .as_ref()
        .map(|r| r.listen_addrs.clone())
        .unwrap_or_default();
    let operator_id = operator.peer_id.clone();
    let provider = Node::start(
        1,
        |c| c.replace("operators = []", &format!("operators = [{operator_id:?}]")),
        &seed,
    );
    let stranger = Node::start(0, |c| c, &seed);
    let target = provider.peer_id.clone();
    let run = json!({"image": image, "command": ["sleep", "300"], "gpus": 1});

    // Wait until both peers can reach the provider.
    for peer in [&operator, &stranger] {
        eventually(
            Duration::from_secs(30),
            "the provider answers over the mesh",
            || peer.invoke_on(Some(&target), "gpu.list", &json!({})).ok(),
        );
    }
    let refused = stranger
        .invoke_on(Some(&target), "workload.run", &run)
        .expect_err("a fleet member without a role must be refused");
    assert!(
        refused.contains("UNAUTHORIZED") && refused.contains("operate"),
        "{refused}"
    );
    let refused = operator
        .invoke_on(Some(&target), "system.run", &json!({"argv": ["/bin/echo"]}))
        .expect_err("system.run is admin only");
    assert!(
        refused.contains("UNAUTHORIZED") && refused.contains("admin"),
        "{refused}"
    );
    let started = operator
        .invoke_on(Some(&target), "workload.run", &run)
        .expect("an operator may run workloads");
    assert_eq!(started["owner"], operator.peer_id);
    let listed = stranger
        .invoke_on(Some(&target), "workload.list", &json!({}))
        .expect("fleet members may read");
    assert_eq!(listed["workloads"][0]["id"], started["id"]);
    let roles = stranger
        .invoke_on(Some(&target), "node.capabilities", &json!({}))
        .expect("capabilities");
    assert_eq!(roles["caller_role"], "read");
    assert_eq!(provider.containers().len(), 1);
}

#[test]
fn cordon_refuses_new_workloads_and_drain_stops_each_one() {
    let Some(image) = test_image() else { return };
    let node = Node::start(1, |c| c, &[]);
    assert_eq!(node.ok("node.cordon", &json!({}))["cordoned"], true);
    let text = node.fails("workload.run", &json!({"image": image}), "UNAVAILABLE");
    assert!(text.contains("cordoned"), "{text}");
    assert!(node.containers().is_empty());
    node.ok("node.uncordon", &json!({}));

    // One GPU out of scheduling ("GPU 0 isolated"): no workload gets it, by count or by UUID,
    // and the fleet sees it taken; back in, it is given again.
    let gpu = node.ok("gpu.list", &json!({}))["gpus"][0]["uuid"].clone();
    let cordoned = node.ok("gpu.cordon", &json!({ "gpu": gpu }));
    assert_eq!(
        (cordoned["cordoned"].clone(), cordoned["held_by"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(node.ok("gpu.list", &json!({}))["cordoned"], json!([gpu]));
    node.fails(
        "workload.run",
        &json!({"image": image, "gpus": 1}),
        "CONFLICT",
    );
    node.fails(
        "workload.run",
        &json!({"image": image, "gpu_uuids": [gpu]}),
        "CONFLICT",
    );
    node.fails("gpu.cordon", &json!({"gpu": "GPU-not-here"}), "NOT_FOUND");
    assert!(node.containers().is_empty());
    eventually(
        Duration::from_secs(10),
        "the fleet to see the GPU taken",
        || {
            let fleet = node.cli.ok(&["fleet", "--json"]).json();
            (fleet["status"]["free_gpus"] == json!(0)).then_some(())
        },
    );
    node.ok("gpu.uncordon", &json!({ "gpu": gpu }));

    let labels = node.ok("node.label", &json!({"set": {"rack": "b7"}}));
    assert_eq!(labels["labels"]["rack"], "b7");
    let a = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"], "gpus": 1}),
    );
    let b = node.ok(
        "workload.run",
        &json!({"image": image, "command": ["sleep", "300"]}),
    );
    let drained = node.ok("node.drain", &json!({}));
    assert_eq!(drained["cordoned"], true);
    let mut outcomes: Vec<(Value, Value)> = drained["workloads"]
        .as_array()
        .expect("outcomes")
        .iter()
        .map(|o| (o["workload"].clone(), o["outcome"].clone()))
        .collect();
    outcomes.sort_by_key(|o| o.0.to_string());
    let mut expected = vec![
        (a["id"].clone(), json!("stopped")),
        (b["id"].clone(), json!("stopped")),
    ];
    expected.sort_by_key(|o| o.0.to_string());
    assert_eq!(outcomes, expected);
    assert!(workload_states(&node).iter().all(|(_, s)| s == "stopped"));
    let health = node.cli.ok(&["health", "--json"]).json();
    assert_eq!(health["cordoned"], true);
}

#[test]
fn gpu_metrics_and_health_report_the_nvml_path_this_machine_has() {
    let Some(_image) = test_image() else { return };
    let node = Node::start(1, |c| c, &[]);
    let metrics = node.ok("gpu.metrics", &json!({}));
    let health = node.ok("node.health", &json!({}));
    let docker = health["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["component"] == "docker")
        .expect("docker check")
        .clone();
    assert_eq!(docker["status"], "healthy", "{health}");
    let nvml_check = health["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["component"] == "nvml")
        .expect("nvml check")
        .clone();
    let simulated: Vec<&Value> = metrics["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter(|g| g["simulated"] == true)
        .collect();
    assert_eq!(simulated.len(), 1);
    assert!(
        simulated[0]["utilization_gpu_pct"].is_null(),
        "simulated GPUs have no readings"
    );
    if let Some(reason) = metrics["nvml"]["unavailable"]["reason"].as_str() {
        eprintln!(
            "NVML is absent on this machine ({reason}); the NVML-present path is covered on a GPU machine"
        );
        assert!(reason.contains("NVML"), "{reason}");
        assert_eq!(nvml_check["status"], "degraded");
        assert!(
            nvml_check["detail"]
                .as_str()
                .is_some_and(|d| d.contains(reason))
        );
        assert_ne!(health["status"], "healthy");
        let table = node.cli.ok(&["health"]).stdout;
        assert!(
            table.contains("nvml") && table.contains("degraded"),
            "{table}"
        );
    } else {
        let real: Vec<&Value> = metrics["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .filter(|g| g["simulated"] == false)
            .collect();
        assert!(!real.is_empty(), "NVML loaded but listed no GPU: {metrics}");
        for gpu in real {
            assert!(
                gpu["memory_total_bytes"].as_u64().is_some_and(|m| m > 0),
                "{gpu}"
            );
            assert!(gpu["temperature_c"].as_u64().is_some(), "{gpu}");
            assert!(gpu["throttle_reasons"].is_array(), "{gpu}");
        }
        assert_eq!(nvml_check["status"], "healthy");
    }
}
