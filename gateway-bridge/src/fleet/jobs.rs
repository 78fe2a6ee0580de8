//! The job, cron and autoscale commands through the bridge. Reads go to a live member; changes are signed
//! by the bridge as a fleet operator, decided with the same rules a node applies
//! ([`JobChange::next_spec`], [`CronChange::next_spec`]) from the live spec a member reports,
//! and handed to that member (`object.put`), which keeps and gossips them.

use claw_api::autoscale::{
    AutoscaleChange, AutoscaleRef, AutoscaleSpec, AutoscaleStatusCommand, Autoscaler,
    AutoscalerDeleted,
};
use claw_api::cron::{CronChange, CronDeleted, CronJob, CronRef, CronSpec, CronStatusCommand};
use claw_api::jobs::{Job, JobChange, JobDeleted, JobRef, JobSpec, JobStatusCommand};
use claw_api::objects::ObjectKind;
use claw_api::{ErrorCode, InvokeFailure};
use serde::Serialize;

use super::deployments::changed_meanwhile;
use super::{Call, FleetCommands};

/// An object's live revision and spec as a member reports it; `None` when it has none.
type Live<S> = Option<(u64, S)>;

impl FleetCommands {
    /// Signs `spec` (`None` deletes) as the revision after `live`'s; when the object has no
    /// live revision, after the revision the member keeps (a deleted object's), which the
    /// member names when the first try was not newer.
    async fn sign_next<S: Serialize>(
        &self,
        kind: ObjectKind,
        name: &str,
        live: Option<u64>,
        spec: Option<&S>,
        call: Call,
    ) -> Result<(u64, u64), InvokeFailure> {
        let revision = live.map_or(1, |r| r + 1);
        match self
            .put_signed(kind, name, revision, spec, call.clone())
            .await?
        {
            Ok(signed_at_ms) => Ok((revision, signed_at_ms)),
            Err(kept) if live.is_none() => {
                let revision = kept + 1;
                let signed_at_ms = self
                    .put_signed(kind, name, revision, spec, call)
                    .await?
                    .map_err(|kept| changed_meanwhile(kind, name, kept))?;
                Ok((revision, signed_at_ms))
            }
            Err(kept) => Err(changed_meanwhile(kind, name, kept)),
        }
    }

    async fn live_job(&self, name: &str, call: Call) -> Result<Live<JobSpec>, InvokeFailure> {
        let reference = JobRef {
            name: name.to_owned(),
        };
        match self.ask_member::<JobStatusCommand>(&reference, call).await {
            Ok(status) => Ok(Some((status.job.revision, status.job.spec))),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn live_cron(&self, name: &str, call: Call) -> Result<Live<CronSpec>, InvokeFailure> {
        let reference = CronRef {
            name: name.to_owned(),
        };
        match self.ask_member::<CronStatusCommand>(&reference, call).await {
            Ok(status) => Ok(Some((status.cron.revision, status.cron.spec))),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `job.create` through the bridge.
    pub(super) async fn job_created(
        &self,
        name: &str,
        spec: JobSpec,
        call: Call,
    ) -> Result<Job, InvokeFailure> {
        let live = self.live_job(name, call.clone()).await?;
        let spec = JobChange::Create(Box::new(spec))
            .next_spec(name, live.as_ref().map(|(_, s)| s))?
            .ok_or_else(|| InvokeFailure::new(ErrorCode::Internal, "created nothing"))?;
        self.admissible(&spec.template, call.clone()).await?;
        let (revision, signed_at_ms) = self
            .sign_next(
                ObjectKind::Job,
                name,
                live.map(|(r, _)| r),
                Some(&spec),
                call,
            )
            .await?;
        Ok(Job {
            name: name.to_owned(),
            revision,
            spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `job.delete` through the bridge.
    pub(super) async fn job_deleted(
        &self,
        name: &str,
        call: Call,
    ) -> Result<JobDeleted, InvokeFailure> {
        let live = self.live_job(name, call.clone()).await?;
        JobChange::Delete.next_spec(name, live.as_ref().map(|(_, s)| s))?;
        let (revision, _) = self
            .sign_next::<JobSpec>(ObjectKind::Job, name, live.map(|(r, _)| r), None, call)
            .await?;
        Ok(JobDeleted {
            name: name.to_owned(),
            revision,
        })
    }

    /// `cron.create`, `trigger`, `suspend` and `resume` through the bridge.
    pub(super) async fn cron_changed(
        &self,
        name: &str,
        change: CronChange,
        call: Call,
    ) -> Result<CronJob, InvokeFailure> {
        let live = self.live_cron(name, call.clone()).await?;
        let spec = change
            .next_spec(name, live.as_ref().map(|(_, s)| s))?
            .ok_or_else(|| InvokeFailure::new(ErrorCode::Internal, "the change deleted it"))?;
        let (revision, signed_at_ms) = self
            .sign_next(
                ObjectKind::CronJob,
                name,
                live.map(|(r, _)| r),
                Some(&spec),
                call,
            )
            .await?;
        Ok(CronJob {
            name: name.to_owned(),
            revision,
            spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `cron.delete` through the bridge.
    pub(super) async fn cron_deleted(
        &self,
        name: &str,
        call: Call,
    ) -> Result<CronDeleted, InvokeFailure> {
        let live = self.live_cron(name, call.clone()).await?;
        CronChange::Delete.next_spec(name, live.as_ref().map(|(_, s)| s))?;
        let (revision, _) = self
            .sign_next::<CronSpec>(ObjectKind::CronJob, name, live.map(|(r, _)| r), None, call)
            .await?;
        Ok(CronDeleted {
            name: name.to_owned(),
            revision,
        })
    }

    async fn live_autoscaler(
        &self,
        name: &str,
        call: Call,
    ) -> Result<Live<AutoscaleSpec>, InvokeFailure> {
        let reference = AutoscaleRef {
            name: name.to_owned(),
        };
        match self
            .ask_member::<AutoscaleStatusCommand>(&reference, call)
            .await
        {
            Ok(status) => Ok(Some((status.autoscaler.revision, status.autoscaler.spec))),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `autoscale.create` and `autoscale.adjust` through the bridge.
    pub(super) async fn autoscaler_changed(
        &self,
        name: &str,
        change: AutoscaleChange,
        call: Call,
    ) -> Result<Autoscaler, InvokeFailure> {
        let live = self.live_autoscaler(name, call.clone()).await?;
        let spec = change
            .next_spec(name, live.as_ref().map(|(_, s)| s))?
            .ok_or_else(|| InvokeFailure::new(ErrorCode::Internal, "the change deleted it"))?;
        let (revision, signed_at_ms) = self
            .sign_next(
                ObjectKind::Autoscaler,
                name,
                live.map(|(r, _)| r),
                Some(&spec),
                call,
            )
            .await?;
        Ok(Autoscaler {
            name: name.to_owned(),
            revision,
            spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `autoscale.delete` through the bridge.
    pub(super) async fn autoscaler_deleted(
        &self,
        name: &str,
        call: Call,
    ) -> Result<AutoscalerDeleted, InvokeFailure> {
        let live = self.live_autoscaler(name, call.clone()).await?;
        AutoscaleChange::Delete.next_spec(name, live.as_ref().map(|(_, s)| s))?;
        let (revision, _) = self
            .sign_next::<AutoscaleSpec>(
                ObjectKind::Autoscaler,
                name,
                live.map(|(r, _)| r),
                None,
                call,
            )
            .await?;
        Ok(AutoscalerDeleted {
            name: name.to_owned(),
            revision,
        })
    }
}
