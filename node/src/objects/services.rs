//! The `service.*` and `ingress.*` objects over the fleet objects: each change signs a new
//! revision; reads answer from this member's copy.

use claw_api::configs::{ValuesChange, check_name};
use claw_api::ingress::{Ingress, IngressCreateParams, IngressListing, IngressSpec};
use claw_api::services::{Service, ServiceCreateParams, ServiceListing, ServiceSpec};
use claw_api::{ErrorCode, InvokeFailure};

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

/// Checks a service's name and spec (absent when deleted), as every member does before keeping
/// it.
pub(super) fn check(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name("service", name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        parse(spec)?.check().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks an ingress rule's name and spec (absent when deleted), as every member does before
/// keeping it.
pub(super) fn check_ingress(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name("ingress", name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        serde_json::from_str::<IngressSpec>(spec)
            .map_err(|e| format!("ingress spec: {e}"))?
            .check()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn ingress(record: &ObjectRecord, spec: IngressSpec) -> Ingress {
    Ingress {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

fn parse(spec: &str) -> Result<ServiceSpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("service spec: {e}"))
}

fn service(record: &ObjectRecord, spec: ServiceSpec) -> Service {
    Service {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

impl FleetObjects {
    /// `service.create`.
    pub async fn create_service(
        &self,
        params: ServiceCreateParams,
    ) -> Result<Service, InvokeFailure> {
        params
            .spec
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let record = self
            .put_plain(
                ObjectKind::Service,
                &params.name,
                &params.spec,
                ValuesChange::Create,
            )
            .await?;
        Ok(service(&record, params.spec))
    }

    /// Service `name`, when it is live.
    pub async fn service(&self, name: &str) -> Result<Option<Service>, InvokeFailure> {
        let live = self.live_of(ObjectKind::Service, name).await?;
        Ok(live.map(|(record, spec)| service(&record, spec)))
    }

    /// `service.list`.
    pub async fn services(&self) -> Result<ServiceListing, InvokeFailure> {
        let all = self.all_of(ObjectKind::Service).await?;
        Ok(ServiceListing {
            services: all.into_iter().map(|(r, spec)| service(&r, spec)).collect(),
        })
    }

    /// `ingress.create`.
    pub async fn create_ingress(
        &self,
        params: IngressCreateParams,
    ) -> Result<Ingress, InvokeFailure> {
        params
            .spec
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let record = self
            .put_plain(
                ObjectKind::Ingress,
                &params.name,
                &params.spec,
                ValuesChange::Create,
            )
            .await?;
        Ok(ingress(&record, params.spec))
    }

    /// `ingress.list`.
    pub async fn ingresses(&self) -> Result<IngressListing, InvokeFailure> {
        let all = self.all_of(ObjectKind::Ingress).await?;
        Ok(IngressListing {
            ingresses: all.into_iter().map(|(r, spec)| ingress(&r, spec)).collect(),
        })
    }
}
