//! Solana's PubSub API over WebSocket (at the RPC port + 1, as `solana-test-validator` serves it):
//! `signatureSubscribe`, `accountSubscribe`, `slotSubscribe` and `logsSubscribe`, each with its
//! `*Unsubscribe`, in the cluster's JSON-RPC shapes.
//!
//! ```text
//! accept loop (≤ MAX_CONNECTIONS) ──spawns──► connection actor ×N ◄── chain events (broadcast)
//!                                             │ session: typed methods, subscriptions (pure)
//! ```
//!
//! The accept loop holds the connection tasks in a `JoinSet`: aborting the loop (when the
//! [`crate::EmbeddedChain`] is dropped) drops the set and aborts every connection.

mod connection;
mod method;
mod session;
mod subscriptions;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::events::SharedChain;

/// Largest message (and frame) a client may send; a larger one closes the connection with code
/// 1009 (message too big).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Subscriptions one connection may hold; more are refused with a JSON-RPC error.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1024;
/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves PubSub on `listener` until the task is aborted.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<SharedChain>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept_loop(listener, shared))
}

async fn accept_loop(listener: TcpListener, shared: Arc<SharedChain>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let ids = Arc::new(AtomicU64::new(0));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        tracing::warn!(%peer, limit = MAX_CONNECTIONS, "pubsub connection refused: too many");
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let ids = Arc::clone(&ids);
                    connections.spawn(
                        async move {
                            connection::serve(stream, peer, shared, ids).await;
                            drop(permit);
                        }
                        .instrument(tracing::debug_span!("pubsub", %peer)),
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "pubsub accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
