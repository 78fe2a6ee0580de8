//! One WebSocket connection: an actor that owns the socket, reads requests, and writes the
//! responses and the notifications chain events make.
//!
//! It waits on two things (`select!`, socket first): a message from the client, or a chain event.
//! Every write is bounded by [`SEND_TIMEOUT`]; a client that does not read is cut off, and so is
//! one that falls [`crate::events::EVENT_BUFFER`] events behind, rather than buffered for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::MAX_MESSAGE_BYTES;
use super::session::Session;
use crate::events::{ChainEvent, SharedChain};

/// How long the WebSocket handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write (a response, or one event's notifications) may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes waiting in the socket's write buffer (above the largest notification: an account
/// of 10 MiB is 13.4 MiB in base-64).
const MAX_WRITE_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Why a connection ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    /// The WebSocket handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[source] WsError),
    /// The client did not finish the handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Reading or writing the socket failed.
    #[error("socket error: {0}")]
    Socket(#[source] WsError),
    /// The client sent a message over the size limit.
    #[error("message of {size} bytes refused (limit {limit})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The client did not take a write within the timeout.
    #[error("the client did not read for {0:?}")]
    SendTimeout(Duration),
    /// The client fell too far behind the chain's events.
    #[error("the client fell {0} events behind")]
    Lagged(u64),
}

/// The WebSocket limits: message and frame size.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<SharedChain>,
    ids: Arc<AtomicU64>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_async_with_config(stream, Some(websocket_config())),
    )
    .await;
    let socket = match accepted {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return log_end(peer, &ConnectionError::Handshake(error), 0),
        Err(_) => return log_end(peer, &ConnectionError::HandshakeTimeout, 0),
    };
    // Subscribed before any request is read, so no event after a subscription is missed.
    let events = shared.subscribe();
    let mut connection = Connection {
        socket,
        events,
        session: Session::new(shared, ids),
    };
    tracing::debug!(%peer, "pubsub connection opened");
    match connection.run().await {
        Ok(()) => tracing::debug!(
            %peer,
            subscriptions = connection.session.subscription_count(),
            "pubsub connection closed"
        ),
        Err(error) => log_end(peer, &error, connection.session.subscription_count()),
    }
}

fn log_end(peer: SocketAddr, error: &ConnectionError, subscriptions: usize) {
    tracing::info!(%peer, %error, subscriptions, "pubsub connection dropped");
}

struct Connection {
    socket: WebSocketStream<TcpStream>,
    events: tokio::sync::broadcast::Receiver<ChainEvent>,
    session: Session,
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnectionError> {
        loop {
            tokio::select! {
                biased;
                message = self.socket.next() => match message {
                    None => return Ok(()),
                    Some(Ok(message)) => self.on_message(message).await?,
                    Some(Err(error)) => return Err(self.on_read_error(error).await),
                },
                event = self.events.recv() => match event {
                    Ok(event) => {
                        let notifications = self.session.on_event(&event);
                        self.send(notifications).await?;
                    }
                    Err(RecvError::Lagged(missed)) => return Err(ConnectionError::Lagged(missed)),
                    // The chain stopped.
                    Err(RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), ConnectionError> {
        let reply = match &message {
            Message::Text(text) => self.session.handle(text.as_str()),
            Message::Binary(bytes) => self.session.handle(&String::from_utf8_lossy(bytes)),
            // The pong is queued by the WebSocket layer; flushing sends it now.
            Message::Ping(_) => return self.flush().await,
            // A close is answered by the WebSocket layer; the stream then ends.
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return Ok(()),
        };
        let mut out = Vec::with_capacity(1 + reply.notifications.len());
        out.extend(reply.response);
        out.extend(reply.notifications);
        self.send(out).await
    }

    /// Closes with a reason the client can read when the error allows one.
    async fn on_read_error(&mut self, error: WsError) -> ConnectionError {
        let WsError::Capacity(capacity) = &error else {
            return ConnectionError::Socket(error);
        };
        let (size, limit) = match capacity {
            CapacityError::MessageTooLong { size, max_size } => (*size, *max_size),
            CapacityError::TooManyHeaders => (0, MAX_MESSAGE_BYTES),
        };
        let frame = CloseFrame {
            code: CloseCode::Size,
            reason: format!("message over {limit} bytes").into(),
        };
        // Best effort: the client is being dropped either way.
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.close(Some(frame))).await;
        ConnectionError::TooLarge { size, limit }
    }

    /// Writes `messages` and flushes once, within [`SEND_TIMEOUT`].
    async fn send(&mut self, messages: Vec<Value>) -> Result<(), ConnectionError> {
        if messages.is_empty() {
            return Ok(());
        }
        let socket = &mut self.socket;
        let write = async move {
            for message in messages {
                socket.feed(Message::text(message.to_string())).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnectionError::Socket(error)),
            Err(_) => Err(ConnectionError::SendTimeout(SEND_TIMEOUT)),
        }
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnectionError::Socket(error)),
            Err(_) => Err(ConnectionError::SendTimeout(SEND_TIMEOUT)),
        }
    }
}
