//! The embedded Solana localnet: an in-process Solana VM (LiteSVM) with the real SPL Token,
//! Associated Token Account and Memo programs, served over Solana's JSON-RPC on loopback, so that
//! nodes and CLIs in other processes use the same RPC client against it as against a real
//! cluster.
//!
//! Slots advance every 400 ms with a new blockhash; blockhashes stay valid for 150 slots;
//! transactions are final as soon as they land, and a transaction already processed is refused for
//! as long as its blockhash is valid. Blockhashes are drawn afresh by every run, so nothing signed
//! before a restart can land after it. With a ledger directory, every airdrop and landed
//! transaction is journaled and synced before it is answered, and replayed on start, so a crash
//! loses nothing the chain confirmed; without one, state lives in memory.

mod chain;
mod journal;
mod rpc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use chain::{BLOCKHASH_WINDOW, MAX_AIRDROP_LAMPORTS};
pub use rpc::SOLANA_CORE_VERSION;

/// How often a slot passes.
pub const SLOT_DURATION: Duration = Duration::from_millis(400);

/// Why the chain could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalnetError {
    /// The ledger could not be opened or replayed.
    #[error("cannot open the chain ledger in {path}: {source}")]
    Ledger {
        /// The ledger directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The RPC port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Only loopback addresses are served.
    #[error("the embedded chain serves loopback only, not {0}")]
    NotLoopback(SocketAddr),
}

/// A running embedded chain. Stops when dropped.
#[derive(Debug)]
pub struct EmbeddedChain {
    rpc_addr: SocketAddr,
    chain: Arc<Mutex<chain::Chain>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EmbeddedChain {
    /// Starts an in-memory chain and its JSON-RPC endpoint on `addr` (port 0 picks a free one).
    /// Must be called inside a Tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<Self, LocalnetError> {
        Self::start_with_ledger(addr, None).await
    }

    /// Starts the chain on `addr`, journaling to (and first replaying from) `ledger` when given.
    pub async fn start_with_ledger(
        addr: SocketAddr,
        ledger: Option<PathBuf>,
    ) -> Result<Self, LocalnetError> {
        if !addr.ip().is_loopback() {
            return Err(LocalnetError::NotLoopback(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LocalnetError::Bind { addr, source })?;
        let rpc_addr = listener
            .local_addr()
            .map_err(|source| LocalnetError::Bind { addr, source })?;
        let opened = tokio::task::spawn_blocking(move || match &ledger {
            None => Ok(chain::Chain::new()),
            Some(path) => chain::Chain::open(path).map_err(|source| LocalnetError::Ledger {
                path: path.display().to_string(),
                source,
            }),
        })
        .await
        .map_err(|e| LocalnetError::Ledger {
            path: "?".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let chain = Arc::new(Mutex::new(opened));
        let ticking = Arc::clone(&chain);
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(SLOT_DURATION);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                ticking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .tick();
            }
        });
        let app = rpc::router(Arc::clone(&chain));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "embedded chain RPC stopped");
            }
        });
        tracing::info!(%rpc_addr, "embedded Solana localnet serving JSON-RPC");
        Ok(Self {
            rpc_addr,
            chain,
            tasks: vec![ticker, server],
        })
    }

    /// The JSON-RPC URL, e.g. `http://127.0.0.1:8899`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.rpc_addr)
    }

    /// The address the endpoint listens on.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The current slot.
    pub fn slot(&self) -> u64 {
        self.chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slot()
    }
}

impl Drop for EmbeddedChain {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
