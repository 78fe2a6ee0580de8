//! The bridge between a Clawbernetes fleet and an OpenClaw gateway.
//!
//! The gateway node client ([`gateway`]) connects to an OpenClaw gateway as a node and serves
//! the commands it forwards; every connection opens with the device proof defined here: the v3
//! auth payload, signed by the node key, in the exact form the gateway checks.

pub mod fleet;
pub mod gateway;
pub mod logs;
pub mod operator;
pub mod placements;
pub mod tls;

use claw_attestation::NodeIdentity;
use serde::{Deserialize, Serialize};

/// The fields a gateway binds into a device signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthRequest<'a> {
    /// `client.id` declared in `connect` (e.g. `node-host`).
    pub client_id: &'a str,
    /// `client.mode` declared in `connect` (e.g. `node`).
    pub client_mode: &'a str,
    /// The connection's role (e.g. `node`).
    pub role: &'a str,
    /// Requested scopes; joined with commas.
    pub scopes: &'a [&'a str],
    /// Signing time, Unix milliseconds (the gateway allows two minutes of skew).
    pub signed_at_ms: u64,
    /// The auth token sent in `connect`, or "" when none.
    pub token: &'a str,
    /// The nonce from the gateway's `connect.challenge`.
    pub nonce: &'a str,
    /// Platform, e.g. `linux`.
    pub platform: &'a str,
    /// Device family, or "".
    pub device_family: &'a str,
}

impl DeviceAuthRequest<'_> {
    /// The v3 payload: `v3|deviceId|clientId|clientMode|role|scopes|signedAtMs|token|nonce|platform|deviceFamily`,
    /// with platform and device family trimmed and ASCII-lowercased.
    pub fn payload_v3(&self, device_id: &str) -> String {
        format!(
            "v3|{device_id}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.client_id,
            self.client_mode,
            self.role,
            self.scopes.join(","),
            self.signed_at_ms,
            self.token,
            self.nonce,
            self.platform.trim().to_ascii_lowercase(),
            self.device_family.trim().to_ascii_lowercase(),
        )
    }
}

/// The `device` object of a gateway `connect` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceProof {
    /// Lowercase hex SHA-256 of the public key.
    pub id: String,
    /// Raw public key, base64url without padding.
    pub public_key: String,
    /// Signature of the v3 payload, base64url without padding.
    pub signature: String,
    /// Signing time, Unix milliseconds.
    pub signed_at: u64,
    /// The challenge nonce.
    pub nonce: String,
}

impl DeviceProof {
    /// Signs `request` with the node key.
    pub fn sign(identity: &NodeIdentity, request: &DeviceAuthRequest<'_>) -> Self {
        let device = identity.device();
        let id = device.id();
        let signature = device.sign_payload(&request.payload_v3(&id));
        Self {
            id,
            public_key: device.public_key_base64url(),
            signature,
            signed_at: request.signed_at_ms,
            nonce: request.nonce.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from the protocol notes: seed 00..1f, v3 payload for a node host.
    #[test]
    fn proof_matches_the_gateway_vector() {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let identity = NodeIdentity::from_seed(seed);
        let request = DeviceAuthRequest {
            client_id: "node-host",
            client_mode: "node",
            role: "node",
            scopes: &[],
            signed_at_ms: 1_737_264_000_000,
            token: "secret-token",
            nonce: "nonce-123",
            platform: " Linux ",
            device_family: "",
        };
        let proof = DeviceProof::sign(&identity, &request);
        assert_eq!(
            proof.id,
            "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
        );
        assert_eq!(
            proof.public_key,
            "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
        );
        assert_eq!(
            proof.signature,
            "YqFUMIn9ayiqrAtp_EQyrBzkbODIyX4id8DvzYpnvSYjeJzjcZmDYQC8EX7iUwYZT6DJTILvAaegunVom4JGCA"
        );
        let json = serde_json::to_value(&proof).unwrap();
        assert_eq!(json["signedAt"], 1_737_264_000_000u64);
        assert_eq!(json["publicKey"], proof.public_key);
    }
}
