//! `clawnode membership`: an operator admits a peer to its fleet by signing a credential with
//! its node key; the peer installs it and announces it from then on. The credential travels out
//! of band, like a join token: it is no secret (anyone may read it in the peer's announcements),
//! and it is worth nothing to anyone but the peer it names.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use claw_mesh::{FleetMembership, MAX_MEMBERSHIP_DAYS, PeerId};
use clawnode::DataDir;
use serde_json::json;

use crate::{GlobalArgs, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum MembershipCommand {
    /// Admit a peer to this operator's fleet: sign a credential with this node's key and print
    /// it. Members that list this node in `[access] operators` (or `admins`) with
    /// `members_only`, and bridges run with `--fleet-operator` naming it, count the peer a
    /// member once it installs the credential.
    Issue {
        /// The peer id to admit.
        peer: String,
        /// Days the credential holds (at most 366); admit again before it lapses.
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
    /// Install a credential another node's operator issued for this node; it is announced
    /// from the running node's next announcement.
    Install {
        /// The credential, as `membership issue` printed it.
        credential: String,
    },
    /// Show this node's credential: who signed it and until when.
    Show,
}

pub(crate) fn membership(global: &GlobalArgs, command: MembershipCommand) -> Result<()> {
    let dir = DataDir::open(&global.data_dir)?;
    let network = dir.config().network.name.clone();
    let own = dir.identity().peer_id();
    match command {
        MembershipCommand::Issue { peer, days } => {
            let member: PeerId = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            if !(1..=MAX_MEMBERSHIP_DAYS).contains(&days) {
                bail!("--days must be 1 to {MAX_MEMBERSHIP_DAYS}");
            }
            let credential = FleetMembership::issue(
                dir.identity(),
                member,
                &network,
                Duration::from_secs(days * 86_400),
            );
            let text = STANDARD.encode(&credential);
            if global.json {
                print_json(&json!({
                    "member": member.to_string(),
                    "operator": own.to_string(),
                    "network": network,
                    "days": days,
                    "credential": text,
                }));
            } else {
                println!("{text}");
                eprintln!(
                    "On {member}: clawnode membership install <this credential>. Nodes and \
                     bridges that trust {own} then count it a member for {days} days."
                );
            }
            Ok(())
        }
        MembershipCommand::Install { credential } => {
            let bytes = STANDARD
                .decode(credential.trim())
                .context("the credential is not base64")?;
            // Installed only if it names this node on this network; whether its signer is
            // trusted is each peer's own call.
            let (operator, until_ms) = FleetMembership::read(&bytes, own, &network, now_ms())?;
            dir.set_membership(&bytes)?;
            if global.json {
                print_json(&json!({"operator": operator.to_string(), "until_ms": until_ms}));
            } else {
                println!("member of {operator}'s fleet until {until_ms} (Unix ms)");
            }
            Ok(())
        }
        MembershipCommand::Show => {
            let Some(bytes) = dir.membership() else {
                bail!("this node holds no membership credential (membership install)");
            };
            let verified = claw_attestation::Verifier::new()
                .verify_ignoring_time(&bytes)
                .context("the stored credential")?;
            let until_ms = verified.envelope().expires_at_ms();
            let answer = json!({
                "operator": verified.signer_peer_id().to_string(),
                "until_ms": until_ms,
                "current": until_ms > now_ms(),
            });
            if global.json {
                print_json(&answer);
            } else {
                println!(
                    "operator {}\nuntil    {until_ms} (Unix ms){}",
                    answer["operator"].as_str().unwrap_or_default(),
                    if until_ms > now_ms() {
                        ""
                    } else {
                        " — lapsed"
                    }
                );
            }
            Ok(())
        }
    }
}

fn now_ms() -> u64 {
    claw_attestation::unix_millis(std::time::SystemTime::now())
}
