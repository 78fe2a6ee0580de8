//! The `namespace.*` objects over the fleet objects, and the quota check a start makes: what
//! the namespace holds across the fleet (this node's count and each member's `namespace.usage`),
//! with the new workload added.

use std::time::Duration;

use claw_api::configs::{ValuesChange, check_name};
use claw_api::namespaces::{
    Namespace, NamespaceCreateParams, NamespaceListing, NamespaceRef, NamespaceSpec,
    NamespaceUsage, Usage,
};
use claw_api::{Command as _, ErrorCode, InvokeFailure};
use claw_mesh::InvokeRequest;

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

/// How long a member may take to report a namespace's usage.
const USAGE_DEADLINE: Duration = Duration::from_secs(3);

/// Checks a namespace's name and spec (absent when deleted), as every member does before
/// keeping it.
pub(super) fn check(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name("namespace", name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        parse(spec)?.check().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parse(spec: &str) -> Result<NamespaceSpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("namespace spec: {e}"))
}

fn namespace(record: &ObjectRecord, spec: NamespaceSpec) -> Namespace {
    Namespace {
        name: record.name.clone(),
        revision: record.revision,
        spec,
    }
}

impl FleetObjects {
    /// `namespace.create`.
    pub async fn create_namespace(
        &self,
        params: NamespaceCreateParams,
    ) -> Result<Namespace, InvokeFailure> {
        let record = self
            .put_plain(
                ObjectKind::Namespace,
                &params.name,
                &params.spec,
                ValuesChange::Create,
            )
            .await?;
        Ok(namespace(&record, params.spec))
    }

    /// `namespace.list`.
    pub async fn namespaces(&self) -> Result<NamespaceListing, InvokeFailure> {
        let all = self.all_of(ObjectKind::Namespace).await?;
        Ok(NamespaceListing {
            namespaces: all
                .into_iter()
                .map(|(r, spec)| namespace(&r, spec))
                .collect(),
        })
    }

    /// `namespace.usage`: what namespace `name`'s active workloads on this node hold.
    pub async fn local_usage(&self, name: &str) -> Result<Usage, InvokeFailure> {
        let name = name.to_owned();
        let records = self.inner.store.run(|s| s.workloads()).await?;
        Ok(records
            .iter()
            .filter(|w| w.state.is_active() && w.namespace.as_deref() == Some(name.as_str()))
            .map(|w| {
                Usage::of_workload(
                    w.gpus.len() as u64,
                    w.cpu_millis.map(|m| m as f64 / 1000.0),
                    w.memory_mib,
                )
            })
            .fold(Usage::default(), |a, b| a + b))
    }

    /// Refuses a workload in namespace `name` that would take `adding` past a quota: the
    /// namespace must exist, and what it holds across the members this node sees (each asked;
    /// one that does not answer in time counts nothing) plus `adding` must stay within it.
    pub async fn admit_in_namespace(&self, name: &str, adding: Usage) -> Result<(), InvokeFailure> {
        let Some((_, found)) = self
            .live_of::<NamespaceSpec>(ObjectKind::Namespace, name)
            .await?
        else {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no namespace {name:?} (namespace.list lists them)"),
            ));
        };
        let mut held = self.local_usage(name).await? + adding;
        if let Some(mesh) = self.inner.mesh.get() {
            let local = self.inner.access.local();
            let params = serde_json::to_value(NamespaceRef {
                name: name.to_owned(),
            })
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
            let asks = mesh
                .fleet_members()
                .into_iter()
                .filter(|m| m.peer_id != local)
                .map(|member| {
                    let request = InvokeRequest::new(NamespaceUsage::NAME, USAGE_DEADLINE)
                        .with_params(params.clone());
                    async move {
                        let answer = mesh.invoke(member.peer_id, request).await.ok()?;
                        NamespaceUsage::decode(answer).ok()
                    }
                });
            for usage in futures::future::join_all(asks).await.into_iter().flatten() {
                held = held + usage;
            }
        }
        match found.quota.exceeded(&held) {
            None => Ok(()),
            Some((quota, held, limit)) => Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "namespace {name:?} quota {quota}: {held} with this workload, at most {limit}"
                ),
            )),
        }
    }
}
