//! The `policy.*` objects over the fleet objects, and the check every admission makes against
//! them.

use claw_api::configs::{Deleted, ValuesChange, check_name};
use claw_api::policies::{
    Origin, Policy, PolicyCreateParams, PolicyListing, PolicySpec, Verdict, Violation,
};
use claw_api::workload::RunParams;
use claw_api::{ErrorCode, InvokeFailure};

use super::{FleetObjects, failure};
use crate::store::{ObjectKind, ObjectRecord};

/// Checks a policy's name and spec (absent when deleted), as every member does before keeping
/// it.
pub(super) fn check(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name("policy", name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        parse(spec)?.check().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parse(spec: &str) -> Result<PolicySpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("policy spec: {e}"))
}

fn policy(record: &ObjectRecord) -> Result<Option<Policy>, InvokeFailure> {
    let Some(spec) = record.spec.as_deref() else {
        return Ok(None);
    };
    Ok(Some(Policy {
        name: record.name.clone(),
        revision: record.revision,
        spec: parse(spec).map_err(|e| failure(ErrorCode::Internal, e))?,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }))
}

impl FleetObjects {
    /// `policy.create`.
    pub async fn create_policy(&self, params: PolicyCreateParams) -> Result<Policy, InvokeFailure> {
        params
            .spec
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let text = serde_json::to_string(&params.spec)
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let record = self
            .write(ObjectKind::Policy, &params.name, |history| {
                let live = history.first().is_some_and(|r| !r.deleted());
                ValuesChange::Create.check("policy", &params.name, live)?;
                Ok(Some(text))
            })
            .await?;
        policy(&record)?.ok_or_else(|| failure(ErrorCode::Internal, "created nothing"))
    }

    /// `policy.delete`.
    pub async fn delete_policy(&self, name: &str) -> Result<Deleted, InvokeFailure> {
        let record = self
            .write(ObjectKind::Policy, name, |history| {
                let live = history.first().is_some_and(|r| !r.deleted());
                ValuesChange::Delete.check("policy", name, live)?;
                Ok(None)
            })
            .await?;
        Ok(Deleted {
            name: record.name,
            revision: record.revision,
        })
    }

    /// `policy.list`.
    pub async fn policies(&self) -> Result<PolicyListing, InvokeFailure> {
        let records = self
            .inner
            .store
            .run(|s| s.objects_of(ObjectKind::Policy))
            .await?;
        let mut policies = Vec::new();
        for record in &records {
            policies.extend(policy(record)?);
        }
        Ok(PolicyListing { policies })
    }

    /// `policy.validate`, and every admission: each policy's first rule `params` breaks.
    pub async fn verdict(
        &self,
        params: &RunParams,
        origin: Origin,
    ) -> Result<Verdict, InvokeFailure> {
        let violations: Vec<Violation> = self
            .policies()
            .await?
            .policies
            .into_iter()
            .filter_map(|p| {
                p.spec
                    .violation(params, origin)
                    .map(|(rule, reason)| Violation {
                        policy: p.name,
                        rule: rule.to_owned(),
                        reason,
                    })
            })
            .collect();
        Ok(Verdict {
            allowed: violations.is_empty(),
            violations,
        })
    }

    /// Refuses `params` with the first rule it breaks, naming the policy and the rule.
    pub async fn admit_workload(
        &self,
        params: &RunParams,
        origin: Origin,
    ) -> Result<(), InvokeFailure> {
        let verdict = self.verdict(params, origin).await?;
        match verdict.violations.first() {
            None => Ok(()),
            Some(v) => Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "refused by policy {:?}, rule {}: {}",
                    v.policy, v.rule, v.reason
                ),
            )),
        }
    }
}
