//! The tenant profile: what every workload a lease starts runs under, and what an operator can ask
//! for with `isolation: tenant`.
//!
//! - **Its own network.** A Docker bridge of its own (so no other tenant shares it), whose new
//!   connections to this host (`INPUT`) and to private, carrier-grade NAT, link-local (cloud
//!   metadata) and loopback ranges (`DOCKER-USER`) are dropped by iptables rules the node installs
//!   with the network and removes with it. Each rule carries the comment
//!   `clawbernetes:<node>:<workload>`, so rules a crash left behind are found and removed by the
//!   node that made them (several nodes may share a host, and never touch each other's rules).
//!   Rules go only after their network is gone. Replies to connections made from outside (a
//!   published port) pass.
//! - **Limits and privileges** (applied where the container is created): CPU, memory and PID limits
//!   from the node's tenant settings (which its offers advertise per GPU); every capability
//!   dropped but [`TENANT_CAPABILITIES`]; no new privileges; a read-only root with a tmpfs `/tmp`;
//!   an unprivileged user unless the image names one.
//! - **GPU visibility** set by the node alone (`NVIDIA_VISIBLE_DEVICES`, `CUDA_VISIBLE_DEVICES`).
//!
//! The node checks at start that it can write these rules; a node that cannot refuses tenant
//! workloads (and so sells nothing), saying why.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use tokio::process::Command;

use super::docker::{Engine, EngineError};
use crate::config::TenantSection;

/// Capabilities a tenant keeps: Docker's default set without `NET_RAW` (raw sockets, spoofing),
/// `MKNOD`, `AUDIT_WRITE`, `SETFCAP`, `SETPCAP` and `SYS_CHROOT`.
pub(crate) const TENANT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// Ranges a tenant may not open connections to, besides this host itself.
pub(crate) const BLOCKED_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "224.0.0.0/4",
];

/// Prefix of every rule's comment.
const TAG_PREFIX: &str = "clawbernetes:";
/// Longest one iptables call may take (it waits for the xtables lock).
const IPTABLES_DEADLINE: Duration = Duration::from_secs(20);

/// Why a tenant's firewall could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FirewallError {
    /// iptables could not be run, or refused.
    #[error("iptables {args}: {reason}")]
    Iptables {
        /// The arguments.
        args: String,
        /// What went wrong.
        reason: String,
    },
}

/// The bridge interface of a workload's network: at most 15 characters.
pub(crate) fn bridge_name(workload: &str) -> String {
    let id: String = workload
        .trim_start_matches("wl-")
        .chars()
        .take(11)
        .collect();
    format!("clt-{id}")
}

/// The name of a workload's Docker network.
pub(crate) fn network_name(workload: &str) -> String {
    format!("clawbernetes-{workload}")
}

/// The comment on node `node`'s rules for `workload`.
fn tag(node: &str, workload: &str) -> String {
    format!("{TAG_PREFIX}{node}:{workload}")
}

async fn iptables(args: &[&str]) -> Result<String, FirewallError> {
    let failed = |reason: String| FirewallError::Iptables {
        args: args.join(" "),
        reason,
    };
    let run = Command::new("iptables")
        .arg("-w")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(IPTABLES_DEADLINE, run)
        .await
        .map_err(|_| failed(format!("no answer within {IPTABLES_DEADLINE:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

/// The rules of one workload, as `iptables -I` arguments.
fn rules(bridge: &str, comment: &str, extra_blocked: &[String]) -> Vec<Vec<String>> {
    let new = ["-m", "conntrack", "--ctstate", "NEW,INVALID"];
    let mut rules = vec![
        [
            vec!["INPUT", "-i", bridge],
            new.to_vec(),
            vec!["-m", "comment", "--comment", comment, "-j", "DROP"],
        ]
        .concat()
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>(),
    ];
    let ranges = BLOCKED_RANGES
        .iter()
        .map(|r| (*r).to_owned())
        .chain(extra_blocked.iter().cloned());
    for range in ranges {
        rules.push(
            [
                vec!["DOCKER-USER", "-i", bridge, "!", "-o", bridge, "-d", &range],
                new.to_vec(),
                vec!["-m", "comment", "--comment", comment, "-j", "DROP"],
            ]
            .concat()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        );
    }
    rules
}

/// Applies `lines` (`-I …` / `-D …` rules of the filter table) in one `iptables-restore
/// --noflush` transaction: all of them, or none.
async fn restore(lines: &[String]) -> Result<(), FirewallError> {
    use tokio::io::AsyncWriteExt as _;
    let failed = |reason: String| FirewallError::Iptables {
        args: format!("-restore of {} rules", lines.len()),
        reason,
    };
    let mut input = String::from("*filter\n");
    for line in lines {
        input.push_str(line);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await?;
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(IPTABLES_DEADLINE, run)
        .await
        .map_err(|_| failed(format!("no answer within {IPTABLES_DEADLINE:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

/// Installs node `node`'s rules for `workload`'s network `bridge`, in one transaction: all of
/// them or none.
pub(crate) async fn install(
    node: &str,
    bridge: &str,
    workload: &str,
    extra_blocked: &[String],
) -> Result<(), FirewallError> {
    let lines: Vec<String> = rules(bridge, &tag(node, workload), extra_blocked)
        .iter()
        .map(|rule| format!("-I {}", rule.join(" ")))
        .collect();
    restore(&lines).await
}

/// Removes every rule node `node` tagged for `workload`, in one transaction; rules already gone
/// are fine.
pub(crate) async fn remove(node: &str, workload: &str) -> Result<(), FirewallError> {
    let comment = tag(node, workload);
    let mut tagged = Vec::new();
    for chain in ["INPUT", "DOCKER-USER"] {
        for rule in iptables(&["-S", chain]).await?.lines() {
            if rule
                .split_whitespace()
                .any(|word| word.trim_matches('"') == comment)
                && let Some(spec) = rule.strip_prefix("-A ")
            {
                tagged.push(spec.to_owned());
            }
        }
    }
    if tagged.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = tagged.iter().map(|spec| format!("-D {spec}")).collect();
    if restore(&lines).await.is_ok() {
        return Ok(());
    }
    // One of them went meanwhile (the node's sweep and a stop may meet): the rest one by one.
    for spec in &tagged {
        let mut args = vec!["-D"];
        args.extend(split_rule(spec));
        match iptables(&args).await {
            // The legacy and nf_tables variants say "already gone" differently.
            Err(FirewallError::Iptables { reason, .. })
                if reason.contains("does a matching rule exist")
                    || reason.contains("No such file or directory") => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// The workloads node `node` has rules installed for on this host (by their tags).
pub(crate) async fn tagged_workloads(node: &str) -> Result<Vec<String>, FirewallError> {
    let prefix = tag(node, "");
    let mut found = Vec::new();
    for chain in ["INPUT", "DOCKER-USER"] {
        for rule in iptables(&["-S", chain]).await?.lines() {
            if let Some(at) = rule.find(&prefix) {
                let id: String = rule[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !id.is_empty() && !found.contains(&id) {
                    found.push(id);
                }
            }
        }
    }
    Ok(found)
}

/// Splits an `iptables -S` rule into arguments (the comment may be quoted).
fn split_rule(spec: &str) -> Vec<&str> {
    let mut args = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            args.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            args.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    args
}

/// Checks this host lets the node write tenant rules: iptables runs, Docker's `DOCKER-USER`
/// chain exists, and a rule can be inserted and removed there.
pub(crate) async fn check(node: &str) -> Result<(), String> {
    iptables(&["-S", "DOCKER-USER"]).await.map_err(|e| {
        format!("tenant workloads need iptables and Docker's DOCKER-USER chain (run the node as root, with Docker's iptables integration on): {e}")
    })?;
    // Each check its own tag; written as tenants' rules are, in one iptables-restore.
    let probe = format!("probe-{}", rand::random::<u32>());
    let rule = format!(
        "-I DOCKER-USER -i clt-probe -m comment --comment {} -j RETURN",
        tag(node, &probe)
    );
    restore(&[rule])
        .await
        .map_err(|e| format!("tenant workloads need to write iptables rules: {e}"))?;
    remove(node, &probe)
        .await
        .map_err(|e| format!("tenant workloads need to remove iptables rules: {e}"))
}

/// The user a tenant runs as when its image names none: nobody.
const UNPRIVILEGED_USER: &str = "65534:65534";

/// A tenant workload's network, ready for its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantNetwork {
    /// The Docker network's name.
    pub(crate) name: String,
}

/// Creates workload `id`'s network (labelled for node `node`, so leftovers are found) and
/// installs its firewall rules. A network left by a crash is reused.
pub(crate) async fn open_network(
    engine: &Engine,
    node: &str,
    id: &str,
    labels: HashMap<String, String>,
    section: &TenantSection,
) -> Result<TenantNetwork, EngineError> {
    let name = network_name(id);
    let bridge = bridge_name(id);
    match engine.create_network(&name, &bridge, labels).await {
        Ok(_) | Err(EngineError::Conflict(_)) => {}
        Err(EngineError::Failed(message)) if message.contains("already exists") => {}
        Err(other) => return Err(other),
    }
    if let Err(error) = install(node, &bridge, id, &section.blocked_ranges).await {
        let _ = engine.remove_network(&name).await;
        return Err(EngineError::Failed(format!(
            "the tenant firewall could not be installed: {error}"
        )));
    }
    Ok(TenantNetwork { name })
}

/// Removes workload `id`'s network, then node `node`'s firewall rules for it: while a container
/// is still attached the network stays, and so do its rules. What is already gone is fine.
pub(crate) async fn close_network(
    engine: &Engine,
    node: &str,
    id: &str,
) -> Result<(), EngineError> {
    engine.remove_network(&network_name(id)).await?;
    remove(node, id)
        .await
        .map_err(|e| EngineError::Failed(e.to_string()))
}

/// CPU (nano-cores), memory (bytes) and PIDs of a tenant container with `gpus` GPUs: what the
/// workload asked for, never more than the tenant settings give, nor more CPUs than the host has
/// (`host_cpus`).
pub(crate) fn limits(
    section: &TenantSection,
    gpus: usize,
    asked_cpus: Option<f64>,
    asked_memory_mib: Option<u64>,
    host_cpus: u64,
) -> (i64, i64, i64) {
    let gpus = u64::try_from(gpus).unwrap_or(u64::MAX);
    let (cpu_millis, memory_mib) = if gpus == 0 {
        (
            u64::from(section.cpu_millis_without_gpus),
            section.memory_mib_without_gpus,
        )
    } else {
        (
            u64::from(section.cpu_millis_per_gpu).saturating_mul(gpus),
            section.memory_mib_per_gpu.saturating_mul(gpus),
        )
    };
    let allowed_nano = cpu_millis
        .saturating_mul(1_000_000)
        .min(host_cpus.saturating_mul(1_000_000_000));
    let nano = asked_cpus
        .map(|c| (c * 1e9) as u64)
        .map_or(allowed_nano, |asked| asked.min(allowed_nano));
    let memory = asked_memory_mib.map_or(memory_mib, |asked| asked.min(memory_mib));
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    (
        as_i64(nano),
        as_i64(memory.saturating_mul(1024 * 1024)),
        i64::from(section.pids_limit),
    )
}

/// Applies the tenant profile to a container: its network, limits, capabilities, no new
/// privileges, a read-only root with a tmpfs `/tmp` (unless `writable_root`), and `user` (an
/// unprivileged one when the image names none).
pub(crate) fn harden(
    body: &mut ContainerCreateBody,
    network: &TenantNetwork,
    limits: (i64, i64, i64),
    section: &TenantSection,
    writable_root: bool,
    image_user: Option<String>,
) {
    let host = body.host_config.get_or_insert_with(HostConfig::default);
    let (nano_cpus, memory, pids) = limits;
    host.network_mode = Some(network.name.clone());
    host.nano_cpus = Some(nano_cpus);
    host.memory = Some(memory);
    // No swap beyond the memory limit.
    host.memory_swap = Some(memory);
    host.pids_limit = Some(pids);
    host.cap_drop = Some(vec!["ALL".to_owned()]);
    host.cap_add = Some(
        TENANT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
    );
    host.security_opt = Some(vec!["no-new-privileges:true".to_owned()]);
    host.privileged = Some(false);
    if !writable_root {
        host.readonly_rootfs = Some(true);
        // A tmpfs takes the image's /tmp mode; owned by the unprivileged user the node picks,
        // that user can write to it whatever the image made of /tmp.
        let owner = if image_user.is_none() {
            ",uid=65534,gid=65534"
        } else {
            ""
        };
        host.tmpfs = Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={}m{owner}", section.tmp_mib),
        )]));
    }
    body.user = Some(image_user.unwrap_or_else(|| UNPRIVILEGED_USER.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names() {
        assert_eq!(bridge_name("wl-0123456789ab"), "clt-0123456789a");
        assert!(bridge_name("wl-0123456789ab").len() <= 15);
        assert_eq!(network_name("wl-1"), "clawbernetes-wl-1");
    }

    #[test]
    fn rules_drop_new_connections_to_the_host_and_private_ranges_only() {
        let rules = rules(
            "clt-x",
            &tag("12D3KooWnode", "wl-x"),
            &["203.0.113.0/24".to_owned()],
        );
        assert_eq!(rules[0][0], "INPUT");
        assert!(
            rules
                .iter()
                .all(|r| r.join(" ").contains("--ctstate NEW,INVALID"))
        );
        assert!(
            rules
                .iter()
                .all(|r| r.join(" ").contains("clawbernetes:12D3KooWnode:wl-x"))
        );
        let forwarded: Vec<String> = rules[1..].iter().map(|r| r.join(" ")).collect();
        assert!(forwarded.iter().any(|r| r.contains("-d 169.254.0.0/16")));
        assert!(forwarded.iter().any(|r| r.contains("-d 203.0.113.0/24")));
        assert!(forwarded.iter().all(|r| r.contains("-i clt-x ! -o clt-x")));
    }

    #[test]
    fn tenant_limits_never_exceed_the_settings() {
        let section = TenantSection::default();
        let (nano, memory, pids) = limits(&section, 2, None, None, 64);
        assert_eq!(nano, 8_000_000_000);
        assert_eq!(memory, 2 * 32_768 * 1024 * 1024);
        assert_eq!(pids, 4096);
        let (nano, memory, _) = limits(&section, 1, Some(64.0), Some(1 << 30), 64);
        assert_eq!(nano, 4_000_000_000, "asking for more CPU gets the limit");
        assert_eq!(memory, 32_768 * 1024 * 1024);
        let (nano, memory, _) = limits(&section, 0, Some(0.5), Some(256), 64);
        assert_eq!((nano, memory), (500_000_000, 256 * 1024 * 1024));
        let (nano, _, _) = limits(&section, 8, None, None, 2);
        assert_eq!(nano, 2_000_000_000, "never more CPUs than the host has");
    }

    #[test]
    fn listed_rules_split_back_into_arguments() {
        let spec = r#"DOCKER-USER -d 10.0.0.0/8 -i clt-x ! -o clt-x -m comment --comment "clawbernetes:12D3KooWnode:wl-x" -j DROP"#;
        let args = split_rule(spec);
        assert_eq!(args[0], "DOCKER-USER");
        assert!(args.contains(&"clawbernetes:12D3KooWnode:wl-x"));
        assert_eq!(args.last(), Some(&"DROP"));
    }
}
