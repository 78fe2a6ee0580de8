//! `clawnode run --gateway` against the real OpenClaw gateway (openclaw 2026.9.6 on Node 24, as
//! `scripts/test.sh` installs it), on loopback with a token and an isolated state directory.
//!
//! The node connects as an OpenClaw node with its own device identity; its capability surface is
//! approved with `openclaw nodes approve`; `openclaw nodes invoke` reaches `gpu.list` and
//! `workload.list`, and a failing command comes back as the node's typed error. The gateway is
//! restarted and the node reconnects on its own. A node with a wrong token stops with a clear
//! error instead of retrying. Over TLS (`wss://`), a node connects only to a gateway whose
//! certificate it trusts (a CA file or a pin), and a URL carrying the token is refused.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use claw_tests::{
    Clawnode, DockerProxy, Hold, OpenClawGateway as Gateway, RunningNode, TOKEN, eventually,
    gateway_parts, run_with_deadline,
};
use serde_json::Value;

/// The node's OpenClaw device id, from `clawnode identity`.
fn device_id_of(node: &Clawnode) -> String {
    let device = node.ok(&["--json", "identity"]).json();
    device["device_id"]
        .as_str()
        .or_else(|| device["openclaw_device_id"].as_str())
        .expect("device id")
        .to_owned()
}

/// Waits for the node's capability surface to wait for approval; returns its request id.
fn pending_surface(gateway: &Gateway, device_id: &str) -> String {
    eventually(
        Duration::from_secs(60),
        "the node's pending surface",
        || {
            let pending = gateway.cli_json(&["nodes", "pending", "--json"])?;
            pending.as_array()?.iter().find_map(|p| {
                (p["nodeId"] == device_id && !p["commands"].as_array()?.is_empty())
                    .then(|| p["requestId"].as_str().map(str::to_owned))
                    .flatten()
            })
        },
    )
}

fn node_with_gateway(dir: &std::path::Path, url: &str, token: &str) -> Clawnode {
    let node = Clawnode::new(dir);
    node.ok(&["init", "--simulated-gpu", "NVIDIA H100 80GB HBM3:2:81559"]);
    let token_file = dir.join("gateway.token");
    std::fs::write(&token_file, token).expect("token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("0600");
    }
    node.edit_config(|text| {
        text.replace(
            "[gateway]\n",
            &format!(
                "[gateway]\nurl = {url:?}\ntoken_file = {:?}\n",
                token_file.display().to_string()
            ),
        )
    });
    node
}

#[test]
fn a_node_serves_the_real_gateway_and_reconnects_after_it_restarts() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Each workload.run waits 4 s at its first Docker call: longer than the gateway will wait.
    let docker = DockerProxy::holding(
        &dir.path().join("docker.sock"),
        Hold::ImageChecks,
        Duration::from_secs(4),
    );
    // The node's command names come from its own table, as the gateway's allowlist.
    let probe = Clawnode::new(&dir.path().join("probe"));
    probe.ok(&["init"]);
    let running = RunningNode::start(&probe, &[]);
    let capabilities = probe.ok(&["invoke", "node.capabilities"]).json();
    drop(running);
    let allow: Vec<String> = capabilities["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .filter(|c| c["role"] != "admin")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let mut gateway = Gateway::new(node24, openclaw, &dir.path().join("gateway"), &allow);
    gateway.start();

    let node = node_with_gateway(&dir.path().join("node"), &gateway.url(), TOKEN);
    node.edit_config(|text| {
        text.replace(
            "[workloads]\n",
            &format!(
                "[workloads]\ndocker_socket = {:?}\n",
                docker.path().display()
            ),
        )
    });
    let running = RunningNode::start(&node, &[]);
    let device_id = device_id_of(&node);

    // The capability surface waits for an operator's approval.
    let request = pending_surface(&gateway, &device_id);
    let pending = gateway
        .cli_json(&["nodes", "pending", "--json"])
        .expect("pending");
    let surface = pending
        .as_array()
        .and_then(|p| p.iter().find(|p| p["requestId"] == request.as_str()))
        .expect("our request")["commands"]
        .clone();
    assert!(
        surface
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "gpu.list"))
    );
    assert!(
        !surface
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "system.run")),
        "admin commands are not offered to an operate-role gateway"
    );
    let approved = gateway.cli(&["nodes", "approve", &request]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );

    let answer = eventually(
        Duration::from_secs(30),
        "gpu.list through the gateway",
        || {
            let output = gateway.invoke(&device_id, "gpu.list", "{}");
            output
                .status
                .success()
                .then(|| serde_json::from_slice::<Value>(&output.stdout).ok())
                .flatten()
        },
    );
    let gpus = answer["payload"]["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2);
    assert!(gpus.iter().all(|g| g["simulated"] == true));
    let listed = gateway.invoke(&device_id, "workload.list", "{}");
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert!(listed["payload"]["workloads"].is_array(), "{listed}");
    let failed = gateway.invoke(
        &device_id,
        "workload.inspect",
        r#"{"workload":"no-such-workload"}"#,
    );
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    // The node audited the gateway's calls.
    let audit = node.ok(&["--json", "audit", "--limit", "10"]).json();
    assert!(
        audit["records"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["caller"] == "openclaw-gateway" && r["command"] == "gpu.list")),
        "{audit}"
    );

    // The caller goes away while the node is starting the workload, so the gateway cancels
    // the invoke (node.invoke.cancel) long before its 20 s deadline: the node still finishes
    // the run, and audits it exactly once.
    let params =
        serde_json::json!({"image": image, "command": ["sleep", "300"], "name": "cancelled"});
    let mut caller = gateway.spawn_cli(&[
        "nodes",
        "invoke",
        "--node",
        &device_id,
        "--command",
        "workload.run",
        "--params",
        &params.to_string(),
        "--invoke-timeout",
        "20000",
        "--json",
    ]);
    let listing = &node;
    let named = |state: &'static str| {
        move || {
            let listed = listing.ok(&["invoke", "workload.list"]).json();
            listed["workloads"]
                .as_array()?
                .iter()
                .any(|w| w["name"] == "cancelled" && w["state"] == state)
                .then_some(())
        }
    };
    eventually(
        Duration::from_secs(30),
        "the call's workload, starting",
        named("creating"),
    );
    caller.kill().expect("the caller stops");
    let _ = caller.wait();
    eventually(
        Duration::from_secs(30),
        "the cancelled call's workload, running",
        named("running"),
    );
    let audit = node.ok(&["--json", "audit", "--limit", "500"]).json();
    let runs: Vec<&Value> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["caller"] == "openclaw-gateway" && r["command"] == "workload.run")
        .collect();
    assert_eq!(runs.len(), 1, "one record of the cancelled call: {audit}");
    claw_tests::remove_node_containers(&running.peer_id);

    // The gateway restarts; the node reconnects by itself and answers again.
    gateway.stop();
    let restarted = Instant::now();
    gateway.start();
    eventually(
        Duration::from_secs(60),
        "gpu.list after the gateway restarted",
        || {
            gateway
                .invoke(&device_id, "gpu.list", "{}")
                .status
                .success()
                .then_some(())
        },
    );
    eprintln!(
        "reconnected and answered {} ms after the restart began",
        restarted.elapsed().as_millis()
    );

    // A wrong token: the node stops with a clear error, and does not retry.
    let wrong = node_with_gateway(&dir.path().join("wrong"), &gateway.url(), "not-the-token");
    let started = Instant::now();
    let output = run_with_deadline(
        Command::new(claw_tests::workspace_binary("clawnode"))
            .arg("--data-dir")
            .arg(wrong.data_dir())
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "warn"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refused the token"), "{stderr}");
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains("not-the-token"),
        "the token is never logged"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no retry storm"
    );
}

/// A gateway given the read role calls as itself, never as the node: it cannot stop, read the
/// logs of or exec into the node's workloads, and sees them redacted.
#[test]
fn a_read_role_gateway_manages_no_workload_and_sees_them_redacted() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let allow: Vec<String> = [
        "workload.list",
        "workload.stop",
        "workload.logs",
        "container.exec",
    ]
    .iter()
    .map(|c| (*c).to_owned())
    .collect();
    let mut gateway = Gateway::new(node24, openclaw, &dir.path().join("gateway"), &allow);
    gateway.start();
    let node = node_with_gateway(&dir.path().join("node"), &gateway.url(), TOKEN);
    node.edit_config(|text| text.replace("role = \"operate\"", "role = \"read\""));
    let running = RunningNode::start(&node, &[]);
    let started = node
        .ok(&[
            "--json",
            "invoke",
            "workload.run",
            "--params",
            &format!(r#"{{"image":"{image}","command":["sleep","600"]}}"#),
        ])
        .json();
    let workload = started["id"].as_str().expect("id").to_owned();
    let device_id = device_id_of(&node);
    let request = pending_surface(&gateway, &device_id);
    let approved = gateway.cli(&["nodes", "approve", &request]);
    assert!(approved.status.success());
    let listed = eventually(
        Duration::from_secs(30),
        "workload.list through the gateway",
        || {
            let output = gateway.invoke(&device_id, "workload.list", "{}");
            output
                .status
                .success()
                .then(|| serde_json::from_slice::<Value>(&output.stdout).ok())
                .flatten()
        },
    );
    let seen = listed["payload"]["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["id"] == workload.as_str()))
        .expect("the node's workload is listed")
        .clone();
    assert_eq!(seen["redacted"], true, "{seen}");
    assert!(
        seen["owner"].is_null() && seen["command"] == serde_json::json!([]),
        "{seen}"
    );
    for (command, params) in [
        ("workload.stop", format!(r#"{{"workload":"{workload}"}}"#)),
        ("workload.logs", format!(r#"{{"workload":"{workload}"}}"#)),
        (
            "container.exec",
            format!(r#"{{"workload":"{workload}","argv":["true"]}}"#),
        ),
    ] {
        let output = gateway.invoke(&device_id, command, &params);
        assert!(!output.status.success(), "{command} went through");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // A read-role node declares no managing command, so the gateway refuses it before
        // it reaches the node; the node itself answers UNAUTHORIZED if one got through.
        assert!(
            said.contains(&format!("does not support \"{command}\""))
                || said.contains("UNAUTHORIZED"),
            "{command}: {said}"
        );
    }
    // The workload still runs.
    let inspected = node
        .ok(&[
            "--json",
            "invoke",
            "workload.inspect",
            "--params",
            &format!(r#"{{"workload":"{workload}"}}"#),
        ])
        .json();
    assert_eq!(inspected["workload"]["state"], "running");
    claw_tests::remove_node_containers(&running.peer_id);
}

/// A CA, and a certificate it signs for 127.0.0.1 and localhost, written as PEM into `dir`:
/// `(ca.pem, cert.pem, key.pem, the certificate's SHA-256 in hex)`.
fn tls_material(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use sha2::Digest as _;
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Clawbernetes test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("gateway key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("gateway params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("gateway certificate");
    std::fs::create_dir_all(dir).expect("tls dir");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("ca.pem");
    std::fs::write(&paths.1, cert.pem()).expect("cert.pem");
    std::fs::write(&paths.2, key.serialize_pem()).expect("key.pem");
    let pin = hex::encode(sha2::Sha256::digest(cert.der()));
    (paths.0, paths.1, paths.2, pin)
}

/// The real gateway serving TLS with a certificate from a private CA: a node that trusts that CA
/// (`ca_file`), and one that pins the gateway's certificate instead, both connect over `wss://`
/// and reach pairing. A node that trusts neither, and one that pins another certificate, never
/// get past TLS and say why. A URL that carries the token is refused before anything is sent,
/// and no log holds the token.
#[test]
fn a_node_reaches_a_wss_gateway_it_trusts_and_no_other() {
    let Some((node24, openclaw, _)) = gateway_parts() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key, pin) = tls_material(&dir.path().join("tls"));
    let mut gateway = Gateway::new(node24, openclaw, &dir.path().join("gateway"), &[]);
    gateway.serve_tls(&cert, &key, &ca);
    gateway.start();
    let url = gateway.url();
    assert!(url.starts_with("wss://"), "{url}");

    let node = |name: &str, trust: &str| {
        let node = node_with_gateway(&dir.path().join(name), &url, TOKEN);
        node.edit_config(|text| text.replace("pin_sha256 = []\n", trust));
        node
    };
    let with_ca = node(
        "with-ca",
        &format!(
            "ca_file = {:?}\npin_sha256 = []\n",
            ca.display().to_string()
        ),
    );
    // As openssl prints it: upper case, a colon between bytes.
    let printed = pin
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let pinned = node("pinned", &format!("pin_sha256 = [{printed:?}]\n"));
    let untrusting = node("untrusting", "pin_sha256 = []\n");
    let other_pin = node(
        "other-pin",
        &format!("pin_sha256 = [{:?}]\n", "00".repeat(32)),
    );
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let running: Vec<RunningNode> = [&with_ca, &pinned, &untrusting, &other_pin]
        .iter()
        .enumerate()
        .map(|(i, n)| RunningNode::start_logged(n, &[], &logs.join(format!("{i}.log"))))
        .collect();

    // Both trusting nodes get through TLS and the token check: their surfaces wait for approval.
    for trusted in [&with_ca, &pinned] {
        pending_surface(&gateway, &device_id_of(trusted));
    }
    let log_of =
        |i: usize| std::fs::read_to_string(logs.join(format!("{i}.log"))).unwrap_or_default();
    eventually(
        Duration::from_secs(30),
        "the untrusting nodes to say why they cannot connect",
        || {
            (log_of(2).contains("UnknownIssuer")
                && log_of(3).contains("not one of the pinned ones"))
            .then_some(())
        },
    );
    let pending = gateway
        .cli_json(&["nodes", "pending", "--json"])
        .expect("pending");
    for refused in [&untrusting, &other_pin] {
        let device = device_id_of(refused);
        assert!(
            !pending
                .as_array()
                .expect("pending list")
                .iter()
                .any(|p| p["nodeId"] == device.as_str()),
            "{pending}"
        );
    }
    drop(running);

    // The token in the URL: refused at start, and the token is not echoed.
    let leaky = node_with_gateway(
        &dir.path().join("leaky"),
        &format!("{url}/?token={TOKEN}"),
        TOKEN,
    );
    let output = run_with_deadline(
        Command::new(claw_tests::workspace_binary("clawnode"))
            .arg("--data-dir")
            .arg(leaky.data_dir())
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "warn"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no credentials or query"), "{stderr}");
    for i in 0..4 {
        assert!(!log_of(i).contains(TOKEN), "node {i} logged the token");
    }
    assert!(!stderr.contains(TOKEN), "the token is never logged");
}
