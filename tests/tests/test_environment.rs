//! The parts later suites drive (Docker engine, local test image, Node 24, the OpenClaw CLI, the
//! real Solana validator) are present and work. `scripts/test.sh` prepares them; under its strict
//! mode a missing part fails here, once, with the reason, before any suite depends on it.

use std::process::Command;
use std::time::Duration;

use claw_tests::{required_part, run_with_deadline};

#[test]
fn the_docker_engine_runs_the_locally_built_test_image() {
    let Some(image) = required_part("CLAW_TEST_IMAGE", "the local busybox test image") else {
        return;
    };
    let output = run_with_deadline(
        Command::new("docker").args(["run", "--rm", &image, "sh", "-c", "echo $((6 * 7))"]),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
}

#[test]
fn openclaw_runs_on_node_24() {
    let Some(node) = required_part("CLAW_NODE24", "Node 24") else {
        return;
    };
    let Some(openclaw) = required_part("CLAW_OPENCLAW", "the openclaw CLI") else {
        return;
    };
    let version = run_with_deadline(
        Command::new(&node).arg("--version"),
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("v24."));
    let output = run_with_deadline(
        Command::new(&node).args([openclaw.as_str(), "--version"]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("2026.9.6"),
        "{text}"
    );
}

#[test]
fn the_real_solana_validator_starts_when_one_is_available() {
    let Ok(validator) = std::env::var("CLAW_SOLANA_TEST_VALIDATOR") else {
        eprintln!(
            "SKIPPED: no solana-test-validator on this machine (CLAW_SOLANA_TEST_VALIDATOR unset); \
             the embedded chain covers settlement"
        );
        return;
    };
    let output = run_with_deadline(
        Command::new(&validator).arg("--version"),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("4.2.2"), "{text}");
}
