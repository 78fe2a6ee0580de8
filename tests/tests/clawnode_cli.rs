//! `clawnode init | identity | inventory` as separate processes, checked from outside: the
//! signed report is decoded and verified here with the attestation library, not trusted.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claw_attestation::{HardwareInventory, NvmlStatus, Verifier, VerifyError};
use claw_tests::Clawnode;

fn fresh_node() -> (tempfile::TempDir, Clawnode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Clawnode::new(&dir.path().join("node"));
    (dir, node)
}

#[test]
fn init_identity_and_a_signed_inventory_that_verifies_independently() {
    let (_dir, node) = fresh_node();
    let init = node
        .ok(&[
            "init",
            "--simulated-gpu",
            "NVIDIA H100 80GB HBM3:2:81559",
            "--json",
        ])
        .json();
    assert_eq!(init["wallet_created"], true);
    let identity = node.ok(&["identity", "--json"]).json();
    assert_eq!(identity["peer_id"], init["peer_id"]);
    assert_eq!(identity["device_id"].as_str().unwrap().len(), 64);
    let wallet = bs58_len(identity["wallet_address"].as_str().unwrap());
    assert_eq!(wallet, 32, "wallet address is a base58 public key");

    let report = node.ok(&["inventory", "--verify", "--json"]).json();
    assert_eq!(report["verified"], true);
    assert_eq!(report["signer"], identity["peer_id"]);

    let wire = STANDARD
        .decode(report["envelope"].as_str().unwrap())
        .unwrap();
    assert_eq!(report["size_bytes"], wire.len());
    let verified = Verifier::new().verify(&wire).unwrap();
    assert_eq!(
        verified.signer_peer_id().to_string(),
        identity["peer_id"].as_str().unwrap()
    );
    let inventory: HardwareInventory = verified.open().unwrap();
    assert_eq!(
        serde_json::to_value(&inventory).unwrap(),
        report["inventory"],
        "the printed report is the signed one"
    );
    assert!(inventory.host.memory_total_bytes > 0);
    assert!(inventory.host.cpu_logical_cores > 0);

    let simulated: Vec<_> = inventory.gpus.iter().filter(|g| g.simulated).collect();
    assert_eq!(
        simulated.len(),
        2,
        "both simulated GPUs are in the signed report"
    );
    assert!(simulated.iter().all(|g| g.model == "NVIDIA H100 80GB HBM3"));
    match &inventory.nvml {
        NvmlStatus::Unavailable { reason } => {
            eprintln!("NVML absent here, as reported by the node: {reason}");
            assert!(!reason.is_empty());
            assert!(
                inventory.gpus.iter().all(|g| g.simulated),
                "no real GPUs without NVML"
            );
        }
        NvmlStatus::Loaded { driver_version, .. } => {
            eprintln!("NVML present here: driver {driver_version}");
        }
    }
}

#[test]
fn sequences_increase_between_reports() {
    let (_dir, node) = fresh_node();
    node.ok(&["init"]);
    let first = node.ok(&["inventory", "--json"]).json()["seq"]
        .as_u64()
        .unwrap();
    let second = node.ok(&["inventory", "--json"]).json()["seq"]
        .as_u64()
        .unwrap();
    assert!(second > first, "{second} is not newer than {first}");
}

#[test]
fn saved_reports_verify_and_tampered_ones_do_not() {
    let (dir, node) = fresh_node();
    node.ok(&["init"]);
    let saved = dir.path().join("report.bin");
    let saved_arg = saved.to_str().unwrap();
    let made = node
        .ok(&["inventory", "--save", saved_arg, "--json"])
        .json();
    let checked = node
        .ok(&["inventory", "--from", saved_arg, "--json"])
        .json();
    assert_eq!(checked["digest"], made["digest"]);
    assert_eq!(checked["verified"], true);

    let mut bytes = fs::read(&saved).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&saved, &bytes).unwrap();
    let refused = node.fails(&["inventory", "--from", saved_arg]);
    assert!(
        refused.stderr.contains("does not verify"),
        "{}",
        refused.stderr
    );
    assert!(matches!(
        Verifier::new().verify(&bytes),
        Err(VerifyError::BadSignature | VerifyError::Malformed(_))
    ));
}

#[test]
fn init_refuses_to_replace_an_identity_unless_forced_and_keeps_the_wallet() {
    let (_dir, node) = fresh_node();
    let first = node.ok(&["init", "--json"]).json();
    let refused = node.fails(&["init"]);
    assert!(
        refused.stderr.contains("already holds a node identity")
            && refused.stderr.contains(first["peer_id"].as_str().unwrap()),
        "{}",
        refused.stderr
    );
    assert_eq!(
        node.ok(&["identity", "--json"]).json()["peer_id"],
        first["peer_id"]
    );

    let forced = node.ok(&["init", "--force", "--json"]).json();
    assert_ne!(forced["peer_id"], first["peer_id"]);
    assert_eq!(forced["wallet_address"], first["wallet_address"]);
    assert_eq!(forced["wallet_created"], false);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let (_dir, node) = fresh_node();
    node.ok(&["init"]);
    let key = node.data_dir().join("identity.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let refused = node.fails(&["identity"]);
    assert!(refused.stderr.contains("mode 640"), "{}", refused.stderr);
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let wallet = node.data_dir().join("wallet.json");
    fs::set_permissions(&wallet, fs::Permissions::from_mode(0o604)).unwrap();
    let refused = node.fails(&["identity"]);
    assert!(refused.stderr.contains("wallet.json"), "{}", refused.stderr);
}

#[test]
fn missing_and_corrupt_data_dirs_get_clear_errors() {
    let (_dir, node) = fresh_node();
    let missing = node.fails(&["inventory"]);
    assert!(
        missing.stderr.contains("clawnode init"),
        "{}",
        missing.stderr
    );

    node.ok(&["init"]);
    let key = node.data_dir().join("identity.key");
    fs::write(&key, b"short").unwrap();
    let corrupt = node.fails(&["identity"]);
    assert!(
        corrupt.stderr.contains("corrupt") && corrupt.stderr.contains("5 bytes"),
        "{}",
        corrupt.stderr
    );

    node.ok(&["init", "--force"]);
    fs::write(node.data_dir().join("config.toml"), "[network]\nname = 7\n").unwrap();
    let bad_config = node.fails(&["inventory"]);
    assert!(
        bad_config.stderr.contains("config.toml"),
        "{}",
        bad_config.stderr
    );
}

#[test]
fn bad_simulated_gpu_flags_are_refused_before_anything_is_written() {
    let (_dir, node) = fresh_node();
    let refused = node.fails(&["init", "--simulated-gpu", "H100:many:80000"]);
    assert!(
        refused.stderr.contains("not a number"),
        "{}",
        refused.stderr
    );
    assert!(!node.data_dir().exists());
}

fn bs58_len(text: &str) -> usize {
    const ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    // Decode base58 by hand so the test does not share the code under test.
    let mut bytes: Vec<u8> = Vec::new();
    for c in text.chars() {
        let mut carry = ALPHABET.find(c).expect("base58 character") as u32;
        for b in bytes.iter_mut().rev() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    bytes.len() + text.chars().take_while(|&c| c == '1').count()
}

#[test]
fn logs_can_be_json_lines_and_never_carry_the_control_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Clawnode::new(&dir.path().join("node"));
    node.ok(&["init"]);
    let mut child = std::process::Command::new(claw_tests::workspace_binary("clawnode"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--log-json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env_remove("CLAWNODE_DATA_DIR")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("clawnode run");
    let token_file = node.data_dir().join("control.token");
    claw_tests::eventually(
        std::time::Duration::from_secs(30),
        "the control token",
        || token_file.exists().then_some(()),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = child.kill();
    let output = child.wait_with_output().expect("stderr");
    let token = std::fs::read_to_string(&token_file).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the node logged nothing");
    for line in &lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
        assert!(
            token.trim().is_empty() || !line.contains(token.trim()),
            "the token was logged"
        );
    }
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_command_quietly() {
    let (_dir, node) = fresh_node();
    node.init_with_simulated_gpus(4);
    // The reader is gone before the command prints: what `clawnode … | head -c0` does.
    let mut child = std::process::Command::new(claw_tests::workspace_binary("clawnode"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--json", "inventory"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("clawnode inventory");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("clawnode exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?}: {stderr}",
        output.status.code()
    );
    assert!(!stderr.contains("panicked"), "no panic report: {stderr}");
}

#[test]
fn fleet_watch_shows_the_view_again_until_its_reader_goes() {
    let (_dir, node) = fresh_node();
    node.init_with_simulated_gpus(1);
    let _running = claw_tests::RunningNode::start(&node, &[]);
    let mut child = std::process::Command::new(claw_tests::workspace_binary("clawnode"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--json", "fleet", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("clawnode fleet --watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut views = 0;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("\"members\"") {
                views += 1;
                if views == 2 {
                    break;
                }
            }
        }
        // The reader goes here, with the pipe.
        let _ = tx.send(views);
    });
    let views = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or(0);
    assert_eq!(views, 2, "the fleet shown twice");
    // With its reader gone, the watch ends quietly at its next view.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watch outlived its reader"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
