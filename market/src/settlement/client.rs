//! One client for every cluster: Solana's RPC client, with the project's own confirmation
//! polling at `confirmed`, retries for blockhash expiry and an unreachable endpoint, and typed
//! errors.

use std::time::Duration;

use solana_commitment_config::CommitmentConfig;
use solana_hash::Hash;
use solana_instruction::Instruction;
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;
use solana_rpc_client::nonblocking::rpc_client::RpcClient;
use solana_rpc_client::rpc_client::GetConfirmedSignaturesForAddress2Config;
use solana_rpc_client_api::client_error::{Error as ClientError, ErrorKind};
use solana_rpc_client_api::config::{RpcSendTransactionConfig, RpcTransactionConfig};
use solana_rpc_client_api::request::{RpcError, RpcResponseErrorData};
use solana_signature::Signature;
use solana_signer::Signer as _;
use solana_transaction::Transaction;
use solana_transaction::versioned::VersionedTransaction;
use solana_transaction_error::TransactionError;
use solana_transaction_status_client_types::UiTransactionEncoding;

/// How often a sent transaction's status is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts for an endpoint that does not answer, with doubling backoff from 200 ms.
const RPC_ATTEMPTS: u32 = 4;
/// Transactions re-signed with a fresh blockhash after the previous one expired unlanded.
const BLOCKHASH_ATTEMPTS: u32 = 3;
/// Longest any one RPC call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// SPL Token's error codes that settlement tells apart.
const TOKEN_INSUFFICIENT_FUNDS: u32 = 1;
const TOKEN_MINT_MISMATCH: u32 = 3;
const TOKEN_OWNER_MISMATCH: u32 = 4;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettlementError {
    /// The paying account holds less than the transfer.
    #[error("insufficient funds: {0}")]
    InsufficientFunds(String),
    /// A token account belongs to another mint.
    #[error("wrong mint: {0}")]
    WrongMint(String),
    /// An account the operation needs does not exist.
    #[error("account missing: {0}")]
    AccountMissing(String),
    /// An account is not owned as the operation requires.
    #[error("wrong owner: {0}")]
    WrongOwner(String),
    /// The blockhash expired before the transaction landed, every time it was tried.
    #[error("blockhash expired after {0} attempts")]
    BlockhashExpired(u32),
    /// The RPC endpoint did not answer, after retries.
    #[error("RPC endpoint {url} unreachable after {attempts} attempts: {reason}")]
    RpcUnreachable {
        /// The endpoint.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The transaction failed on chain, or in preflight.
    #[error("transaction failed: {error}; logs: {logs:?}")]
    TransactionFailed {
        /// The chain's error.
        error: String,
        /// The program log.
        logs: Vec<String>,
    },
    /// Anything else the endpoint answered.
    #[error("RPC error: {0}")]
    Rpc(String),
}

/// A landed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// Its signature.
    pub signature: Signature,
    /// The slot it landed in.
    pub slot: u64,
}

/// A connection to a Solana cluster's JSON-RPC endpoint.
pub struct ChainClient {
    rpc: RpcClient,
    url: String,
}

impl std::fmt::Debug for ChainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainClient")
            .field("url", &self.url)
            .finish()
    }
}

fn is_unreachable(error: &ClientError) -> bool {
    match error.kind() {
        ErrorKind::Io(_) => true,
        ErrorKind::Reqwest(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        _ => false,
    }
}

/// Maps a token program's custom error to its typed form.
fn classify(error: &TransactionError, logs: Vec<String>) -> SettlementError {
    use solana_instruction_error::InstructionError;
    match error {
        TransactionError::InstructionError(
            _,
            InstructionError::Custom(TOKEN_INSUFFICIENT_FUNDS),
        ) => SettlementError::InsufficientFunds(error.to_string()),
        TransactionError::InstructionError(_, InstructionError::Custom(TOKEN_MINT_MISMATCH)) => {
            SettlementError::WrongMint(error.to_string())
        }
        TransactionError::InstructionError(_, InstructionError::Custom(TOKEN_OWNER_MISMATCH)) => {
            SettlementError::WrongOwner(error.to_string())
        }
        TransactionError::InstructionError(_, InstructionError::UninitializedAccount)
        | TransactionError::AccountNotFound
        | TransactionError::ProgramAccountNotFound => {
            SettlementError::AccountMissing(error.to_string())
        }
        TransactionError::InsufficientFundsForFee
        | TransactionError::InsufficientFundsForRent { .. } => {
            SettlementError::InsufficientFunds(error.to_string())
        }
        other => SettlementError::TransactionFailed {
            error: other.to_string(),
            logs,
        },
    }
}

/// The typed form of the endpoint's refusal of a transaction.
fn refusal(error: &ClientError) -> SettlementError {
    if let ErrorKind::RpcError(RpcError::RpcResponseError { message, data, .. }) = error.kind() {
        if let RpcResponseErrorData::SendTransactionPreflightFailure(result) = data
            && let Some(err) = &result.err
        {
            let err = TransactionError::from(err.clone());
            if matches!(err, TransactionError::BlockhashNotFound) {
                return SettlementError::BlockhashExpired(1);
            }
            return classify(&err, result.logs.clone().unwrap_or_default());
        }
        if message.contains("Blockhash not found") {
            return SettlementError::BlockhashExpired(1);
        }
        return SettlementError::TransactionFailed {
            error: message.clone(),
            logs: Vec::new(),
        };
    }
    SettlementError::Rpc(error.to_string())
}

impl ChainClient {
    /// A client for the endpoint at `url`, confirming at `confirmed`.
    pub fn new(url: &str) -> Self {
        Self {
            rpc: RpcClient::new_with_timeout_and_commitment(
                url.to_owned(),
                RPC_TIMEOUT,
                CommitmentConfig::confirmed(),
            ),
            url: url.to_owned(),
        }
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Retries `call` while the endpoint is unreachable, backing off from 200 ms.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, SettlementError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=RPC_ATTEMPTS {
            match call().await {
                Ok(value) => return Ok(value),
                Err(error) if is_unreachable(&error) => {
                    last = error.to_string();
                    if attempt < RPC_ATTEMPTS {
                        tracing::debug!(url = %self.url, attempt, %error, "RPC unreachable; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
                Err(error) => return Err(SettlementError::Rpc(error.to_string())),
            }
        }
        Err(SettlementError::RpcUnreachable {
            url: self.url.clone(),
            attempts: RPC_ATTEMPTS,
            reason: last,
        })
    }

    /// Checks that the endpoint answers and is healthy.
    pub async fn health(&self) -> Result<(), SettlementError> {
        self.with_retries(|| self.rpc.get_health()).await
    }

    /// Lamports held by `address`.
    pub async fn sol_balance(&self, address: &Pubkey) -> Result<u64, SettlementError> {
        self.with_retries(|| self.rpc.get_balance(address)).await
    }

    /// Asks the cluster's faucet for lamports (localnet and devnet only) and waits for them.
    pub async fn airdrop(&self, to: &Pubkey, lamports: u64) -> Result<Landed, SettlementError> {
        let signature = self
            .with_retries(|| self.rpc.request_airdrop(to, lamports))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(landed) = self.status(&signature).await? {
                return landed.map(|slot| Landed { signature, slot });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SettlementError::Rpc(format!(
                    "airdrop {signature} did not land within 60 s"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Raw account data and owner; `None` when the account does not exist.
    pub async fn account(
        &self,
        address: &Pubkey,
    ) -> Result<Option<(Vec<u8>, Pubkey, u64)>, SettlementError> {
        let response = self
            .with_retries(|| {
                self.rpc
                    .get_account_with_commitment(address, CommitmentConfig::confirmed())
            })
            .await?;
        Ok(response.value.map(|a| (a.data, a.owner, a.lamports)))
    }

    /// Lamports that make an account of `len` bytes rent-exempt.
    pub async fn rent_exempt_minimum(&self, len: usize) -> Result<u64, SettlementError> {
        self.with_retries(|| self.rpc.get_minimum_balance_for_rent_exemption(len))
            .await
    }

    /// The latest blockhash and the last block height at which it is valid.
    pub async fn latest_blockhash(&self) -> Result<(Hash, u64), SettlementError> {
        self.with_retries(|| {
            self.rpc
                .get_latest_blockhash_with_commitment(CommitmentConfig::confirmed())
        })
        .await
    }

    /// `Some(Ok(slot))` once confirmed, `Some(Err(..))` when it failed on chain, `None` while
    /// unknown.
    async fn status(
        &self,
        signature: &Signature,
    ) -> Result<Option<Result<u64, SettlementError>>, SettlementError> {
        let statuses = self
            .with_retries(|| {
                self.rpc
                    .get_signature_statuses(std::slice::from_ref(signature))
            })
            .await?;
        Ok(statuses
            .value
            .into_iter()
            .next()
            .flatten()
            .and_then(|status| {
                if let Some(err) = &status.err {
                    return Some(Err(classify(err, Vec::new())));
                }
                status
                    .satisfies_commitment(CommitmentConfig::confirmed())
                    .then_some(Ok(status.slot))
            }))
    }

    /// Signs `instructions` with `payer` (fee payer) and `signers`, sends, and waits until the
    /// transaction is confirmed. When its blockhash expires before it lands, it is re-signed with
    /// a fresh one; a transaction is only re-sent once the old one can no longer land, so it is
    /// never executed twice.
    pub async fn submit(
        &self,
        instructions: &[Instruction],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> Result<Landed, SettlementError> {
        for _ in 0..BLOCKHASH_ATTEMPTS {
            let (blockhash, last_valid) = self.latest_blockhash().await?;
            let mut all: Vec<&Keypair> = vec![payer];
            all.extend(
                signers
                    .iter()
                    .copied()
                    .filter(|s| s.pubkey() != payer.pubkey()),
            );
            let tx = Transaction::new_signed_with_payer(
                instructions,
                Some(&payer.pubkey()),
                &all,
                blockhash,
            );
            match self.submit_signed(&tx, last_valid).await {
                Err(SettlementError::BlockhashExpired(_)) => continue,
                other => return other,
            }
        }
        Err(SettlementError::BlockhashExpired(BLOCKHASH_ATTEMPTS))
    }

    /// Sends a fully signed transaction (e.g. one whose signatures were gathered from several
    /// parties) and waits until it is confirmed, or until `last_valid_block_height` passes.
    pub async fn submit_signed(
        &self,
        tx: &Transaction,
        last_valid_block_height: u64,
    ) -> Result<Landed, SettlementError> {
        let config = RpcSendTransactionConfig {
            preflight_commitment: Some(CommitmentConfig::confirmed().commitment),
            max_retries: Some(0),
            ..RpcSendTransactionConfig::default()
        };
        let signature = match self.send(tx, config).await {
            Ok(signature) => signature,
            // The same transaction was sent already (by another party holding it, or a retry):
            // follow that one instead of failing.
            Err(SettlementError::TransactionFailed { error, .. })
                if error.contains("already been processed") =>
            {
                tx.signatures.first().copied().ok_or_else(|| {
                    SettlementError::Rpc("a sent transaction without a signature".to_owned())
                })?
            }
            Err(error) => return Err(error),
        };
        loop {
            if let Some(landed) = self.status(&signature).await? {
                return landed.map(|slot| Landed { signature, slot });
            }
            let height = self.with_retries(|| self.rpc.get_block_height()).await?;
            if height > last_valid_block_height {
                // One last look: it may have landed in the final valid block.
                if let Some(landed) = self.status(&signature).await? {
                    return landed.map(|slot| Landed { signature, slot });
                }
                return Err(SettlementError::BlockhashExpired(1));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends once (retrying only while the endpoint is unreachable); a refusal is mapped to its
    /// typed error with the program log. Never re-sends a transaction the endpoint answered.
    async fn send(
        &self,
        tx: &Transaction,
        config: RpcSendTransactionConfig,
    ) -> Result<Signature, SettlementError> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=RPC_ATTEMPTS {
            match self.rpc.send_transaction_with_config(tx, config).await {
                Ok(signature) => return Ok(signature),
                Err(error) if is_unreachable(&error) => {
                    last = error.to_string();
                    if attempt < RPC_ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
                Err(error) => return Err(refusal(&error)),
            }
        }
        Err(SettlementError::RpcUnreachable {
            url: self.url.clone(),
            attempts: RPC_ATTEMPTS,
            reason: last,
        })
    }

    /// A landed transaction, decoded, with its slot, block time and whether it failed; `None`
    /// when the cluster does not know it.
    pub async fn transaction(
        &self,
        signature: &Signature,
    ) -> Result<Option<FetchedTransaction>, SettlementError> {
        let config = RpcTransactionConfig {
            encoding: Some(UiTransactionEncoding::Base64),
            commitment: Some(CommitmentConfig::confirmed()),
            max_supported_transaction_version: Some(0),
        };
        let fetched = match self
            .with_retries(|| self.rpc.get_transaction_with_config(signature, config))
            .await
        {
            Ok(fetched) => fetched,
            // Clusters answer an unknown signature with an error or with null.
            Err(SettlementError::Rpc(message))
                if message.contains("invalid type: null") || message.contains("not found") =>
            {
                return Ok(None);
            }
            Err(other) => return Err(other),
        };
        let Some(transaction) = fetched.transaction.transaction.decode() else {
            return Err(SettlementError::Rpc(format!(
                "transaction {signature} could not be decoded"
            )));
        };
        Ok(Some(FetchedTransaction {
            transaction,
            slot: fetched.slot,
            block_time_ms: fetched
                .block_time
                .and_then(|secs| u64::try_from(secs).ok())
                .map(|secs| secs * 1000),
            failed: fetched
                .transaction
                .meta
                .is_none_or(|meta| meta.err.is_some()),
        }))
    }

    /// Transactions that touched `address`, newest first, back to (not including) `until`, at
    /// most `limit`.
    pub async fn history(
        &self,
        address: &Pubkey,
        until: Option<Signature>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, SettlementError> {
        let entries = self
            .with_retries(|| {
                self.rpc.get_signatures_for_address_with_config(
                    address,
                    GetConfirmedSignaturesForAddress2Config {
                        before: None,
                        until,
                        limit: Some(limit.min(1000)),
                        commitment: Some(CommitmentConfig::confirmed()),
                    },
                )
            })
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                Some(HistoryEntry {
                    signature: entry.signature.parse().ok()?,
                    slot: entry.slot,
                    failed: entry.err.is_some(),
                })
            })
            .collect())
    }
}

/// A landed transaction as the cluster returns it.
#[derive(Debug, Clone)]
pub struct FetchedTransaction {
    /// The transaction.
    pub transaction: VersionedTransaction,
    /// Its slot.
    pub slot: u64,
    /// Its block time, Unix ms, when the cluster keeps one.
    pub block_time_ms: Option<u64>,
    /// Whether it failed on chain.
    pub failed: bool,
}

/// One transaction in an address's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its signature.
    pub signature: Signature,
    /// Its slot.
    pub slot: u64,
    /// Whether it failed on chain.
    pub failed: bool,
}
