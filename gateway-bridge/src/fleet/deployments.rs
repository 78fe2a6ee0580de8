//! The deployment commands through the bridge. Reads go to a live member (any keeps every
//! deployment). Changes are signed by the bridge itself, as the fleet operator the nodes list:
//! the bridge reads the deployment's kept revisions from a member, decides the next spec with
//! the same rules a node applies ([`Change::next_spec`]), signs the next revision and hands it to
//! that member (`object.put`), which keeps it and gossips it to the fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use claw_api::deploy::{
    Change, DeployHistory, Deployment, DeploymentDeleted, DeploymentRef, DeploymentRevision,
    DeploymentSpec,
};
use claw_api::objects::{FleetObject, ObjectKind, ObjectPut, PutParams};
use claw_api::{Command, ErrorCode, InvokeFailure};
use claw_attestation::{Envelope, NodeIdentity, PayloadKind, Validity};
use claw_mesh::PeerId;
use serde::Serialize;

use super::{Call, FleetCommands};

/// How many live members a read or a change tries before it gives up.
const MEMBERS_TRIED: usize = 3;

/// What the bridge signs fleet objects with.
#[derive(Debug)]
pub(super) struct Signer {
    identity: Arc<NodeIdentity>,
    network: String,
    /// The last envelope sequence used (never below the clock in microseconds).
    sequence: AtomicU64,
}

impl Signer {
    pub(super) fn new(identity: Arc<NodeIdentity>, network: String) -> Self {
        Self {
            identity,
            network,
            sequence: AtomicU64::new(0),
        }
    }

    fn next_sequence(&self) -> u64 {
        let floor = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let previous = self
            .sequence
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(last.saturating_add(1).max(floor))
            })
            .unwrap_or(floor);
        previous.saturating_add(1).max(floor)
    }
}

fn encode(value: &impl Serialize) -> Result<serde_json::Value, InvokeFailure> {
    serde_json::to_value(value)
        .map_err(|e| InvokeFailure::new(ErrorCode::Internal, format!("cannot encode: {e}")))
}

impl FleetCommands {
    /// Live members to ask, in the fleet view's order.
    fn member_peers(&self) -> Result<Vec<PeerId>, InvokeFailure> {
        let peers: Vec<PeerId> = self
            .members()
            .into_iter()
            .map(|m| m.peer_id)
            .take(MEMBERS_TRIED)
            .collect();
        if peers.is_empty() {
            return Err(InvokeFailure::new(
                ErrorCode::Unavailable,
                "no fleet member is in the bridge's view yet",
            ));
        }
        Ok(peers)
    }

    /// Runs command `C` on the first live member that answers.
    pub(super) async fn ask_member<C: Command>(
        &self,
        params: &C::Params,
        call: Call,
    ) -> Result<C::Answer, InvokeFailure> {
        let params = encode(params)?;
        let mut last = None;
        for peer in self.member_peers()? {
            match self
                .call(peer, C::NAME, params.clone(), call.timeout, None)
                .await
            {
                Ok(answer) => return C::decode(answer),
                // A member's own answer (not found, refused) stands; only silence moves on.
                Err(error) if matches!(error.code, ErrorCode::Timeout | ErrorCode::Unavailable) => {
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            InvokeFailure::new(ErrorCode::Unavailable, "no fleet member answered")
        }))
    }

    /// Refuses a template the fleet's policies refuse (a member judges it with
    /// `policy.validate`), naming the policy and the rule, before anything is signed.
    pub(super) async fn admissible(
        &self,
        template: &claw_api::workload::RunParams,
        call: Call,
    ) -> Result<(), InvokeFailure> {
        let params = claw_api::policies::ValidateParams {
            workload: template.clone(),
            lease: false,
        };
        let verdict = self
            .ask_member::<claw_api::policies::PolicyValidate>(&params, call)
            .await?;
        match verdict.violations.first() {
            None => Ok(()),
            Some(v) => Err(InvokeFailure::new(
                ErrorCode::Unauthorized,
                format!(
                    "refused by policy {:?}, rule {}: {}",
                    v.policy, v.rule, v.reason
                ),
            )),
        }
    }

    /// The network the bridge signs fleet objects for.
    pub(super) fn signing_network(&self) -> Result<String, InvokeFailure> {
        self.signer
            .as_ref()
            .map(|signer| signer.network.clone())
            .ok_or_else(|| {
                InvokeFailure::new(ErrorCode::Unavailable, "this bridge signs no fleet objects")
            })
    }

    /// Signs `change` as the next revision of deployment `name` and hands it to a member.
    /// Answers the revision signed and its spec (`None`: deleted).
    pub(super) async fn change_deployment(
        &self,
        name: &str,
        change: Change,
        call: Call,
    ) -> Result<(u64, Option<DeploymentSpec>, u64), InvokeFailure> {
        let reference = DeploymentRef {
            name: name.to_owned(),
        };
        let kept: Vec<DeploymentRevision> = match self
            .ask_member::<DeployHistory>(&reference, call.clone())
            .await
        {
            Ok(history) => history.revisions,
            Err(error) if error.code == ErrorCode::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let spec = change.next_spec(name, &kept)?;
        if let Some(spec) = &spec {
            self.admissible(&spec.template, call.clone()).await?;
        }
        let revision = kept.first().map_or(1, |k| k.revision + 1);
        let signed_at_ms = self
            .put_signed(ObjectKind::Deployment, name, revision, spec.as_ref(), call)
            .await?
            .map_err(|kept| changed_meanwhile(ObjectKind::Deployment, name, kept))?;
        Ok((revision, spec, signed_at_ms))
    }

    /// Signs revision `revision` of object `kind` `name` with `spec` (`None` deletes it) and
    /// hands it to a member. Answers when it was signed, Unix ms, or the revision the member
    /// keeps when that is as new (nothing changed).
    pub(super) async fn put_signed(
        &self,
        kind: ObjectKind,
        name: &str,
        revision: u64,
        spec: Option<&impl Serialize>,
        call: Call,
    ) -> Result<Result<u64, u64>, InvokeFailure> {
        let Some(signer) = &self.signer else {
            return Err(InvokeFailure::new(
                ErrorCode::Unavailable,
                "this bridge signs no fleet objects",
            ));
        };
        let text = spec
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| InvokeFailure::new(ErrorCode::Internal, e.to_string()))?;
        let object = FleetObject {
            network: signer.network.clone(),
            kind,
            name: name.to_owned(),
            revision,
            spec: text,
        };
        let validity = Validity::from_now(PayloadKind::FleetObject.max_lifetime());
        let signed_at_ms = validity.issued_at_ms;
        let envelope = Envelope::seal(&signer.identity, signer.next_sequence(), validity, &object);
        let put = PutParams {
            object: base64_of(&envelope.to_bytes()),
        };
        let answer = self.ask_member::<ObjectPut>(&put, call).await?;
        Ok(if answer.stored {
            Ok(signed_at_ms)
        } else {
            Err(answer.revision)
        })
    }

    /// `deploy.create`, `update`, `rollback`, `promote`, `pause` and `resume` through the
    /// bridge: the revision it signed.
    pub(super) async fn deployment_changed(
        &self,
        name: &str,
        change: Change,
        call: Call,
    ) -> Result<Deployment, InvokeFailure> {
        let (revision, spec, signed_at_ms) = self.change_deployment(name, change, call).await?;
        let spec = spec.ok_or_else(|| {
            InvokeFailure::new(ErrorCode::Internal, "the change deleted the deployment")
        })?;
        Ok(Deployment {
            name: name.to_owned(),
            revision,
            spec,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
        })
    }

    /// `deploy.delete` through the bridge.
    pub(super) async fn deployment_deleted(
        &self,
        name: &str,
        call: Call,
    ) -> Result<DeploymentDeleted, InvokeFailure> {
        let (revision, _, _) = self.change_deployment(name, Change::Delete, call).await?;
        Ok(DeploymentDeleted {
            name: name.to_owned(),
            revision,
        })
    }
}

/// The answer to a change signed over a revision another change took first.
pub(super) fn changed_meanwhile(kind: ObjectKind, name: &str, kept: u64) -> InvokeFailure {
    InvokeFailure::new(
        ErrorCode::Conflict,
        format!(
            "{} changed meanwhile (revision {kept}); try again",
            kind.key(name)
        ),
    )
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
