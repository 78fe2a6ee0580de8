//! Volumes and backups across `clawnode run` processes on the real Docker Engine: a volume's
//! data survives its workload and its node's `kill -9` and restart; a backup copied to another
//! member restores there to the same files, under the digest its maker signed; a backup
//! changed on disk is refused; and a member cannot read a backup that was not offered to it.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::Duration;

use claw_tests::deployments::Member;
use claw_tests::{eventually, required_part};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

/// Runs `script` on `member` in a container mounting `volume` at `/data`, waits for it to
/// exit, and answers what it printed.
fn run_on(member: &Member, image: &str, volume: &str, script: &str) -> String {
    let run = member
        .invoke(
            "workload.run",
            &json!({
                "image": image,
                "command": ["sh", "-c", script],
                "volume_mounts": [{"volume": volume, "path": "/data"}],
            }),
        )
        .expect("workload.run with a volume");
    let id = run["id"].as_str().expect("id").to_owned();
    eventually(Duration::from_secs(30), "the workload to exit", || {
        let inspected = member
            .invoke("workload.inspect", &json!({"workload": id}))
            .ok()?;
        (inspected["workload"]["state"] == "exited").then_some(())
    });
    let logs = member
        .invoke("workload.logs", &json!({"workload": id}))
        .expect("logs");
    member
        .invoke("workload.stop", &json!({"workload": id, "remove": true}))
        .expect("remove the exited container");
    logs["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn volume_names(member: &Member) -> Vec<String> {
    member
        .invoke("volume.list", &json!({}))
        .expect("volume.list")["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn volumes_outlive_workloads_and_restarts_and_backups_restore_elsewhere_only_intact() {
    let Some(image) = test_image() else { return };
    let mut members = Member::fleet(2);
    let (source_id, copy_id) = (members[0].peer_id.clone(), members[1].peer_id.clone());
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (members[0].sees(&copy_id) && members[1].sees(&source_id)).then_some(()),
    );

    let created = members[0]
        .invoke("volume.create", &json!({"name": "data"}))
        .expect("volume.create");
    assert_eq!(created["name"], "data");
    let again = members[0].invoke("volume.create", &json!({"name": "data"}));
    assert!(
        again.is_err_and(|e| e.contains("exists")),
        "one volume per name"
    );
    let missing = members[0].invoke(
        "workload.run",
        &json!({"image": image, "volume_mounts": [{"volume": "nope", "path": "/data"}]}),
    );
    assert!(missing.is_err_and(|e| e.contains("no volume \"nope\"")));

    // Written by one workload, read by the next; then the node is killed and restarted.
    let written = run_on(
        &members[0],
        &image,
        "data",
        "echo hello > /data/a; mkdir -p /data/d; echo deep > /data/d/b; echo written",
    );
    assert_eq!(written, "written");
    assert_eq!(
        run_on(&members[0], &image, "data", "cat /data/a /data/d/b"),
        "hello\ndeep"
    );
    members[0].kill();
    let seed = members[1].joinable();
    members[0].start(&seed);
    eventually(
        Duration::from_secs(60),
        "the restarted node back in view",
        || (members[1].sees(&source_id) && members[0].sees(&copy_id)).then_some(()),
    );
    assert_eq!(volume_names(&members[0]), ["data"]);
    assert_eq!(
        run_on(&members[0], &image, "data", "cat /data/a /data/d/b"),
        "hello\ndeep",
        "the data survived the node's kill -9"
    );

    // A backup, copied to the other member, which restores it into a new volume there.
    let backup = members[0]
        .invoke("backup.create", &json!({"volume": "data", "node": copy_id}))
        .expect("backup.create to the other member");
    let id = backup["id"].as_str().expect("backup id").to_owned();
    let digest = backup["sha256"].as_str().expect("digest").to_owned();
    assert_eq!(backup["copied_to"], json!(copy_id));
    let kept: Value = members[1]
        .invoke("backup.list", &json!({}))
        .expect("backup.list")["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["id"] == json!(id))
        .cloned()
        .expect("the copy is kept on the other member");
    assert_eq!(
        (kept["sha256"].as_str(), kept["source"].as_str()),
        (Some(digest.as_str()), Some(source_id.as_str()))
    );
    let archive = members[1]
        .cli
        .data_dir()
        .join("backups")
        .join(format!("{id}.tar"));
    let bytes = std::fs::read(&archive).expect("the copy's archive");
    let sum = claw_tests::run_with_deadline(
        std::process::Command::new("sha256sum").arg(&archive),
        Duration::from_secs(30),
    );
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(&digest),
        "the copy matches its digest"
    );
    members[1]
        .invoke("backup.restore", &json!({"backup": id, "volume": "copy"}))
        .expect("backup.restore");
    assert_eq!(
        run_on(&members[1], &image, "copy", "cat /data/a /data/d/b"),
        "hello\ndeep",
        "the restored volume holds the same files"
    );

    // The archive changed on disk: refused, and no volume is made.
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x20;
    std::fs::write(&archive, &tampered).expect("tamper");
    let refused = members[1]
        .invoke("backup.restore", &json!({"backup": id, "volume": "copy2"}))
        .expect_err("a tampered backup is refused");
    assert!(
        refused.contains("does not match its signed digest"),
        "{refused}"
    );
    assert_eq!(volume_names(&members[1]), ["copy"]);

    // From the other member's side, with only its own key: a backup not offered to it cannot be
    // read from its maker.
    let private = members[0]
        .invoke("volume.snapshot", &json!({"name": "data"}))
        .expect("volume.snapshot");
    let private_id = private["id"].as_str().expect("id");
    let read = members[1].cli.invoke(
        Some(&source_id),
        "backup.read",
        &json!({"backup": private_id, "offset": 0}),
    );
    assert!(
        read.as_ref()
            .is_err_and(|e| e.contains("was not offered to")),
        "{read:?}"
    );
    // Nor can it hand the maker a manifest it did not sign.
    let forged = members[1].cli.invoke(
        Some(&source_id),
        "backup.receive",
        &json!({"manifest": "AAAA"}),
    );
    assert!(forged.is_err(), "{forged:?}");

    // A volume in use is not deleted; an idle one is.
    members[0]
        .invoke("volume.delete", &json!({"name": "data"}))
        .expect("volume.delete");
    assert!(volume_names(&members[0]).is_empty());
    members[1]
        .invoke("volume.delete", &json!({"name": "copy"}))
        .expect("volume.delete");
}

/// A backup written to a directory under a writable volume root is imported by another node
/// (reading under its own root) and restored there; one changed in the directory is refused,
/// as is a directory outside the roots.
#[test]
fn a_backup_written_to_a_directory_is_imported_elsewhere_only_intact() {
    let Some(image) = test_image() else { return };
    let shared = tempfile::tempdir().expect("shared directory");
    let root = shared.path().canonicalize().expect("canonical");
    let exports = root.join("exports");
    std::fs::create_dir_all(&exports).expect("exports");
    let root_text = root.display().to_string();
    let with_root = |member: &Member| {
        member.cli.edit_config(|text| {
            text.replace(
                "writable_volume_roots = []",
                &format!("writable_volume_roots = [{root_text:?}]"),
            )
        });
    };
    let mut maker = Member::new(None);
    with_root(&maker);
    maker.start(&[]);
    let mut importer = Member::new(Some(&maker.peer_id.clone()));
    with_root(&importer);
    importer.start(&maker.joinable());

    maker
        .invoke("volume.create", &json!({"name": "models"}))
        .expect("volume.create");
    run_on(&maker, &image, "models", "echo weights > /data/w; echo ok");
    let exports_text = exports.display().to_string();
    let outside = maker.invoke(
        "backup.create",
        &json!({"volume": "models", "path": "/tmp"}),
    );
    assert!(outside.is_err_and(|e| e.contains("outside the node's volume roots")));
    let backup = maker
        .invoke(
            "backup.create",
            &json!({"volume": "models", "path": exports_text}),
        )
        .expect("backup.create to a directory");
    let id = backup["id"].as_str().expect("id").to_owned();
    let archive = exports.join(format!("{id}.tar"));
    assert!(archive.is_file() && exports.join(format!("{id}.manifest")).is_file());

    // A changed archive is refused; the intact one is imported and restored.
    let bytes = std::fs::read(&archive).expect("archive");
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&archive, &tampered).expect("tamper");
    let refused = importer
        .invoke(
            "backup.import",
            &json!({"path": exports_text, "backup": id}),
        )
        .expect_err("a changed archive is refused");
    assert!(
        refused.contains("does not match its signed digest"),
        "{refused}"
    );
    std::fs::write(&archive, &bytes).expect("restore the archive");
    let imported = importer
        .invoke(
            "backup.import",
            &json!({"path": exports_text, "backup": id}),
        )
        .expect("backup.import");
    assert_eq!(
        (imported["sha256"].clone(), imported["source"].clone()),
        (backup["sha256"].clone(), json!(maker.peer_id))
    );
    importer
        .invoke("backup.restore", &json!({"backup": id, "volume": "models"}))
        .expect("backup.restore");
    assert_eq!(
        run_on(&importer, &image, "models", "cat /data/w"),
        "weights"
    );
    for member in [&maker, &importer] {
        member
            .invoke("volume.delete", &json!({"name": "models"}))
            .expect("volume.delete");
    }
}
