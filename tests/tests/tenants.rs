//! A lessee cannot hurt its provider: tenant workloads on the real Docker Engine, seen from inside
//! their containers and from the peers that call the node.
//!
//! - A tenant reaches none of this host's ports, another tenant, a private address or the cloud
//!   metadata address (servers the test runs in a network namespace it makes), while a shared
//!   workload reaches them: the routes are real, the node's rules are what stops the tenant.
//! - A fork bomb is capped and a memory hog killed; the node and another tenant stay responsive.
//! - GPU visibility is the node's alone, whatever the workload asks for.
//! - A symlink swapped in under a volume root while the image check is held never gets mounted.
//! - A stopped tenant leaves no container, network or rule; its logs are kept.
//! - A read-role peer sees others' workloads redacted and cannot stop, read or exec into them.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use claw_tests::{
    Clawnode, DockerProxy, Hold, RunningNode, SIMULATED_MODEL, TestHost, eventually,
    namespace_or_skip, required_part, run_with_deadline,
};
use serde_json::{Value, json};

/// Runs until stopped.
const SLEEP: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"];

struct Node {
    cli: Clawnode,
    running: RunningNode,
}

impl Node {
    /// A node with `gpus` simulated GPUs, its config edited by `edit`.
    fn start(dir: &std::path::Path, gpus: u32, edit: impl FnOnce(String) -> String) -> Self {
        let cli = Self::init(dir, gpus, edit);
        let running = RunningNode::start(&cli, &[]);
        Self { cli, running }
    }

    /// A node's data directory with `gpus` simulated GPUs, its config edited by `edit`.
    fn init(dir: &std::path::Path, gpus: u32, edit: impl FnOnce(String) -> String) -> Clawnode {
        let cli = Clawnode::new(dir);
        let spec = format!("{SIMULATED_MODEL}:{gpus}:81559");
        if gpus == 0 {
            cli.ok(&["init"]);
        } else {
            cli.ok(&["init", "--simulated-gpu", &spec]);
        }
        cli.edit_config(edit);
        cli
    }

    fn invoke(&self, command: &str, params: &Value) -> Result<Value, String> {
        self.cli.invoke(None, command, params)
    }

    fn ok(&self, command: &str, params: &Value) -> Value {
        self.invoke(command, params)
            .unwrap_or_else(|e| panic!("{command} {params}: {e}"))
    }

    fn run(&self, params: Value) -> String {
        let started = self.ok("workload.run", &params);
        assert_eq!(started["state"], "running", "{started}");
        started["id"].as_str().expect("id").to_owned()
    }

    /// Runs `script` inside `workload` with busybox sh: its exit code and output.
    fn exec(&self, workload: &str, script: &str) -> (i64, String) {
        let answer = self.ok(
            "container.exec",
            &json!({"workload": workload, "argv": ["sh", "-c", script], "timeout_secs": 30}),
        );
        (
            answer["exit_code"].as_i64().unwrap_or(-1),
            format!(
                "{}{}",
                answer["stdout"].as_str().unwrap_or(""),
                answer["stderr"].as_str().unwrap_or("")
            ),
        )
    }

    fn container(&self, workload: &str) -> String {
        let inspected = self.ok("workload.inspect", &json!({"workload": workload}));
        inspected["workload"]["container_id"]
            .as_str()
            .expect("container")
            .to_owned()
    }

    fn peer_id(&self) -> &str {
        &self.running.peer_id
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        claw_tests::remove_node_containers(&self.running.peer_id);
        claw_tests::unmount_under(self.cli.data_dir());
    }
}

fn docker_inspect(container: &str, format: &str) -> String {
    let output = run_with_deadline(
        Command::new("docker").args(["inspect", "-f", format, container]),
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The address of `container` and its gateway (this host, on its network).
fn addresses(container: &str) -> (String, String) {
    let ip = docker_inspect(
        container,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    let gateway = docker_inspect(
        container,
        "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
    );
    (ip, gateway)
}

/// A TCP server on every address of this host answering `reply`.
fn host_server(reply: &'static str) -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").expect("host port");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

fn reaches(node: &Node, workload: &str, address: &str, port: u16, reply: &str) -> bool {
    let (_, output) = node.exec(workload, &format!("nc -w 2 {address} {port} </dev/null"));
    output.contains(reply)
}

#[test]
fn a_tenant_reaches_nothing_of_the_host_another_tenant_or_private_addresses() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let Some(mut elsewhere) =
        namespace_or_skip(TestHost::create(&["169.254.169.254", "10.253.7.7"]))
    else {
        return;
    };
    elsewhere.serve(80, "metadata").expect("metadata server");
    let host_port = host_server("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&dir.path().join("node"), 2, |t| t);

    // A shared workload reaches all of them: the routes are real.
    let shared = node.run(json!({"image": image, "command": SLEEP}));
    let (_, shared_gateway) = addresses(&node.container(&shared));
    assert!(reaches(&node, &shared, "169.254.169.254", 80, "metadata"));
    assert!(reaches(&node, &shared, "10.253.7.7", 80, "metadata"));
    assert!(reaches(&node, &shared, &shared_gateway, host_port, "host"));

    // Two tenants: one serves on its own network, the other tries everything.
    let serving = node.run(json!({
        "image": image,
        "isolation": "tenant",
        "command": ["sh", "-c", "nc -ll -p 8080 -e /bin/echo tenant-a"],
    }));
    let probing = node.run(json!({"image": image, "isolation": "tenant", "command": SLEEP}));
    let (serving_ip, _) = addresses(&node.container(&serving));
    let (probing_ip, probing_gateway) = addresses(&node.container(&probing));
    assert!(!serving_ip.is_empty() && !probing_ip.is_empty());
    assert!(
        reaches(&node, &serving, "127.0.0.1", 8080, "tenant-a"),
        "the serving tenant must answer for the checks below to mean anything"
    );
    for (address, port, reply, what) in [
        ("169.254.169.254", 80, "metadata", "the metadata address"),
        ("10.253.7.7", 80, "metadata", "a private address"),
        (
            probing_gateway.as_str(),
            host_port,
            "host",
            "this host's ports",
        ),
        (serving_ip.as_str(), 8080, "tenant-a", "another tenant"),
    ] {
        assert!(
            !reaches(&node, &probing, address, port, reply),
            "a tenant reached {what} ({address}:{port})"
        );
    }
    // The tenant's own profile, as Docker holds it.
    let container = node.container(&probing);
    assert_eq!(
        docker_inspect(&container, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    assert_eq!(
        docker_inspect(&container, "{{.Config.User}}"),
        "65534:65534"
    );
    assert_eq!(
        docker_inspect(&container, "{{.HostConfig.CapDrop}}"),
        "[ALL]"
    );
    assert!(
        docker_inspect(&container, "{{.HostConfig.SecurityOpt}}").contains("no-new-privileges")
    );
    let (code, _) = node.exec(&probing, "touch /etc/x");
    assert_ne!(code, 0, "the root filesystem is read-only");
    let (code, _) = node.exec(&probing, "touch /tmp/x");
    assert_eq!(code, 0, "/tmp is writable");
}

#[test]
fn a_fork_bomb_and_a_memory_hog_are_contained() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&dir.path().join("node"), 1, |text| {
        text.replace("pids_limit = 4096", "pids_limit = 64")
            .replace(
                "memory_mib_without_gpus = 2048",
                "memory_mib_without_gpus = 64",
            )
    });
    let neighbour = node.run(json!({"image": image, "isolation": "tenant", "command": SLEEP}));
    let bomb = node.run(json!({
        "image": image,
        "isolation": "tenant",
        "command": ["sh", "-c", "bomb() { bomb | bomb & }; bomb; exec sleep 600"],
    }));
    std::thread::sleep(Duration::from_secs(3));
    let stats = node.ok("workload.stats", &json!({"workload": bomb}));
    let pids = stats["pids"].as_u64().unwrap_or(0);
    assert!(
        pids <= 64,
        "the fork bomb is capped at the PID limit: {stats}"
    );
    // The node and the other tenant still answer.
    let health = node.ok("node.health", &json!({}));
    assert!(health["status"].is_string(), "{health}");
    let (code, output) = node.exec(&neighbour, "echo still-here");
    assert_eq!((code, output.trim()), (0, "still-here"));
    node.ok(
        "workload.stop",
        &json!({"workload": bomb, "timeout_secs": 1}),
    );

    let hog = node.run(json!({
        "image": image,
        "isolation": "tenant",
        "command": ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"],
    }));
    let ended = eventually(Duration::from_secs(60), "the memory hog killed", || {
        let listed = node.ok("workload.list", &json!({}));
        listed["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["id"] == hog.as_str() && w["state"] == "exited")
            .cloned()
    });
    assert!(
        ended["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("out of memory"),
        "{ended}"
    );
    let (code, _) = node.exec(&neighbour, "true");
    assert_eq!(code, 0);
}

#[test]
fn gpu_visibility_is_the_nodes_alone() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&dir.path().join("node"), 3, |t| t);
    let workload = node.run(json!({
        "image": image,
        "isolation": "tenant",
        "gpus": 2,
        "command": SLEEP,
        "env": {
            "NVIDIA_VISIBLE_DEVICES": "all",
            "CUDA_VISIBLE_DEVICES": "0,1,2",
            "CLAWBERNETES_GPUS": "GPU-everything",
        },
    }));
    let record = node.ok("workload.inspect", &json!({"workload": workload}));
    let mine: Vec<&str> = record["workload"]["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(mine.len(), 2);
    let (_, env) = node.exec(&workload, "env");
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(value("CLAWBERNETES_GPUS"), mine.join(","));
    assert_eq!(value("NVIDIA_VISIBLE_DEVICES"), mine.join(","));
    assert_eq!(value("CUDA_VISIBLE_DEVICES"), "0,1");
}

#[test]
fn a_symlink_swapped_under_a_volume_root_is_never_mounted() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("volumes");
    std::fs::create_dir_all(root.join("data")).expect("root");
    std::fs::write(root.join("data/marker"), "inside").expect("marker");
    // Every image check is held for a second: a wide window between the node's checks and the
    // container's creation.
    let docker = DockerProxy::holding(
        &dir.path().join("docker.sock"),
        Hold::ImageChecks,
        Duration::from_secs(1),
    );
    let root_text = root.display().to_string();
    let socket = docker.path().display().to_string();
    let node = Node::start(&dir.path().join("node"), 0, move |text| {
        text.replace(
            "[workloads]\n",
            &format!("[workloads]\ndocker_socket = {socket:?}\n"),
        )
        .replace(
            "writable_volume_roots = []",
            &format!("writable_volume_roots = [{root_text:?}]"),
        )
    });
    let data = root.join("data");
    let real = root.join("data.real");
    for round in 0..5 {
        let swapping = Arc::new(AtomicBool::new(true));
        let swapper = {
            let (swapping, data, real) = (Arc::clone(&swapping), data.clone(), real.clone());
            std::thread::spawn(move || {
                while swapping.load(Ordering::SeqCst) {
                    let _ = std::fs::rename(&data, &real);
                    let _ = std::os::unix::fs::symlink("/", &data);
                    std::thread::sleep(Duration::from_millis(3));
                    let _ = std::fs::remove_file(&data);
                    let _ = std::fs::rename(&real, &data);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        let started = node.invoke(
            "workload.run",
            &json!({
                "image": image,
                "command": SLEEP,
                "volumes": [{"host": data.display().to_string(), "container": "/data"}],
            }),
        );
        swapping.store(false, Ordering::SeqCst);
        swapper.join().expect("swapper");
        match started {
            // Checked while the symlink was there: refused.
            Err(error) => assert!(
                error.contains("symlink") || error.contains("No such file"),
                "round {round}: {error}"
            ),
            Ok(answer) => {
                let workload = answer["id"].as_str().expect("id").to_owned();
                let (_, listing) = node.exec(&workload, "ls /data");
                assert_eq!(
                    listing.trim(),
                    "marker",
                    "round {round}: the container mounted something else"
                );
                node.ok(
                    "workload.stop",
                    &json!({"workload": workload, "remove": true}),
                );
            }
        }
    }
    drop(docker);
}

#[test]
fn a_stopped_tenant_leaves_nothing_behind_but_its_logs() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&dir.path().join("node"), 1, |t| t);
    let workload = node.run(json!({
        "image": image,
        "isolation": "tenant",
        "command": ["sh", "-c", "echo said-something; trap 'exit 0' TERM; sleep 600 & wait"],
    }));
    let rules = || claw_tests::tenant_firewall_rules(&workload);
    let networks = || claw_tests::tenant_networks(&workload);
    assert!(rules() > 0, "the tenant's rules are installed");
    assert_eq!(networks(), 1, "the tenant has its network");
    node.ok("workload.stop", &json!({"workload": workload}));
    assert_eq!(rules(), 0, "no rule stays");
    assert_eq!(networks(), 0, "no network stays");
    assert!(
        claw_tests::node_containers(node.peer_id(), true).is_empty(),
        "no container stays"
    );
    let logs = node.ok("workload.logs", &json!({"workload": workload}));
    assert_eq!(logs["kept"], true, "{logs}");
    assert!(
        logs["lines"].to_string().contains("said-something"),
        "{logs}"
    );
}

#[test]
fn a_read_role_peer_sees_redacted_workloads_and_manages_none() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&dir.path().join("node"), 1, |t| t);
    let workload = node.run(json!({"image": image, "command": ["sleep", "600"]}));
    let peer = Clawnode::new(&dir.path().join("peer"));
    peer.ok(&["init"]);
    let _peer_running = RunningNode::start(&peer, &node.running.listen_addrs);
    let listed = eventually(
        Duration::from_secs(30),
        "the peer reaching the node",
        || {
            peer.invoke(Some(node.peer_id()), "workload.list", &json!({}))
                .ok()
        },
    );
    let seen = listed["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["id"] == workload.as_str()))
        .expect("the workload is listed")
        .clone();
    assert_eq!(seen["command"], json!([]), "{seen}");
    assert!(seen["owner"].is_null(), "{seen}");
    assert_eq!(seen["redacted"], true);
    for (command, params) in [
        ("workload.stop", json!({"workload": workload})),
        ("workload.logs", json!({"workload": workload})),
        (
            "container.exec",
            json!({"workload": workload, "argv": ["true"]}),
        ),
    ] {
        let refused = peer
            .invoke(Some(node.peer_id()), command, &params)
            .expect_err("a read-role peer");
        assert!(refused.contains("UNAUTHORIZED"), "{command}: {refused}");
    }
    // The node's own operator sees it whole.
    let own = node.ok("workload.inspect", &json!({"workload": workload}));
    assert_eq!(own["workload"]["command"], json!(["sleep", "600"]));
}

#[test]
fn a_node_restarted_after_a_crash_clears_its_own_tenants_leftovers_and_no_one_elses() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the Docker Engine and the test image")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let neighbour = Node::start(&dir.path().join("neighbour"), 1, |t| t);
    let theirs = neighbour.run(json!({"image": image, "isolation": "tenant", "command": SLEEP}));
    let rules_before = claw_tests::tenant_firewall_rules(&theirs);
    assert!(rules_before > 0);

    let cli = Node::init(&dir.path().join("crashing"), 1, |t| t);
    let running = RunningNode::start(&cli, &[]);
    let peer = running.peer_id.clone();
    let ours = cli
        .invoke(
            None,
            "workload.run",
            &json!({"image": image, "isolation": "tenant", "command": SLEEP}),
        )
        .expect("tenant run");
    let ours = ours["id"].as_str().expect("id").to_owned();
    // kill -9, and the container goes while the node is down.
    running.kill();
    for container in claw_tests::node_containers(&peer, true) {
        run_with_deadline(
            Command::new("docker").args(["rm", "-f", &container]),
            Duration::from_secs(30),
        );
    }
    assert!(claw_tests::tenant_firewall_rules(&ours) > 0);
    let restarted = Node {
        running: RunningNode::start(&cli, &[]),
        cli,
    };
    // Reconciled at start: its own leftovers gone, its neighbour's tenant untouched.
    let record = restarted.ok("workload.inspect", &json!({"workload": ours}));
    assert_eq!(record["workload"]["state"], "lost", "{record}");
    assert_eq!(claw_tests::tenant_firewall_rules(&ours), 0);
    assert_eq!(claw_tests::tenant_networks(&ours), 0);
    assert_eq!(claw_tests::tenant_firewall_rules(&theirs), rules_before);
    assert_eq!(claw_tests::tenant_networks(&theirs), 1);
    let (code, said) = neighbour.exec(&theirs, "echo still-here");
    assert_eq!((code, said.trim()), (0, "still-here"));
}
