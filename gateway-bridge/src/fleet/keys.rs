//! The API key commands through the bridge: a key is made here (its secret goes no further than
//! the answer), signed by the bridge as a fleet operator and handed to a member, which keeps only
//! its digest and gossips it; listing asks a member; a revocation is the next revision, signed
//! here the same way.

use claw_api::auth::{
    ApiKeyInfo, ApiKeyListing, ApiKeySpec, AuthListKeys, CreateKeyParams, CreatedKey, KeyRef,
    name_taken,
};
use claw_api::objects::ObjectKind;
use claw_api::{ErrorCode, InvokeFailure, NoParams};

use super::deployments::changed_meanwhile;
use super::{Call, FleetCommands};

impl FleetCommands {
    /// `auth.create_key` through the bridge.
    pub(super) async fn create_key(
        &self,
        params: CreateKeyParams,
        call: Call,
    ) -> Result<CreatedKey, InvokeFailure> {
        let now_ms = claw_attestation::unix_millis(std::time::SystemTime::now());
        let (spec, api_key) = ApiKeySpec::generate(&params, now_ms)
            .map_err(|e| InvokeFailure::new(ErrorCode::InvalidParams, e.to_string()))?;
        let signed_at_ms = self
            .put_signed(ObjectKind::ApiKey, &params.name, 1, Some(&spec), call)
            .await?
            .map_err(|_| name_taken(&params.name))?;
        Ok(CreatedKey {
            api_key,
            key: ApiKeyInfo {
                name: params.name,
                revision: 1,
                role: spec.role,
                namespaces: spec.namespaces,
                families: spec.families,
                expires_at_ms: spec.expires_at_ms,
                revoked: false,
                signed_by: self.mesh.local_peer_id().to_string(),
                signed_at_ms,
            },
        })
    }

    /// `auth.revoke_key` through the bridge: the revision after the one a member keeps.
    pub(super) async fn revoke_key(
        &self,
        KeyRef { name }: KeyRef,
        call: Call,
    ) -> Result<ApiKeyInfo, InvokeFailure> {
        let listing: ApiKeyListing = self
            .ask_member::<AuthListKeys>(&NoParams {}, call.clone())
            .await?;
        let Some(key) = listing.keys.into_iter().find(|k| k.name == name) else {
            return Err(InvokeFailure::new(
                ErrorCode::NotFound,
                format!("no API key {name:?} in the fleet (auth.list_keys lists them)"),
            ));
        };
        if key.revoked {
            return Ok(key);
        }
        let revoked = ApiKeySpec::revoking(&key);
        let revision = key.revision + 1;
        let signed_at_ms = self
            .put_signed(ObjectKind::ApiKey, &name, revision, Some(&revoked), call)
            .await?
            .map_err(|kept| changed_meanwhile(ObjectKind::ApiKey, &name, kept))?;
        Ok(ApiKeyInfo {
            revision,
            revoked: true,
            signed_by: self.mesh.local_peer_id().to_string(),
            signed_at_ms,
            ..key
        })
    }
}
