//! Hosts a test builds for itself: a Linux network namespace joined to this machine by a veth
//! pair, holding addresses the machine routes to it (a cloud metadata address, a private
//! address), with servers listening there. Test traffic goes only to these namespaces. Everything
//! is removed when the host is dropped. Also a small internet of such namespaces with NAT
//! routers ([`Internet`]), and a Docker Engine of a host's own there ([`HostEngine`]).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces made by this process so far (each gets its own /30).
static MADE: AtomicU32 = AtomicU32::new(0);

/// A network namespace reachable from this machine at the addresses it was given.
#[derive(Debug)]
pub struct TestHost {
    name: String,
    host_link: String,
    routed: Vec<String>,
    servers: Vec<Child>,
}

/// Runs `program args` to its end: `Err` with its complaint when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Gives `dev` in namespace `ns` the address `cidr`.
fn add_address(ns: &str, cidr: &str, dev: &str) -> Result<(), String> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])
}

/// A namespace made here, or `None` where this machine cannot make one: a failure under
/// `CLAW_TEST_STRICT=1` (the test script sets it), else said on stderr as a skip.
pub fn namespace_or_skip<T>(made: Result<T, String>) -> Option<T> {
    made_or_skip("network namespaces", made)
}

/// What a test makes for itself (`what` names it), or `None` where this machine cannot make it:
/// a failure under `CLAW_TEST_STRICT=1`, else said on stderr as a skip.
pub fn made_or_skip<T>(what: &str, made: Result<T, String>) -> Option<T> {
    match made {
        Ok(made) => Some(made),
        Err(reason) => {
            assert!(
                std::env::var("CLAW_TEST_STRICT").as_deref() != Ok("1"),
                "this test cannot make {what} here: {reason}"
            );
            eprintln!("SKIPPED: cannot make {what} here: {reason}");
            None
        }
    }
}

impl TestHost {
    /// Makes a namespace holding `addresses` (each a /32, routed to it from this machine).
    /// Fails with the reason when this machine cannot (not root, no `ip`).
    pub fn create(addresses: &[&str]) -> Result<Self, String> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let name = format!("claw-t{tag}");
        let host_link = format!("clh{tag}");
        let ns_link = format!("cln{tag}");
        // A /30 per namespace from 10.254.0.0/16, apart for each process and namespace.
        let block = (std::process::id() % 4096) * 16 + n * 4;
        let (a, b) = ((block >> 8) & 0xff, block & 0xfc);
        let host_ip = format!("10.254.{a}.{}", b + 1);
        let ns_ip = format!("10.254.{a}.{}", b + 2);
        let mut host = Self {
            name: name.clone(),
            host_link: host_link.clone(),
            routed: Vec::new(),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ])?;
        ip(&["link", "set", &ns_link, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        let in_ns = |args: &[&str]| in_namespace(&name, "ip", args);
        in_ns(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_link])?;
        in_ns(&["link", "set", &ns_link, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        in_ns(&["route", "add", "default", "via", &host_ip])?;
        for address in addresses {
            in_ns(&["addr", "add", &format!("{address}/32"), "dev", "lo"])?;
            ip(&["route", "add", &format!("{address}/32"), "via", &ns_ip])?;
            host.routed.push((*address).to_owned());
        }
        Ok(host)
    }

    /// Serves `reply` to every TCP connection on `port` of every address in the namespace (with
    /// the machine's busybox).
    pub fn serve(&mut self, port: u16, reply: &str) -> Result<(), String> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "busybox", "nc", "-ll", "-p"])
            .arg(port.to_string())
            .args(["-e", "/bin/busybox", "echo", reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("busybox nc in {}: {e}", self.name))?;
        self.servers.push(child);
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for address in &self.routed {
            let _ = ip(&["route", "del", &format!("{address}/32")]);
        }
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A small internet a test builds for itself: a switch (a bridge in its own namespace) joining
/// public hosts at `10.77.0.0/24`, and home networks, each a NAT router (iptables masquerade,
/// no inbound) with one host behind it at `192.168.N.2`. Links can be given delay and loss
/// ([`Link`]). Every namespace is removed when the internet is dropped.
#[derive(Debug)]
pub struct Internet {
    tag: String,
    switch: String,
    namespaces: Vec<String>,
    links: u32,
    hosts: u8,
}

/// How a cable to the switch behaves. Delay and loss come from `tc netem`; on a kernel without
/// netem, loss comes from iptables' `statistic` match instead and delay is left out (said on
/// stderr).
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// One-way delay added each way, ms.
    pub delay_ms: u32,
    /// Packets dropped each way, percent.
    pub loss_percent: f32,
}

/// One host of an [`Internet`]: run programs in it with `ip netns exec <namespace>`.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// Its network namespace.
    pub namespace: String,
    /// Its own address (behind NAT: the private one).
    pub address: String,
    /// The address the internet sees it at (its router's, when behind NAT).
    pub public_address: String,
}

impl NetHost {
    /// Drops every packet between this host and `addresses` (with `cut`), or lets them through
    /// again: a cable cut, or a path that loses everything for a while.
    pub fn cut_off(&self, addresses: &[String], cut: bool) -> Result<(), String> {
        let action = if cut { "-A" } else { "-D" };
        for address in addresses {
            for (chain, side) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
                in_namespace(
                    &self.namespace,
                    "iptables",
                    &[action, chain, side, address, "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }
}

/// Runs `program args` inside namespace `ns`.
fn in_namespace(ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    ip(&full)
}

impl Internet {
    /// Makes the switch. Fails with the reason when this machine cannot (not root, no `ip`).
    pub fn create() -> Result<Self, String> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let switch = format!("claw-i{tag}-wan");
        let mut internet = Self {
            tag,
            switch: switch.clone(),
            namespaces: Vec::new(),
            links: 0,
            hosts: 1,
        };
        ip(&["netns", "add", &switch])?;
        internet.namespaces.push(switch.clone());
        ip(&["-n", &switch, "link", "add", "wan", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "wan", "up"])?;
        Ok(internet)
    }

    fn namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("claw-i{}-{name}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair from namespace `a` (named `a_name`) to `b` (named `b_name`).
    fn link(&mut self, a: &str, a_name: &str, b: &str, b_name: &str) -> Result<(), String> {
        self.links += 1;
        let (left, right) = (
            format!("ci{}l{}", self.tag, self.links),
            format!("ci{}r{}", self.tag, self.links),
        );
        ip(&["link", "add", &left, "type", "veth", "peer", "name", &right])?;
        ip(&["link", "set", &left, "netns", a, "name", a_name])?;
        ip(&["link", "set", &right, "netns", b, "name", b_name])?;
        ip(&["-n", a, "link", "set", a_name, "up"])?;
        ip(&["-n", b, "link", "set", b_name, "up"])
    }

    /// Plugs namespace `ns` into the switch as `eth0` at the next public address, with `link`'s
    /// delay and loss on its side of the cable.
    fn plug(&mut self, ns: &str, link: Link) -> Result<String, String> {
        self.hosts += 1;
        let address = format!("10.77.0.{}", self.hosts);
        let port = format!("p{}", self.hosts);
        let switch = self.switch.clone();
        self.link(&switch, &port, ns, "eth0")?;
        ip(&["-n", &switch, "link", "set", &port, "master", "wan"])?;
        add_address(ns, &format!("{address}/24"), "eth0")?;
        impair(ns, link)?;
        Ok(address)
    }

    /// A host on the internet itself, reachable by every other.
    pub fn public_host(&mut self, name: &str, link: Link) -> Result<NetHost, String> {
        let ns = self.namespace(name)?;
        let address = self.plug(&ns, link)?;
        Ok(NetHost {
            namespace: ns,
            public_address: address.clone(),
            address,
        })
    }

    /// A host behind its own NAT router: it reaches the internet, nothing there reaches it
    /// unless it sent there first (masquerade, with only established flows let back in). The
    /// router keeps a flow's port where it can, so hole punching works through it.
    pub fn host_behind_nat(&mut self, name: &str, link: Link) -> Result<NetHost, String> {
        self.behind_router(name, link, false)
    }

    /// A host behind a symmetric NAT: every flow leaves from a random port of the router, so
    /// the port a peer saw is useless to any other peer and hole punching cannot work; only a
    /// relay reaches it.
    pub fn host_behind_symmetric_nat(&mut self, name: &str, link: Link) -> Result<NetHost, String> {
        self.behind_router(name, link, true)
    }

    fn behind_router(
        &mut self,
        name: &str,
        link: Link,
        symmetric: bool,
    ) -> Result<NetHost, String> {
        let router = self.namespace(&format!("{name}-nat"))?;
        let public_address = self.plug(&router, link)?;
        let host = self.namespace(name)?;
        let lan = self.hosts;
        self.link(&router, "lan", &host, "eth0")?;
        let (gateway, address) = (format!("192.168.{lan}.1"), format!("192.168.{lan}.2"));
        add_address(&router, &format!("{gateway}/24"), "lan")?;
        add_address(&host, &format!("{address}/24"), "eth0")?;
        ip(&["-n", &host, "route", "add", "default", "via", &gateway])?;
        in_namespace(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Like most home routers: unsolicited packets from the internet are dropped, not
        // answered with a reset.
        let mut masquerade = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ];
        if symmetric {
            masquerade.push("--random-fully");
        }
        let rules: [&[&str]; 5] = [
            &masquerade,
            &[
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ],
            &["-A", "FORWARD", "-i", "lan", "-j", "ACCEPT"],
            &[
                "-A",
                "FORWARD",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &["-A", "FORWARD", "-j", "DROP"],
        ];
        for rule in rules {
            in_namespace(&router, "iptables", rule)?;
        }
        Ok(NetHost {
            namespace: host,
            address,
            public_address,
        })
    }
}

/// Gives `eth0` in `ns` the delay and loss of `link`.
fn impair(ns: &str, link: Link) -> Result<(), String> {
    if link.delay_ms == 0 && link.loss_percent == 0.0 {
        return Ok(());
    }
    let (delay, loss) = (
        format!("{}ms", link.delay_ms),
        format!("{}%", link.loss_percent),
    );
    let netem = [
        "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay, "loss", &loss,
    ];
    match in_namespace(ns, "tc", &netem) {
        Ok(()) => return Ok(()),
        Err(error) if error.contains("qdisc kind is unknown") => {
            eprintln!(
                "NOTE: this kernel has no netem (sch_netem): {ns} gets {loss} loss each way from \
                 iptables' statistic match, and no added delay"
            );
        }
        Err(error) => return Err(error),
    }
    if link.loss_percent > 0.0 {
        let probability = format!("{}", link.loss_percent / 100.0);
        for (chain, side) in [("PREROUTING", "-i"), ("POSTROUTING", "-o")] {
            let rule = [
                "-t",
                "mangle",
                "-A",
                chain,
                side,
                "eth0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ];
            in_namespace(ns, "iptables", &rule)?;
        }
    }
    Ok(())
}

impl Drop for Internet {
    fn drop(&mut self) {
        // Removing a namespace removes the veths in it, and their peers with them.
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The bridge a [`HostEngine`] gives its containers by default: apart from the [`Internet`]'s
/// addresses, from [`TestHost`]s' and from this machine's own engine's `docker0`
/// (172.17.0.0/16), so an address always says which network it is on.
const ENGINE_BRIDGE: &str = "172.31.0.1/24";
/// The pool a [`HostEngine`]'s other networks (a node's tenant networks) come from, apart from
/// all of those too.
const ENGINE_POOL: &str = "base=172.30.0.0/16,size=24";
/// How long a [`HostEngine`] may take to answer once started, and to stop.
const ENGINE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A Docker Engine of a host's own, in the host's namespace, as a provider's engine sits behind
/// the same NAT as its node in life: its containers are on its bridge there, reached from that
/// namespace only, and its iptables rules (Docker's, a node's tenant firewall) are the
/// namespace's. Its state and sockets are in a directory of its own. When dropped, its
/// containers are removed, the daemon stopped, whatever it left mounted unmounted, and the
/// directory removed.
#[derive(Debug)]
pub struct HostEngine {
    daemon: Child,
    state: tempfile::TempDir,
}

impl HostEngine {
    /// Starts `dockerd` in `host`'s namespace and loads `images` into it from this machine's
    /// engine. Fails with the reason where this machine cannot (no `dockerd`, no cgroups, no
    /// engine to load the images from).
    pub fn start(host: &NetHost, images: &[&str]) -> Result<Self, String> {
        let state = tempfile::Builder::new()
            .prefix("claw-engine-")
            .tempdir()
            .map_err(|e| format!("a state directory: {e}"))?;
        let root = state.path().to_owned();
        let log = std::fs::File::create(root.join("dockerd.log"))
            .map_err(|e| format!("the engine's log: {e}"))?;
        let path = |name: &str| root.join(name).display().to_string();
        // Its own settings only, not this machine's engine's (`/etc/docker/daemon.json`).
        std::fs::write(root.join("daemon.json"), "{}")
            .map_err(|e| format!("the engine's settings: {e}"))?;
        // `ip netns exec` would mount a /sys of the namespace's own, without the cgroup
        // hierarchies dockerd needs: enter the network namespace only.
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host.namespace))
            .arg("dockerd")
            .args(["--data-root", &path("data"), "--exec-root", &path("exec")])
            .args(["--config-file", &path("daemon.json")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["--host", &format!("unix://{}", path("docker.sock"))])
            .args([
                "--bip",
                ENGINE_BRIDGE,
                "--default-address-pool",
                ENGINE_POOL,
            ])
            // Containerd namespaces of its own, should it find a containerd another engine
            // uses too.
            .args(["--containerd-namespace", &host.namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{}-plugins", host.namespace),
            ])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("nsenter dockerd in {}: {e}", host.namespace))?;
        let mut engine = Self { daemon, state };
        let started = std::time::Instant::now();
        while engine.docker(&["version"]).is_err() {
            if let Ok(Some(status)) = engine.daemon.try_wait() {
                return Err(format!("dockerd exited ({status}): {}", engine.log_tail()));
            }
            if started.elapsed() > ENGINE_PATIENCE {
                return Err(format!(
                    "dockerd did not answer within {ENGINE_PATIENCE:?}: {}",
                    engine.log_tail()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for image in images {
            engine.load(image)?;
        }
        Ok(engine)
    }

    /// The engine's socket, as a node's `[workloads] docker_socket` names it.
    pub fn socket(&self) -> String {
        format!("unix://{}", self.state.path().join("docker.sock").display())
    }

    /// Runs `docker args` against this engine (for at most a minute): its output, or its
    /// complaint.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("timeout")
            .args(["60", "docker", "--host", &self.socket()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "docker {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Copies `image` from this machine's engine into this one.
    fn load(&self, image: &str) -> Result<(), String> {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("docker save {image}: {e}"))?;
        let archive = save.stdout.take().expect("piped");
        let loaded = Command::new("docker")
            .args(["--host", &self.socket(), "load", "--quiet"])
            .stdin(archive)
            .output()
            .map_err(|e| format!("docker load {image}: {e}"))?;
        let saved = save
            .wait_with_output()
            .map_err(|e| format!("docker save {image}: {e}"))?;
        if !saved.status.success() {
            return Err(format!(
                "docker save {image}: {}",
                String::from_utf8_lossy(&saved.stderr).trim()
            ));
        }
        if !loaded.status.success() {
            return Err(format!(
                "loading {image} into the engine: {}",
                String::from_utf8_lossy(&loaded.stderr).trim()
            ));
        }
        Ok(())
    }

    /// The last lines the daemon logged.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.state.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Mount points under the state directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let root = self.state.path().display().to_string();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = table
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(&root))
            .map(str::to_owned)
            .collect();
        mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
        mounts
    }
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        if let Ok(containers) = self.docker(&["ps", "--all", "--quiet"]) {
            for id in containers.lines() {
                let _ = self.docker(&["rm", "--force", id]);
            }
        }
        let _ = run("kill", &["-TERM", &self.daemon.id().to_string()]);
        let started = std::time::Instant::now();
        while !matches!(self.daemon.try_wait(), Ok(Some(_))) {
            if started.elapsed() > ENGINE_PATIENCE {
                let _ = self.daemon.kill();
                let _ = self.daemon.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for point in self.mounts() {
            let _ = run("umount", &["--lazy", &point]);
        }
    }
}
