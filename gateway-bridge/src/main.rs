//! `claw-bridge`: presents a Clawbernetes fleet to an OpenClaw gateway as one node.
//!
//! For now it answers the one question an operator asks before pairing: which OpenClaw device
//! identity will this bridge present?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use claw_attestation::NodeIdentity;

/// Clawbernetes gateway bridge.
#[derive(Debug, Parser)]
#[command(name = "claw-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the OpenClaw device id and public key derived from a node identity key.
    DeviceIdentity {
        /// The node identity key file (e.g. <data dir>/identity.key).
        #[arg(long)]
        identity_key: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::DeviceIdentity { identity_key } => {
            let identity = NodeIdentity::load(&identity_key)
                .with_context(|| format!("loading {}", identity_key.display()))?;
            let device = identity.device();
            let out = serde_json::json!({
                "id": device.id(),
                "publicKey": device.public_key_base64url(),
                "peerId": identity.peer_id().to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}
