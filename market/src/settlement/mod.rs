//! Settlement of leases in MOLT on Solana, with Solana's built-in programs only (System, SPL
//! Token, Associated Token Account, Memo), so anyone can audit it with standard tools. The same
//! code runs against the embedded localnet, `solana-test-validator` and devnet: only the RPC URL
//! differs. What the chain shows (balances, transfers, block times) is the evidence; memos are
//! labels for people reading the history.

mod client;
mod escrow;
mod stream;
mod token;
mod transfers;

pub use client::{ChainClient, FetchedTransaction, HistoryEntry, Landed, SettlementError};
pub use escrow::{Escrow, EscrowAddresses, Release, Settled, SettlementFact, pro_rata};
pub use stream::{
    StreamReading, amount_due, approve_allowance, pull, pull_fact, read_stream, revoke,
};
pub use token::{MoltMint, TokenAccountState, memo, token_program};
pub use transfers::{TokenTransfer, token_transfers};
