//! Services, ingress rules, policies and namespaces through the bridge. Like configs: reads go to
//! a live member; changes are checked with the rules a node applies, signed by the bridge as a
//! fleet operator and handed to that member (`object.put`), which keeps and gossips them.

use claw_api::configs::{ConfigSpec, Deleted, ValuesChange};
use claw_api::ingress::{Ingress, IngressCreateParams, IngressList};
use claw_api::namespaces::{Namespace, NamespaceCreateParams, NamespaceList};
use claw_api::objects::ObjectKind;
use claw_api::policies::{Policy, PolicyCreateParams, PolicyList};
use claw_api::services::{Service, ServiceCreateParams, ServiceList};
use claw_api::workload::SpecError;
use claw_api::{ErrorCode, InvokeFailure, NoParams};
use serde::Serialize;

use super::{Call, FleetCommands};

fn invalid(error: SpecError) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::InvalidParams, error.to_string())
}

impl FleetCommands {
    /// The live revision of `kind` `name`, from a member's listing.
    async fn live_revision(
        &self,
        kind: ObjectKind,
        name: &str,
        call: Call,
    ) -> Result<Option<u64>, InvokeFailure> {
        let listed: Vec<(String, u64)> = match kind {
            ObjectKind::Service => self
                .ask_member::<ServiceList>(&NoParams {}, call)
                .await?
                .services
                .into_iter()
                .map(|o| (o.name, o.revision))
                .collect(),
            ObjectKind::Ingress => self
                .ask_member::<IngressList>(&NoParams {}, call)
                .await?
                .ingresses
                .into_iter()
                .map(|o| (o.name, o.revision))
                .collect(),
            ObjectKind::Policy => self
                .ask_member::<PolicyList>(&NoParams {}, call)
                .await?
                .policies
                .into_iter()
                .map(|o| (o.name, o.revision))
                .collect(),
            ObjectKind::Namespace => self
                .ask_member::<NamespaceList>(&NoParams {}, call)
                .await?
                .namespaces
                .into_iter()
                .map(|o| (o.name, o.revision))
                .collect(),
            other => {
                return Err(InvokeFailure::new(
                    ErrorCode::Internal,
                    format!("{} is not a plain object", other.as_str()),
                ));
            }
        };
        Ok(listed
            .into_iter()
            .find(|(listed, _)| listed == name)
            .map(|(_, revision)| revision))
    }

    /// Creates `kind` `name` with `spec` (checked by the caller): its revision and when it was
    /// signed.
    async fn plain_create<S: Serialize>(
        &self,
        kind: ObjectKind,
        name: &str,
        spec: &S,
        call: Call,
    ) -> Result<(u64, u64), InvokeFailure> {
        let live = self.live_revision(kind, name, call.clone()).await?;
        ValuesChange::Create.check(kind.as_str(), name, live.is_some())?;
        let (revision, _, signed_at_ms) = self
            .sign_values(kind, name, live, |_| Ok(Some(spec)), call)
            .await?;
        Ok((revision, signed_at_ms))
    }

    /// `service.delete`, `ingress.delete`, `policy.delete` and `namespace.delete` through the
    /// bridge.
    pub(super) async fn plain_deleted(
        &self,
        kind: ObjectKind,
        name: &str,
        call: Call,
    ) -> Result<Deleted, InvokeFailure> {
        let live = self.live_revision(kind, name, call.clone()).await?;
        ValuesChange::Delete.check(kind.as_str(), name, live.is_some())?;
        let (revision, _, _) = self
            .sign_values::<ConfigSpec>(kind, name, live, |_| Ok(None), call)
            .await?;
        Ok(Deleted {
            name: name.to_owned(),
            revision,
        })
    }

    /// `service.create` through the bridge.
    pub(super) async fn service_create(
        &self,
        params: ServiceCreateParams,
        call: Call,
    ) -> Result<Service, InvokeFailure> {
        params.spec.check().map_err(invalid)?;
        let (revision, signed_at_ms) = self
            .plain_create(ObjectKind::Service, &params.name, &params.spec, call)
            .await?;
        Ok(Service {
            name: params.name,
            revision,
            spec: params.spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `ingress.create` through the bridge.
    pub(super) async fn ingress_create(
        &self,
        params: IngressCreateParams,
        call: Call,
    ) -> Result<Ingress, InvokeFailure> {
        params.spec.check().map_err(invalid)?;
        let (revision, signed_at_ms) = self
            .plain_create(ObjectKind::Ingress, &params.name, &params.spec, call)
            .await?;
        Ok(Ingress {
            name: params.name,
            revision,
            spec: params.spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `policy.create` through the bridge.
    pub(super) async fn policy_create(
        &self,
        params: PolicyCreateParams,
        call: Call,
    ) -> Result<Policy, InvokeFailure> {
        params.spec.check().map_err(invalid)?;
        let (revision, signed_at_ms) = self
            .plain_create(ObjectKind::Policy, &params.name, &params.spec, call)
            .await?;
        Ok(Policy {
            name: params.name,
            revision,
            spec: params.spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `namespace.create` through the bridge.
    pub(super) async fn namespace_create(
        &self,
        params: NamespaceCreateParams,
        call: Call,
    ) -> Result<Namespace, InvokeFailure> {
        params.spec.check().map_err(invalid)?;
        let (revision, _) = self
            .plain_create(ObjectKind::Namespace, &params.name, &params.spec, call)
            .await?;
        Ok(Namespace {
            name: params.name,
            revision,
            spec: params.spec,
        })
    }
}
