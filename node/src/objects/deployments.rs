//! The `deploy.*` commands over the fleet objects: each change signs a new revision of the
//! deployment; reads answer from this member's copy.

use claw_api::deploy::{
    Change, CreateParams, Deployment, DeploymentDeleted, DeploymentHistory, DeploymentListing,
    DeploymentRevision, DeploymentSpec, RollbackParams, UpdateParams, check_name,
};
use claw_api::{ErrorCode, InvokeFailure};

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

const KIND: ObjectKind = ObjectKind::Deployment;

/// Checks a deployment object's name and spec (absent when deleted), as every member does
/// before keeping it.
pub(super) fn check(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name(name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        parse(spec)?.check().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parse(spec: &str) -> Result<DeploymentSpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("deployment spec: {e}"))
}

fn encode(spec: &DeploymentSpec) -> Result<String, InvokeFailure> {
    serde_json::to_string(spec).map_err(|e| failure(ErrorCode::Internal, e.to_string()))
}

fn not_found(name: &str) -> InvokeFailure {
    failure(
        ErrorCode::NotFound,
        format!("no deployment {name:?}; deploy.list lists them"),
    )
}

/// A kept record's spec (it passed [`check`] when it was kept).
fn spec_of(record: &ObjectRecord) -> Result<Option<DeploymentSpec>, InvokeFailure> {
    record
        .spec
        .as_deref()
        .map(parse)
        .transpose()
        .map_err(|e| failure(ErrorCode::Internal, e))
}

/// The live spec of a kept deployment, or NOT_FOUND.
fn live_spec(name: &str, kept: Option<&ObjectRecord>) -> Result<DeploymentSpec, InvokeFailure> {
    kept.map(spec_of)
        .transpose()?
        .flatten()
        .ok_or_else(|| not_found(name))
}

fn revision_of(record: &ObjectRecord) -> Result<DeploymentRevision, InvokeFailure> {
    Ok(DeploymentRevision {
        revision: record.revision,
        spec: spec_of(record)?,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    })
}

fn deployment(record: &ObjectRecord) -> Result<Deployment, InvokeFailure> {
    Ok(Deployment {
        name: record.name.clone(),
        revision: record.revision,
        spec: live_spec(&record.name, Some(record))?,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    })
}

impl FleetObjects {
    /// Signs `change` as the next revision of deployment `name`, decided from the revisions
    /// this member keeps.
    pub(super) async fn apply(
        &self,
        name: &str,
        change: Change,
    ) -> Result<ObjectRecord, InvokeFailure> {
        self.write(KIND, name, |history| {
            let kept = history
                .iter()
                .map(revision_of)
                .collect::<Result<Vec<_>, _>>()?;
            change
                .next_spec(name, &kept)?
                .as_ref()
                .map(encode)
                .transpose()
        })
        .await
    }

    /// `deploy.create`.
    pub async fn create_deployment(
        &self,
        params: CreateParams,
    ) -> Result<Deployment, InvokeFailure> {
        self.admit_workload(&params.spec.template, claw_api::policies::Origin::Fleet)
            .await?;
        deployment(
            &self
                .apply(&params.name, Change::Create(Box::new(params.spec)))
                .await?,
        )
    }

    /// `deploy.update`.
    pub async fn update_deployment(
        &self,
        params: UpdateParams,
    ) -> Result<Deployment, InvokeFailure> {
        let name = params.name.clone();
        deployment(&self.apply(&name, Change::Update(Box::new(params))).await?)
    }

    /// `deploy.pause` and `deploy.resume`.
    pub async fn pause_deployment(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Deployment, InvokeFailure> {
        deployment(&self.apply(name, Change::Pause(paused)).await?)
    }

    /// `deploy.promote`: a canary's next step, as a new revision (the last step promotes it to
    /// every replica).
    pub async fn promote_deployment(&self, name: &str) -> Result<Deployment, InvokeFailure> {
        deployment(&self.apply(name, Change::Promote).await?)
    }

    /// `deploy.rollback`: a kept revision's spec (the one before the current by default) as a
    /// new revision.
    pub async fn rollback_deployment(
        &self,
        params: RollbackParams,
    ) -> Result<Deployment, InvokeFailure> {
        deployment(
            &self
                .apply(&params.name, Change::Rollback(params.revision))
                .await?,
        )
    }

    /// `deploy.delete`.
    pub async fn delete_deployment(&self, name: &str) -> Result<DeploymentDeleted, InvokeFailure> {
        let record = self.apply(name, Change::Delete).await?;
        Ok(DeploymentDeleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// `deploy.status`.
    pub async fn deployment(&self, name: &str) -> Result<Deployment, InvokeFailure> {
        match self.kept(KIND, name).await? {
            Some(record) if !record.deleted() => deployment(&record),
            _ => Err(not_found(name)),
        }
    }

    /// The spec of deployment `name` at `revision`, when that revision is kept and the
    /// deployment is not deleted.
    pub async fn deployment_at(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<DeploymentSpec>, InvokeFailure> {
        let history = self.history(name).await?;
        if history.first().is_none_or(ObjectRecord::deleted) {
            return Ok(None);
        }
        match history.iter().find(|r| r.revision == revision) {
            Some(record) => spec_of(record),
            None => Ok(None),
        }
    }

    /// The kept revisions of deployment `name`, newest first.
    async fn history(&self, name: &str) -> Result<Vec<ObjectRecord>, InvokeFailure> {
        let key = KIND.key(name);
        Ok(self
            .inner
            .store
            .run(move |s| s.object_history(&key))
            .await?)
    }

    /// Whether deployment `name` was deleted (its latest kept revision deletes it).
    pub async fn deployment_deleted(&self, name: &str) -> Result<bool, InvokeFailure> {
        Ok(self
            .kept(KIND, name)
            .await?
            .is_some_and(|record| record.deleted()))
    }

    /// `deploy.list`.
    pub async fn deployments(&self) -> Result<DeploymentListing, InvokeFailure> {
        let records = self.inner.store.run(|s| s.objects_of(KIND)).await?;
        Ok(DeploymentListing {
            deployments: records.iter().map(deployment).collect::<Result<_, _>>()?,
        })
    }

    /// `deploy.history`.
    pub async fn deployment_history(&self, name: &str) -> Result<DeploymentHistory, InvokeFailure> {
        let history = self.history(name).await?;
        if history.is_empty() {
            return Err(not_found(name));
        }
        Ok(DeploymentHistory {
            name: name.to_owned(),
            revisions: history
                .iter()
                .map(revision_of)
                .collect::<Result<_, InvokeFailure>>()?,
        })
    }
}
