//! Settlement benchmarks through Solana's RPC client: per-transaction latency (send + confirm at
//! `confirmed`) and throughput of MOLT transfers, and a full escrow lock → release, on the
//! embedded chain and, when one is available, on a real `solana-test-validator` in the same run.
//!
//! `cargo bench -p claw-market --bench settlement` (or `scripts/bench.sh settlement`). The real
//! validator comes from `CLAW_SOLANA_TEST_VALIDATOR`, else the build `scripts/test.sh` unpacks.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_market::Molt;
use claw_market::lease::{LeaseId, Parties};
use claw_market::settlement::{ChainClient, Escrow, EscrowAddresses, MoltMint, pro_rata};
use solana_keypair::Keypair;
use solana_signer::Signer as _;

const SOL: u64 = 1_000_000_000;

struct Sizes {
    sequential: usize,
    tasks: usize,
    per_task: usize,
    settlements: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn funded(client: &ChainClient) -> Keypair {
    let keypair = Keypair::new();
    client
        .airdrop(&keypair.pubkey(), 10 * SOL)
        .await
        .expect("airdrop");
    keypair
}

async fn measure(name: &str, client: Arc<ChainClient>, sizes: &Sizes) {
    let issuer = funded(&client).await;
    let mint = MoltMint::create(&client, &issuer).await.expect("mint");
    let receiver = Keypair::new().pubkey();
    let sender = funded(&client).await;
    mint.mint_to(
        &client,
        &issuer,
        &sender.pubkey(),
        Molt::from_base_units(1_000_000_000),
    )
    .await
    .expect("supply");
    // The receiver's account exists before timing starts.
    mint.transfer(
        &client,
        &sender,
        &receiver,
        Molt::from_base_units(1),
        "warm-up",
    )
    .await
    .expect("warm-up");

    let mut latencies = Vec::with_capacity(sizes.sequential);
    for i in 0..sizes.sequential {
        let t = Instant::now();
        mint.transfer(
            &client,
            &sender,
            &receiver,
            Molt::from_base_units(1),
            &format!("seq {i}"),
        )
        .await
        .expect("transfer");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "{name}: MOLT transfer (send + confirm), {} sequential: p50 {:.2} ms, p95 {:.2} ms",
        sizes.sequential,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95))
    );

    let mut senders = Vec::new();
    for _ in 0..sizes.tasks {
        let wallet = funded(&client).await;
        mint.mint_to(
            &client,
            &issuer,
            &wallet.pubkey(),
            Molt::from_base_units(1_000_000),
        )
        .await
        .expect("supply");
        senders.push(wallet);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (t, wallet) in senders.into_iter().enumerate() {
        let client = Arc::clone(&client);
        let per_task = sizes.per_task;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                mint.transfer(
                    &client,
                    &wallet,
                    &receiver,
                    Molt::from_base_units(1),
                    &format!("par {t} {i}"),
                )
                .await
                .expect("transfer");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let total = sizes.tasks * sizes.per_task;
    println!(
        "{name}: {} clients x {} transfers: {:.0} confirmed transfers/s",
        sizes.tasks,
        sizes.per_task,
        total as f64 / started.elapsed().as_secs_f64()
    );

    let (buyer, provider, arbiter) = (
        funded(&client).await,
        funded(&client).await,
        funded(&client).await,
    );
    mint.mint_to(
        &client,
        &issuer,
        &buyer.pubkey(),
        Molt::from_base_units(1_000_000_000),
    )
    .await
    .expect("buyer supply");
    let mut settlements = Vec::new();
    for i in 0..sizes.settlements {
        let t = Instant::now();
        let lease_id = LeaseId::derive(
            &(i as u64)
                .to_le_bytes()
                .repeat(4)
                .try_into()
                .unwrap_or([0; 32]),
            &[1; 32],
        );
        let escrow = Escrow {
            addresses: EscrowAddresses::derive(&buyer.pubkey(), &lease_id),
            lease_id,
            parties: Parties {
                buyer: buyer.pubkey(),
                provider: provider.pubkey(),
                arbiter: arbiter.pubkey(),
            },
            amount: Molt::from_base_units(24_000_000),
        };
        escrow.fund(&client, &mint, &buyer).await.expect("lock");
        escrow
            .verify_funded(&client, &mint)
            .await
            .expect("verified");
        let release = pro_rata(escrow.amount, 3 * 3600, 8 * 3600);
        escrow
            .settle(&client, &mint, release, &provider, &buyer)
            .await
            .expect("release");
        settlements.push(t.elapsed());
    }
    settlements.sort();
    println!(
        "{name}: escrow lock -> verify -> 2-of-3 release, {} runs: p50 {:.1} ms, p95 {:.1} ms",
        sizes.settlements,
        ms(percentile(&settlements, 0.5)),
        ms(percentile(&settlements, 0.95))
    );
}

struct Validator {
    child: Child,
    _ledger: tempfile::TempDir,
}

impl Drop for Validator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn validator_binary() -> Option<String> {
    std::env::var("CLAW_SOLANA_TEST_VALIDATOR")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            let cached =
                std::env::var("HOME").ok()? + "/.cache/clawbernetes/solana/solana-test-validator";
            std::path::Path::new(&cached).exists().then_some(cached)
        })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let chain = claw_localnet::EmbeddedChain::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("embedded chain");
        let client = Arc::new(ChainClient::new(&chain.rpc_url()));
        let embedded = Sizes {
            sequential: 500,
            tasks: 8,
            per_task: 100,
            settlements: 50,
        };
        measure("embedded chain", client, &embedded).await;

        let Some(binary) = validator_binary() else {
            println!(
                "solana-test-validator: SKIPPED, none available (set CLAW_SOLANA_TEST_VALIDATOR)"
            );
            return;
        };
        let ledger = tempfile::tempdir().expect("ledger");
        let port = 28_899;
        let child = Command::new(&binary)
            .args(["--bind-address", "127.0.0.1", "--quiet", "--reset"])
            .args([
                "--rpc-port",
                &port.to_string(),
                "--faucet-port",
                &(port + 1).to_string(),
            ])
            .args(["--gossip-port", &(port + 2).to_string()])
            .args([
                "--dynamic-port-range",
                &format!("{}-{}", port + 3, port + 40),
            ])
            .arg("--ledger")
            .arg(ledger.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("validator");
        let _validator = Validator {
            child,
            _ledger: ledger,
        };
        let client = Arc::new(ChainClient::new(&format!("http://127.0.0.1:{port}")));
        let started = Instant::now();
        while client.health().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "validator not healthy"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let real = Sizes {
            sequential: 40,
            tasks: 8,
            per_task: 10,
            settlements: 5,
        };
        measure("solana-test-validator", client, &real).await;
    });
}
