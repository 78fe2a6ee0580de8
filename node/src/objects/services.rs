//! The `service.*` objects over the fleet objects: each change signs a new revision; reads
//! answer from this member's copy.

use claw_api::configs::{Deleted, ValuesChange, check_name};
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

fn parse(spec: &str) -> Result<ServiceSpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("service spec: {e}"))
}

fn service(record: &ObjectRecord) -> Result<Option<Service>, InvokeFailure> {
    let Some(spec) = record.spec.as_deref() else {
        return Ok(None);
    };
    Ok(Some(Service {
        name: record.name.clone(),
        revision: record.revision,
        spec: parse(spec).map_err(|e| failure(ErrorCode::Internal, e))?,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }))
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
        let text = serde_json::to_string(&params.spec)
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let record = self
            .write(ObjectKind::Service, &params.name, |history| {
                let live = history.first().is_some_and(|r| !r.deleted());
                ValuesChange::Create.check("service", &params.name, live)?;
                Ok(Some(text))
            })
            .await?;
        service(&record)?.ok_or_else(|| failure(ErrorCode::Internal, "created nothing"))
    }

    /// `service.delete`.
    pub async fn delete_service(&self, name: &str) -> Result<Deleted, InvokeFailure> {
        let record = self
            .write(ObjectKind::Service, name, |history| {
                let live = history.first().is_some_and(|r| !r.deleted());
                ValuesChange::Delete.check("service", name, live)?;
                Ok(None)
            })
            .await?;
        Ok(Deleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// Service `name`, when it is live.
    pub async fn service(&self, name: &str) -> Result<Option<Service>, InvokeFailure> {
        match self.kept(ObjectKind::Service, name).await? {
            Some(record) => service(&record),
            None => Ok(None),
        }
    }

    /// `service.list`.
    pub async fn services(&self) -> Result<ServiceListing, InvokeFailure> {
        let records = self
            .inner
            .store
            .run(|s| s.objects_of(ObjectKind::Service))
            .await?;
        let mut services = Vec::new();
        for record in &records {
            services.extend(service(record)?);
        }
        Ok(ServiceListing { services })
    }
}
