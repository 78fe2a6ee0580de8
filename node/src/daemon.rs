//! `clawnode run`: start the node ([`Node::start`]), say where it listens, and run it until
//! Ctrl-C, SIGTERM or a service that stops for good.

use std::time::Duration;

use anyhow::Result;
use clawnode::{DataDir, Node, NodeOptions};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
}

/// Runs the node until Ctrl-C or SIGTERM.
pub(crate) async fn run(dir: DataDir, options: NodeOptions, json: bool) -> Result<()> {
    let mut node = Node::start(dir, options).await?;
    // Wait for the listeners so that what we print can be used to join this node.
    let joinable = node.joinable_addrs(Duration::from_secs(2)).await;
    let peer = node.peer_id();
    let control = node.control_addr();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "peer_id": peer.to_string(),
                "control": control.to_string(),
                "metrics": node.metrics_addr().map(|a| a.to_string()),
                "ingress": node.ingress_addr().map(|a| a.to_string()),
                "listen_addrs": joinable,
            })
        );
    } else {
        println!("clawnode running: peer {peer}");
        println!(
            "control API  http://{control} (token in {}/control.token)",
            node.data_dir().root().display()
        );
        if let Some(addr) = node.metrics_addr() {
            println!("metrics      http://{addr}/metrics");
        }
        if let Some(addr) = node.ingress_addr() {
            println!("ingress      http://{addr}/");
        }
        for addr in &joinable {
            println!("join with    --bootstrap {addr}");
        }
    }
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        failure = node.failed() => Some(failure),
    };
    node.stop().await;
    match failure {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}
