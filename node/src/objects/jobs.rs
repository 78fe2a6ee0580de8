//! The `job.*`, `cron.*` and `autoscale.*` objects over the fleet objects: each change signs a
//! new revision; reads answer from this member's copy.

use claw_api::autoscale::{AutoscaleChange, AutoscaleSpec, Autoscaler, AutoscalerDeleted};
use claw_api::cron::{CronChange, CronDeleted, CronJob, CronSpec};
use claw_api::jobs::{Job, JobChange, JobDeleted, JobSpec, check_name, not_found};
use claw_api::{ErrorCode, InvokeFailure};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

/// Checks a job's or cron job's name and spec (absent when deleted), as every member does
/// before keeping it.
pub(super) fn check(kind: ObjectKind, name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name(name).map_err(|e| e.to_string())?;
    let Some(spec) = spec else {
        return Ok(());
    };
    match kind {
        ObjectKind::Job => parse::<JobSpec>(spec)?.check(),
        ObjectKind::CronJob => {
            let cron = parse::<CronSpec>(spec)?;
            if let Some(bid) = &cron.bid
                && bid.node.parse::<claw_mesh::PeerId>().is_err()
            {
                return Err(format!("bid.node {:?} is not a peer id", bid.node));
            }
            cron.check()
        }
        ObjectKind::Autoscaler => parse::<AutoscaleSpec>(spec)?.check(),
        ObjectKind::Deployment
        | ObjectKind::Config
        | ObjectKind::Secret
        | ObjectKind::Service
        | ObjectKind::Policy
        | ObjectKind::Namespace
        | ObjectKind::ApiKey
        | ObjectKind::Ingress => {
            return Err("not a job".to_owned());
        }
    }
    .map_err(|e| e.to_string())
}

fn parse<S: DeserializeOwned>(spec: &str) -> Result<S, String> {
    serde_json::from_str(spec).map_err(|e| format!("spec: {e}"))
}

fn encode(spec: &impl Serialize) -> Result<String, InvokeFailure> {
    serde_json::to_string(spec).map_err(|e| failure(ErrorCode::Internal, e.to_string()))
}

/// A kept record's spec (it passed [`check`] when it was kept).
fn spec_of<S: DeserializeOwned>(record: &ObjectRecord) -> Result<Option<S>, InvokeFailure> {
    record
        .spec
        .as_deref()
        .map(parse)
        .transpose()
        .map_err(|e| failure(ErrorCode::Internal, e))
}

/// What `kind` is called in answers, and the command that lists it.
fn described(kind: ObjectKind) -> (&'static str, &'static str) {
    match kind {
        ObjectKind::CronJob => ("cron job", "cron.list"),
        ObjectKind::Autoscaler => ("autoscaler", "autoscale.status"),
        _ => ("job", "job.list"),
    }
}

fn job(record: &ObjectRecord, spec: JobSpec) -> Job {
    Job {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

fn autoscaler(record: &ObjectRecord, spec: AutoscaleSpec) -> Autoscaler {
    Autoscaler {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

fn cron(record: &ObjectRecord, spec: CronSpec) -> CronJob {
    CronJob {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

impl FleetObjects {
    /// The live object `kind` `name` and its spec, or `None` when it is not kept or deleted.
    pub(super) async fn live_of<S: DeserializeOwned>(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Option<(ObjectRecord, S)>, InvokeFailure> {
        let Some(record) = self.kept(kind, name).await? else {
            return Ok(None);
        };
        Ok(spec_of(&record)?.map(|spec| (record, spec)))
    }

    /// The live object, or NOT_FOUND.
    async fn found<S: DeserializeOwned>(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<(ObjectRecord, S), InvokeFailure> {
        self.live_of(kind, name).await?.ok_or_else(|| {
            let (what, list) = described(kind);
            not_found(what, name, list)
        })
    }

    /// The spec of object `kind` `name` at `revision`, when that revision is kept and the
    /// object is not deleted.
    async fn spec_at<S: DeserializeOwned>(
        &self,
        kind: ObjectKind,
        name: &str,
        revision: u64,
    ) -> Result<Option<S>, InvokeFailure> {
        let key = kind.key(name);
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

    /// Every live object of `kind`, with its spec, by name.
    pub(super) async fn all_of<S: DeserializeOwned>(
        &self,
        kind: ObjectKind,
    ) -> Result<Vec<(ObjectRecord, S)>, InvokeFailure> {
        let records = self.inner.store.run(move |s| s.objects_of(kind)).await?;
        let mut live = Vec::new();
        for record in records {
            if let Some(spec) = spec_of(&record)? {
                live.push((record, spec));
            }
        }
        Ok(live)
    }

    /// Whether object `kind` `name` was deleted (its latest kept revision deletes it).
    pub async fn deleted(&self, kind: ObjectKind, name: &str) -> Result<bool, InvokeFailure> {
        Ok(self
            .kept(kind, name)
            .await?
            .is_some_and(|record| record.deleted()))
    }

    /// Signs the next revision of `kind` `name`, whose spec `next` decides from the live spec.
    async fn change<S: DeserializeOwned + Serialize>(
        &self,
        kind: ObjectKind,
        name: &str,
        next: impl FnOnce(Option<&S>) -> Result<Option<S>, InvokeFailure>,
    ) -> Result<(ObjectRecord, Option<S>), InvokeFailure> {
        let mut decided = None;
        let record = self
            .write(kind, name, |history| {
                let live: Option<S> = history.first().map(spec_of).transpose()?.flatten();
                let spec = next(live.as_ref())?;
                let text = spec.as_ref().map(encode).transpose()?;
                decided = spec;
                Ok(text)
            })
            .await?;
        Ok((record, decided))
    }

    /// `job.create`.
    pub async fn create_job(&self, name: &str, spec: JobSpec) -> Result<Job, InvokeFailure> {
        self.admit_workload(&spec.template, claw_api::policies::Origin::Fleet)
            .await?;
        let change = JobChange::Create(Box::new(spec));
        let (record, spec) = self
            .change(ObjectKind::Job, name, |live| change.next_spec(name, live))
            .await?;
        let spec = spec.ok_or_else(|| failure(ErrorCode::Internal, "created nothing"))?;
        Ok(job(&record, spec))
    }

    /// `job.delete`.
    pub async fn delete_job(&self, name: &str) -> Result<JobDeleted, InvokeFailure> {
        let (record, _) = self
            .change(ObjectKind::Job, name, |live: Option<&JobSpec>| {
                JobChange::Delete.next_spec(name, live)
            })
            .await?;
        Ok(JobDeleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// Job `name`, or NOT_FOUND.
    pub async fn job(&self, name: &str) -> Result<Job, InvokeFailure> {
        let (record, spec) = self.found(ObjectKind::Job, name).await?;
        Ok(job(&record, spec))
    }

    /// Job `name`'s spec at `revision`, when kept and not deleted.
    pub async fn job_at(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<JobSpec>, InvokeFailure> {
        self.spec_at(ObjectKind::Job, name, revision).await
    }

    /// The fleet's jobs, by name.
    pub async fn jobs(&self) -> Result<Vec<Job>, InvokeFailure> {
        let all = self.all_of(ObjectKind::Job).await?;
        Ok(all.into_iter().map(|(r, spec)| job(&r, spec)).collect())
    }

    /// `cron.create`, `trigger`, `suspend` and `resume`.
    pub async fn change_cron(
        &self,
        name: &str,
        change: CronChange,
    ) -> Result<CronJob, InvokeFailure> {
        let (record, spec) = self
            .change(ObjectKind::CronJob, name, |live| {
                change.next_spec(name, live)
            })
            .await?;
        let spec = spec.ok_or_else(|| failure(ErrorCode::Internal, "the change deleted it"))?;
        Ok(cron(&record, spec))
    }

    /// `cron.delete`.
    pub async fn delete_cron(&self, name: &str) -> Result<CronDeleted, InvokeFailure> {
        let (record, _) = self
            .change(ObjectKind::CronJob, name, |live: Option<&CronSpec>| {
                CronChange::Delete.next_spec(name, live)
            })
            .await?;
        Ok(CronDeleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// Cron job `name`, or NOT_FOUND.
    pub async fn cron(&self, name: &str) -> Result<CronJob, InvokeFailure> {
        let (record, spec) = self.found(ObjectKind::CronJob, name).await?;
        Ok(cron(&record, spec))
    }

    /// Cron job `name`'s spec at `revision`, when kept and not deleted.
    pub async fn cron_at(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<CronSpec>, InvokeFailure> {
        self.spec_at(ObjectKind::CronJob, name, revision).await
    }

    /// The fleet's cron jobs, by name.
    pub async fn crons(&self) -> Result<Vec<CronJob>, InvokeFailure> {
        let all = self.all_of(ObjectKind::CronJob).await?;
        Ok(all.into_iter().map(|(r, spec)| cron(&r, spec)).collect())
    }

    /// `autoscale.create` and `autoscale.adjust`. A deployment has one autoscaler: a second
    /// one for it is refused.
    pub async fn change_autoscaler(
        &self,
        name: &str,
        change: AutoscaleChange,
    ) -> Result<Autoscaler, InvokeFailure> {
        if let AutoscaleChange::Create(spec) = &change
            && let Some(other) = self.autoscaler_of(&spec.deployment).await?
            && other.name != name
        {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "deployment {:?} has autoscaler {:?} already; autoscale.adjust changes it",
                    spec.deployment, other.name
                ),
            ));
        }
        let (record, spec) = self
            .change(ObjectKind::Autoscaler, name, |live| {
                change.next_spec(name, live)
            })
            .await?;
        let spec = spec.ok_or_else(|| failure(ErrorCode::Internal, "the change deleted it"))?;
        Ok(autoscaler(&record, spec))
    }

    /// `autoscale.delete`.
    pub async fn delete_autoscaler(&self, name: &str) -> Result<AutoscalerDeleted, InvokeFailure> {
        let (record, _) = self
            .change(
                ObjectKind::Autoscaler,
                name,
                |live: Option<&AutoscaleSpec>| AutoscaleChange::Delete.next_spec(name, live),
            )
            .await?;
        Ok(AutoscalerDeleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// Autoscaler `name`, or NOT_FOUND.
    pub async fn autoscaler(&self, name: &str) -> Result<Autoscaler, InvokeFailure> {
        let (record, spec) = self.found(ObjectKind::Autoscaler, name).await?;
        Ok(autoscaler(&record, spec))
    }

    /// The fleet's autoscalers, by name.
    pub async fn autoscalers(&self) -> Result<Vec<Autoscaler>, InvokeFailure> {
        let all = self.all_of::<AutoscaleSpec>(ObjectKind::Autoscaler).await?;
        Ok(all
            .into_iter()
            .map(|(r, spec)| autoscaler(&r, spec))
            .collect())
    }

    /// The autoscaler of deployment `deployment`.
    pub async fn autoscaler_of(
        &self,
        deployment: &str,
    ) -> Result<Option<Autoscaler>, InvokeFailure> {
        let all = self.autoscalers().await?;
        Ok(all.into_iter().find(|a| a.spec.deployment == deployment))
    }
}
