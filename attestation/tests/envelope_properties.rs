//! Property tests of the signed-envelope wire form.

use std::time::Duration;

use claw_attestation::{
    ComputeCapability, Envelope, GpuDevice, HardwareInventory, HostInfo, NodeIdentity, NvmlStatus,
    ReplayGuard, Validity, Verifier, VerifyError,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;

fn identity() -> NodeIdentity {
    NodeIdentity::from_seed([7; 32])
}

fn gpu() -> impl Strategy<Value = GpuDevice> {
    (
        any::<u32>(),
        "[A-Za-z0-9 -]{0,40}",
        any::<u64>(),
        proptest::option::of("[0-9A-F:.]{0,16}"),
        proptest::option::of((0u32..20, 0u32..10)),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
    )
        .prop_map(
            |(index, model, memory, pci, cc, temp, simulated)| GpuDevice {
                index,
                uuid: format!("GPU-{index:08x}"),
                model,
                memory_total_bytes: memory,
                pci_bus_id: pci,
                compute_capability: cc.map(|(major, minor)| ComputeCapability { major, minor }),
                ecc: None,
                power_limit_mw: None,
                max_clocks: None,
                temperature_c: temp,
                simulated,
            },
        )
}

fn inventory() -> impl Strategy<Value = HardwareInventory> {
    (
        "[a-z0-9-]{1,20}",
        any::<u64>(),
        proptest::collection::vec(gpu(), 0..6),
        proptest::option::of(".{0,40}"),
    )
        .prop_map(|(hostname, memory, gpus, reason)| HardwareInventory {
            host: HostInfo {
                hostname,
                memory_total_bytes: memory,
                ..HostInfo::default()
            },
            nvml: match reason {
                Some(reason) => NvmlStatus::Unavailable { reason },
                None => NvmlStatus::Loaded {
                    driver_version: "550.54.15".into(),
                    nvml_version: "12.550.54.15".into(),
                    cuda_driver_version: Some("12.4".into()),
                },
            },
            gpus,
        })
}

fn seal(payload: &HardwareInventory, seq: u64) -> Envelope {
    let validity = Validity {
        issued_at_ms: NOW,
        ttl: Duration::from_secs(300),
    };
    Envelope::seal(&identity(), seq, validity, payload)
}

proptest! {
    #[test]
    fn encode_decode_round_trips(payload in inventory(), seq in any::<u64>()) {
        let envelope = seal(&payload, seq);
        let bytes = envelope.to_bytes();
        prop_assert_eq!(bytes.len(), envelope.encoded_len());
        let decoded = Envelope::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&decoded, &envelope);
        prop_assert_eq!(decoded.to_bytes(), bytes.clone());
        let verified = Verifier::new().verify_at(&bytes, None, NOW).unwrap();
        prop_assert_eq!(verified.open::<HardwareInventory>().unwrap(), payload);
    }

    #[test]
    fn any_single_changed_byte_fails_verification(
        payload in inventory(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = seal(&payload, 1).to_bytes();
        let i = position.index(bytes.len());
        bytes[i] ^= flip;
        let result = Verifier::new().verify_at(&bytes, None, NOW);
        prop_assert!(result.is_err(), "byte {} ^ {:#x} still verified", i, flip);
    }

    #[test]
    fn any_single_changed_byte_fails_batch_verification(
        payload in inventory(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let good = seal(&payload, 1).to_bytes();
        let mut bad = good.clone();
        let i = position.index(bad.len());
        bad[i] ^= flip;
        let results = Verifier::new().verify_batch_at(&[&good, &bad, &good], NOW);
        prop_assert!(results[0].is_ok());
        prop_assert!(results[1].is_err());
        prop_assert!(results[2].is_ok());
    }

    #[test]
    fn replays_are_rejected(payload in inventory(), first in 1u64..1_000_000, back in 0u64..1_000) {
        let verifier = Verifier::new();
        let mut guard = ReplayGuard::new(64);
        let newer = verifier.verify_at(&seal(&payload, first).to_bytes(), None, NOW).unwrap();
        guard.admit(&newer).unwrap();
        let older_seq = first.saturating_sub(back);
        let older = verifier.verify_at(&seal(&payload, older_seq).to_bytes(), None, NOW).unwrap();
        let is_replay = matches!(guard.admit(&older), Err(VerifyError::Replay { .. }));
        prop_assert!(is_replay);
        let next = verifier.verify_at(&seal(&payload, first + 1).to_bytes(), None, NOW).unwrap();
        prop_assert!(guard.admit(&next).is_ok());
    }

    #[test]
    fn expired_envelopes_are_rejected(payload in inventory(), late_ms in 0u64..10_000_000) {
        let bytes = seal(&payload, 1).to_bytes();
        let expires = NOW + 300_000;
        let is_expired = matches!(
            Verifier::new().verify_at(&bytes, None, expires + late_ms),
            Err(VerifyError::Expired { .. })
        );
        prop_assert!(is_expired);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Verifier::new().verify_at(&bytes, None, NOW);
        let _ = Verifier::new().verify_batch_at(&[&bytes], NOW);
    }
}
