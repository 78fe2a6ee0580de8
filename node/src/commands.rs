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

/// The node's command table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeCommands {
    probe: Arc<GpuProbe>,
    data_dir: Arc<PathBuf>,
}

impl NodeCommands {
    /// Commands served from `probe`, measuring disk where `data_dir` lives.
    pub fn new(probe: Arc<GpuProbe>, data_dir: PathBuf) -> Self {
        Self {
            probe,
            data_dir: Arc::new(data_dir),
        }
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
            let started = std::time::Instant::now();
            let result = commands.run(request).await;
            tracing::info!(
                %caller,
                command,
                ok = result.is_ok(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "invoke"
            );
            InvokeResponse::from(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claw_attestation::NodeIdentity;

    fn commands() -> NodeCommands {
        let identity = NodeIdentity::generate();
        let probe = Arc::new(GpuProbe::open(&[], &identity.public_key()));
        NodeCommands::new(probe, std::env::temp_dir())
    }

    async fn call(command: &str, params: Value) -> InvokeResponse {
        let request =
            InvokeRequest::new(command, std::time::Duration::from_secs(5)).with_params(params);
        commands().handle(PeerId::random(), request).await
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
