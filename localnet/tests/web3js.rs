//! The common JavaScript client, `@solana/web3.js` 1.x on Node 24, against the embedded chain and
//! (when the test script provides one) a real `solana-test-validator`: `confirmTransaction`
//! waits on `signatureSubscribe` at the RPC port + 1, so this is the PubSub endpoint as a wallet
//! or dApp uses it. `tests/web3js/confirm_airdrop.mjs` airdrops, confirms and reads the balance.
//!
//! Parts (prepared by `scripts/test.sh`): `CLAW_NODE24`, `CLAW_WEB3JS_DIR` and, optionally,
//! `CLAW_SOLANA_TEST_VALIDATOR`. A missing Node or web3.js skips these tests, saying so, unless
//! `CLAW_TEST_STRICT=1`; then it fails them. A missing validator only skips (the test script
//! itself treats the validator as optional, as the settlement suite does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use claw_localnet::EmbeddedChain;
use serde_json::Value;
use solana_rpc_client::nonblocking::rpc_client::RpcClient;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/web3js/confirm_airdrop.mjs"
);
/// web3.js gives up on a blockhash after 150 slots (60 s here); leave room for that to show.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);
/// Ports one validator takes: RPC, PubSub (RPC + 1), faucet, gossip, then its dynamic range.
const VALIDATOR_PORTS: u16 = 40;

/// A part the test script provides through an environment variable (the `tests` crate's
/// `required_part`, which this crate cannot depend on): `None`, after saying so, when absent
/// and the run is not strict; a failure under `CLAW_TEST_STRICT=1`.
fn required_part(variable: &str, what: &str) -> Option<String> {
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

/// Node 24 and the directory holding `node_modules/@solana/web3.js`, when both are provided.
fn node_and_web3js() -> Option<(String, PathBuf)> {
    let node = required_part("CLAW_NODE24", "Node 24")?;
    let dir = PathBuf::from(required_part("CLAW_WEB3JS_DIR", "@solana/web3.js 1.x")?);
    let manifest = dir.join("node_modules/@solana/web3.js/package.json");
    assert!(
        manifest.is_file(),
        "CLAW_WEB3JS_DIR={} holds no node_modules/@solana/web3.js",
        dir.display()
    );
    Some((node, dir))
}

/// What the script printed.
#[derive(Debug)]
struct Confirmed {
    report: Value,
    confirm_ms: u64,
}

/// Runs the script against `rpc_url`.
async fn confirm_airdrop(node: &str, web3js: &Path, rpc_url: &str) -> Confirmed {
    let run = tokio::process::Command::new(node)
        .arg(SCRIPT)
        .arg(rpc_url)
        .env("CLAW_WEB3JS_DIR", web3js)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("confirm_airdrop.mjs ran past {SCRIPT_DEADLINE:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "confirm_airdrop.mjs failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\nstderr: {stderr}"));
    let confirm_ms = report["confirmMs"].as_u64().expect("confirmMs");
    Confirmed { report, confirm_ms }
}

/// Checks the report: confirmed without error, and the balance is the airdrop.
fn check(confirmed: &Confirmed, within: Duration) {
    let report = &confirmed.report;
    assert!(
        report["web3js"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{report}"
    );
    assert_eq!(report["err"], Value::Null, "{report}");
    assert!(
        report["lamports"].as_u64().is_some_and(|l| l > 0),
        "{report}"
    );
    assert_eq!(report["balance"], report["lamports"], "{report}");
    assert!(report["slot"].as_u64().is_some(), "{report}");
    assert!(
        Duration::from_millis(confirmed.confirm_ms) < within,
        "confirmTransaction took {} ms (limit {within:?}): {report}",
        confirmed.confirm_ms
    );
}

#[tokio::test]
async fn web3js_confirms_an_airdrop_on_the_embedded_chain() {
    let Some((node, web3js)) = node_and_web3js() else {
        return;
    };
    let chain = EmbeddedChain::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("chain starts");
    let started = Instant::now();
    let confirmed = confirm_airdrop(&node, &web3js, &chain.rpc_url()).await;
    eprintln!(
        "web3.js on the embedded chain: confirmTransaction {} ms, script {:.2} s: {}",
        confirmed.confirm_ms,
        started.elapsed().as_secs_f64(),
        confirmed.report
    );
    // Without PubSub this waited for the blockhash to expire (60 s); with it, well under 1 s.
    check(&confirmed, Duration::from_secs(5));
}

#[tokio::test]
async fn web3js_confirms_an_airdrop_on_a_real_solana_test_validator() {
    let Some((node, web3js)) = node_and_web3js() else {
        return;
    };
    let Some(binary) = std::env::var("CLAW_SOLANA_TEST_VALIDATOR")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!(
            "SKIPPED: no solana-test-validator (CLAW_SOLANA_TEST_VALIDATOR unset), so web3.js ran \
             against the embedded chain only"
        );
        return;
    };
    let validator = Validator::start(&binary);
    validator.wait_healthy().await;
    let started = Instant::now();
    let confirmed = confirm_airdrop(&node, &web3js, &validator.url).await;
    eprintln!(
        "web3.js on solana-test-validator: confirmTransaction {} ms, script {:.2} s: {}",
        confirmed.confirm_ms,
        started.elapsed().as_secs_f64(),
        confirmed.report
    );
    check(&confirmed, Duration::from_secs(30));
}

/// A `solana-test-validator` on loopback with its own ledger and ports, stopped when dropped.
struct Validator {
    child: std::process::Child,
    url: String,
    ledger: tempfile::TempDir,
}

impl Validator {
    fn start(binary: &str) -> Self {
        let ledger = tempfile::tempdir().expect("ledger dir");
        let base = free_port_block();
        let log = |name: &str| {
            std::fs::File::create(ledger.path().join(name)).expect("a log file in the ledger dir")
        };
        let child = std::process::Command::new(binary)
            .args(["--bind-address", "127.0.0.1", "--quiet", "--reset"])
            .args(["--rpc-port", &base.to_string()])
            .args(["--faucet-port", &(base + 2).to_string()])
            .args(["--gossip-port", &(base + 3).to_string()])
            .args([
                "--dynamic-port-range",
                &format!("{}-{}", base + 5, base + VALIDATOR_PORTS - 1),
            ])
            .arg("--ledger")
            .arg(ledger.path().join("ledger"))
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("solana-test-validator starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{base}"),
            ledger,
        }
    }

    async fn wait_healthy(&self) {
        let client = RpcClient::new(self.url.clone());
        let started = Instant::now();
        while client.get_health().await.is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.ledger.path().join("stderr.log"))
                    .unwrap_or_default();
                panic!("{} never became healthy; stderr:\n{log}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of [`VALIDATOR_PORTS`] consecutive ports free on loopback for TCP and UDP.
fn free_port_block() -> u16 {
    let start = 30_000 + (std::process::id() % 500) as u16 * VALIDATOR_PORTS;
    (0..500)
        .map(|i| 30_000 + (start - 30_000 + i * VALIDATOR_PORTS) % 20_000)
        .find(|base| {
            (*base..*base + VALIDATOR_PORTS).all(|port| {
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            })
        })
        .expect("a block of free ports")
}
