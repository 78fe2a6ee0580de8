//! The command surface of Clawbernetes: what nodes and the gateway bridge answer, in one place.
//!
//! Every command is defined once here, with its name, the role it needs, its params (parsed
//! strictly: unknown fields are refused) and its answer. Nodes and the bridge dispatch from these
//! definitions, `node.capabilities` and `fleet.capabilities` describe them, the CLI decodes
//! answers with them, and the OpenClaw plugin is checked against the contract they produce. A
//! command fails with an [`InvokeFailure`]: one error type from the handler to the wire.

mod error;
mod role;
pub mod workload;

pub use error::{ErrorCode, InvokeFailure};
pub use role::Role;
