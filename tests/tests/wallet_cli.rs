//! `clawnode localnet` serves the embedded chain to other processes; `clawnode wallet` in
//! another process airdrops, reads balances and transfers MOLT through it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claw_tests::{Clawnode, eventually, free_port_pair, workspace_binary};

struct Localnet(Child);

impl Drop for Localnet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn point_at(node: &Clawnode, url: &str) {
    let path = node.data_dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace(
        "rpc_url = \"http://127.0.0.1:8899\"",
        &format!("rpc_url = {url:?}"),
    );
    std::fs::write(&path, text).expect("config rewritten");
}

#[test]
fn wallets_airdrop_and_transfer_molt_through_the_embedded_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = Clawnode::new(&dir.path().join("alice"));
    let bob = Clawnode::new(&dir.path().join("bob"));
    alice.ok(&["init"]);
    bob.ok(&["init"]);
    let port = free_port_pair();
    let url = format!("http://127.0.0.1:{port}");
    point_at(&alice, &url);
    point_at(&bob, &url);

    let start_chain = || {
        Localnet(
            Command::new(workspace_binary("clawnode"))
                .arg("--data-dir")
                .arg(alice.data_dir())
                .args(["localnet", "--rpc-port", &port.to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("clawnode localnet"),
        )
    };
    let chain = start_chain();
    let info = eventually(Duration::from_secs(30), "localnet.json", || {
        let bytes = std::fs::read(alice.data_dir().join("localnet.json")).ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()
    });
    assert_eq!(info["rpc_url"], url);
    let mint = info["molt_mint"].as_str().expect("mint").to_owned();

    alice.ok(&["wallet", "airdrop", "--sol", "2", "--molt", "10"]);
    let balance = alice.ok(&["--json", "wallet", "balance"]).json();
    assert_eq!(balance["molt"], "10");
    assert_eq!(balance["lamports"], 2_000_000_000);

    // Bob learns the mint from his config; his wallet has no MOLT account yet.
    let path = bob.data_dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("[chain]\n", &format!("[chain]\nmolt_mint = {mint:?}\n")),
    )
    .expect("config");
    assert_eq!(bob.ok(&["--json", "wallet", "balance"]).json()["molt"], "0");
    let bob_address = bob.ok(&["wallet", "address"]).stdout.trim().to_owned();

    let sent = alice
        .ok(&[
            "--json",
            "wallet",
            "transfer",
            &bob_address,
            "2.5",
            "--memo",
            "lease-7",
        ])
        .json();
    assert_eq!(sent["amount"], "2.5");
    assert_eq!(
        bob.ok(&["--json", "wallet", "balance"]).json()["molt"],
        "2.5"
    );
    assert_eq!(
        alice.ok(&["--json", "wallet", "balance"]).json()["molt"],
        "7.5"
    );

    let refused = alice.fails(&["wallet", "transfer", &bob_address, "8"]);
    assert!(
        refused.stderr.contains("insufficient funds"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        alice.ok(&["--json", "wallet", "balance"]).json()["molt"],
        "7.5"
    );
    let refused = alice.fails(&["wallet", "transfer", "not-an-address", "1"]);
    assert!(
        refused.stderr.contains("not a Solana address"),
        "{}",
        refused.stderr
    );
    let refused = alice.fails(&["wallet", "transfer", &bob_address, "1.0000001"]);
    assert!(refused.stderr.contains("decimal"), "{}", refused.stderr);

    // The chain is killed with SIGKILL and started again: its ledger brings every payment back.
    drop(chain);
    let _chain = start_chain();
    let balance = eventually(Duration::from_secs(30), "the restarted chain", || {
        let finished = alice.run(&["--json", "wallet", "balance"]);
        finished.success.then(|| finished.json())
    });
    assert_eq!(balance["molt"], "7.5");
    assert_eq!(
        bob.ok(&["--json", "wallet", "balance"]).json()["molt"],
        "2.5"
    );
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(alice.data_dir().join("localnet.json")).expect("info"),
    )
    .expect("json");
    assert_eq!(
        info["molt_mint"],
        mint.as_str(),
        "the same mint after the restart"
    );

    // Airdrops are for a chain on this machine only.
    let path = bob.data_dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(
            &format!("rpc_url = {url:?}"),
            "rpc_url = \"https://api.devnet.solana.com\"",
        ),
    )
    .expect("config");
    let refused = bob.fails(&["wallet", "airdrop"]);
    assert!(
        refused.stderr.contains("local chain only"),
        "{}",
        refused.stderr
    );
}
