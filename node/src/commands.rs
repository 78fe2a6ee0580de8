//! The commands a node answers, locally through the control API and remotely over the mesh.
//!
//! Each command parses its params strictly (unknown fields rejected), runs in its own task, and
//! does blocking work (NVML, the OS) on the blocking pool.

use std::path::PathBuf;
use std::sync::Arc;

use claw_attestation::{GpuProbe, probe_host};
use claw_mesh::{
    ErrorCode, HandlerFuture, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse, PeerId,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::store::{AuditRecord, Store};

/// A command's name, what it does, and the JSON schema of its params.
struct CommandSpec {
    name: &'static str,
    description: &'static str,
    params: fn() -> Value,
}

fn no_params_schema() -> Value {
    json!({"type": ["object", "null"], "properties": {}, "additionalProperties": false})
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "node.capabilities",
        description: "List the commands this node answers, with the JSON schema of their params",
        params: no_params_schema,
    },
    CommandSpec {
        name: "gpu.list",
        description: "List GPUs from NVML (and simulated ones, marked), with NVML's status",
        params: no_params_schema,
    },
    CommandSpec {
        name: "system.info",
        description: "Host facts: OS, kernel, CPU, memory, disk",
        params: no_params_schema,
    },
];

/// Params of commands that take none: `null` or `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn parse_no_params(params: &Value) -> Result<(), InvokeFailure> {
    if params.is_null() {
        return Ok(());
    }
    serde_json::from_value::<NoParams>(params.clone())
        .map(|_| ())
        .map_err(|e| InvokeFailure::new(ErrorCode::InvalidParams, format!("takes no params: {e}")))
}

/// The node's command table. Cheap to clone. Every invocation, from a peer or the local control
/// API, is appended to the store's audit log.
#[derive(Debug, Clone)]
pub struct NodeCommands {
    probe: Arc<GpuProbe>,
    data_dir: Arc<PathBuf>,
    store: Store,
}

impl NodeCommands {
    /// Commands served from `probe`, measuring disk where `data_dir` lives, auditing to `store`.
    pub fn new(probe: Arc<GpuProbe>, data_dir: PathBuf, store: Store) -> Self {
        Self {
            probe,
            data_dir: Arc::new(data_dir),
            store,
        }
    }

    /// The latest `limit` audit records, newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, crate::StoreError> {
        self.store.recent_audit(limit)
    }

    /// Names of every command, for announcing and for the gateway.
    pub fn names() -> Vec<&'static str> {
        COMMANDS.iter().map(|c| c.name).collect()
    }

    async fn run(&self, request: InvokeRequest) -> Result<Value, InvokeFailure> {
        match request.command.as_str() {
            "node.capabilities" => {
                parse_no_params(&request.params)?;
                let commands: Vec<Value> = COMMANDS
                    .iter()
                    .map(|c| json!({"name": c.name, "description": c.description, "params": (c.params)()}))
                    .collect();
                Ok(json!({ "commands": commands }))
            }
            "gpu.list" => {
                parse_no_params(&request.params)?;
                let probe = Arc::clone(&self.probe);
                blocking(move || json!({ "nvml": probe.status(), "gpus": probe.devices() })).await
            }
            "system.info" => {
                parse_no_params(&request.params)?;
                let dir = Arc::clone(&self.data_dir);
                blocking(move || json!(probe_host(&dir))).await
            }
            other => Err(InvokeFailure::new(
                ErrorCode::UnknownCommand,
                format!("no command {other:?}; node.capabilities lists them"),
            )),
        }
    }
}

async fn blocking(work: impl FnOnce() -> Value + Send + 'static) -> Result<Value, InvokeFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| InvokeFailure::new(ErrorCode::Internal, format!("command task failed: {e}")))
}

impl InvokeHandler for NodeCommands {
    fn handle(&self, caller: PeerId, request: InvokeRequest) -> HandlerFuture {
        let commands = self.clone();
        Box::pin(async move {
            let command = request.command.clone();
            let params_sha256 = hex::encode(Sha256::digest(request.params.to_string()));
            let started = std::time::Instant::now();
            let result = commands.run(request).await;
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(failure) => failure.code.to_string(),
            };
            tracing::info!(%caller, command, outcome, duration_ms, "invoke");
            let record = AuditRecord {
                at_ms: claw_attestation::unix_millis(std::time::SystemTime::now()),
                caller: caller.to_string(),
                command,
                params_sha256,
                outcome,
                duration_ms,
            };
            if let Err(error) = commands.store.append_audit(&record) {
                tracing::error!(%error, "audit log write failed");
            }
            InvokeResponse::from(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claw_attestation::NodeIdentity;

    fn commands() -> (tempfile::TempDir, NodeCommands) {
        let identity = NodeIdentity::generate();
        let probe = Arc::new(GpuProbe::open(&[], &identity.public_key()));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, NodeCommands::new(probe, std::env::temp_dir(), store))
    }

    async fn call(command: &str, params: Value) -> InvokeResponse {
        let request =
            InvokeRequest::new(command, std::time::Duration::from_secs(5)).with_params(params);
        let (_dir, commands) = commands();
        commands.handle(PeerId::random(), request).await
    }

    #[tokio::test]
    async fn every_invocation_is_audited_without_its_params() {
        let (_dir, commands) = commands();
        let caller = PeerId::random();
        let secret = json!({"token": "hunter2"});
        let request = InvokeRequest::new("gpu.list", std::time::Duration::from_secs(5))
            .with_params(secret.clone());
        commands.handle(caller, request).await;
        let request = InvokeRequest::new("system.info", std::time::Duration::from_secs(5));
        commands.handle(caller, request).await;
        let records = commands.store.recent_audit(10).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].command, "system.info");
        assert_eq!(records[0].outcome, "ok");
        assert_eq!(records[1].command, "gpu.list");
        assert_eq!(records[1].outcome, "INVALID_PARAMS");
        assert_eq!(records[1].caller, caller.to_string());
        let text = serde_json::to_string(&records).unwrap();
        assert!(
            !text.contains("hunter2"),
            "params leaked into the audit log"
        );
        assert_eq!(
            records[1].params_sha256,
            hex::encode(Sha256::digest(secret.to_string()))
        );
    }

    #[tokio::test]
    async fn capabilities_list_every_command_with_a_schema() {
        let InvokeResponse::Ok(value) = call("node.capabilities", Value::Null).await else {
            panic!("capabilities failed");
        };
        let names: Vec<&str> = value["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, NodeCommands::names());
        assert!(value["commands"][0]["params"].is_object());
    }

    #[tokio::test]
    async fn unknown_fields_and_commands_get_typed_errors() {
        let InvokeResponse::Error(failure) = call("gpu.list", json!({"all": true})).await else {
            panic!("unknown field accepted");
        };
        assert_eq!(failure.code, ErrorCode::InvalidParams);
        let InvokeResponse::Error(failure) = call("gpu.melt", Value::Null).await else {
            panic!("unknown command accepted");
        };
        assert_eq!(failure.code, ErrorCode::UnknownCommand);
    }

    #[tokio::test]
    async fn system_info_reads_the_host() {
        let InvokeResponse::Ok(value) = call("system.info", json!({})).await else {
            panic!("system.info failed");
        };
        assert!(value["memory_total_bytes"].as_u64().unwrap() > 0);
    }
}
