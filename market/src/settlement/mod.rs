//! Settlement of leases in MOLT on Solana, with Solana's built-in programs only (SPL Token,
//! Associated Token Account, Memo), so anyone can audit it with standard tools. The same code
//! runs against the embedded localnet, `solana-test-validator` and devnet: only the RPC URL
//! differs.

mod client;
mod escrow;
mod stream;
mod token;

pub use client::{ChainClient, Landed, SettlementError};
pub use escrow::{Escrow, EscrowTerms, Release, Settled, open_escrow, open_escrow_at, pro_rata};
pub use stream::{amount_due, approve_stream, pull, revoke};
pub use token::{MoltMint, TokenAccountState, memo, token_program};
