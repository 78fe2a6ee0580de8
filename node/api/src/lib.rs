//! The command surface of Clawbernetes: what nodes and the gateway bridge answer, in one place.
//!
//! Every command is defined once here, with its name, the role it needs, its params (parsed
//! strictly: unknown fields are refused) and its answer. Nodes and the bridge dispatch from these
//! definitions ([`Router`]), `node.capabilities` and `fleet.capabilities` describe them
//! ([`NODE_COMMANDS`], [`BRIDGE_COMMANDS`]), the CLI decodes answers with them, and the OpenClaw
//! plugin is checked against the contract they produce ([`contract`]). A command fails with an
//! [`InvokeFailure`]: one error type from the handler to the wire.

pub mod audit;
pub mod auth;
pub mod autoscale;
pub mod canary;
mod command;
pub mod configs;
pub mod console;
pub mod cron;
pub mod deploy;
mod error;
pub mod fleet;
pub mod ingress;
pub mod jobs;
pub mod market;
pub mod namespaces;
pub mod node;
pub mod objects;
pub mod policies;
mod role;
pub mod schedule;
pub mod secrets;
pub mod services;
pub mod storage;
pub mod taints;
pub mod workload;

use std::sync::OnceLock;

use serde_json::{Value, json};

pub use command::{
    Answer, Command, CommandDescription, CommandInfo, NoParams, RoutedFuture, Router,
};
pub use error::{ErrorCode, InvokeFailure};
pub use role::Role;

/// Every command a node answers, in the order `node.capabilities` lists them.
pub const NODE_COMMANDS: &[CommandInfo] = &[
    CommandInfo::of::<node::NodeCapabilities>(),
    CommandInfo::of::<node::NodeHealth>(),
    CommandInfo::of::<node::GpuList>(),
    CommandInfo::of::<node::GpuMetrics>(),
    CommandInfo::of::<node::SystemInfo>(),
    CommandInfo::of::<node::NodeLabel>(),
    CommandInfo::of::<node::NodeCordon>(),
    CommandInfo::of::<node::NodeUncordon>(),
    CommandInfo::of::<node::NodeDrain>(),
    CommandInfo::of::<node::GpuCordon>(),
    CommandInfo::of::<node::GpuUncordon>(),
    CommandInfo::of::<node::SystemRun>(),
    CommandInfo::of::<taints::NodeTaint>(),
    CommandInfo::of::<taints::NodeUntaint>(),
    CommandInfo::of::<taints::SystemWhich>(),
    CommandInfo::of::<audit::AuditQueryCommand>(),
    CommandInfo::of::<auth::AuthCreateKey>(),
    CommandInfo::of::<auth::AuthListKeys>(),
    CommandInfo::of::<auth::AuthRevokeKey>(),
    CommandInfo::of::<auth::AuthWhoAmI>(),
    CommandInfo::of::<workload::WorkloadRun>(),
    CommandInfo::of::<workload::WorkloadStop>(),
    CommandInfo::of::<workload::WorkloadList>(),
    CommandInfo::of::<workload::WorkloadInspect>(),
    CommandInfo::of::<workload::WorkloadLogs>(),
    CommandInfo::of::<workload::WorkloadStats>(),
    CommandInfo::of::<workload::ContainerExec>(),
    CommandInfo::of::<market::MarketSell>(),
    CommandInfo::of::<market::MarketOffers>(),
    CommandInfo::of::<market::MarketBid>(),
    CommandInfo::of::<market::MarketLeases>(),
    CommandInfo::of::<market::MarketLeaseCancel>(),
    CommandInfo::of::<market::MarketLeaseRevoke>(),
    CommandInfo::of::<market::MarketReputation>(),
    CommandInfo::of::<market::MarketArbitrate>(),
    CommandInfo::of::<market::MarketOffersSigned>(),
    CommandInfo::of::<market::MarketHistory>(),
    CommandInfo::of::<market::MarketTradesSigned>(),
    CommandInfo::of::<market::MarketReceipts>(),
    CommandInfo::of::<market::MarketLeaseRequest>(),
    CommandInfo::of::<market::MarketLeaseFund>(),
    CommandInfo::of::<market::MarketLeaseEnd>(),
    CommandInfo::of::<market::MarketLeaseStatus>(),
    CommandInfo::of::<market::WalletBalance>(),
    CommandInfo::of::<deploy::DeployCreate>(),
    CommandInfo::of::<deploy::DeployUpdate>(),
    CommandInfo::of::<deploy::DeployStatus>(),
    CommandInfo::of::<deploy::DeployList>(),
    CommandInfo::of::<deploy::DeployHistory>(),
    CommandInfo::of::<deploy::DeployRollback>(),
    CommandInfo::of::<deploy::DeployPause>(),
    CommandInfo::of::<deploy::DeployResume>(),
    CommandInfo::of::<deploy::DeployDelete>(),
    CommandInfo::of::<deploy::DeployPromote>(),
    CommandInfo::of::<deploy::DeployReplicas>(),
    CommandInfo::of::<deploy::DeployReplicaStart>(),
    CommandInfo::of::<deploy::DeployReplicaStop>(),
    CommandInfo::of::<jobs::JobCreate>(),
    CommandInfo::of::<jobs::JobStatusCommand>(),
    CommandInfo::of::<jobs::JobList>(),
    CommandInfo::of::<jobs::JobLogsCommand>(),
    CommandInfo::of::<jobs::JobDelete>(),
    CommandInfo::of::<jobs::JobPods>(),
    CommandInfo::of::<jobs::JobPodStart>(),
    CommandInfo::of::<jobs::JobPodStop>(),
    CommandInfo::of::<cron::CronCreate>(),
    CommandInfo::of::<cron::CronList>(),
    CommandInfo::of::<cron::CronStatusCommand>(),
    CommandInfo::of::<cron::CronTrigger>(),
    CommandInfo::of::<cron::CronSuspend>(),
    CommandInfo::of::<cron::CronResume>(),
    CommandInfo::of::<cron::CronDelete>(),
    CommandInfo::of::<cron::CronLogsCommand>(),
    CommandInfo::of::<cron::CronBidCommand>(),
    CommandInfo::of::<autoscale::AutoscaleCreate>(),
    CommandInfo::of::<autoscale::AutoscaleStatusCommand>(),
    CommandInfo::of::<autoscale::AutoscaleAdjust>(),
    CommandInfo::of::<autoscale::AutoscaleDelete>(),
    CommandInfo::of::<configs::ConfigCreate>(),
    CommandInfo::of::<configs::ConfigUpdate>(),
    CommandInfo::of::<configs::ConfigGet>(),
    CommandInfo::of::<configs::ConfigList>(),
    CommandInfo::of::<configs::ConfigDelete>(),
    CommandInfo::of::<secrets::SecretCreate>(),
    CommandInfo::of::<secrets::SecretRotate>(),
    CommandInfo::of::<secrets::SecretDescribe>(),
    CommandInfo::of::<secrets::SecretList>(),
    CommandInfo::of::<secrets::SecretDelete>(),
    CommandInfo::of::<storage::VolumeCreate>(),
    CommandInfo::of::<storage::VolumeList>(),
    CommandInfo::of::<storage::VolumeDelete>(),
    CommandInfo::of::<storage::VolumeSnapshot>(),
    CommandInfo::of::<storage::BackupCreate>(),
    CommandInfo::of::<storage::BackupList>(),
    CommandInfo::of::<storage::BackupRestore>(),
    CommandInfo::of::<storage::BackupDelete>(),
    CommandInfo::of::<storage::BackupImport>(),
    CommandInfo::of::<storage::BackupReceive>(),
    CommandInfo::of::<storage::BackupRead>(),
    CommandInfo::of::<storage::BackupKeys>(),
    CommandInfo::of::<services::ServiceCreate>(),
    CommandInfo::of::<services::ServiceList>(),
    CommandInfo::of::<services::ServiceDelete>(),
    CommandInfo::of::<services::ServiceEndpoints>(),
    CommandInfo::of::<services::ServiceForward>(),
    CommandInfo::of::<services::ServiceUnforward>(),
    CommandInfo::of::<services::ServiceForwards>(),
    CommandInfo::of::<services::NetworkStatusCommand>(),
    CommandInfo::of::<services::NetworkLookup>(),
    CommandInfo::of::<ingress::IngressCreate>(),
    CommandInfo::of::<ingress::IngressList>(),
    CommandInfo::of::<ingress::IngressDelete>(),
    CommandInfo::of::<policies::PolicyCreate>(),
    CommandInfo::of::<policies::PolicyList>(),
    CommandInfo::of::<policies::PolicyDelete>(),
    CommandInfo::of::<policies::PolicyValidate>(),
    CommandInfo::of::<namespaces::NamespaceCreate>(),
    CommandInfo::of::<namespaces::NamespaceList>(),
    CommandInfo::of::<namespaces::NamespaceDelete>(),
    CommandInfo::of::<namespaces::NamespaceUsage>(),
    CommandInfo::of::<objects::ObjectPut>(),
    CommandInfo::of::<objects::ObjectSync>(),
];

/// Every command the gateway bridge answers, in the order `fleet.capabilities` lists them: its
/// fleet commands, the market node's commands it forwards, and the deployment, job, cron,
/// autoscale, config, secret, service, ingress, policy, namespace and API key commands (their
/// definitions are the node's own, so the bridge checks their params as strictly; it reads these
/// objects from a member and signs their changes itself).
pub const BRIDGE_COMMANDS: &[CommandInfo] = &[
    CommandInfo::of::<fleet::FleetCapabilities>(),
    CommandInfo::of::<fleet::FleetStatus>(),
    CommandInfo::of::<fleet::FleetGpus>(),
    CommandInfo::of::<fleet::FleetDeploy>(),
    CommandInfo::of::<fleet::FleetWorkloads>(),
    CommandInfo::of::<fleet::FleetInvoke>(),
    CommandInfo::of::<fleet::FleetHealth>(),
    CommandInfo::of::<fleet::FleetDrain>(),
    CommandInfo::of::<market::MarketOffers>(),
    CommandInfo::of::<market::MarketBid>(),
    CommandInfo::of::<market::MarketLeases>(),
    CommandInfo::of::<market::MarketLeaseCancel>(),
    CommandInfo::of::<market::MarketHistory>(),
    CommandInfo::of::<market::WalletBalance>(),
    CommandInfo::of::<console::ConsoleSnapshotCommand>(),
    CommandInfo::of::<console::ConsolePage>(),
    CommandInfo::of::<deploy::DeployCreate>(),
    CommandInfo::of::<deploy::DeployUpdate>(),
    CommandInfo::of::<deploy::DeployStatus>(),
    CommandInfo::of::<deploy::DeployList>(),
    CommandInfo::of::<deploy::DeployHistory>(),
    CommandInfo::of::<deploy::DeployRollback>(),
    CommandInfo::of::<deploy::DeployPromote>(),
    CommandInfo::of::<deploy::DeployPause>(),
    CommandInfo::of::<deploy::DeployResume>(),
    CommandInfo::of::<deploy::DeployDelete>(),
    CommandInfo::of::<jobs::JobCreate>(),
    CommandInfo::of::<jobs::JobStatusCommand>(),
    CommandInfo::of::<jobs::JobList>(),
    CommandInfo::of::<jobs::JobLogsCommand>(),
    CommandInfo::of::<jobs::JobDelete>(),
    CommandInfo::of::<cron::CronCreate>(),
    CommandInfo::of::<cron::CronList>(),
    CommandInfo::of::<cron::CronStatusCommand>(),
    CommandInfo::of::<cron::CronTrigger>(),
    CommandInfo::of::<cron::CronSuspend>(),
    CommandInfo::of::<cron::CronResume>(),
    CommandInfo::of::<cron::CronDelete>(),
    CommandInfo::of::<cron::CronLogsCommand>(),
    CommandInfo::of::<autoscale::AutoscaleCreate>(),
    CommandInfo::of::<autoscale::AutoscaleStatusCommand>(),
    CommandInfo::of::<autoscale::AutoscaleAdjust>(),
    CommandInfo::of::<autoscale::AutoscaleDelete>(),
    CommandInfo::of::<configs::ConfigCreate>(),
    CommandInfo::of::<configs::ConfigUpdate>(),
    CommandInfo::of::<configs::ConfigGet>(),
    CommandInfo::of::<configs::ConfigList>(),
    CommandInfo::of::<configs::ConfigDelete>(),
    CommandInfo::of::<secrets::SecretCreate>(),
    CommandInfo::of::<secrets::SecretRotate>(),
    CommandInfo::of::<secrets::SecretDescribe>(),
    CommandInfo::of::<secrets::SecretList>(),
    CommandInfo::of::<secrets::SecretDelete>(),
    CommandInfo::of::<services::ServiceCreate>(),
    CommandInfo::of::<services::ServiceList>(),
    CommandInfo::of::<services::ServiceDelete>(),
    CommandInfo::of::<ingress::IngressCreate>(),
    CommandInfo::of::<ingress::IngressList>(),
    CommandInfo::of::<ingress::IngressDelete>(),
    CommandInfo::of::<policies::PolicyCreate>(),
    CommandInfo::of::<policies::PolicyList>(),
    CommandInfo::of::<policies::PolicyDelete>(),
    CommandInfo::of::<namespaces::NamespaceCreate>(),
    CommandInfo::of::<namespaces::NamespaceList>(),
    CommandInfo::of::<namespaces::NamespaceDelete>(),
    CommandInfo::of::<auth::AuthCreateKey>(),
    CommandInfo::of::<auth::AuthListKeys>(),
    CommandInfo::of::<auth::AuthRevokeKey>(),
];

/// `node.capabilities`' list, built once.
pub fn node_descriptions() -> &'static [CommandDescription] {
    static LIST: OnceLock<Vec<CommandDescription>> = OnceLock::new();
    LIST.get_or_init(|| NODE_COMMANDS.iter().map(CommandInfo::description).collect())
}

/// `fleet.capabilities`' list, built once.
pub fn bridge_descriptions() -> &'static [CommandDescription] {
    static LIST: OnceLock<Vec<CommandDescription>> = OnceLock::new();
    LIST.get_or_init(|| {
        BRIDGE_COMMANDS
            .iter()
            .map(CommandInfo::description)
            .collect()
    })
}

/// The catalogue entry of command `name` on a node.
pub fn node_command(name: &str) -> Option<&'static CommandInfo> {
    NODE_COMMANDS.iter().find(|c| c.name == name)
}

/// The whole surface as one JSON document: for each of the node and the bridge, every command's
/// name, role, description and the JSON schemas of its params and answer. The OpenClaw plugin's
/// tools are checked against it.
pub fn contract() -> Value {
    let list = |commands: &[CommandInfo]| -> Vec<Value> {
        commands
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "role": c.role,
                    "description": c.description,
                    "params": c.params_schema(),
                    "answer": c.answer_schema(),
                })
            })
            .collect()
    };
    json!({ "node": list(NODE_COMMANDS), "bridge": list(BRIDGE_COMMANDS) })
}

/// Decodes `answer` as `C`'s and checks it encodes back to exactly the same JSON: the answer
/// types' tests pin their wire form with it.
#[cfg(test)]
fn round_trip<C: Command>(answer: Value) -> C::Answer {
    let decoded = C::decode(answer.clone()).expect("the answer decodes");
    assert_eq!(serde_json::to_value(&decoded).expect("encodes"), answer);
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        for list in [NODE_COMMANDS, BRIDGE_COMMANDS] {
            let mut names: Vec<&str> = list.iter().map(|c| c.name).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "a name is listed twice");
            for name in names {
                assert!(
                    name.len() <= 64
                        && name.split('.').count() >= 2
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_schema_builds_and_params_refuse_unknown_fields() {
        for info in NODE_COMMANDS.iter().chain(BRIDGE_COMMANDS) {
            let params = info.params_schema();
            assert_eq!(params["type"], "object", "{}: {params}", info.name);
            assert_eq!(
                params["additionalProperties"], false,
                "{} accepts unknown fields",
                info.name
            );
            assert!(!info.answer_schema().is_null(), "{}", info.name);
        }
    }

    /// The contract the OpenClaw plugin's tests check its tools against. Regenerate it with
    /// `CLAW_WRITE_CONTRACT=1 cargo test -p claw-api`, then make the plugin follow.
    #[test]
    fn the_plugins_copy_of_the_contract_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugin/openclaw-clawbernetes/contract/commands.json");
        let current =
            serde_json::to_string_pretty(&contract()).expect("the contract encodes") + "\n";
        if std::env::var_os("CLAW_WRITE_CONTRACT").is_some() {
            std::fs::write(&path, &current).expect("writing the contract");
        }
        let copy = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            copy == current,
            "{} differs from the commands' definitions: regenerate it with \
             CLAW_WRITE_CONTRACT=1 cargo test -p claw-api, then make the plugin follow",
            path.display()
        );
    }
}
