//! The config and secret commands through the bridge. Reads go to a live member; changes are
//! signed by the bridge as a fleet operator, checked with the rules a node applies
//! ([`ValuesChange::check`]), and handed to that member (`object.put`), which keeps and gossips
//! them. A secret is sealed here to the nodes allowed to use it (named by peer id or by a name
//! unique among the members this bridge sees); its values go no further than this process.

use claw_api::configs::{
    Config, ConfigGet, ConfigParams, ConfigRef, ConfigSpec, Deleted, ValuesChange,
};
use claw_api::deploy::{Change, DeployList};
use claw_api::objects::ObjectKind;
use claw_api::secrets::{
    Secret, SecretDescribe, SecretParams, SecretRef, SecretSpec, resolve_nodes,
};
use claw_api::workload::SourceKind;
use claw_api::{ErrorCode, InvokeFailure, NoParams};
use claw_mesh::PeerId;

use super::deployments::changed_meanwhile;
use super::{Call, FleetCommands};

fn invalid(error: claw_api::workload::SpecError) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::InvalidParams, error.to_string())
}

fn what(kind: ObjectKind) -> &'static str {
    if kind == ObjectKind::Secret {
        "secret"
    } else {
        "config"
    }
}

impl FleetCommands {
    async fn live_config(&self, name: &str, call: Call) -> Result<Option<Config>, InvokeFailure> {
        let reference = ConfigRef {
            name: name.to_owned(),
        };
        match self.ask_member::<ConfigGet>(&reference, call).await {
            Ok(config) => Ok(Some(config)),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn live_secret(&self, name: &str, call: Call) -> Result<Option<Secret>, InvokeFailure> {
        let reference = SecretRef {
            name: name.to_owned(),
        };
        match self.ask_member::<SecretDescribe>(&reference, call).await {
            Ok(secret) => Ok(Some(secret)),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Signs the spec `spec_at` makes for a revision (`None` deletes) as the revision after
    /// `live`; when there is no live revision, after the one the member keeps (a deleted
    /// object's), which it names when the first try was not newer.
    pub(super) async fn sign_values<S: serde::Serialize>(
        &self,
        kind: ObjectKind,
        name: &str,
        live: Option<u64>,
        spec_at: impl Fn(u64) -> Result<Option<S>, InvokeFailure>,
        call: Call,
    ) -> Result<(u64, Option<S>, u64), InvokeFailure> {
        let revision = live.map_or(1, |r| r + 1);
        let spec = spec_at(revision)?;
        match self
            .put_signed(kind, name, revision, spec.as_ref(), call.clone())
            .await?
        {
            Ok(signed_at_ms) => Ok((revision, spec, signed_at_ms)),
            Err(kept) if live.is_none() => {
                let revision = kept + 1;
                let spec = spec_at(revision)?;
                let signed_at_ms = self
                    .put_signed(kind, name, revision, spec.as_ref(), call)
                    .await?
                    .map_err(|kept| changed_meanwhile(kind, name, kept))?;
                Ok((revision, spec, signed_at_ms))
            }
            Err(kept) => Err(changed_meanwhile(kind, name, kept)),
        }
    }

    /// `config.create` and `config.update` through the bridge.
    pub(super) async fn config_put(
        &self,
        params: ConfigParams,
        change: ValuesChange,
        call: Call,
    ) -> Result<Config, InvokeFailure> {
        let spec = ConfigSpec { data: params.data };
        spec.check().map_err(invalid)?;
        let live = self.live_config(&params.name, call.clone()).await?;
        change.check("config", &params.name, live.is_some())?;
        let (revision, _, signed_at_ms) = self
            .sign_values(
                ObjectKind::Config,
                &params.name,
                live.map(|c| c.revision),
                |_| Ok(Some(&spec)),
                call,
            )
            .await?;
        Ok(Config {
            name: params.name,
            revision,
            data: spec.data,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `config.delete` and `secret.delete` through the bridge.
    pub(super) async fn values_deleted(
        &self,
        kind: ObjectKind,
        name: &str,
        call: Call,
    ) -> Result<Deleted, InvokeFailure> {
        let live = match kind {
            ObjectKind::Secret => self
                .live_secret(name, call.clone())
                .await?
                .map(|s| s.revision),
            _ => self
                .live_config(name, call.clone())
                .await?
                .map(|c| c.revision),
        };
        ValuesChange::Delete.check(what(kind), name, live.is_some())?;
        let (revision, _, _) = self
            .sign_values::<ConfigSpec>(kind, name, live, |_| Ok(None), call)
            .await?;
        Ok(Deleted {
            name: name.to_owned(),
            revision,
        })
    }

    /// `secret.create` and `secret.rotate` through the bridge: sealed here to the nodes named
    /// (by default every member on create, the same nodes on rotate). A rotation then signs a
    /// new revision of every deployment using the secret, so its replicas roll.
    pub(super) async fn secret_put(
        &self,
        params: SecretParams,
        change: ValuesChange,
        call: Call,
    ) -> Result<Secret, InvokeFailure> {
        let live = self.live_secret(&params.name, call.clone()).await?;
        change.check("secret", &params.name, live.is_some())?;
        let members: Vec<(PeerId, String)> = self
            .members()
            .into_iter()
            .map(|m| (m.peer_id, m.announcement.name))
            .collect();
        let nodes = match (&params.nodes, &live) {
            (Some(nodes), _) => resolve_nodes(Some(nodes), &members),
            (None, Some(live)) => Ok(live.nodes.iter().filter_map(|n| n.parse().ok()).collect()),
            (None, None) => resolve_nodes(None, &members),
        }
        .map_err(invalid)?;
        let network = self.signing_network()?;
        let seal = |revision| {
            SecretSpec::seal(&network, &params.name, revision, &params.data, &nodes)
                .map(Some)
                .map_err(invalid)
        };
        let (revision, spec, signed_at_ms) = self
            .sign_values(
                ObjectKind::Secret,
                &params.name,
                live.map(|s| s.revision),
                seal,
                call.clone(),
            )
            .await?;
        let spec = spec.ok_or_else(|| InvokeFailure::new(ErrorCode::Internal, "sealed nothing"))?;
        let rolled = if change == ValuesChange::Update {
            self.roll_users(&params.name, revision, call).await
        } else {
            Vec::new()
        };
        Ok(Secret {
            name: params.name.clone(),
            revision,
            keys: spec.keys,
            nodes: spec.nodes.into_keys().collect(),
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
            rolled,
        })
    }

    /// Signs a new revision of every deployment using secret `name`, needing `revision`.
    async fn roll_users(&self, name: &str, revision: u64, call: Call) -> Vec<String> {
        let listing = match self
            .ask_member::<DeployList>(&NoParams {}, call.clone())
            .await
        {
            Ok(listing) => listing,
            Err(error) => {
                tracing::warn!(secret = name, %error, "deployments using the secret not read");
                return Vec::new();
            }
        };
        let mut rolled = Vec::new();
        for deployment in listing.deployments {
            let uses = deployment
                .spec
                .template
                .sources()
                .contains(&(SourceKind::Secret, name.to_owned()));
            if !uses {
                continue;
            }
            let change = Change::SecretRotated(name.to_owned(), revision);
            match self
                .change_deployment(&deployment.name, change, call.clone())
                .await
            {
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
}
