//! Logging for the `clawnode` and `claw-bridge` binaries: `RUST_LOG` (or a default level)
//! chooses what is written, except that the libraries that print whole payloads at `debug`
//! and `trace` are held to `info` whatever `RUST_LOG` says. Those payloads carry what must
//! never reach a log: container environments (secrets injected as env), and the gateway
//! token in its connect frame.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// Targets whose `debug` and `trace` events dump request or frame bodies.
const PAYLOAD_DUMPERS: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "tungstenite",
    "tokio_tungstenite",
];

/// Whether `metadata` is an event that may print a payload.
fn dumps_payload(metadata: &Metadata<'_>) -> bool {
    *metadata.level() > Level::INFO
        && PAYLOAD_DUMPERS.iter().any(|target| {
            metadata
                .target()
                .strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Installs the global subscriber: to standard error, as text or JSON lines.
pub fn init(default_level: &str, json: bool) {
    let chosen =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let quiet = filter_fn(|metadata| !dumps_payload(metadata));
    let registry = tracing_subscriber::registry().with(chosen);
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        registry.with(text.json().with_filter(quiet)).init();
    } else {
        registry.with(text.with_filter(quiet)).init();
    }
}
