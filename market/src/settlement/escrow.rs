//! Escrow for a lease: the buyer locks `price × GPUs × hours` in a token account owned by an SPL
//! Token 2-of-3 multisig (buyer, provider, arbiter). Both accounts live at addresses derived from
//! the buyer's wallet and the lease id (`create_with_seed`), so anyone can recompute them from the
//! terms, only the buyer can create them, and no escrow can back two leases.
//!
//! Any two of the three keys release it: normally the provider builds and signs the settlement and
//! the buyer checks and co-signs it; the arbiter with either party resolves a dispute. Whether a
//! lease is settled is read from the chain: the vault's balance moved out by its multisig.

use serde::{Deserialize, Serialize};
use solana_hash::Hash;
use solana_keypair::Keypair;
use solana_message::Message;
use solana_program_pack::Pack as _;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_signer::Signer as _;
use solana_transaction::Transaction;

use super::client::{ChainClient, FetchedTransaction, Landed, SettlementError};
use super::token::{MoltMint, memo, token_program};
use super::transfers::token_transfers;
use crate::Molt;
use crate::lease::{LeaseId, LeaseTerms, Parties};

/// Largest settlement transaction accepted from another party, in wire bytes.
const MAX_TRANSACTION_BYTES: usize = 1232;
/// Vault history entries searched for the settlement.
const SETTLEMENT_SEARCH: usize = 64;

/// The escrow's two accounts, derived from the buyer's wallet and the lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowAddresses {
    /// The 2-of-3 multisig that owns the vault.
    #[serde(with = "base58")]
    pub multisig: Pubkey,
    /// The MOLT token account holding the funds.
    #[serde(with = "base58")]
    pub vault: Pubkey,
}

mod base58 {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use solana_pubkey::Pubkey;

    pub(super) fn serialize<S: Serializer>(key: &Pubkey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&key.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pubkey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an address")))
    }
}

impl EscrowAddresses {
    fn seed(lease: &LeaseId, account: &str) -> String {
        format!("{lease}/{account}")
    }

    /// The escrow of `lease` funded by `buyer`.
    pub fn derive(buyer: &Pubkey, lease: &LeaseId) -> Self {
        let at = |account| {
            // A lease id is 19 characters, so the seed stays within Solana's 32.
            Pubkey::create_with_seed(buyer, &Self::seed(lease, account), &token_program())
                .unwrap_or_default()
        };
        Self {
            multisig: at("ms"),
            vault: at("vt"),
        }
    }
}

/// How a settlement splits the escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// To the provider.
    pub to_provider: Molt,
    /// Back to the buyer.
    pub to_buyer: Molt,
}

/// The provider's share of `amount` for `served` of `total` seconds, rounded down; the buyer
/// gets the rest.
pub fn pro_rata(amount: Molt, served_secs: u64, total_secs: u64) -> Release {
    let served = served_secs.min(total_secs);
    let to_provider = if total_secs == 0 {
        0
    } else {
        let share = u128::from(amount.base_units()) * u128::from(served) / u128::from(total_secs);
        u64::try_from(share).unwrap_or(amount.base_units())
    };
    Release {
        to_provider: Molt::from_base_units(to_provider),
        to_buyer: Molt::from_base_units(amount.base_units() - to_provider),
    }
}

/// A settlement as the chain shows it: the transaction that moved the vault's funds out, and
/// where they went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementFact {
    /// The transaction.
    pub signature: String,
    /// Its slot.
    pub slot: u64,
    /// Paid to the provider's MOLT account.
    pub to_provider: Molt,
    /// Paid back to the buyer's MOLT account.
    pub to_buyer: Molt,
    /// Paid anywhere else (only possible if two parties agreed to it).
    pub to_others: Molt,
    /// The block's time, Unix ms, when the cluster keeps one.
    #[serde(default)]
    pub block_time_ms: Option<u64>,
}

/// What settling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// This call settled it.
    Now(Landed),
    /// The chain shows it settled already; nothing was sent.
    Already(SettlementFact),
}

/// A lease's escrow: its parties, amount and derived addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escrow {
    /// The lease.
    pub lease_id: LeaseId,
    /// The three keys.
    pub parties: Parties,
    /// What the buyer locks.
    pub amount: Molt,
    /// Where.
    pub addresses: EscrowAddresses,
}

impl Escrow {
    /// The escrow the terms call for; `None` for a streamed lease.
    pub fn of(terms: &LeaseTerms) -> Result<Option<Self>, crate::lease::LeaseError> {
        let Some(addresses) = terms.escrow()? else {
            return Ok(None);
        };
        Ok(Some(Self {
            lease_id: terms.lease_id.clone(),
            parties: terms.parties()?,
            amount: terms.amount,
            addresses,
        }))
    }

    /// The vault.
    pub fn vault(&self) -> Pubkey {
        self.addresses.vault
    }

    /// The multisig.
    pub fn multisig(&self) -> Pubkey {
        self.addresses.multisig
    }

    /// The funding: both accounts created at their derived addresses (they may already hold
    /// lamports: someone sending SOL there first cannot block it), the multisig set to 2 of
    /// (buyer, provider, arbiter), the vault owned by it, and `amount` moved from the buyer, in
    /// one transaction the buyer signs and pays for. Sending it twice cannot fund twice: the
    /// accounts exist after the first.
    pub async fn fund(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
        buyer: &Keypair,
    ) -> Result<Landed, SettlementError> {
        if buyer.pubkey() != self.parties.buyer {
            return Err(SettlementError::WrongOwner(
                "only the escrow's buyer can fund it".to_owned(),
            ));
        }
        let program_error =
            |e: solana_program_error::ProgramError| SettlementError::Rpc(e.to_string());
        let mut instructions = Vec::new();
        for (address, account, len) in [
            (
                self.multisig(),
                "ms",
                spl_token_interface::state::Multisig::LEN,
            ),
            (self.vault(), "vt", spl_token_interface::state::Account::LEN),
        ] {
            let rent = client.rent_exempt_minimum(len).await?;
            instructions.push(solana_system_interface::instruction::transfer(
                &buyer.pubkey(),
                &address,
                rent,
            ));
            instructions.push(solana_system_interface::instruction::allocate_with_seed(
                &address,
                &buyer.pubkey(),
                &EscrowAddresses::seed(&self.lease_id, account),
                len as u64,
                &token_program(),
            ));
        }
        instructions.push(
            spl_token_interface::instruction::initialize_multisig2(
                &token_program(),
                &self.multisig(),
                &[
                    &self.parties.buyer,
                    &self.parties.provider,
                    &self.parties.arbiter,
                ],
                2,
            )
            .map_err(program_error)?,
        );
        instructions.push(
            spl_token_interface::instruction::initialize_account3(
                &token_program(),
                &self.vault(),
                &mint.address(),
                &self.multisig(),
            )
            .map_err(program_error)?,
        );
        instructions.push(mint.transfer_instruction(
            &mint.account_of(&buyer.pubkey()),
            &self.vault(),
            &buyer.pubkey(),
            &[],
            self.amount,
        )?);
        instructions.push(memo(&format!("clawbernetes lease {} fund", self.lease_id)));
        client.submit(&instructions, buyer, &[]).await
    }

    /// Whether the escrow's multisig exists on chain (the funding landed, or someone is funding
    /// it right now).
    pub async fn exists(&self, client: &ChainClient) -> Result<bool, SettlementError> {
        Ok(client.account(&self.multisig()).await?.is_some())
    }

    /// Checks on chain that the multisig is a 2-of-3 of exactly the three parties and the vault
    /// a MOLT account it owns holding at least the amount: what anyone checks before relying on
    /// a funding claim.
    pub async fn verify_funded(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
    ) -> Result<(), SettlementError> {
        let multisig = self.multisig();
        let Some((data, owner_program, _)) = client.account(&multisig).await? else {
            return Err(SettlementError::AccountMissing(format!(
                "escrow multisig {multisig}"
            )));
        };
        if owner_program != token_program() {
            return Err(SettlementError::WrongOwner(format!(
                "{multisig} is owned by program {owner_program}, not SPL Token"
            )));
        }
        let state = spl_token_interface::state::Multisig::unpack(&data).map_err(|e| {
            SettlementError::AccountMissing(format!("{multisig} is not a multisig: {e}"))
        })?;
        let n = usize::from(state.n);
        let mut signers: Vec<Pubkey> = state.signers.get(..n).unwrap_or_default().to_vec();
        let mut parties = vec![
            self.parties.buyer,
            self.parties.provider,
            self.parties.arbiter,
        ];
        signers.sort();
        parties.sort();
        if state.m != 2 || signers != parties {
            return Err(SettlementError::WrongOwner(format!(
                "{multisig} is a {}-of-{} multisig of other keys, not 2 of (buyer, provider, arbiter)",
                state.m, state.n
            )));
        }
        let vault = mint.read_account(client, &self.vault()).await?;
        if vault.owner != multisig || vault.delegate.is_some() {
            return Err(SettlementError::WrongOwner(format!(
                "vault {} is not held by the escrow's multisig alone",
                self.vault()
            )));
        }
        mint.verify_funding(client, &self.vault(), &multisig, self.amount)
            .await
            .map(|_| ())
    }

    /// The block time of the transaction `signature`, in Unix ms, after checking it is this
    /// escrow's funding: it landed and moved at least the amount into the vault from the buyer.
    /// The lease's clock starts there.
    pub async fn funding_time(
        &self,
        client: &ChainClient,
        signature: &Signature,
    ) -> Result<u64, SettlementError> {
        let Some(fetched) = client.transaction(signature).await? else {
            return Err(SettlementError::AccountMissing(format!(
                "funding transaction {signature}"
            )));
        };
        let funded: u64 = token_transfers(&fetched.transaction)
            .iter()
            .filter(|t| t.destination == self.vault() && t.authority == self.parties.buyer)
            .map(|t| t.amount.base_units())
            .sum();
        if fetched.failed || funded < self.amount.base_units() {
            return Err(SettlementError::WrongOwner(format!(
                "{signature} is not the funding of lease {}'s escrow",
                self.lease_id
            )));
        }
        fetched.block_time_ms.ok_or_else(|| {
            SettlementError::Rpc(format!("the cluster gives no block time for {signature}"))
        })
    }

    /// The settlement transaction, unsigned: `release` paid out of the vault, signed for the
    /// multisig by `signers` (two of buyer, provider, arbiter), fees paid by `fee_payer`.
    pub fn settlement_transaction(
        &self,
        mint: &MoltMint,
        release: Release,
        fee_payer: &Pubkey,
        signers: [&Pubkey; 2],
        blockhash: Hash,
    ) -> Result<Transaction, SettlementError> {
        let parties = [
            self.parties.buyer,
            self.parties.provider,
            self.parties.arbiter,
        ];
        if signers[0] == signers[1] || !signers.iter().all(|s| parties.contains(s)) {
            return Err(SettlementError::WrongOwner(
                "a settlement needs two different parties of the escrow".to_owned(),
            ));
        }
        if release.to_provider.checked_add(release.to_buyer) != Some(self.amount) {
            return Err(SettlementError::Rpc(format!(
                "a release must pay out exactly the escrowed {}",
                self.amount
            )));
        }
        let mut instructions = Vec::new();
        for (owner, amount) in [
            (self.parties.provider, release.to_provider),
            (self.parties.buyer, release.to_buyer),
        ] {
            if amount.base_units() == 0 {
                continue;
            }
            instructions.push(mint.create_account_instruction(fee_payer, &owner));
            instructions.push(mint.transfer_instruction(
                &self.vault(),
                &mint.account_of(&owner),
                &self.multisig(),
                &signers,
                amount,
            )?);
        }
        instructions.push(memo(&format!(
            "clawbernetes lease {} settle",
            self.lease_id
        )));
        let message = Message::new_with_blockhash(&instructions, Some(fee_payer), &blockhash);
        Ok(Transaction::new_unsigned(message))
    }

    /// Decodes a settlement another party signed, and checks it is exactly the settlement
    /// `release` asks for (same instructions, payer and blockhash) before anyone co-signs it.
    pub fn check_settlement(
        &self,
        mint: &MoltMint,
        wire: &[u8],
        release: Release,
        fee_payer: &Pubkey,
        signers: [&Pubkey; 2],
    ) -> Result<Transaction, SettlementError> {
        if wire.len() > MAX_TRANSACTION_BYTES {
            return Err(SettlementError::Rpc(format!(
                "a settlement is at most {MAX_TRANSACTION_BYTES} bytes, not {}",
                wire.len()
            )));
        }
        let tx: Transaction = bincode1::deserialize(wire)
            .map_err(|e| SettlementError::Rpc(format!("not a transaction: {e}")))?;
        let expected = self.settlement_transaction(
            mint,
            release,
            fee_payer,
            signers,
            tx.message.recent_blockhash,
        )?;
        if tx.message != expected.message {
            return Err(SettlementError::Rpc(
                "the settlement does not match the agreed release".to_owned(),
            ));
        }
        // Signatures already present must verify; missing ones are the co-signer's to add.
        for (key, signature) in tx.message.account_keys.iter().zip(&tx.signatures) {
            if *signature != Signature::default()
                && !signature.verify(key.as_ref(), &tx.message_data())
            {
                return Err(SettlementError::Rpc(format!(
                    "the signature of {key} does not verify"
                )));
            }
        }
        Ok(tx)
    }

    /// Reads a settlement from a transaction's transfers out of the vault.
    fn fact_of(
        &self,
        mint: &MoltMint,
        signature: String,
        fetched: &FetchedTransaction,
    ) -> SettlementFact {
        let transfers = token_transfers(&fetched.transaction);
        let provider_account = mint.account_of(&self.parties.provider);
        let buyer_account = mint.account_of(&self.parties.buyer);
        let mut fact = SettlementFact {
            signature,
            slot: fetched.slot,
            to_provider: Molt::default(),
            to_buyer: Molt::default(),
            to_others: Molt::default(),
            block_time_ms: fetched.block_time_ms,
        };
        for transfer in transfers.iter().filter(|t| t.source == self.vault()) {
            let to = if transfer.destination == provider_account {
                &mut fact.to_provider
            } else if transfer.destination == buyer_account {
                &mut fact.to_buyer
            } else {
                &mut fact.to_others
            };
            *to = to.checked_add(transfer.amount).unwrap_or(*to);
        }
        fact
    }

    /// The settlement, if the chain shows one: the vault holds less than the escrowed amount
    /// (only two of the three keys can move it), and the transaction that moved it out says where
    /// it went. Memos play no part. A deposit into the vault after its settlement at least as
    /// large as the escrow would hide the settlement from this check; it would cost its sender
    /// that deposit.
    pub async fn find_settlement(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
    ) -> Result<Option<SettlementFact>, SettlementError> {
        let vault = match mint.read_account(client, &self.vault()).await {
            Ok(vault) => vault,
            Err(SettlementError::AccountMissing(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        if vault.owner != self.multisig() || vault.amount >= self.amount {
            return Ok(None);
        }
        for entry in client
            .history(&self.vault(), None, SETTLEMENT_SEARCH)
            .await?
            .into_iter()
            .filter(|e| !e.failed)
        {
            let Some(fetched) = client.transaction(&entry.signature).await? else {
                continue;
            };
            if fetched.failed {
                continue;
            }
            let transfers = token_transfers(&fetched.transaction);
            if transfers.iter().any(|t| t.source == self.vault()) {
                return Ok(Some(self.fact_of(
                    mint,
                    entry.signature.to_string(),
                    &fetched,
                )));
            }
        }
        Err(SettlementError::Rpc(format!(
            "vault {} was emptied, but the transaction is not among its last {SETTLEMENT_SEARCH}",
            self.vault()
        )))
    }

    /// Settles with both multisig signers' keys at hand (the first pays the fees): looks on chain
    /// for a settlement first, so that settling twice never pays twice.
    pub async fn settle(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
        release: Release,
        first: &Keypair,
        second: &Keypair,
    ) -> Result<Settled, SettlementError> {
        if let Some(fact) = self.find_settlement(client, mint).await? {
            return Ok(Settled::Already(fact));
        }
        let (blockhash, last_valid) = client.latest_blockhash().await?;
        let mut tx = self.settlement_transaction(
            mint,
            release,
            &first.pubkey(),
            [&first.pubkey(), &second.pubkey()],
            blockhash,
        )?;
        tx.try_partial_sign(&[first], blockhash)
            .and_then(|()| tx.try_partial_sign(&[second], blockhash))
            .map_err(|e| SettlementError::Rpc(format!("signing: {e}")))?;
        client
            .submit_signed(&tx, last_valid)
            .await
            .map(Settled::Now)
    }

    /// Checks that the landed transaction `signature` settled this escrow, and reads the fact.
    pub async fn settlement_fact(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
        signature: &Signature,
    ) -> Result<Option<SettlementFact>, SettlementError> {
        let Some(fetched) = client.transaction(signature).await? else {
            return Ok(None);
        };
        let transfers = token_transfers(&fetched.transaction);
        if fetched.failed || !transfers.iter().any(|t| t.source == self.vault()) {
            return Ok(None);
        }
        Ok(Some(self.fact_of(mint, signature.to_string(), &fetched)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escrows_are_derived_per_buyer_and_lease() {
        let buyer = Pubkey::new_unique();
        let lease = LeaseId::derive(&[1; 32], &[2; 32]);
        let escrow = EscrowAddresses::derive(&buyer, &lease);
        assert_eq!(escrow, EscrowAddresses::derive(&buyer, &lease));
        assert_ne!(escrow.multisig, escrow.vault);
        assert_ne!(escrow.vault, Pubkey::default());
        let other_lease = LeaseId::derive(&[3; 32], &[2; 32]);
        assert_ne!(escrow, EscrowAddresses::derive(&buyer, &other_lease));
        assert_ne!(
            escrow,
            EscrowAddresses::derive(&Pubkey::new_unique(), &lease)
        );
        let json = serde_json::to_value(escrow).expect("json");
        assert_eq!(json["vault"], escrow.vault.to_string());
    }

    #[test]
    fn pro_rata_rounds_for_the_buyer() {
        let split = pro_rata(Molt::from_base_units(10), 1, 3);
        assert_eq!(split.to_provider.base_units(), 3);
        assert_eq!(split.to_buyer.base_units(), 7);
        assert_eq!(
            pro_rata(Molt::from_base_units(10), 9, 3)
                .to_buyer
                .base_units(),
            0
        );
    }
}
