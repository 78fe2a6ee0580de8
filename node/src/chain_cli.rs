//! `clawnode localnet` (the embedded Solana chain, with the MOLT mint and a funded faucet) and
//! `clawnode wallet` (address, balances, localnet airdrops, MOLT transfers).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use claw_attestation::WalletKeypair;
use claw_localnet::EmbeddedChain;
use claw_market::Molt;
use claw_market::settlement::{ChainClient, MoltMint};
use clawnode::chain::{LOCALNET_INFO_FILE, LocalnetInfo};
use serde_json::json;
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;
use solana_signer::Signer as _;

use crate::{GlobalArgs, print_json};

const LOCALNET_FAUCET_FILE: &str = "localnet-faucet.json";
const LOCALNET_LEDGER_DIR: &str = "localnet-ledger";
const LAMPORTS_PER_SOL: u64 = 1_000_000_000;
/// SOL the localnet faucet starts with.
const FAUCET_SOL: u64 = 1_000;
/// MOLT the localnet faucet starts with.
const FAUCET_MOLT: u64 = 1_000_000;

#[derive(Debug, Args)]
pub(crate) struct LocalnetArgs {
    /// Port of the JSON-RPC endpoint.
    #[arg(long, default_value_t = 8899)]
    rpc_port: u16,
    /// Address the JSON-RPC endpoint listens on. Default 127.0.0.1. A private-network address
    /// (10/8, 172.16/12, 192.168/16) shares the chain with nodes on other hosts of a lab
    /// network; anyone who reaches it can ask it for SOL. Public addresses are refused.
    #[arg(
        long,
        value_name = "IP",
        default_value = "127.0.0.1",
        conflicts_with = "use_rpc"
    )]
    rpc_address: std::net::IpAddr,
    /// Start no chain: set up the MOLT mint and faucet on the cluster at this URL instead (a
    /// `solana-test-validator`, or devnet), write `localnet.json`, and exit.
    #[arg(long, value_name = "URL", conflicts_with_all = ["rpc_port", "reset"])]
    use_rpc: Option<String>,
    /// Start from an empty chain: forget the ledger in `localnet-ledger/` and make a new mint.
    #[arg(long)]
    reset: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// The wallet's address.
    Address,
    /// SOL and MOLT balances.
    Balance,
    /// Get SOL from the cluster's faucet and MOLT from the localnet faucet (localnet only).
    Airdrop {
        /// SOL to ask for.
        #[arg(long, default_value = "1")]
        sol: u64,
        /// MOLT to ask for (from the faucet `clawnode localnet` created).
        #[arg(long)]
        molt: Option<Molt>,
    },
    /// Send MOLT to an address.
    Transfer {
        /// The recipient's wallet address.
        to: String,
        /// How much, e.g. 12.5.
        amount: Molt,
        /// Memo recorded with the transfer.
        #[arg(long, default_value = "clawbernetes transfer")]
        memo: String,
    },
}

fn step(json: bool, text: &str) {
    if !json {
        eprintln!("  {text}");
        let _ = std::io::stderr().flush();
    }
}

pub(crate) fn localnet(global: &GlobalArgs, args: &LocalnetArgs) -> Result<()> {
    let root = global.data_dir.clone();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(run_localnet(root, args, global.json))
}

async fn run_localnet(root: PathBuf, args: &LocalnetArgs, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let (chain, url) = match &args.use_rpc {
        Some(url) => (None, url.clone()),
        None => {
            let ledger = root.join(LOCALNET_LEDGER_DIR);
            if args.reset && ledger.exists() {
                std::fs::remove_dir_all(&ledger)
                    .with_context(|| format!("removing {}", ledger.display()))?;
            }
            step(
                json,
                "starting the embedded Solana chain (LiteSVM, SPL Token, ATA, Memo)",
            );
            let chain = EmbeddedChain::start_with_ledger(
                std::net::SocketAddr::new(args.rpc_address, args.rpc_port),
                Some(ledger),
            )
            .await
            .context("starting the embedded chain")?;
            let url = chain.rpc_url();
            (Some(chain), url)
        }
    };
    let client = ChainClient::new(&url);
    step(json, &format!("waiting for {url} to be healthy"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(error) = client.health().await {
        if std::time::Instant::now() > deadline {
            bail!("{url} is not healthy: {error}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // A real cluster's faucet gives less; the embedded one gives what the demo needs.
    let faucet_sol = if chain.is_some() { FAUCET_SOL } else { 2 };
    let info_path = root.join(LOCALNET_INFO_FILE);
    if chain.is_some()
        && let Some(info) = existing_setup(&root, &client).await
    {
        // The ledger replayed the chain this data directory set up before: keep its mint.
        let info = LocalnetInfo {
            rpc_url: url.clone(),
            ..info
        };
        std::fs::write(&info_path, serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("writing {}", info_path.display()))?;
        return serve(
            chain,
            &info,
            &info_path,
            started,
            json,
            "resumed from its ledger",
        )
        .await;
    }
    step(json, "funding the faucet wallet");
    let faucet = WalletKeypair::generate();
    faucet
        .save(&root.join(LOCALNET_FAUCET_FILE), true)
        .context("saving the faucet keypair")?;
    let signer = to_keypair(&faucet)?;
    client
        .airdrop(&signer.pubkey(), faucet_sol * LAMPORTS_PER_SOL)
        .await
        .context("funding the faucet with SOL")?;
    step(json, "creating the MOLT mint (6 decimals)");
    let mint = MoltMint::create(&client, &signer)
        .await
        .context("creating the MOLT mint")?;
    mint.mint_to(
        &client,
        &signer,
        &signer.pubkey(),
        Molt::from_base_units(FAUCET_MOLT * 1_000_000),
    )
    .await
    .context("minting MOLT to the faucet")?;
    let info = LocalnetInfo {
        rpc_url: url.clone(),
        molt_mint: mint.address().to_string(),
        faucet: faucet.address(),
    };
    std::fs::write(&info_path, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {}", info_path.display()))?;
    let what = format!("faucet funded with {faucet_sol} SOL and {FAUCET_MOLT} MOLT");
    serve(chain, &info, &info_path, started, json, &what).await
}

/// The mint and faucet a previous run set up, when the replayed chain still has them.
async fn existing_setup(root: &Path, client: &ChainClient) -> Option<LocalnetInfo> {
    let info: LocalnetInfo =
        serde_json::from_slice(&std::fs::read(root.join(LOCALNET_INFO_FILE)).ok()?).ok()?;
    WalletKeypair::load(&root.join(LOCALNET_FAUCET_FILE)).ok()?;
    let mint = Pubkey::from_str(&info.molt_mint).ok()?;
    client.account(&mint).await.ok()??;
    Some(info)
}

/// Prints where MOLT lives, then serves the embedded chain (if any) until Ctrl-C.
async fn serve(
    chain: Option<EmbeddedChain>,
    info: &LocalnetInfo,
    info_path: &Path,
    started: std::time::Instant,
    json: bool,
    what: &str,
) -> Result<()> {
    let url = &info.rpc_url;
    if json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!(
            "MOLT ready on {url} in {} ms",
            started.elapsed().as_millis()
        );
        println!("rpc          {}", info.rpc_url);
        println!("MOLT mint    {}", info.molt_mint);
        println!("faucet       {} ({what})", info.faucet);
        println!("written to   {}", info_path.display());
    }
    let Some(chain) = chain else {
        return Ok(());
    };
    if !json {
        println!(
            "Ctrl-C stops the chain; its ledger stays for the next start (--reset forgets it)"
        );
    }
    let _ = tokio::signal::ctrl_c().await;
    drop(chain);
    Ok(())
}

fn to_keypair(wallet: &WalletKeypair) -> Result<Keypair> {
    Ok(clawnode::chain::to_keypair(wallet)?)
}

fn chain_settings(root: &Path) -> Result<(String, Option<MoltMint>)> {
    let dir = clawnode::DataDir::open(root)?;
    Ok(clawnode::chain::chain_settings(&dir)?)
}

/// Whether `url` is a local chain: on this machine, or at a private-network address where
/// `clawnode localnet --rpc-address` serves a lab's hosts.
fn is_local(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse().is_ok_and(claw_localnet::serves_privately)
}

pub(crate) fn wallet(global: &GlobalArgs, command: WalletCommand) -> Result<()> {
    let dir = clawnode::DataDir::open(&global.data_dir)?;
    let address = dir.wallet().address();
    if let WalletCommand::Address = command {
        if global.json {
            print_json(&json!({ "address": address }));
        } else {
            println!("{address}");
        }
        return Ok(());
    }
    let (url, mint) = chain_settings(&global.data_dir)?;
    let signer = to_keypair(dir.wallet())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let client = ChainClient::new(&url);
        let need_mint = || {
            mint.ok_or_else(|| {
                anyhow::anyhow!(
                    "no MOLT mint known for {url}: set chain.molt_mint in config.toml, or run `clawnode localnet` on this data directory"
                )
            })
        };
        match command {
            WalletCommand::Address => Ok(()),
            WalletCommand::Balance => {
                let lamports = client.sol_balance(&signer.pubkey()).await?;
                let molt = match mint {
                    Some(mint) => Some(mint.balance(&client, &signer.pubkey()).await?),
                    None => None,
                };
                let sol = format!("{}.{:09}", lamports / LAMPORTS_PER_SOL, lamports % LAMPORTS_PER_SOL);
                if global.json {
                    print_json(&json!({"address": address, "sol": sol, "lamports": lamports, "molt": molt.map(|m| m.to_string()), "rpc_url": url}));
                } else {
                    println!("address  {address}");
                    println!("SOL      {sol}");
                    println!("MOLT     {}", molt.map_or_else(|| "(no mint known)".to_owned(), |m| m.to_string()));
                }
                Ok(())
            }
            WalletCommand::Airdrop { sol, molt } => {
                if !is_local(&url) {
                    bail!(
                        "airdrops are for a local chain only; {url} is neither on this machine nor on a private network"
                    );
                }
                if !(1..=100).contains(&sol) {
                    bail!("--sol must be 1 to 100");
                }
                let landed = client.airdrop(&signer.pubkey(), sol * LAMPORTS_PER_SOL).await?;
                let mut out = json!({"sol": sol, "sol_signature": landed.signature.to_string()});
                if let Some(amount) = molt {
                    let mint = need_mint()?;
                    let faucet = WalletKeypair::load(&global.data_dir.join(LOCALNET_FAUCET_FILE))
                        .context("the localnet faucet keypair (run `clawnode localnet` on this data directory)")?;
                    let landed = mint
                        .transfer(&client, &to_keypair(&faucet)?, &signer.pubkey(), amount, "clawbernetes localnet airdrop")
                        .await?;
                    out["molt"] = json!(amount.to_string());
                    out["molt_signature"] = json!(landed.signature.to_string());
                }
                if global.json {
                    print_json(&out);
                } else {
                    println!("received {sol} SOL{}", molt.map(|m| format!(" and {m} MOLT")).unwrap_or_default());
                }
                Ok(())
            }
            WalletCommand::Transfer { to, amount, memo } => {
                let to = Pubkey::from_str(&to).map_err(|_| anyhow::anyhow!("{to:?} is not a Solana address"))?;
                if memo.is_empty() || memo.len() > 256 {
                    bail!("--memo must be 1 to 256 bytes");
                }
                let mint = need_mint()?;
                let landed = mint.transfer(&client, &signer, &to, amount, &memo).await?;
                if global.json {
                    print_json(&json!({"signature": landed.signature.to_string(), "slot": landed.slot, "amount": amount.to_string(), "to": to.to_string()}));
                } else {
                    println!("sent {amount} MOLT to {to} (signature {}, slot {})", landed.signature, landed.slot);
                }
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn airdrops_go_to_local_and_private_network_chains_only() {
        for url in [
            "http://127.0.0.1:8899",
            "http://localhost:8899",
            "http://10.77.0.2:8899/",
            "http://[::1]:8899",
        ] {
            assert!(super::is_local(url), "{url}");
        }
        for url in [
            "https://api.devnet.solana.com",
            "http://api.devnet.solana.com",
            "http://8.8.8.8:8899",
            "http://127.0.0.1.example.com:8899",
        ] {
            assert!(!super::is_local(url), "{url}");
        }
    }
}
