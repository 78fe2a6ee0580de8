//! The `deploy.*` commands over the fleet objects: each change signs a new revision of the
//! deployment; reads answer from this member's copy.

use claw_api::deploy::{
    CreateParams, Deployment, DeploymentDeleted, DeploymentHistory, DeploymentListing,
    DeploymentRevision, DeploymentSpec, RollbackParams, RolloutStrategy, UpdateParams, check_name,
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

fn invalid(error: impl ToString) -> InvokeFailure {
    failure(ErrorCode::InvalidParams, error.to_string())
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
    /// `deploy.create`.
    pub async fn create_deployment(
        &self,
        params: CreateParams,
    ) -> Result<Deployment, InvokeFailure> {
        check_name(&params.name).map_err(invalid)?;
        params.spec.check().map_err(invalid)?;
        let spec = encode(&params.spec)?;
        let record = self
            .write(KIND, &params.name, |kept| match kept {
                Some(kept) if !kept.deleted() => Err(failure(
                    ErrorCode::Conflict,
                    format!(
                        "deployment {:?} exists (revision {}); deploy.update changes it",
                        kept.name, kept.revision
                    ),
                )),
                _ => Ok(Some(spec)),
            })
            .await?;
        deployment(&record)
    }

    /// `deploy.update`.
    pub async fn update_deployment(
        &self,
        params: UpdateParams,
    ) -> Result<Deployment, InvokeFailure> {
        if params.is_empty() {
            return Err(invalid(
                "deploy.update changes nothing: name a field to change",
            ));
        }
        self.change(&params.name.clone(), move |spec| Ok(params.apply(&spec)))
            .await
    }

    /// `deploy.pause` and `deploy.resume`.
    pub async fn pause_deployment(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Deployment, InvokeFailure> {
        self.change(name, move |mut spec| {
            spec.paused = paused;
            Ok(spec)
        })
        .await
    }

    /// `deploy.promote`: a canary's next step, as a new revision (the last step promotes it to
    /// every replica).
    pub async fn promote_deployment(&self, name: &str) -> Result<Deployment, InvokeFailure> {
        self.change(name, |mut spec| {
            match &mut spec.strategy {
                RolloutStrategy::Canary { steps, step } if (*step as usize) < steps.len() => {
                    *step += 1;
                    Ok(spec)
                }
                RolloutStrategy::Canary { .. } => Err(failure(
                    ErrorCode::Conflict,
                    format!("deployment {name:?} is promoted to every replica already"),
                )),
                _ => Err(invalid(format!(
                    "deployment {name:?} is not a canary (strategy {{\"type\": \"canary\", \"steps\": [...]}})"
                ))),
            }
        })
        .await
    }

    /// `deploy.rollback`: the kept revision's spec (the one before the current by default) as a
    /// new revision.
    pub async fn rollback_deployment(
        &self,
        params: RollbackParams,
    ) -> Result<Deployment, InvokeFailure> {
        let key = KIND.key(&params.name);
        let history = self
            .inner
            .store
            .run(move |s| s.object_history(&key))
            .await?;
        let current = history.first().ok_or_else(|| not_found(&params.name))?;
        let target = match params.revision {
            Some(revision) => history.iter().find(|r| r.revision == revision),
            None => history.get(1),
        };
        let Some(target) = target else {
            return Err(failure(
                ErrorCode::NotFound,
                format!(
                    "{:?} keeps revisions {}; there is no {} to go back to",
                    params.name,
                    kept_revisions(&history),
                    params
                        .revision
                        .map_or("earlier one".to_owned(), |r| format!("revision {r}"))
                ),
            ));
        };
        if target.revision == current.revision {
            return Err(invalid(format!(
                "revision {} is the current one",
                target.revision
            )));
        }
        let spec = spec_of(target)?.ok_or_else(|| {
            invalid(format!(
                "revision {} deleted the deployment",
                target.revision
            ))
        })?;
        self.change(&params.name, move |_| Ok(spec)).await
    }

    /// A new revision of a live deployment, its spec made from the current one by `change`.
    async fn change(
        &self,
        name: &str,
        change: impl FnOnce(DeploymentSpec) -> Result<DeploymentSpec, InvokeFailure>,
    ) -> Result<Deployment, InvokeFailure> {
        let record = self
            .write(KIND, name, |kept| {
                let next = change(live_spec(name, kept)?)?;
                next.check().map_err(invalid)?;
                encode(&next).map(Some)
            })
            .await?;
        deployment(&record)
    }

    /// `deploy.delete`.
    pub async fn delete_deployment(&self, name: &str) -> Result<DeploymentDeleted, InvokeFailure> {
        let record = self
            .write(KIND, name, |kept| {
                live_spec(name, kept)?;
                Ok(None)
            })
            .await?;
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
        let key = KIND.key(name);
        let history = self
            .inner
            .store
            .run(move |s| s.object_history(&key))
            .await?;
        if history.first().is_none_or(ObjectRecord::deleted) {
            return Ok(None);
        }
        match history.iter().find(|r| r.revision == revision) {
            Some(record) => spec_of(record),
            None => Ok(None),
        }
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
        let key = KIND.key(name);
        let history = self
            .inner
            .store
            .run(move |s| s.object_history(&key))
            .await?;
        if history.is_empty() {
            return Err(not_found(name));
        }
        Ok(DeploymentHistory {
            name: name.to_owned(),
            revisions: history
                .iter()
                .map(|record| {
                    Ok(DeploymentRevision {
                        revision: record.revision,
                        spec: spec_of(record)?,
                        signed_by: record.signed_by.clone(),
                        signed_at_ms: record.signed_at_ms,
                    })
                })
                .collect::<Result<_, InvokeFailure>>()?,
        })
    }
}

fn kept_revisions(history: &[ObjectRecord]) -> String {
    history
        .iter()
        .map(|r| r.revision.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
