//! MOLT, the SPL token: the mint, associated token accounts, balances, transfers with a memo,
//! and checking that an account holds what someone claims it holds.

use solana_instruction::Instruction;
use solana_keypair::Keypair;
use solana_program_pack::Pack as _;
use solana_pubkey::Pubkey;
use solana_signer::Signer as _;

use super::client::{ChainClient, Landed, SettlementError};
use crate::{MOLT_DECIMALS, Molt};

/// The SPL Token program.
pub fn token_program() -> Pubkey {
    spl_token_interface::id()
}

/// A memo instruction (SPL Memo v3) carrying `text`, signed by no one.
pub fn memo(text: &str) -> Instruction {
    spl_memo_interface::instruction::build_memo(&spl_memo_interface::v3::id(), text.as_bytes(), &[])
}

const DECIMALS: u8 = MOLT_DECIMALS as u8;

/// The MOLT mint on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoltMint {
    mint: Pubkey,
}

/// What a token account holds, read from the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenAccountState {
    /// Its mint.
    pub mint: Pubkey,
    /// Its owner (a wallet, or a multisig).
    pub owner: Pubkey,
    /// Its balance.
    pub amount: Molt,
    /// The delegate and what it may still move, if one is approved.
    pub delegate: Option<(Pubkey, Molt)>,
}

impl MoltMint {
    /// The mint at `mint`.
    pub fn at(mint: Pubkey) -> Self {
        Self { mint }
    }

    /// The mint's address.
    pub fn address(&self) -> Pubkey {
        self.mint
    }

    /// Creates a new 6-decimal mint whose mint authority is `authority`, paid by it.
    pub async fn create(
        client: &ChainClient,
        authority: &Keypair,
    ) -> Result<Self, SettlementError> {
        let mint = Keypair::new();
        let len = spl_token_interface::state::Mint::LEN;
        let rent = client.rent_exempt_minimum(len).await?;
        let instructions = [
            solana_system_interface::instruction::create_account(
                &authority.pubkey(),
                &mint.pubkey(),
                rent,
                len as u64,
                &token_program(),
            ),
            spl_token_interface::instruction::initialize_mint2(
                &token_program(),
                &mint.pubkey(),
                &authority.pubkey(),
                None,
                DECIMALS,
            )
            .map_err(|e| SettlementError::Rpc(e.to_string()))?,
        ];
        client.submit(&instructions, authority, &[&mint]).await?;
        Ok(Self {
            mint: mint.pubkey(),
        })
    }

    /// `owner`'s associated MOLT account.
    pub fn account_of(&self, owner: &Pubkey) -> Pubkey {
        spl_associated_token_account_interface::address::get_associated_token_address(
            owner, &self.mint,
        )
    }

    /// An instruction creating `owner`'s associated account when it does not exist, paid by
    /// `payer`.
    pub fn create_account_instruction(&self, payer: &Pubkey, owner: &Pubkey) -> Instruction {
        spl_associated_token_account_interface::instruction::create_associated_token_account_idempotent(
            payer,
            owner,
            &self.mint,
            &token_program(),
        )
    }

    /// Mints `amount` to `owner`'s account (created if needed), signed by the mint authority.
    pub async fn mint_to(
        &self,
        client: &ChainClient,
        authority: &Keypair,
        owner: &Pubkey,
        amount: Molt,
    ) -> Result<Landed, SettlementError> {
        let account = self.account_of(owner);
        let instructions = [
            self.create_account_instruction(&authority.pubkey(), owner),
            spl_token_interface::instruction::mint_to_checked(
                &token_program(),
                &self.mint,
                &account,
                &authority.pubkey(),
                &[],
                amount.base_units(),
                DECIMALS,
            )
            .map_err(|e| SettlementError::Rpc(e.to_string()))?,
        ];
        client.submit(&instructions, authority, &[]).await
    }

    /// A checked transfer of `amount` from `from`'s account by `authority` (the owner, a delegate
    /// or a multisig with `signers`) to `to`'s account.
    pub fn transfer_instruction(
        &self,
        from_account: &Pubkey,
        to_account: &Pubkey,
        authority: &Pubkey,
        signers: &[&Pubkey],
        amount: Molt,
    ) -> Result<Instruction, SettlementError> {
        spl_token_interface::instruction::transfer_checked(
            &token_program(),
            from_account,
            &self.mint,
            to_account,
            authority,
            signers,
            amount.base_units(),
            DECIMALS,
        )
        .map_err(|e| SettlementError::Rpc(e.to_string()))
    }

    /// Moves `amount` from `from`'s account to `to`'s (created if needed, paid by `from`), with a
    /// memo.
    pub async fn transfer(
        &self,
        client: &ChainClient,
        from: &Keypair,
        to: &Pubkey,
        amount: Molt,
        memo_text: &str,
    ) -> Result<Landed, SettlementError> {
        let instructions = [
            self.create_account_instruction(&from.pubkey(), to),
            self.transfer_instruction(
                &self.account_of(&from.pubkey()),
                &self.account_of(to),
                &from.pubkey(),
                &[],
                amount,
            )?,
            memo(memo_text),
        ];
        client.submit(&instructions, from, &[]).await
    }

    /// Reads a token account and checks it is one of this mint's.
    pub async fn read_account(
        &self,
        client: &ChainClient,
        account: &Pubkey,
    ) -> Result<TokenAccountState, SettlementError> {
        let Some((data, owner_program, _)) = client.account(account).await? else {
            return Err(SettlementError::AccountMissing(format!(
                "token account {account}"
            )));
        };
        if owner_program != token_program() {
            return Err(SettlementError::WrongOwner(format!(
                "{account} is owned by program {owner_program}, not SPL Token"
            )));
        }
        let state = spl_token_interface::state::Account::unpack(&data).map_err(|e| {
            SettlementError::AccountMissing(format!("{account} is not a token account: {e}"))
        })?;
        if state.mint != self.mint {
            return Err(SettlementError::WrongMint(format!(
                "{account} holds mint {}, not MOLT ({})",
                state.mint, self.mint
            )));
        }
        Ok(TokenAccountState {
            mint: state.mint,
            owner: state.owner,
            amount: Molt::from_base_units(state.amount),
            delegate: Option::<Pubkey>::from(state.delegate)
                .map(|d| (d, Molt::from_base_units(state.delegated_amount))),
        })
    }

    /// `owner`'s MOLT balance; zero when it has no account yet.
    pub async fn balance(
        &self,
        client: &ChainClient,
        owner: &Pubkey,
    ) -> Result<Molt, SettlementError> {
        match self.read_account(client, &self.account_of(owner)).await {
            Ok(state) => Ok(state.amount),
            Err(SettlementError::AccountMissing(_)) => Ok(Molt::default()),
            Err(other) => Err(other),
        }
    }

    /// Checks on chain that `account` is a MOLT account owned by `owner` holding at least
    /// `amount`: what anyone must do before relying on a claimed funding.
    pub async fn verify_funding(
        &self,
        client: &ChainClient,
        account: &Pubkey,
        owner: &Pubkey,
        amount: Molt,
    ) -> Result<TokenAccountState, SettlementError> {
        let state = self.read_account(client, account).await?;
        if state.owner != *owner {
            return Err(SettlementError::WrongOwner(format!(
                "{account} is owned by {}, not {owner}",
                state.owner
            )));
        }
        if state.amount < amount {
            return Err(SettlementError::InsufficientFunds(format!(
                "{account} holds {}, not the {amount} it should",
                state.amount
            )));
        }
        Ok(state)
    }
}
