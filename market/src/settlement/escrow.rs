//! Escrow for a lease: the buyer locks `price × hours` in a token account owned by an SPL Token
//! 2-of-3 multisig (buyer, provider, arbiter). Any two of them release it: normally the provider
//! builds and signs the settlement, the buyer checks and co-signs it; the arbiter with either
//! party resolves a dispute; buyer and arbiter refund a lease that never started.

use solana_hash::Hash;
use solana_keypair::Keypair;
use solana_message::Message;
use solana_program_pack::Pack as _;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_signer::Signer as _;
use solana_transaction::Transaction;

use super::client::{ChainClient, Landed, SettlementError};
use super::token::{MoltMint, memo, token_program};
use crate::Molt;
use crate::lease::valid_lease_id;

/// Largest settlement transaction accepted from another party, in wire bytes.
const MAX_TRANSACTION_BYTES: usize = 1232;

/// Who is party to a lease's escrow, and how much it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowTerms {
    /// The lease, named in every memo: 1 to 64 of `A-Z a-z 0-9 - _`.
    pub lease_id: String,
    /// Pays into the escrow.
    pub buyer: Pubkey,
    /// Is paid out of it.
    pub provider: Pubkey,
    /// Resolves disputes.
    pub arbiter: Pubkey,
    /// What the buyer locks.
    pub amount: Molt,
}

/// An open escrow on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escrow {
    /// Its terms.
    pub terms: EscrowTerms,
    /// The 2-of-3 multisig that owns the vault.
    pub multisig: Pubkey,
    /// The token account holding the funds.
    pub vault: Pubkey,
}

/// How a settlement splits the escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// To the provider.
    pub to_provider: Molt,
    /// Back to the buyer.
    pub to_buyer: Molt,
}

/// What settling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// This call settled it.
    Now(Landed),
    /// It had been settled already, by this transaction; nothing was sent.
    Already(Signature),
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

/// Locks the escrow: creates the multisig and its vault and moves `terms.amount` from the buyer,
/// in one transaction the buyer signs and pays for.
pub async fn open_escrow(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    terms: EscrowTerms,
) -> Result<(Escrow, Landed), SettlementError> {
    open_escrow_at(client, mint, buyer, terms, &Keypair::new(), &Keypair::new()).await
}

/// [`open_escrow`] at addresses chosen beforehand (`multisig` and `vault` are fresh keypairs),
/// so that a buyer can record where its money is going before it sends it, and find the escrow
/// after a crash.
pub async fn open_escrow_at(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    terms: EscrowTerms,
    multisig: &Keypair,
    vault: &Keypair,
) -> Result<(Escrow, Landed), SettlementError> {
    if !valid_lease_id(&terms.lease_id) {
        return Err(SettlementError::Rpc(format!(
            "lease id {:?} must be 1 to 64 of A-Z a-z 0-9 - _",
            terms.lease_id
        )));
    }
    if terms.buyer != buyer.pubkey() {
        return Err(SettlementError::WrongOwner(
            "the escrow's buyer must sign its funding".to_owned(),
        ));
    }
    let multisig_len = spl_token_interface::state::Multisig::LEN;
    let vault_len = spl_token_interface::state::Account::LEN;
    let multisig_rent = client.rent_exempt_minimum(multisig_len).await?;
    let vault_rent = client.rent_exempt_minimum(vault_len).await?;
    let bad = |e: solana_program_error::ProgramError| SettlementError::Rpc(e.to_string());
    let instructions = [
        solana_system_interface::instruction::create_account(
            &buyer.pubkey(),
            &multisig.pubkey(),
            multisig_rent,
            multisig_len as u64,
            &token_program(),
        ),
        spl_token_interface::instruction::initialize_multisig2(
            &token_program(),
            &multisig.pubkey(),
            &[&terms.buyer, &terms.provider, &terms.arbiter],
            2,
        )
        .map_err(bad)?,
        solana_system_interface::instruction::create_account(
            &buyer.pubkey(),
            &vault.pubkey(),
            vault_rent,
            vault_len as u64,
            &token_program(),
        ),
        spl_token_interface::instruction::initialize_account3(
            &token_program(),
            &vault.pubkey(),
            &mint.address(),
            &multisig.pubkey(),
        )
        .map_err(bad)?,
        mint.transfer_instruction(
            &mint.account_of(&buyer.pubkey()),
            &vault.pubkey(),
            &buyer.pubkey(),
            &[],
            terms.amount,
        )?,
        memo(&format!("clawbernetes lease {} fund", terms.lease_id)),
    ];
    let landed = client
        .submit(&instructions, buyer, &[multisig, vault])
        .await?;
    Ok((
        Escrow {
            terms,
            multisig: multisig.pubkey(),
            vault: vault.pubkey(),
        },
        landed,
    ))
}

impl Escrow {
    /// The memo every settlement of this lease carries.
    pub fn settlement_memo(&self) -> String {
        format!("clawbernetes lease {} settle", self.terms.lease_id)
    }

    /// Checks on chain that the multisig is a 2-of-3 of exactly the buyer, provider and arbiter,
    /// and that the vault is a MOLT account it owns holding the agreed amount: what a provider
    /// checks before it starts anything on the strength of a funding claim.
    pub async fn verify_funded(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
    ) -> Result<(), SettlementError> {
        let Some((data, owner_program, _)) = client.account(&self.multisig).await? else {
            return Err(SettlementError::AccountMissing(format!(
                "escrow multisig {}",
                self.multisig
            )));
        };
        if owner_program != token_program() {
            return Err(SettlementError::WrongOwner(format!(
                "{} is owned by program {owner_program}, not SPL Token",
                self.multisig
            )));
        }
        let multisig = spl_token_interface::state::Multisig::unpack(&data).map_err(|e| {
            SettlementError::AccountMissing(format!("{} is not a multisig: {e}", self.multisig))
        })?;
        let n = usize::from(multisig.n);
        let mut signers: Vec<Pubkey> = multisig.signers.get(..n).unwrap_or_default().to_vec();
        let mut parties = vec![self.terms.buyer, self.terms.provider, self.terms.arbiter];
        signers.sort();
        parties.sort();
        if multisig.m != 2 || signers != parties {
            return Err(SettlementError::WrongOwner(format!(
                "{} is a {}-of-{} multisig of other keys, not 2 of (buyer, provider, arbiter)",
                self.multisig, multisig.m, multisig.n
            )));
        }
        mint.verify_funding(client, &self.vault, &self.multisig, self.terms.amount)
            .await
            .map(|_| ())
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
        let parties = [self.terms.buyer, self.terms.provider, self.terms.arbiter];
        if signers[0] == signers[1] || !signers.iter().all(|s| parties.contains(s)) {
            return Err(SettlementError::WrongOwner(
                "a settlement needs two different parties of the escrow".to_owned(),
            ));
        }
        if release.to_provider.checked_add(release.to_buyer) != Some(self.terms.amount) {
            return Err(SettlementError::Rpc(format!(
                "a release must pay out exactly the escrowed {}",
                self.terms.amount
            )));
        }
        let mut instructions = Vec::new();
        for (owner, amount) in [
            (self.terms.provider, release.to_provider),
            (self.terms.buyer, release.to_buyer),
        ] {
            if amount.base_units() == 0 {
                continue;
            }
            instructions.push(mint.create_account_instruction(fee_payer, &owner));
            instructions.push(mint.transfer_instruction(
                &self.vault,
                &mint.account_of(&owner),
                &self.multisig,
                &signers,
                amount,
            )?);
        }
        instructions.push(memo(&self.settlement_memo()));
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

    /// The settlement already on chain, if any (found by its memo in the vault's history).
    pub async fn find_settlement(
        &self,
        client: &ChainClient,
    ) -> Result<Option<Signature>, SettlementError> {
        client.find_memo(&self.vault, &self.settlement_memo()).await
    }

    /// Settles with both multisig signers' keys at hand (the first pays the fees): looks for an
    /// existing settlement first, so that settling twice never pays twice.
    pub async fn settle(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
        release: Release,
        first: &Keypair,
        second: &Keypair,
    ) -> Result<Settled, SettlementError> {
        if let Some(signature) = self.find_settlement(client).await? {
            return Ok(Settled::Already(signature));
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
}
