//! The embedded chain through Solana's own RPC client: what a wallet and an SPL token transfer
//! need, with the cluster's answers for failures.

use std::time::Duration;

use claw_localnet::EmbeddedChain;
use solana_commitment_config::CommitmentConfig;
use solana_keypair::Keypair;
use solana_program_pack::Pack as _;
use solana_pubkey::Pubkey;
use solana_rpc_client::nonblocking::rpc_client::RpcClient;
use solana_signer::Signer as _;
use solana_transaction::Transaction;
use solana_transaction::versioned::VersionedTransaction;
use solana_transaction_status_client_types::UiTransactionEncoding;

const SOL: u64 = 1_000_000_000;

async fn start() -> (EmbeddedChain, RpcClient) {
    let chain = EmbeddedChain::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("chain starts");
    let client = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
    (chain, client)
}

async fn funded(client: &RpcClient) -> Keypair {
    let keypair = Keypair::new();
    let signature = client
        .request_airdrop(&keypair.pubkey(), 10 * SOL)
        .await
        .expect("airdrop");
    assert!(
        client
            .confirm_transaction(&signature)
            .await
            .expect("status")
    );
    keypair
}

async fn send(
    client: &RpcClient,
    payer: &Keypair,
    signers: &[&Keypair],
    ixs: &[solana_instruction::Instruction],
) -> Result<solana_signature::Signature, solana_rpc_client_api::client_error::Error> {
    let blockhash = client.get_latest_blockhash().await.expect("blockhash");
    let mut all: Vec<&Keypair> = vec![payer];
    all.extend_from_slice(signers);
    let tx = Transaction::new_signed_with_payer(ixs, Some(&payer.pubkey()), &all, blockhash);
    client.send_and_confirm_transaction(&tx).await
}

/// Creates a 6-decimal mint with `authority` and returns its address.
async fn create_mint(client: &RpcClient, authority: &Keypair) -> Pubkey {
    let mint = Keypair::new();
    let len = spl_token_interface::state::Mint::LEN;
    let rent = client
        .get_minimum_balance_for_rent_exemption(len)
        .await
        .expect("rent");
    send(
        client,
        authority,
        &[&mint],
        &[
            solana_system_interface::instruction::create_account(
                &authority.pubkey(),
                &mint.pubkey(),
                rent,
                len as u64,
                &spl_token_interface::id(),
            ),
            spl_token_interface::instruction::initialize_mint2(
                &spl_token_interface::id(),
                &mint.pubkey(),
                &authority.pubkey(),
                None,
                6,
            )
            .expect("mint ix"),
        ],
    )
    .await
    .expect("mint created");
    mint.pubkey()
}

fn ata(owner: &Pubkey, mint: &Pubkey) -> Pubkey {
    spl_associated_token_account_interface::address::get_associated_token_address(owner, mint)
}

fn create_ata(payer: &Pubkey, owner: &Pubkey, mint: &Pubkey) -> solana_instruction::Instruction {
    spl_associated_token_account_interface::instruction::create_associated_token_account_idempotent(
        payer,
        owner,
        mint,
        &spl_token_interface::id(),
    )
}

#[tokio::test]
async fn health_version_slots_and_airdrops() {
    let (chain, client) = start().await;
    client.get_health().await.expect("healthy");
    let version = client.get_version().await.expect("version");
    assert_eq!(version.solana_core, claw_localnet::SOLANA_CORE_VERSION);
    let before = client.get_slot().await.expect("slot");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        client.get_slot().await.expect("slot") > before,
        "slots advance"
    );
    let wallet = funded(&client).await;
    assert_eq!(
        client.get_balance(&wallet.pubkey()).await.expect("balance"),
        10 * SOL
    );
    assert!(chain.slot() > 0);
}

#[tokio::test]
async fn spl_token_transfer_with_memo_through_rpc() {
    let (_chain, client) = start().await;
    let issuer = funded(&client).await;
    let buyer = Keypair::new();
    let mint = create_mint(&client, &issuer).await;
    let (issuer_ata, buyer_ata) = (ata(&issuer.pubkey(), &mint), ata(&buyer.pubkey(), &mint));
    send(
        &client,
        &issuer,
        &[],
        &[
            create_ata(&issuer.pubkey(), &issuer.pubkey(), &mint),
            create_ata(&issuer.pubkey(), &buyer.pubkey(), &mint),
            spl_token_interface::instruction::mint_to(
                &spl_token_interface::id(),
                &mint,
                &issuer_ata,
                &issuer.pubkey(),
                &[],
                5_000_000,
            )
            .expect("mint_to"),
        ],
    )
    .await
    .expect("accounts and supply");

    let transfer = spl_token_interface::instruction::transfer_checked(
        &spl_token_interface::id(),
        &issuer_ata,
        &mint,
        &buyer_ata,
        &issuer.pubkey(),
        &[],
        1_234_567,
        6,
    )
    .expect("transfer ix");
    let memo = spl_memo_interface::instruction::build_memo(
        &spl_memo_interface::v3::id(),
        b"lease-42",
        &[&issuer.pubkey()],
    );
    let blockhash = client.get_latest_blockhash().await.expect("blockhash");
    let tx = Transaction::new_signed_with_payer(
        &[transfer, memo],
        Some(&issuer.pubkey()),
        &[&issuer],
        blockhash,
    );
    let signature = client
        .send_and_confirm_transaction(&tx)
        .await
        .expect("transfer");
    let balance = client
        .get_token_account_balance(&buyer_ata)
        .await
        .expect("balance");
    assert_eq!(balance.amount, "1234567");
    assert_eq!(balance.decimals, 6);
    assert_eq!(balance.ui_amount_string, "1.234567");
    let history = client
        .get_signatures_for_address(&buyer_ata)
        .await
        .expect("history");
    assert_eq!(history[0].signature, signature.to_string());
    assert_eq!(history[0].memo.as_deref(), Some("[8] lease-42"));
    for encoding in [UiTransactionEncoding::Base64, UiTransactionEncoding::Json] {
        let fetched = client
            .get_transaction(&signature, encoding)
            .await
            .expect("getTransaction");
        let meta = fetched.transaction.meta.expect("meta");
        assert_eq!(meta.fee, 5_000);
        assert!(meta.err.is_none());
        let logs: Option<Vec<String>> = meta.log_messages.into();
        assert!(
            logs.expect("logs").iter().any(|l| l.contains("lease-42")),
            "memo in the log"
        );
        let decoded = fetched.transaction.transaction.decode();
        if let Some(decoded) = decoded {
            assert_eq!(decoded.signatures[0], signature);
        } else {
            assert!(matches!(encoding, UiTransactionEncoding::Json));
        }
    }

    // Sending the very same transaction again never pays twice.
    let again = client.send_and_confirm_transaction(&tx).await;
    assert!(again.is_err(), "a replayed transaction must be refused");
    let balance = client
        .get_token_account_balance(&buyer_ata)
        .await
        .expect("balance");
    assert_eq!(balance.amount, "1234567");

    // A tampered transaction (amount changed after signing) fails signature verification.
    let blockhash = client.get_latest_blockhash().await.expect("blockhash");
    let honest = Transaction::new_signed_with_payer(
        &[spl_token_interface::instruction::transfer_checked(
            &spl_token_interface::id(),
            &issuer_ata,
            &mint,
            &buyer_ata,
            &issuer.pubkey(),
            &[],
            1,
            6,
        )
        .expect("ix")],
        Some(&issuer.pubkey()),
        &[&issuer],
        blockhash,
    );
    let mut tampered = VersionedTransaction::from(honest);
    if let solana_message::VersionedMessage::Legacy(message) = &mut tampered.message {
        message.instructions[0].data[1] = 0xff;
    }
    let err = client
        .send_transaction(&tampered)
        .await
        .expect_err("tampered");
    assert!(
        err.to_string().to_lowercase().contains("signature"),
        "{err}"
    );

    // Moving more than the account holds fails on chain with the program's error, changing nothing.
    let err = send(
        &client,
        &issuer,
        &[],
        &[spl_token_interface::instruction::transfer_checked(
            &spl_token_interface::id(),
            &issuer_ata,
            &mint,
            &buyer_ata,
            &issuer.pubkey(),
            &[],
            50_000_000,
            6,
        )
        .expect("ix")],
    )
    .await
    .expect_err("insufficient funds");
    assert!(
        err.to_string().contains("custom program error: 0x1"),
        "{err}"
    );
    let balance = client
        .get_token_account_balance(&issuer_ata)
        .await
        .expect("balance");
    assert_eq!(balance.amount, (5_000_000 - 1_234_567).to_string());
}

#[tokio::test]
async fn a_stale_blockhash_is_refused() {
    let (_chain, client) = start().await;
    let payer = funded(&client).await;
    let stale = solana_hash::Hash::new_unique();
    let tx = Transaction::new_signed_with_payer(
        &[solana_system_interface::instruction::transfer(
            &payer.pubkey(),
            &Pubkey::new_unique(),
            1_000_000,
        )],
        Some(&payer.pubkey()),
        &[&payer],
        stale,
    );
    let err = client
        .send_transaction(&tx)
        .await
        .expect_err("stale blockhash");
    assert!(err.to_string().contains("Blockhash not found"), "{err}");
    assert!(
        !client
            .is_blockhash_valid(&stale, CommitmentConfig::confirmed())
            .await
            .expect("rpc")
    );
    assert_eq!(
        client.get_balance(&payer.pubkey()).await.expect("balance"),
        10 * SOL
    );
}

#[tokio::test]
async fn a_chain_with_a_ledger_survives_a_crash() {
    let ledger = tempfile::tempdir().expect("ledger");
    let (wallet, receiver, signature, tx) = {
        let chain = EmbeddedChain::start_with_ledger(
            "127.0.0.1:0".parse().expect("addr"),
            Some(ledger.path().to_path_buf()),
        )
        .await
        .expect("chain");
        let client = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
        let wallet = funded(&client).await;
        let receiver = Pubkey::new_unique();
        let blockhash = client.get_latest_blockhash().await.expect("blockhash");
        let tx = Transaction::new_signed_with_payer(
            &[solana_system_interface::instruction::transfer(
                &wallet.pubkey(),
                &receiver,
                2 * SOL,
            )],
            Some(&wallet.pubkey()),
            &[&wallet],
            blockhash,
        );
        let signature = client
            .send_and_confirm_transaction(&tx)
            .await
            .expect("transfer");
        // Dropping the chain aborts it at once, as a crash would: nothing is flushed on the way out.
        (wallet, receiver, signature, tx)
    };
    let chain = EmbeddedChain::start_with_ledger(
        "127.0.0.1:0".parse().expect("addr"),
        Some(ledger.path().to_path_buf()),
    )
    .await
    .expect("chain restarts");
    let client = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
    assert_eq!(
        client.get_balance(&receiver).await.expect("balance"),
        2 * SOL
    );
    assert_eq!(
        client.get_balance(&wallet.pubkey()).await.expect("balance"),
        8 * SOL - 5_000
    );
    assert!(
        client
            .confirm_transaction(&signature)
            .await
            .expect("status"),
        "the status survives"
    );
    // The replayed transaction is still known, so sending it again cannot pay twice.
    assert!(client.send_transaction(&tx).await.is_err());
    assert_eq!(
        client.get_balance(&receiver).await.expect("balance"),
        2 * SOL
    );
}

#[tokio::test]
async fn a_transaction_lands_once_however_much_follows_it() {
    let (_chain, client) = start().await;
    let wallet = funded(&client).await;
    let receiver = Pubkey::new_unique();
    let blockhash = client.get_latest_blockhash().await.expect("blockhash");
    let tx = Transaction::new_signed_with_payer(
        &[solana_system_interface::instruction::transfer(
            &wallet.pubkey(),
            &receiver,
            SOL,
        )],
        Some(&wallet.pubkey()),
        &[&wallet],
        blockhash,
    );
    client
        .send_and_confirm_transaction(&tx)
        .await
        .expect("transfer");
    // Many other transactions land while the first one's blockhash is still usable.
    for _ in 0..40 {
        funded(&client).await;
    }
    assert!(
        client
            .is_blockhash_valid(&blockhash, CommitmentConfig::confirmed())
            .await
            .expect("blockhash validity"),
        "the test must replay within the blockhash's window"
    );
    let again = client.send_transaction(&tx).await;
    let error = again.expect_err("a transaction already processed is refused");
    assert!(
        error.to_string().contains("already been processed"),
        "{error}"
    );
    assert_eq!(client.get_balance(&receiver).await.expect("balance"), SOL);
}

#[tokio::test]
async fn a_transaction_signed_before_a_restart_never_lands_after_it() {
    let ledger = tempfile::tempdir().expect("ledger dir");
    let addr = "127.0.0.1:0".parse().expect("addr");
    let (wallet, unsent) = {
        let chain = EmbeddedChain::start_with_ledger(addr, Some(ledger.path().to_path_buf()))
            .await
            .expect("chain");
        let client = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
        let wallet = funded(&client).await;
        let blockhash = client.get_latest_blockhash().await.expect("blockhash");
        let unsent = Transaction::new_signed_with_payer(
            &[solana_system_interface::instruction::transfer(
                &wallet.pubkey(),
                &Pubkey::new_unique(),
                SOL,
            )],
            Some(&wallet.pubkey()),
            &[&wallet],
            blockhash,
        );
        (wallet, unsent)
    };
    let chain = EmbeddedChain::start_with_ledger(addr, Some(ledger.path().to_path_buf()))
        .await
        .expect("chain restarts");
    let client = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
    // However long the new run goes on, a blockhash of the last run is never valid again.
    tokio::time::sleep(claw_localnet::SLOT_DURATION * 3).await;
    let refused = client.send_transaction(&unsent).await;
    assert!(
        refused
            .expect_err("a blockhash of an earlier run")
            .to_string()
            .contains("Blockhash not found")
    );
    assert_eq!(
        client.get_balance(&wallet.pubkey()).await.expect("balance"),
        10 * SOL
    );
}
