//! The `policy.*` objects over the fleet objects, and the check every admission makes against
//! them.

use claw_api::configs::{ValuesChange, check_name};
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

fn policy(record: &ObjectRecord, spec: PolicySpec) -> Policy {
    Policy {
        name: record.name.clone(),
        revision: record.revision,
        spec,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

impl FleetObjects {
    /// `policy.create`.
    pub async fn create_policy(&self, params: PolicyCreateParams) -> Result<Policy, InvokeFailure> {
        params
            .spec
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let record = self
            .put_plain(
                ObjectKind::Policy,
                &params.name,
                &params.spec,
                ValuesChange::Create,
            )
            .await?;
        Ok(policy(&record, params.spec))
    }

    /// `policy.list`.
    pub async fn policies(&self) -> Result<PolicyListing, InvokeFailure> {
        let all = self.all_of(ObjectKind::Policy).await?;
        Ok(PolicyListing {
            policies: all.into_iter().map(|(r, spec)| policy(&r, spec)).collect(),
        })
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
