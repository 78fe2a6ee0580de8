//! The `config.*` and `secret.*` commands over the fleet objects, and what a workload that uses
//! them reads: a config's values, or a secret's values opened with this node's key.
//!
//! A secret is sealed here, by the member that signs it, to the nodes allowed to use it; the
//! values it was given are dropped (zeroed) once sealed. Every member keeps the sealed record;
//! only those nodes open it, and only to start a workload that uses it.

use std::collections::BTreeMap;

use claw_api::configs::{
    Config, ConfigListing, ConfigParams, ConfigSpec, ConfigSummary, Deleted, ValuesChange,
    check_name,
};
use claw_api::deploy::Change;
use claw_api::secrets::{
    Secret, SecretListing, SecretParams, SecretSpec, SecretValues, resolve_nodes,
};
use claw_api::workload::SourceKind;
use claw_api::{ErrorCode, InvokeFailure};
use claw_attestation::SealError;
use claw_mesh::PeerId;
use serde::de::DeserializeOwned;

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

/// Checks a config's or secret's name and spec (absent when deleted), as every member does
/// before keeping it.
pub(super) fn check(kind: ObjectKind, name: &str, spec: Option<&str>) -> Result<(), String> {
    let what = if kind == ObjectKind::Secret {
        "secret"
    } else {
        "config"
    };
    check_name(what, name).map_err(|e| e.to_string())?;
    let Some(spec) = spec else {
        return Ok(());
    };
    match kind {
        ObjectKind::Config => parse::<ConfigSpec>(spec)?.check(),
        _ => parse::<SecretSpec>(spec)?.check(),
    }
    .map_err(|e| e.to_string())
}

fn parse<S: DeserializeOwned>(spec: &str) -> Result<S, String> {
    serde_json::from_str(spec).map_err(|e| format!("spec: {e}"))
}

fn spec_of<S: DeserializeOwned>(record: &ObjectRecord) -> Result<Option<S>, InvokeFailure> {
    record
        .spec
        .as_deref()
        .map(parse)
        .transpose()
        .map_err(|e| failure(ErrorCode::Internal, e))
}

fn encode(spec: &impl serde::Serialize) -> Result<String, InvokeFailure> {
    serde_json::to_string(spec).map_err(|e| failure(ErrorCode::Internal, e.to_string()))
}

fn config(record: &ObjectRecord, spec: ConfigSpec) -> Config {
    Config {
        name: record.name.clone(),
        revision: record.revision,
        data: spec.data,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

fn secret(record: &ObjectRecord, spec: &SecretSpec) -> Secret {
    Secret {
        name: record.name.clone(),
        revision: record.revision,
        keys: spec.keys.clone(),
        nodes: spec.nodes.keys().cloned().collect(),
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
        rolled: Vec::new(),
    }
}

fn invalid(error: claw_api::workload::SpecError) -> InvokeFailure {
    failure(ErrorCode::InvalidParams, error.to_string())
}

/// Why a workload could not have a config's or secret's values here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesError {
    /// No such config or secret (or it was deleted).
    #[error("no {0} {1:?} in the fleet ({0}.list lists them)")]
    NotFound(&'static str, String),
    /// It has no such key.
    #[error("{0} {1:?} has no key {2:?}")]
    NoKey(&'static str, String, String),
    /// This node is not one the secret is sealed to.
    #[error("this node is not one of the nodes secret {0:?} is sealed to")]
    NotAllowed(String),
    /// The kept revision is older than the one asked for (not synced here yet).
    #[error("secret {0:?} is at revision {1} here, and revision {2} is needed: not synced yet")]
    Behind(String, u64, u64),
    /// The sealed record does not open.
    #[error("secret {0:?} does not open here: {1}")]
    Unreadable(String, SealError),
    /// The store failed.
    #[error("{0}")]
    Store(String),
}

/// A config's or secret's values, for a workload.
pub enum Values {
    /// A config's, in the clear.
    Config(BTreeMap<String, String>),
    /// A secret's, opened.
    Secret(SecretValues),
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.iter().map(|(k, _)| k).collect();
        f.debug_struct("Values")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl Values {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self {
            Self::Config(data) => data.get(key).map(String::as_str),
            Self::Secret(values) => values.get(key),
        }
    }

    /// Every key and value.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        match self {
            Self::Config(data) => Box::new(data.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            Self::Secret(values) => Box::new(values.iter()),
        }
    }
}

impl FleetObjects {
    /// The members this node sees, by peer id and name, for naming a secret's nodes.
    fn members(&self) -> Vec<(PeerId, String)> {
        self.inner
            .mesh
            .get()
            .map(|mesh| {
                mesh.fleet_members()
                    .into_iter()
                    .map(|m| (m.peer_id, m.announcement.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Signs `spec` as the next revision of plain object `kind` `name` (a config, service,
    /// policy or namespace), when `change` applies to what is kept.
    pub(super) async fn put_plain<S: serde::Serialize>(
        &self,
        kind: ObjectKind,
        name: &str,
        spec: &S,
        change: ValuesChange,
    ) -> Result<ObjectRecord, InvokeFailure> {
        let text = encode(spec)?;
        self.write(kind, name, |history| {
            let live = history.first().is_some_and(|r| !r.deleted());
            change.check(kind.as_str(), name, live)?;
            Ok(Some(text))
        })
        .await
    }

    /// `config.create` and `config.update`.
    pub async fn put_config(
        &self,
        params: ConfigParams,
        change: ValuesChange,
    ) -> Result<Config, InvokeFailure> {
        let spec = ConfigSpec { data: params.data };
        spec.check().map_err(invalid)?;
        let record = self
            .put_plain(ObjectKind::Config, &params.name, &spec, change)
            .await?;
        Ok(config(&record, spec))
    }

    /// `config.get`.
    pub async fn config(&self, name: &str) -> Result<Config, InvokeFailure> {
        let (record, spec) = self
            .live_of(ObjectKind::Config, name)
            .await?
            .ok_or_else(|| claw_api::configs::not_found("config", name))?;
        Ok(config(&record, spec))
    }

    /// `config.list`.
    pub async fn configs(&self) -> Result<ConfigListing, InvokeFailure> {
        let all = self.all_of::<ConfigSpec>(ObjectKind::Config).await?;
        Ok(ConfigListing {
            configs: all
                .into_iter()
                .map(|(record, spec)| ConfigSummary {
                    name: record.name,
                    revision: record.revision,
                    keys: spec.data.into_keys().collect(),
                    signed_at_ms: record.signed_at_ms,
                })
                .collect(),
        })
    }

    /// The `delete` of every plain object kind (config, secret, service, policy, namespace).
    pub async fn delete_values(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Deleted, InvokeFailure> {
        let record = self
            .write(kind, name, |history| {
                let live = history.first().is_some_and(|r| !r.deleted());
                ValuesChange::Delete.check(kind.as_str(), name, live)?;
                Ok(None)
            })
            .await?;
        Ok(Deleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// `secret.create` and `secret.rotate`: seals the values to the nodes named (by default,
    /// every member on create, the same nodes on rotate) as the next revision. A rotation then
    /// signs a new revision of every deployment using the secret, so its replicas roll.
    pub async fn put_secret(
        &self,
        params: SecretParams,
        change: ValuesChange,
    ) -> Result<Secret, InvokeFailure> {
        let members = self.members();
        let network = self.network().to_owned();
        let mut sealed = None;
        let record = self
            .write(ObjectKind::Secret, &params.name, |history| {
                let live: Option<SecretSpec> = match history.first() {
                    Some(record) => spec_of(record)?,
                    None => None,
                };
                change.check("secret", &params.name, live.is_some())?;
                let nodes = match (&params.nodes, &live) {
                    (Some(nodes), _) => resolve_nodes(Some(nodes), &members),
                    (None, Some(live)) => Ok(live.node_ids()),
                    (None, None) => resolve_nodes(None, &members),
                }
                .map_err(invalid)?;
                let revision = history.first().map_or(1, |r| r.revision + 1);
                let spec = SecretSpec::seal(&network, &params.name, revision, &params.data, &nodes)
                    .map_err(invalid)?;
                let text = encode(&spec)?;
                sealed = Some(spec);
                Ok(Some(text))
            })
            .await?;
        drop(params);
        let spec = sealed.ok_or_else(|| failure(ErrorCode::Internal, "sealed nothing"))?;
        let mut answer = secret(&record, &spec);
        if change == ValuesChange::Update {
            answer.rolled = self.roll_users(&record.name, record.revision).await;
        }
        Ok(answer)
    }

    /// Signs a new revision of every deployment using secret `name`, needing `revision`.
    /// Answers the deployments rolled; one that changed meanwhile is left (and logged).
    async fn roll_users(&self, name: &str, revision: u64) -> Vec<String> {
        let users = match self.deployments().await {
            Ok(listing) => listing.deployments,
            Err(error) => {
                tracing::warn!(secret = name, %error, "deployments using the secret not read");
                return Vec::new();
            }
        };
        let mut rolled = Vec::new();
        for deployment in users {
            let uses = deployment
                .spec
                .template
                .sources()
                .contains(&(SourceKind::Secret, name.to_owned()));
            if !uses {
                continue;
            }
            let change = Change::SecretRotated(name.to_owned(), revision);
            match self.apply(&deployment.name, change).await {
                Ok(_) => rolled.push(deployment.name),
                Err(error) => tracing::warn!(
                    secret = name,
                    deployment = deployment.name,
                    %error,
                    "deployment not rolled onto the rotated secret"
                ),
            }
        }
        rolled
    }

    /// `secret.describe`.
    pub async fn secret(&self, name: &str) -> Result<Secret, InvokeFailure> {
        let (record, spec) = self
            .live_of::<SecretSpec>(ObjectKind::Secret, name)
            .await?
            .ok_or_else(|| claw_api::configs::not_found("secret", name))?;
        Ok(secret(&record, &spec))
    }

    /// `secret.list`.
    pub async fn secrets(&self) -> Result<SecretListing, InvokeFailure> {
        let all = self.all_of::<SecretSpec>(ObjectKind::Secret).await?;
        Ok(SecretListing {
            secrets: all
                .iter()
                .map(|(record, spec)| secret(record, spec))
                .collect(),
        })
    }

    /// The nodes secret `name` is sealed to, when it is live.
    pub async fn secret_nodes(&self, name: &str) -> Option<Vec<PeerId>> {
        let (_, spec) = self
            .live_of::<SecretSpec>(ObjectKind::Secret, name)
            .await
            .ok()??;
        Some(spec.node_ids())
    }

    /// The kept revision of secret `name`, when it is live.
    pub async fn secret_revision(&self, name: &str) -> Option<u64> {
        let (record, _) = self
            .live_of::<SecretSpec>(ObjectKind::Secret, name)
            .await
            .ok()??;
        Some(record.revision)
    }

    /// The values of config or secret `name`, for a workload starting here: a secret's opened
    /// with this node's key (refused when it is not sealed to this node).
    pub async fn values(&self, kind: SourceKind, name: &str) -> Result<Values, ValuesError> {
        let store_error = |e: InvokeFailure| ValuesError::Store(e.message);
        match kind {
            SourceKind::Config => {
                let (_, spec) = self
                    .live_of::<ConfigSpec>(ObjectKind::Config, name)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| ValuesError::NotFound("config", name.to_owned()))?;
                Ok(Values::Config(spec.data))
            }
            SourceKind::Secret => {
                let (record, spec) = self
                    .live_of::<SecretSpec>(ObjectKind::Secret, name)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| ValuesError::NotFound("secret", name.to_owned()))?;
                let identity = self.inner.dir.identity();
                match spec.open(identity, self.network(), name, record.revision) {
                    Ok(values) => Ok(Values::Secret(values)),
                    Err(SealError::NotRecipient) => Err(ValuesError::NotAllowed(name.to_owned())),
                    Err(error) => Err(ValuesError::Unreadable(name.to_owned(), error)),
                }
            }
        }
    }
}
