//! Hosts a test builds for itself: a Linux network namespace joined to this machine by a veth
//! pair, holding addresses the machine routes to it (a cloud metadata address, a private
//! address), with servers listening there. Test traffic goes only to these namespaces. Everything
//! is removed when the host is dropped.

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

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
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
        let in_ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", name.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
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
