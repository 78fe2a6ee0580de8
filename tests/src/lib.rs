//! Shared helpers for the end-to-end tests: find the workspace's binaries and the external parts
//! the test script prepared, and run commands with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod agent_fleet;
pub mod deployments;
#[cfg(unix)]
mod docker_proxy;
pub mod nat_nodes;
mod netns;

pub use agent_fleet::{AgentFleet, FleetNode, NodeSpec, plugin_path, write_secret};
pub use netns::{HostEngine, Internet, Link, NetHost, TestHost, made_or_skip, namespace_or_skip};

/// The GPU model test nodes simulate.
pub const SIMULATED_MODEL: &str = "NVIDIA H100 80GB HBM3";

/// The containers Docker holds for the node with `peer` id (by its label): all of them, or the
/// running ones.
pub fn node_containers(peer: &str, all: bool) -> Vec<String> {
    let filter = format!("label=io.clawbernetes.node={peer}");
    let mut args = vec!["ps", "-q", "--filter", &filter];
    if all {
        args.push("-a");
    }
    let output = run_with_deadline(Command::new("docker").args(&args), Duration::from_secs(30));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Unmounts every filesystem mounted under `dir` (a node's data directory: its staging points of
/// host volumes, its size-limited volumes), deepest first: what a node killed with -9 left
/// mounted would otherwise outlive the test's temporary directory.
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let _ = run_with_deadline(Command::new("umount").arg(&point), Duration::from_secs(30));
    }
}

/// Removes what the node with `peer` id left on this host when a test stops it without asking it
/// to clean up (`kill -9`): every container, running or not, then its tenant networks and their
/// firewall rules.
pub fn remove_node_containers(peer: &str) {
    for id in node_containers(peer, true) {
        let _ = run_with_deadline(
            Command::new("docker").args(["rm", "-f", &id]),
            Duration::from_secs(30),
        );
    }
    let filter = format!("label=io.clawbernetes.node={peer}");
    let networks = run_with_deadline(
        Command::new("docker").args(["network", "ls", "-q", "--filter", &filter]),
        Duration::from_secs(30),
    );
    for id in String::from_utf8_lossy(&networks.stdout).lines() {
        let _ = run_with_deadline(
            Command::new("docker").args(["network", "rm", id]),
            Duration::from_secs(30),
        );
    }
    let tag = format!("\"clawbernetes:{peer}:");
    for chain in ["INPUT", "DOCKER-USER"] {
        let listed = run_with_deadline(
            Command::new("iptables").args(["-w", "-S", chain]),
            Duration::from_secs(30),
        );
        for rule in String::from_utf8_lossy(&listed.stdout).lines() {
            let Some(spec) = rule.strip_prefix("-A ").filter(|_| rule.contains(&tag)) else {
                continue;
            };
            // The comment is the only quoted word, and has no spaces.
            let args: Vec<&str> = spec
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .collect();
            let _ = run_with_deadline(
                Command::new("iptables").arg("-w").arg("-D").args(&args),
                Duration::from_secs(30),
            );
        }
    }
}
/// How many of the host's iptables rules are tagged for tenant workload `workload`.
pub fn tenant_firewall_rules(workload: &str) -> usize {
    // Tagged `clawbernetes:<node>:<workload>`.
    let tail = format!(":{workload}\"");
    let output = run_with_deadline(
        Command::new("iptables").args(["-S"]),
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("\"clawbernetes:") && line.contains(&tail))
        .count()
}

/// How many Docker networks are labelled for tenant workload `workload`.
pub fn tenant_networks(workload: &str) -> usize {
    let filter = format!("label=io.clawbernetes.workload={workload}");
    let output = run_with_deadline(
        Command::new("docker").args(["network", "ls", "-q", "--filter", &filter]),
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&output.stdout).lines().count()
}

#[cfg(unix)]
pub use docker_proxy::{DockerProxy, Hold};

/// The path of a binary built from this workspace (`cargo build --workspace --bins`).
///
/// Panics with the command to run when it has not been built: a test that needs it must fail,
/// not skip.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Makes an initialised node announce every second and accept peers on its own address, as the
/// multi-process tests on loopback need.
pub fn announce_every_second(node: &Clawnode) {
    let path = node.data_dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config written by init");
    let text = text
        .replace("announce_interval_secs = 10", "announce_interval_secs = 1")
        .replace(
            "allow_colocated_peers = false",
            "allow_colocated_peers = true",
        );
    std::fs::write(&path, text).expect("config rewritten");
}

/// The fields of the bridge's answers the OpenClaw plugin reads, by command
/// (`plugin/openclaw-clawbernetes/contract/bridge-fields.json`).
pub fn plugin_fields() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugin/openclaw-clawbernetes/contract/bridge-fields.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the plugin's contract"))
        .expect("contract JSON")
}

/// Whether `value` has `path` (dot-separated; `[]` steps into every element of an array).
fn has_path(value: &serde_json::Value, path: &str) -> bool {
    let (step, rest) = match path.split_once('.') {
        Some((step, rest)) => (step, Some(rest)),
        None => (path, None),
    };
    match step.strip_suffix("[]") {
        Some(key) => {
            let Some(items) = value.get(key).and_then(serde_json::Value::as_array) else {
                return false;
            };
            rest.is_none_or(|rest| items.iter().all(|item| has_path(item, rest)))
        }
        None => value
            .get(step)
            .is_some_and(|next| rest.is_none_or(|rest| has_path(next, rest))),
    }
}

/// Checks a real `answer` of `command` against the fields the OpenClaw plugin reads from it
/// ([`plugin_fields`]).
pub fn check_contract(contract: &serde_json::Value, command: &str, answer: &serde_json::Value) {
    for path in contract[command].as_array().expect("contracted command") {
        let path = path.as_str().expect("path");
        assert!(
            has_path(answer, path),
            "{command} lacks {path}, which the plugin reads: {answer}"
        );
    }
}

/// A part the test script provides through an environment variable.
///
/// Returns `None`, after saying so on stderr, when it is absent and the run is not strict; under
/// `CLAW_TEST_STRICT=1` (set by `scripts/test.sh`) a missing part fails the test.
pub fn required_part(variable: &str, what: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let strict = std::env::var("CLAW_TEST_STRICT").is_ok_and(|v| v == "1");
            assert!(
                !strict,
                "{variable} is not set: {what} is required (scripts/test.sh prepares it)"
            );
            eprintln!(
                "SKIPPED: {variable} is not set, so {what} is unavailable; run scripts/test.sh"
            );
            None
        }
    }
}

/// What a test with the real OpenClaw gateway and Docker needs: Node 24, the openclaw package
/// and the local busybox test image; `None` (each missing part said, see [`required_part`]) when
/// one is missing.
pub fn gateway_parts() -> Option<(String, String, String)> {
    let node24 = required_part("CLAW_NODE24", "Node 24 for the OpenClaw gateway");
    let openclaw = required_part("CLAW_OPENCLAW", "the openclaw package");
    let image = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    );
    Some((node24?, openclaw?, image?))
}

/// A TCP port free on loopback right now, below the kernel's ephemeral range (32768 and up), so
/// that no outgoing connection or `:0` listener of a test running beside this one takes it
/// between now and its use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..4096 {
        let turn = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(turn.wrapping_mul(7_919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback between 20000 and 32000")
}

/// The first of `count` neighbouring TCP ports all free on loopback right now.
pub fn free_port_range(count: u16) -> u16 {
    for _ in 0..64 {
        let base = free_port();
        let Some(end) = base.checked_add(count) else {
            continue;
        };
        let all_free = (base..end).all(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no {count} free neighbouring ports on loopback")
}

/// A TCP port free on loopback right now whose next port is free too: what a chain needs for its
/// JSON-RPC endpoint and, at the port + 1, its PubSub endpoint.
pub fn free_port_pair() -> u16 {
    for _ in 0..64 {
        let Ok(first) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Some(port) = first.local_addr().ok().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free neighbouring ports on loopback")
}

/// Runs `command` to completion, killing it after `deadline`. Its output is read while it
/// runs, so a command that prints more than a pipe holds still finishes.
pub fn run_with_deadline(command: &mut Command, deadline: Duration) -> Output {
    use std::io::Read as _;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let (out, err) = (
                    stdout.join().unwrap_or_default(),
                    stderr.join().unwrap_or_default(),
                );
                panic!(
                    "{command:?} did not finish within {deadline:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&err)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {command:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A `clawnode` invocation against one data directory.
#[derive(Debug)]
pub struct Clawnode {
    binary: PathBuf,
    data_dir: PathBuf,
    /// The network namespace it runs in (an [`Internet`] host), if not this machine's own.
    netns: Option<String>,
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    /// Whether it exited 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// Standard output parsed as JSON; panics with both streams when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e})\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Clawnode {
    /// `clawnode` with `--data-dir data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            binary: workspace_binary("clawnode"),
            data_dir: data_dir.to_path_buf(),
            netns: None,
        }
    }

    /// `clawnode` with `--data-dir data_dir`, run inside network namespace `netns`.
    pub fn in_namespace(data_dir: &Path, netns: &str) -> Self {
        Self {
            netns: Some(netns.to_owned()),
            ..Self::new(data_dir)
        }
    }

    /// The program to run: the binary, or `ip netns exec <ns> <binary>`.
    fn program(&self) -> Command {
        match &self.netns {
            None => Command::new(&self.binary),
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&self.binary);
                command
            }
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `clawnode --data-dir D <args>` with a 60 s deadline.
    pub fn run(&self, args: &[&str]) -> Finished {
        self.run_command(&mut self.command(args))
    }

    /// `clawnode <args>` on this data directory, with none of the caller's `CLAWNODE_*`
    /// settings.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.program();
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("CLAWNODE_DATA_DIR")
            .env_remove("CLAWNODE_API_KEY")
            .env("RUST_LOG", "warn");
        command
    }

    /// Runs `command` to its end (at most a minute).
    fn run_command(&self, command: &mut Command) -> Finished {
        let output = run_with_deadline(command, Duration::from_secs(60));
        Finished {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `clawnode invoke` of `command` on the running node, or through it on `node`, with a 90 s
    /// deadline: the result, or the error text on stderr.
    pub fn invoke(
        &self,
        node: Option<&str>,
        command: &str,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.invoke_with_key(node, command, params, None)
    }

    /// `clawnode invoke` with an idempotency key, when one is given.
    pub fn invoke_with_key(
        &self,
        node: Option<&str>,
        command: &str,
        params: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        let params = params.to_string();
        let mut args = vec![
            "invoke",
            command,
            "--params",
            &params,
            "--timeout-ms",
            "90000",
        ];
        if let Some(node) = node {
            args.extend(["--node", node]);
        }
        if let Some(key) = idempotency_key {
            args.extend(["--idempotency-key", key]);
        }
        let finished = self.run(&args);
        if finished.success {
            Ok(finished.json())
        } else {
            Err(finished.stderr)
        }
    }

    /// `clawnode invoke` under API key `api_key`, given as a script would give it: in
    /// `CLAWNODE_API_KEY`. The answer, or the error text.
    pub fn invoke_under_key(
        &self,
        node: Option<&str>,
        command: &str,
        params: &serde_json::Value,
        api_key: &str,
    ) -> Result<serde_json::Value, String> {
        let params = params.to_string();
        let mut args = vec!["invoke", command, "--params", &params];
        if let Some(node) = node {
            args.extend(["--node", node]);
        }
        let finished = self.run_command(self.command(&args).env("CLAWNODE_API_KEY", api_key));
        if finished.success {
            Ok(finished.json())
        } else {
            Err(finished.stderr)
        }
    }

    /// `clawnode init`, with `gpus` simulated [`SIMULATED_MODEL`] GPUs (none: only what NVML finds).
    pub fn init_with_simulated_gpus(&self, gpus: u32) {
        let spec = format!("{SIMULATED_MODEL}:{gpus}:81559");
        let mut args = vec!["init"];
        if gpus > 0 {
            args.extend(["--simulated-gpu", &spec]);
        }
        self.ok(&args);
    }

    /// Runs a command that must succeed, and returns its output.
    pub fn ok(&self, args: &[&str]) -> Finished {
        let finished = self.run(args);
        assert!(
            finished.success,
            "clawnode {args:?} failed\nstdout: {}\nstderr: {}",
            finished.stdout, finished.stderr
        );
        finished
    }

    /// Runs a command that must fail, and returns its output.
    pub fn fails(&self, args: &[&str]) -> Finished {
        let finished = self.run(args);
        assert!(
            !finished.success,
            "clawnode {args:?} succeeded but should have failed\nstdout: {}",
            finished.stdout
        );
        finished
    }
}

/// `clawnode` started for a test: `--data-dir dir`, the test's log level (`CLAW_TEST_NODE_LOG`, a
/// `RUST_LOG` filter, shows more of the nodes' logs), stdout piped and stderr inherited.
fn node_command(mut command: Command, dir: &Path) -> Command {
    command
        .arg("--data-dir")
        .arg(dir)
        .env_remove("CLAWNODE_DATA_DIR")
        .env(
            "RUST_LOG",
            std::env::var("CLAW_TEST_NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// The first line `child` prints on its piped stdout, if it prints one within `patience`.
fn first_line(child: &mut Child, patience: Duration) -> Option<String> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(patience).ok()
}

/// A `clawnode run` process, killed when dropped.
#[derive(Debug)]
pub struct RunningNode {
    child: std::process::Child,
    /// The node's peer id.
    pub peer_id: String,
    /// Addresses others can bootstrap from (`…/p2p/<peer id>`).
    pub listen_addrs: Vec<String>,
    /// Where its Prometheus metrics are served (`host:port`).
    pub metrics: String,
}

impl RunningNode {
    /// Starts `clawnode run` on loopback for an initialised `node`, joining through `bootstrap`,
    /// and waits for it to report its addresses.
    pub fn start(node: &Clawnode, bootstrap: &[String]) -> Self {
        Self::spawn(node_command(node.program(), &node.data_dir), bootstrap)
    }

    /// Starts `clawnode run` listening on `listen` (in the node's namespace, if it has one).
    pub fn start_listening(node: &Clawnode, listen: &[String], bootstrap: &[String]) -> Self {
        let mut command = node_command(node.program(), &node.data_dir);
        command.args(["--json", "run"]);
        for address in listen {
            command.args(["--listen", address]);
        }
        Self::launch(command, bootstrap)
    }

    /// [`RunningNode::start`], with every log line down to `debug` written to `log`.
    pub fn start_logged(node: &Clawnode, bootstrap: &[String], log: &Path) -> Self {
        let mut command = node_command(node.program(), &node.data_dir);
        let file = std::fs::File::create(log).expect("log file");
        command
            .env(
                "RUST_LOG",
                "debug,libp2p=info,libp2p_gossipsub=info,hyper=info",
            )
            .stderr(file);
        Self::spawn(command, bootstrap)
    }

    fn spawn(mut command: Command, bootstrap: &[String]) -> Self {
        command.args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"]);
        Self::launch(command, bootstrap)
    }

    fn launch(mut command: Command, bootstrap: &[String]) -> Self {
        command.args(["--metrics", "127.0.0.1:0"]);
        for address in bootstrap {
            command.args(["--bootstrap", address]);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start clawnode run: {e}"));
        let Some(line) = first_line(&mut child, Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("clawnode run did not report its addresses within 30 s");
        };
        let started: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("clawnode run printed {line:?}: {e}"));
        let listen_addrs = started["listen_addrs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            child,
            peer_id: started["peer_id"].as_str().unwrap_or_default().to_owned(),
            metrics: started["metrics"].as_str().unwrap_or_default().to_owned(),
            listen_addrs,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Scrapes its `/metrics`: the OpenMetrics text.
    pub fn scrape_metrics(&self) -> String {
        http_get(&self.metrics, "/metrics")
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process with SIGTERM and waits for it to exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` from `addr` (`host:port`) over plain HTTP/1.0; the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP body from {addr}{path}: {answer}"));
    let status = head.split_whitespace().nth(1);
    assert_eq!(status, Some("200"), "{addr}{path}: {head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels exactly as exposed, e.g.
/// `clawnode_invokes_total{command="gpu.list",outcome="ok"}`) in an OpenMetrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// A `clawnode up` process, killed when dropped.
#[derive(Debug)]
pub struct Up(Child);

impl Up {
    /// Starts `clawnode --data-dir dir --json up --nodes N --rpc-port P` and waits (up to 120 s)
    /// for its ready line, which it returns.
    pub fn start(dir: &Path, nodes: u32, rpc_port: u16) -> (Self, serde_json::Value) {
        let mut child = node_command(Command::new(workspace_binary("clawnode")), dir)
            .args(["--json", "up", "--nodes", &nodes.to_string()])
            .args(["--rpc-port", &rpc_port.to_string()])
            .spawn()
            .expect("clawnode up");
        let line = first_line(&mut child, Duration::from_secs(120));
        let up = Self(child);
        let line = line.expect("clawnode up reports its fleet within 120 s");
        let ready = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        (up, ready)
    }

    /// SIGINT (Ctrl-C), then waits (up to 90 s) for it to exit; panics unless it exits 0.
    pub fn stop(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                assert!(status.success(), "clawnode up exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "clawnode up did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    eventually_showing(limit, what, || check().ok_or_else(String::new))
}

/// [`eventually`], with `check` saying what it saw while it is not yet done (`Err`): a timeout
/// shows the last of those.
pub fn eventually_showing<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}{}{seen}",
                if seen.is_empty() { "" } else { ": " }
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The chain a test's nodes settle on: a `clawnode localnet` process serving the embedded chain
/// from a data directory, or a real `solana-test-validator` set up with MOLT by `clawnode
/// localnet --use-rpc`. Killed when dropped.
#[derive(Debug)]
pub struct Localnet {
    child: std::process::Child,
    _ledger: Option<tempfile::TempDir>,
    /// The JSON-RPC URL.
    pub url: String,
    /// The MOLT mint's address.
    pub mint: String,
    /// The faucet wallet's address (its keypair is in the data directory).
    pub faucet: String,
}

impl Localnet {
    /// Starts the embedded chain on a free loopback port for the initialised `node`, whose
    /// config is pointed at it, and waits for its mint.
    pub fn start(node: &Clawnode) -> Self {
        Self::serve(node, "127.0.0.1", free_port_pair())
    }

    /// Starts the embedded chain at `address:8899` in `node`'s namespace (an [`Internet`]
    /// host), for nodes on other hosts of that internet.
    pub fn start_at(node: &Clawnode, address: &str) -> Self {
        Self::serve(node, address, 8899)
    }

    fn serve(node: &Clawnode, address: &str, port: u16) -> Self {
        let url = format!("http://{address}:{port}");
        node.edit_config(|text| {
            text.replace(
                "rpc_url = \"http://127.0.0.1:8899\"",
                &format!("rpc_url = {url:?}"),
            )
        });
        let child = node
            .program()
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["localnet", "--rpc-address", address])
            .args(["--rpc-port", &port.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start clawnode localnet: {e}"));
        let mut localnet = Self {
            child,
            _ledger: None,
            url,
            mint: String::new(),
            faucet: String::new(),
        };
        localnet.read_info(node);
        localnet
    }

    /// Starts `solana-test-validator` (`binary`) on free loopback ports with a fresh ledger,
    /// sets up the MOLT mint and faucet on it for the initialised `node`, whose config is pointed
    /// at it.
    pub fn validator(node: &Clawnode, binary: &str) -> Self {
        let ledger = tempfile::tempdir().expect("ledger dir");
        let base = free_port_range(40);
        let (rpc, faucet, gossip) = (base, base + 2, base + 3);
        let child = Command::new(binary)
            .args(["--bind-address", "127.0.0.1", "--quiet", "--reset"])
            .args(["--rpc-port", &rpc.to_string()])
            .args(["--faucet-port", &faucet.to_string()])
            .args(["--gossip-port", &gossip.to_string()])
            .args([
                "--dynamic-port-range",
                &format!("{}-{}", base + 5, base + 39),
            ])
            .arg("--ledger")
            .arg(ledger.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start solana-test-validator: {e}"));
        let url = format!("http://127.0.0.1:{rpc}");
        node.edit_config(|text| {
            text.replace(
                "rpc_url = \"http://127.0.0.1:8899\"",
                &format!("rpc_url = {url:?}"),
            )
        });
        let mut localnet = Self {
            child,
            _ledger: Some(ledger),
            url: url.clone(),
            mint: String::new(),
            faucet: String::new(),
        };
        let setup = run_with_deadline(
            Command::new(&node.binary)
                .arg("--data-dir")
                .arg(&node.data_dir)
                .args(["localnet", "--use-rpc", &url])
                .env("RUST_LOG", "warn"),
            Duration::from_secs(120),
        );
        assert!(
            setup.status.success(),
            "clawnode localnet --use-rpc {url}: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
        localnet.read_info(node);
        localnet
    }

    fn read_info(&mut self, node: &Clawnode) {
        let info = eventually(Duration::from_secs(60), "localnet.json", || {
            let bytes = std::fs::read(node.data_dir.join("localnet.json")).ok()?;
            serde_json::from_slice::<serde_json::Value>(&bytes).ok()
        });
        self.mint = info["molt_mint"].as_str().unwrap_or_default().to_owned();
        self.faucet = info["faucet"].as_str().unwrap_or_default().to_owned();
    }

    /// The `[chain]` lines that point a node at this chain and mint.
    pub fn chain_config(&self) -> String {
        format!("rpc_url = {:?}\nmolt_mint = {:?}\n", self.url, self.mint)
    }
}

impl Drop for Localnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Clawnode {
    /// Rewrites the data directory's `config.toml` through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.data_dir.join("config.toml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(&path, edit(text)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Configures a node for a local market fleet on loopback: announcements every second,
    /// colocated peers, streams pulled and checkpoints signed every second, the arbiter asked
    /// after 5 s without an answer from a provider, `chain` lines replacing the default RPC URL
    /// (when given), and each `key = value` line of `market` set in `[market]`.
    pub fn configure_market(&self, market: &str, chain: &str) {
        self.edit_config(|text| {
            let mut text = text
                .replace("announce_interval_secs = 10", "announce_interval_secs = 1")
                .replace(
                    "allow_colocated_peers = false",
                    "allow_colocated_peers = true",
                )
                .replace("stream_pull_secs = 60", "stream_pull_secs = 1")
                .replace("checkpoint_secs = 60", "checkpoint_secs = 1")
                .replace("unreachable_grace_secs = 120", "unreachable_grace_secs = 5");
            if !chain.is_empty() {
                text = text.replace("rpc_url = \"http://127.0.0.1:8899\"\n", chain);
            }
            for line in market.lines().filter(|l| !l.trim().is_empty()) {
                let key = line.split('=').next().unwrap_or_default().trim();
                let section = text.find("[market]\n").expect("a [market] section") + 9;
                let end = text[section..]
                    .find("\n[")
                    .map_or(text.len(), |i| section + i + 1);
                let existing = text[section..end]
                    .lines()
                    .find(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
                    .map(str::to_owned);
                text = match existing {
                    Some(old) => {
                        let at = section + text[section..end].find(&old).unwrap_or(0);
                        format!("{}{line}{}", &text[..at], &text[at + old.len()..])
                    }
                    None => format!("{}{line}\n{}", &text[..section], &text[section..]),
                };
            }
            text
        });
    }
}

/// The token the test gateway accepts.
pub const TOKEN: &str = "gateway-test-token";

/// A real OpenClaw gateway on loopback with an isolated state directory and [`TOKEN`], killed
/// when dropped.
#[derive(Debug)]
pub struct OpenClawGateway {
    node24: String,
    openclaw: String,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
    /// The CA that signed its certificate, when it serves TLS.
    tls_ca: Option<std::path::PathBuf>,
}

impl OpenClawGateway {
    /// A gateway run by `node24` from the `openclaw` package, in `dir`, allowing `allow` node commands.
    pub fn new(node24: String, openclaw: String, dir: &std::path::Path, allow: &[String]) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir.join("home")).expect("home");
        std::fs::create_dir_all(dir.join("state")).expect("state");
        let config = serde_json::json!({
            "gateway": {
                "mode": "local", "bind": "loopback", "port": port,
                "auth": {"mode": "token", "token": TOKEN},
                "nodes": {"commands": {"allow": allow}},
            },
            "update": {"checkOnStart": false},
            "discovery": {"mdns": {"mode": "off"}},
        });
        std::fs::write(dir.join("state/openclaw.json"), config.to_string()).expect("config");
        Self {
            node24,
            openclaw,
            dir: dir.to_path_buf(),
            port,
            child: None,
            tls_ca: None,
        }
    }

    /// Serves TLS (`wss://`) with the certificate and key in `cert` and `key`, signed by the CA
    /// in `ca` (which its own CLI then trusts). Call before `start`.
    pub fn serve_tls(&mut self, cert: &Path, key: &Path, ca: &Path) {
        let path = self.dir.join("state/openclaw.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("config JSON");
        config["gateway"]["tls"] = serde_json::json!({
            "enabled": true, "autoGenerate": false,
            "certPath": cert, "keyPath": key,
        });
        std::fs::write(&path, config.to_string()).expect("config");
        self.tls_ca = Some(ca.to_path_buf());
    }

    /// Its WebSocket URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.node24);
        command
            .arg(&self.openclaw)
            .env("HOME", self.dir.join("home"))
            .env("OPENCLAW_STATE_DIR", self.dir.join("state"))
            .env("OPENCLAW_CONFIG_PATH", self.dir.join("state/openclaw.json"))
            .env("OPENCLAW_SKIP_CHANNELS", "1")
            .env("OPENCLAW_DISABLE_BONJOUR", "1")
            .env("OPENCLAW_NO_RESPAWN", "1");
        if let Some(ca) = &self.tls_ca {
            command.env("NODE_EXTRA_CA_CERTS", ca);
        }
        command
    }

    /// Starts it and waits for `/healthz`.
    pub fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("gateway.log")).expect("log");
        let child = self
            .command()
            .args([
                "gateway",
                "run",
                "--dev",
                "--allow-unconfigured",
                "--bind",
                "loopback",
            ])
            .args([
                "--port",
                &self.port.to_string(),
                "--auth",
                "token",
                "--token",
                TOKEN,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("openclaw gateway run");
        self.child = Some(child);
        let port = self.port;
        if self.tls_ca.is_some() {
            // Behind TLS: listening is enough here; the test's own connections say the rest.
            eventually(
                Duration::from_secs(90),
                "the gateway's TLS listener",
                || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            );
            return;
        }
        eventually(Duration::from_secs(90), "the gateway's /healthz", || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.starts_with("HTTP/1.1 200").then_some(())
        });
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `openclaw <args> --url … --token …`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let url = self.url();
        run_with_deadline(
            self.command()
                .args(args)
                .args(["--url", &url, "--token", TOKEN]),
            Duration::from_secs(90),
        )
    }

    /// Starts `openclaw <args>` against the gateway, for a test to stop it midway.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        let url = self.url();
        self.command()
            .args(args)
            .args(["--url", &url, "--token", TOKEN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openclaw")
    }

    /// `openclaw nodes invoke` of `command` on `node`.
    pub fn invoke(&self, node: &str, command: &str, params: &str) -> Output {
        self.cli(&[
            "nodes",
            "invoke",
            "--node",
            node,
            "--command",
            command,
            "--params",
            params,
            "--json",
        ])
    }

    /// Runs `openclaw <args>` against the state directory only (no gateway URL or token).
    pub fn cli_local(&self, args: &[&str]) -> Output {
        run_with_deadline(self.command().args(args), Duration::from_secs(120))
    }

    /// Links the plugin at `path` into the gateway's config (`openclaw plugins install -l`) with
    /// `config` as its plugin config; takes effect at the next start.
    pub fn install_plugin(&self, path: &Path, config: serde_json::Value) {
        let path = path.display().to_string();
        let installed = self.cli_local(&[
            "plugins",
            "install",
            "-l",
            &path,
            "--force",
            "--accept-capabilities",
        ]);
        assert!(
            installed.status.success(),
            "plugins install: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let file = self.dir.join("state/openclaw.json");
        let mut settings: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("config"))
                .expect("config JSON");
        let id = "clawbernetes";
        settings["plugins"]["entries"][id]["config"] = config;
        std::fs::write(&file, settings.to_string()).expect("config");
    }

    /// Calls an agent tool through the gateway's HTTP tool endpoint (`POST /tools/invoke`).
    pub fn tool(&self, tool: &str, args: serde_json::Value) -> serde_json::Value {
        self.tools().call(tool, args, None)
    }

    /// A client of the gateway's HTTP tool endpoint, to call tools from another thread.
    pub fn tools(&self) -> ToolClient {
        ToolClient { port: self.port }
    }

    /// [`Self::cli`], parsed, when it succeeds.
    pub fn cli_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let output = self.cli(args);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }
}

/// The gateway's HTTP tool endpoint, as an agent's runtime calls it.
#[derive(Debug, Clone, Copy)]
pub struct ToolClient {
    port: u16,
}

impl ToolClient {
    /// Calls agent tool `tool` with `args`; with `idempotency_key`, the gateway gives the tool
    /// call the id `http-direct-operator-<key>`, as it would a retried agent call.
    pub fn call(
        &self,
        tool: &str,
        args: serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> serde_json::Value {
        use std::io::{Read as _, Write as _};
        let mut body = serde_json::json!({ "tool": tool, "args": args });
        if let Some(key) = idempotency_key {
            body["idempotencyKey"] = serde_json::json!(key);
        }
        let body = body.to_string();
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("gateway HTTP");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        write!(
            stream,
            "POST /tools/invoke HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        let (_, json) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP body: {answer}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{tool}: {e}: {json}"))
    }
}

impl Drop for OpenClawGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A market fleet's arbiter: a `clawnode run` node (no GPUs) whose wallet is every escrow's third
/// key, on the chain that `chain` (a [`Localnet::chain_config`]) names.
#[derive(Debug)]
pub struct Arbiter {
    /// The running node.
    pub node: MarketNode,
    /// Its wallet's address.
    pub wallet: String,
}

impl Arbiter {
    /// Initialises the arbiter in `data_dir` and starts it.
    pub fn start(data_dir: &Path, chain: &str) -> Self {
        let cli = MarketNode::init(Clawnode::new(data_dir), 0);
        cli.configure_market("arbitrate = true\n", chain);
        let wallet = cli.ok(&["wallet", "address"]).stdout.trim().to_owned();
        Self {
            node: MarketNode::start(cli, &[]),
            wallet,
        }
    }

    /// `[market]` lines for a node that trades with this arbiter, then `extra`.
    pub fn market_config(&self, extra: &str) -> String {
        format!(
            "arbiter = {:?}\narbiter_peer = {:?}\n{extra}",
            self.wallet, self.node.peer_id
        )
    }
}

/// A market fleet's `clawnode run` process; its containers are removed when it is dropped.
#[derive(Debug)]
pub struct MarketNode {
    /// Its CLI.
    pub cli: Clawnode,
    /// The running process, while it runs.
    pub running: Option<RunningNode>,
    /// Its peer id.
    pub peer_id: String,
}

impl MarketNode {
    /// `clawnode init` with `gpus` simulated GPUs.
    pub fn init(cli: Clawnode, gpus: u32) -> Clawnode {
        cli.init_with_simulated_gpus(gpus);
        cli
    }

    /// `clawnode run` for `cli`'s node, joining through `bootstrap`.
    pub fn start(cli: Clawnode, bootstrap: &[String]) -> Self {
        let running = RunningNode::start(&cli, bootstrap);
        Self {
            peer_id: running.peer_id.clone(),
            running: Some(running),
            cli,
        }
    }

    /// `clawnode run` for `cli`'s node listening on `listen` (in its namespace, if it has one).
    pub fn start_listening(cli: Clawnode, listen: &[String], bootstrap: &[String]) -> Self {
        let running = RunningNode::start_listening(&cli, listen, bootstrap);
        Self {
            peer_id: running.peer_id.clone(),
            running: Some(running),
            cli,
        }
    }

    /// Where others can bootstrap from.
    pub fn addrs(&self) -> Vec<String> {
        self.running
            .as_ref()
            .map(|r| r.listen_addrs.clone())
            .unwrap_or_default()
    }

    /// Kills the process (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
        }
    }

    /// Starts the process again.
    pub fn restart(&mut self, bootstrap: &[String]) {
        self.running = Some(RunningNode::start(&self.cli, bootstrap));
    }

    /// Invokes `command` through this node's control API, on `node` (a peer) or itself.
    pub fn invoke_on(
        &self,
        node: Option<&str>,
        command: &str,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.cli.invoke(node, command, params)
    }

    /// Invokes `command` on this node; panics when it fails.
    pub fn ok(&self, command: &str, params: &serde_json::Value) -> serde_json::Value {
        self.invoke_on(None, command, params)
            .unwrap_or_else(|e| panic!("{command} {params} failed: {e}"))
    }

    /// The wallet's MOLT balance, as text.
    pub fn molt(&self) -> String {
        let balance = self.cli.ok(&["--json", "wallet", "balance"]).json();
        balance["molt"].as_str().expect("molt balance").to_owned()
    }

    /// Cancels `lease` as its buyer and checks it settles, and that `provider`'s wallet then
    /// holds, on chain within `patience`, `provider_before` base units plus exactly what the
    /// settlement pays it (more than nothing). Returns that payment, in base units.
    pub fn cancel_and_see_paid(
        &self,
        lease: &str,
        provider: &MarketNode,
        provider_before: u64,
        patience: Duration,
    ) -> u64 {
        let settled = self.ok(
            "market.lease.cancel",
            &serde_json::json!({"lease_id": lease}),
        );
        assert_eq!(settled["state"], "settled", "{settled}");
        let paid = units(
            settled["to_provider"]
                .as_str()
                .expect("paid to the provider"),
        );
        assert!(paid > 0, "{settled}");
        eventually(
            patience,
            "the provider paid on chain what the settlement says",
            || (units(&provider.molt()) == provider_before + paid).then_some(()),
        );
        paid
    }

    /// The node's containers (running, or all).
    pub fn containers(&self, all: bool) -> Vec<String> {
        node_containers(&self.peer_id, all)
    }
}

impl Drop for MarketNode {
    fn drop(&mut self) {
        self.kill();
        remove_node_containers(&self.peer_id);
        unmount_under(self.cli.data_dir());
    }
}

/// MOLT text → base units.
pub fn units(text: &str) -> u64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    whole.parse::<u64>().expect("whole MOLT") * 1_000_000
        + format!("{fraction:0<6}").parse::<u64>().expect("fraction")
}
