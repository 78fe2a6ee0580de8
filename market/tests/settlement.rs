//! Settlement through the RPC client on a real chain: the embedded localnet always, and a real
//! `solana-test-validator` when the test script provides one (`CLAW_SOLANA_TEST_VALIDATOR`).
//!
//! Escrow lock → 2-of-3 release with the signed transaction passed between the parties, balances
//! exact to the base unit; a 1-of-3 release rejected on chain; refund; dispute through the
//! arbiter; settling twice pays once; tampering is refused; streaming up to the cap, past it
//! refused, revoke; insufficient funds typed and changing nothing; an endpoint that is down.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claw_market::Molt;
use claw_market::settlement::{
    ChainClient, EscrowTerms, MoltMint, Release, Settled, SettlementError, amount_due,
    approve_stream, open_escrow, pro_rata, pull, revoke,
};
use solana_keypair::Keypair;
use solana_signer::Signer as _;

const SOL: u64 = 1_000_000_000;

fn molt(text: &str) -> Molt {
    text.parse().expect("a MOLT amount")
}

/// A `solana-test-validator` on loopback in a temp ledger, stopped when dropped.
struct Validator {
    child: Child,
    url: String,
    _ledger: tempfile::TempDir,
}

impl Validator {
    fn start(binary: &str) -> Self {
        let ledger = tempfile::tempdir().expect("ledger dir");
        // Ports from this process's id, so parallel suites on one machine do not collide.
        let base = 20_000 + (std::process::id() % 1_000) as u16 * 40;
        let (rpc, faucet, gossip) = (base, base + 2, base + 3);
        let child = Command::new(binary)
            .args(["--bind-address", "127.0.0.1", "--quiet", "--reset"])
            .args(["--rpc-port", &rpc.to_string()])
            .args(["--faucet-port", &faucet.to_string()])
            .args(["--gossip-port", &gossip.to_string()])
            .args([
                "--dynamic-port-range",
                &format!("{}-{}", base + 5, base + 39),
            ])
            .arg("--ledger")
            .arg(ledger.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("solana-test-validator starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{rpc}"),
            _ledger: ledger,
        }
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_healthy(client: &ChainClient) {
    let started = Instant::now();
    while client.health().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never became healthy",
            client.url()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Parties {
    mint: MoltMint,
    buyer: Keypair,
    provider: Keypair,
    arbiter: Keypair,
}

async fn funded(client: &ChainClient) -> Keypair {
    let keypair = Keypair::new();
    client
        .airdrop(&keypair.pubkey(), 10 * SOL)
        .await
        .expect("airdrop");
    keypair
}

async fn setup(client: &ChainClient) -> Parties {
    let issuer = funded(client).await;
    let mint = MoltMint::create(client, &issuer).await.expect("MOLT mint");
    let (buyer, provider, arbiter) = (
        funded(client).await,
        funded(client).await,
        funded(client).await,
    );
    mint.mint_to(client, &issuer, &buyer.pubkey(), molt("1000"))
        .await
        .expect("buyer funded");
    Parties {
        mint,
        buyer,
        provider,
        arbiter,
    }
}

fn terms(p: &Parties, lease: &str, amount: &str) -> EscrowTerms {
    EscrowTerms {
        lease_id: lease.to_owned(),
        buyer: p.buyer.pubkey(),
        provider: p.provider.pubkey(),
        arbiter: p.arbiter.pubkey(),
        amount: molt(amount),
    }
}

async fn balance(client: &ChainClient, mint: &MoltMint, owner: &Keypair) -> Molt {
    mint.balance(client, &owner.pubkey())
        .await
        .expect("balance")
}

async fn escrow_release_refund_dispute_and_idempotency(client: &ChainClient) {
    let p = setup(client).await;
    let mint = p.mint;

    // Lock 24 MOLT (3 MOLT/h × 8 h); the vault is verified on chain before anyone relies on it.
    let (escrow, _) = open_escrow(client, &mint, &p.buyer, terms(&p, "lease-1", "24"))
        .await
        .expect("escrow funded");
    escrow
        .verify_funded(client, &mint)
        .await
        .expect("funding verified");
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("976"));
    // A vault whose multisig is not 2 of exactly these three parties is not this escrow.
    let mut claimed = escrow.clone();
    claimed.terms.arbiter = Keypair::new().pubkey();
    let err = claimed
        .verify_funded(client, &mint)
        .await
        .expect_err("a multisig of other keys is refused");
    assert!(matches!(err, SettlementError::WrongOwner(_)), "{err}");

    // One signature of three cannot release: the token program refuses it on chain.
    let one_of_three = mint
        .transfer_instruction(
            &escrow.vault,
            &mint.account_of(&p.provider.pubkey()),
            &escrow.multisig,
            &[&p.provider.pubkey()],
            molt("24"),
        )
        .expect("instruction");
    let err = client
        .submit(
            &[
                mint.create_account_instruction(&p.provider.pubkey(), &p.provider.pubkey()),
                one_of_three,
            ],
            &p.provider,
            &[],
        )
        .await
        .expect_err("1 of 3 must be refused");
    assert!(
        matches!(err, SettlementError::TransactionFailed { .. }),
        "{err}"
    );
    escrow
        .verify_funded(client, &mint)
        .await
        .expect("still funded");

    // Served 5 h 30 min of 8 h: the provider builds and signs the settlement, the buyer checks
    // exactly what it pays and co-signs, and either sends it.
    let release = pro_rata(escrow.terms.amount, 5 * 3600 + 1800, 8 * 3600);
    assert_eq!(
        release,
        Release {
            to_provider: molt("16.5"),
            to_buyer: molt("7.5")
        }
    );
    let (blockhash, last_valid) = client.latest_blockhash().await.expect("blockhash");
    let signers = [&p.provider.pubkey(), &p.buyer.pubkey()];
    let mut tx = escrow
        .settlement_transaction(&mint, release, &p.provider.pubkey(), signers, blockhash)
        .expect("settlement");
    tx.partial_sign(&[&p.provider], blockhash);
    let wire = bincode1::serialize(&tx).expect("wire");

    // The buyer refuses a settlement that pays the provider more than agreed.
    let greedy = Release {
        to_provider: molt("20"),
        to_buyer: molt("4"),
    };
    let err = escrow
        .check_settlement(&mint, &wire, greedy, &p.provider.pubkey(), signers)
        .expect_err("mismatch");
    assert!(err.to_string().contains("does not match"), "{err}");
    let mut received = escrow
        .check_settlement(&mint, &wire, release, &p.provider.pubkey(), signers)
        .expect("the settlement is the agreed one");
    received.partial_sign(&[&p.buyer], blockhash);
    // Bytes altered in transit (a share moved to the provider) fail the buyer's check, and the
    // chain refuses them too: the provider's signature no longer covers the message.
    let mut tampered = wire.clone();
    let position = tampered
        .windows(8)
        .rposition(|w| w == 16_500_000u64.to_le_bytes())
        .expect("the provider's amount is in the message");
    tampered[position..position + 8].copy_from_slice(&20_000_000u64.to_le_bytes());
    let err = escrow
        .check_settlement(&mint, &tampered, release, &p.provider.pubkey(), signers)
        .expect_err("tampered");
    assert!(err.to_string().contains("does not match"), "{err}");
    let mut forged: solana_transaction::Transaction =
        bincode1::deserialize(&tampered).expect("still a transaction");
    forged.partial_sign(&[&p.buyer], blockhash);
    let err = client
        .submit_signed(&forged, last_valid)
        .await
        .expect_err("the chain refuses a forged settlement");
    assert!(
        err.to_string().to_lowercase().contains("signature"),
        "{err}"
    );
    escrow
        .verify_funded(client, &mint)
        .await
        .expect("untouched");

    let landed = client
        .submit_signed(&received, last_valid)
        .await
        .expect("settled");
    assert_eq!(balance(client, &mint, &p.provider).await, molt("16.5"));
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("983.5"));
    // The same signed settlement sent again (say, by the other party) pays nothing: the chain
    // refuses it as already processed, and the sender is told of the first one.
    let again = client
        .submit_signed(&received, last_valid)
        .await
        .expect("the first landing is reported");
    assert_eq!(again.signature, landed.signature);
    assert_eq!(balance(client, &mint, &p.provider).await, molt("16.5"));

    // Settling again finds the first settlement and pays nothing.
    let again = escrow
        .settle(client, &mint, release, &p.provider, &p.buyer)
        .await
        .expect("idempotent");
    assert!(matches!(again, Settled::Already(_)), "{again:?}");
    assert_eq!(balance(client, &mint, &p.provider).await, molt("16.5"));

    // A provider that never starts: buyer and arbiter refund it all.
    let (refund, _) = open_escrow(client, &mint, &p.buyer, terms(&p, "lease-2", "10"))
        .await
        .expect("escrow 2");
    let all_back = pro_rata(refund.terms.amount, 0, 3600);
    let settled = refund
        .settle(client, &mint, all_back, &p.buyer, &p.arbiter)
        .await
        .expect("refund");
    assert!(matches!(settled, Settled::Now(_)));
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("983.5"));

    // A dispute: the arbiter sides with the provider for half.
    let (disputed, _) = open_escrow(client, &mint, &p.buyer, terms(&p, "lease-3", "8"))
        .await
        .expect("escrow 3");
    let half = pro_rata(disputed.terms.amount, 1800, 3600);
    disputed
        .settle(client, &mint, half, &p.arbiter, &p.provider)
        .await
        .expect("arbitrated");
    assert_eq!(balance(client, &mint, &p.provider).await, molt("20.5"));
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("979.5"));

    // A party outside the escrow cannot be one of its signers.
    let outsider = Keypair::new();
    let err = disputed
        .settlement_transaction(
            &mint,
            half,
            &outsider.pubkey(),
            [&outsider.pubkey(), &p.buyer.pubkey()],
            blockhash,
        )
        .expect_err("outsider");
    assert!(matches!(err, SettlementError::WrongOwner(_)));
}

async fn streaming_up_to_the_cap_then_revoke(client: &ChainClient) {
    let p = setup(client).await;
    let mint = p.mint;
    let cap = molt("10");
    approve_stream(
        client,
        &mint,
        &p.buyer,
        &p.provider.pubkey(),
        cap,
        "lease-s",
    )
    .await
    .expect("approve");
    // 6 MOLT/h: 40 minutes earns 4, 100 minutes earns 10 (the cap).
    let rate = molt("6");
    let first = amount_due(rate, 40 * 60, Molt::default(), cap);
    assert_eq!(first, molt("4"));
    pull(
        client,
        &mint,
        &p.provider,
        &p.buyer.pubkey(),
        first,
        "lease-s",
    )
    .await
    .expect("pull 1");
    // More than what is left of the allowance: the token program refuses it on chain.
    let err = pull(
        client,
        &mint,
        &p.provider,
        &p.buyer.pubkey(),
        molt("6.000001"),
        "lease-s",
    )
    .await
    .expect_err("over the cap");
    assert!(
        matches!(err, SettlementError::InsufficientFunds(_)),
        "{err}"
    );
    let second = amount_due(rate, 100 * 60, first, cap);
    assert_eq!(second, molt("6"));
    pull(
        client,
        &mint,
        &p.provider,
        &p.buyer.pubkey(),
        second,
        "lease-s",
    )
    .await
    .expect("pull 2");
    assert_eq!(amount_due(rate, 200 * 60, cap, cap), Molt::default());
    assert_eq!(balance(client, &mint, &p.provider).await, molt("10"));
    // The allowance is used up: the provider is no longer a delegate at all.
    let err = pull(
        client,
        &mint,
        &p.provider,
        &p.buyer.pubkey(),
        molt("0.000001"),
        "lease-s",
    )
    .await
    .expect_err("allowance spent");
    assert!(matches!(err, SettlementError::WrongOwner(_)), "{err}");

    // A fresh allowance, revoked: nothing more can be pulled.
    approve_stream(
        client,
        &mint,
        &p.buyer,
        &p.provider.pubkey(),
        cap,
        "lease-s2",
    )
    .await
    .expect("approve again");
    revoke(client, &mint, &p.buyer, "lease-s2")
        .await
        .expect("revoke");
    let err = pull(
        client,
        &mint,
        &p.provider,
        &p.buyer.pubkey(),
        molt("1"),
        "lease-s2",
    )
    .await
    .expect_err("revoked");
    assert!(matches!(err, SettlementError::WrongOwner(_)), "{err}");
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("990"));
}

async fn insufficient_funds_change_nothing(client: &ChainClient) {
    let p = setup(client).await;
    let mint = p.mint;
    let err = open_escrow(
        client,
        &mint,
        &p.buyer,
        terms(&p, "lease-big", "1000.000001"),
    )
    .await
    .expect_err("more than the buyer holds");
    assert!(
        matches!(err, SettlementError::InsufficientFunds(_)),
        "{err}"
    );
    assert_eq!(balance(client, &mint, &p.buyer).await, molt("1000"));

    // A vault of another mint is not a funding of this escrow.
    let other_issuer = funded(client).await;
    let other = MoltMint::create(client, &other_issuer)
        .await
        .expect("other mint");
    other
        .mint_to(client, &other_issuer, &p.buyer.pubkey(), molt("5"))
        .await
        .expect("other tokens");
    let err = mint
        .verify_funding(
            client,
            &other.account_of(&p.buyer.pubkey()),
            &p.buyer.pubkey(),
            molt("1"),
        )
        .await
        .expect_err("wrong mint");
    assert!(matches!(err, SettlementError::WrongMint(_)), "{err}");
    let err = mint
        .verify_funding(
            client,
            &mint.account_of(&p.provider.pubkey()),
            &p.provider.pubkey(),
            molt("1"),
        )
        .await
        .expect_err("no account");
    assert!(matches!(err, SettlementError::AccountMissing(_)), "{err}");
}

async fn whole_suite(client: &ChainClient) {
    wait_healthy(client).await;
    escrow_release_refund_dispute_and_idempotency(client).await;
    streaming_up_to_the_cap_then_revoke(client).await;
    insufficient_funds_change_nothing(client).await;
}

#[tokio::test]
async fn settlement_on_the_embedded_chain() {
    let chain = claw_localnet::EmbeddedChain::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("embedded chain");
    whole_suite(&ChainClient::new(&chain.rpc_url())).await;
}

#[tokio::test]
async fn settlement_on_a_real_solana_test_validator() {
    // The validator is a 1-hour build that only some machines have (scripts/test.sh unpacks it
    // from ../shared/tools when present): without it this suite says so and the embedded chain
    // carries the coverage.
    let Some(binary) = std::env::var("CLAW_SOLANA_TEST_VALIDATOR")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!(
            "SKIPPED: no solana-test-validator (CLAW_SOLANA_TEST_VALIDATOR unset), so the settlement \
             suite ran on the embedded chain only"
        );
        return;
    };
    let validator = Validator::start(&binary);
    let started = Instant::now();
    whole_suite(&ChainClient::new(&validator.url)).await;
    eprintln!(
        "real-validator settlement suite: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn an_endpoint_that_is_down_is_retried_then_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let client = ChainClient::new(&format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = client.health().await.expect_err("nothing listens there");
    assert!(
        matches!(err, SettlementError::RpcUnreachable { attempts: 4, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "it backed off between attempts"
    );
}
