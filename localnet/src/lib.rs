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
//!
//! # PubSub
//!
//! Like `solana-test-validator`, the chain also serves Solana's PubSub API over WebSocket at the
//! RPC port + 1 ([`EmbeddedChain::pubsub_url`]), which clients such as `@solana/web3.js` derive
//! from the RPC URL to confirm transactions. It speaks JSON-RPC 2.0 in the cluster's shapes:
//!
//! - `signatureSubscribe`: one `signatureNotification` (`{context: {slot}, value: {err}}`) when
//!   the transaction or airdrop lands, at once if it already has, then the subscription is gone;
//!   with `enableReceivedNotification`, a `"receivedSignature"` notification comes first;
//! - `accountSubscribe`: an `accountNotification` for each landed transaction that names the
//!   account and changed its lamports, owner or data; the value is `getAccountInfo`'s, in
//!   `base64`, `base58`, `binary` (the default) or `jsonParsed` (which falls back to base-64, as
//!   the cluster does for data it cannot parse), with `dataSlice`;
//! - `slotSubscribe`: a `slotNotification` (`{parent, root, slot}`) each slot; everything landed is
//!   final at once, so the root is the slot;
//! - `logsSubscribe` with `"all"`, `"allWithVotes"` or `{"mentions": [address]}`: a
//!   `logsNotification` (`{context: {slot}, value: {signature, err, logs}}`) per landed
//!   transaction;
//! - the matching `*Unsubscribe`, answering `true`, or `-32602 Invalid subscription id.` as the
//!   cluster does.
//!
//! Subscription ids are integers. Unknown methods get `-32601`, bad params `-32602`, JSON-RPC
//! notifications (requests without an `id`, such as web3.js's keep-alive `ping`) no answer.
//! Commitment levels are accepted and all behave alike. Only transactions that land make events:
//! one refused by preflight, or failed with `skipPreflight`, makes none (it has no status either).
//! Limits: messages of [`pubsub::MAX_MESSAGE_BYTES`] (a larger one closes the connection with code
//! 1009), [`pubsub::MAX_SUBSCRIPTIONS_PER_CONNECTION`] subscriptions per connection,
//! [`pubsub::MAX_CONNECTIONS`] connections; a client that stops reading for 10 s, or falls 4,096
//! chain events behind, is disconnected.

mod account;
mod chain;
mod events;
mod journal;
mod jsonrpc;
pub mod pubsub;
mod rpc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use chain::{BLOCKHASH_WINDOW, MAX_AIRDROP_LAMPORTS};
pub use rpc::SOLANA_CORE_VERSION;

use crate::events::SharedChain;

/// How often a slot passes.
pub const SLOT_DURATION: Duration = Duration::from_millis(400);
/// Port pairs tried when the RPC port is 0 (any): each try takes a free port, then needs the next
/// one free too.
const PORT_PAIR_ATTEMPTS: usize = 16;

/// Why the chain could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The PubSub port (the RPC port + 1) could not be bound.
    #[error("cannot listen for PubSub on {addr} (the RPC port + 1): {source}")]
    PubsubBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The RPC port is the last one, so there is no port + 1 for PubSub.
    #[error("RPC port {rpc_port} leaves no port + 1 for PubSub")]
    NoPubsubPort {
        /// The RPC port.
        rpc_port: u16,
    },
    /// Only loopback and private-network addresses are served.
    #[error(
        "the embedded chain serves loopback and private-network addresses only (a lab's hosts), not {0}"
    )]
    NotPrivate(SocketAddr),
}

/// Whether `ip` is loopback or on a private network (RFC 1918, IPv6 unique local): the only
/// places a chain whose faucet answers anyone may listen, and so the only chains a wallet asks
/// for airdrops.
pub fn serves_privately(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
    }
}

/// A running embedded chain. Stops when dropped.
#[derive(Debug)]
pub struct EmbeddedChain {
    rpc_addr: SocketAddr,
    pubsub_addr: SocketAddr,
    shared: Arc<SharedChain>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EmbeddedChain {
    /// Starts an in-memory chain with its JSON-RPC endpoint on `addr` and its PubSub endpoint on
    /// the next port (port 0 picks a free pair). Must be called inside a Tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<Self, LocalnetError> {
        Self::start_with_ledger(addr, None).await
    }

    /// Starts the chain on `addr` (and PubSub on the next port), journaling to (and first
    /// replaying from) `ledger` when given.
    pub async fn start_with_ledger(
        addr: SocketAddr,
        ledger: Option<PathBuf>,
    ) -> Result<Self, LocalnetError> {
        if !serves_privately(addr.ip()) {
            return Err(LocalnetError::NotPrivate(addr));
        }
        let (rpc_listener, pubsub_listener) = bind_port_pair(addr).await?;
        let rpc_addr = rpc_listener
            .local_addr()
            .map_err(|source| LocalnetError::Bind { addr, source })?;
        let pubsub_addr = pubsub_listener
            .local_addr()
            .map_err(|source| LocalnetError::PubsubBind { addr, source })?;
        let shared = Arc::new(SharedChain::new(open_chain(ledger).await?));
        let tasks = vec![
            spawn_ticker(Arc::clone(&shared)),
            spawn_rpc(rpc_listener, Arc::clone(&shared)),
            pubsub::spawn(pubsub_listener, Arc::clone(&shared)),
        ];
        tracing::info!(%rpc_addr, %pubsub_addr, "embedded Solana localnet serving JSON-RPC and PubSub");
        Ok(Self {
            rpc_addr,
            pubsub_addr,
            shared,
            tasks,
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

    /// The PubSub WebSocket URL, e.g. `ws://127.0.0.1:8900` (the RPC port + 1).
    pub fn pubsub_url(&self) -> String {
        format!("ws://{}", self.pubsub_addr)
    }

    /// The address the PubSub endpoint listens on.
    pub fn pubsub_addr(&self) -> SocketAddr {
        self.pubsub_addr
    }

    /// The current slot.
    pub fn slot(&self) -> u64 {
        self.shared.lock().slot()
    }
}

/// Binds `addr` and the port after it. With port 0, tries free ports until a pair is free.
async fn bind_port_pair(addr: SocketAddr) -> Result<(TcpListener, TcpListener), LocalnetError> {
    let mut attempt = 1;
    loop {
        let rpc = TcpListener::bind(addr)
            .await
            .map_err(|source| LocalnetError::Bind { addr, source })?;
        let rpc_port = rpc
            .local_addr()
            .map_err(|source| LocalnetError::Bind { addr, source })?
            .port();
        let bound = match rpc_port.checked_add(1) {
            None => Err(LocalnetError::NoPubsubPort { rpc_port }),
            Some(port) => {
                let pubsub_addr = SocketAddr::new(addr.ip(), port);
                TcpListener::bind(pubsub_addr)
                    .await
                    .map_err(|source| LocalnetError::PubsubBind {
                        addr: pubsub_addr,
                        source,
                    })
            }
        };
        match bound {
            Ok(pubsub) => return Ok((rpc, pubsub)),
            Err(error) if addr.port() == 0 && attempt < PORT_PAIR_ATTEMPTS => {
                tracing::debug!(rpc_port, attempt, %error, "port + 1 is taken; trying another pair");
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Opens the chain (replaying `ledger` when given) on the blocking pool.
async fn open_chain(ledger: Option<PathBuf>) -> Result<chain::Chain, LocalnetError> {
    tokio::task::spawn_blocking(move || match &ledger {
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
    })?
}

/// Advances a slot every [`SLOT_DURATION`].
fn spawn_ticker(shared: Arc<SharedChain>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(SLOT_DURATION);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            shared.tick();
        }
    })
}

fn spawn_rpc(listener: TcpListener, shared: Arc<SharedChain>) -> tokio::task::JoinHandle<()> {
    let app = rpc::router(shared);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "embedded chain RPC stopped");
        }
    })
}

impl Drop for EmbeddedChain {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod serving_tests {
    use super::serves_privately;

    #[test]
    fn the_chain_serves_loopback_and_private_networks_only() {
        for ip in [
            "127.0.0.1",
            "10.77.0.2",
            "172.16.4.1",
            "192.168.1.9",
            "::1",
            "fd00::1",
        ] {
            assert!(serves_privately(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["0.0.0.0", "8.8.8.8", "100.64.0.1", "::", "2001:db8::1"] {
            assert!(!serves_privately(ip.parse().expect("ip")), "{ip}");
        }
    }
}
