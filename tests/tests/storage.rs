//! Volumes and backups across `clawnode run` processes on the real Docker Engine: a volume's
//! data survives its workload and its node's `kill -9` and restart; a backup copied to another
//! member restores there to the same files, under the digest its maker signed; a backup
//! changed on disk is refused; and a member cannot read a backup that was not offered to it.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::time::Duration;

use claw_tests::deployments::Member;
use claw_tests::{Clawnode, eventually, required_part};
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

/// A node's keys leave it only sealed to one of its admins (`backup.keys`), and that admin
/// alone makes a new data directory from them with the same peer id and wallet. From the
/// attacker's side, with only its own keys: an operator that is no admin cannot ask for them
/// over the mesh, nor have them sealed to itself; the node cannot open its own backup once
/// made; a changed byte is refused. Needs no Docker Engine.
#[test]
fn node_keys_are_backed_up_only_sealed_to_an_admin_and_restore_the_same_node() {
    let mut admin = Member::new(None);
    let mut stranger = Member::new(None);
    let mut node = Member::new(Some(&admin.peer_id));
    node.cli.ok(&[
        "configure",
        "--admin",
        &admin.peer_id,
        "--operator",
        &stranger.peer_id,
    ]);
    let wallet = node.cli.ok(&["wallet", "address"]).stdout.trim().to_owned();
    admin.start(&[]);
    let seed = admin.joinable();
    node.start(&seed);
    stranger.start(&seed);
    eventually(Duration::from_secs(60), "the three nodes meet", || {
        (admin.sees(&node.peer_id) && stranger.sees(&node.peer_id)).then_some(())
    });
    let files = tempfile::tempdir().expect("temp dir");
    let sealed = files.path().join("node.keys");
    let sealed_text = sealed.display().to_string();

    // An operator that is no admin: refused the command, and refused as a recipient.
    let refused = stranger
        .cli
        .invoke(
            Some(&node.peer_id),
            "backup.keys",
            &json!({"to": stranger.peer_id}),
        )
        .expect_err("an operator asks for the node's keys");
    assert!(refused.contains("admin"), "{refused}");
    let refused = node.cli.fails(&[
        "backup",
        "keys",
        "--to",
        &stranger.peer_id,
        "--out",
        &sealed_text,
    ]);
    assert!(
        refused.stderr.contains("not one of this node's admins"),
        "{}",
        refused.stderr
    );
    assert!(!sealed.exists(), "nothing written for a refused recipient");

    // The admin asks over the mesh and gets them sealed to itself.
    let answer = admin
        .cli
        .invoke(
            Some(&node.peer_id),
            "backup.keys",
            &json!({"to": admin.peer_id}),
        )
        .expect("the admin asks for the node's keys");
    assert_eq!(answer["node"], node.peer_id, "{answer}");
    assert_eq!(answer["wallet"], wallet.as_str(), "{answer}");
    assert_eq!(answer["sealed_to"], admin.peer_id, "{answer}");

    // The local CLI writes them to a file.
    node.cli.ok(&[
        "backup",
        "keys",
        "--to",
        &admin.peer_id,
        "--out",
        &sealed_text,
    ]);
    let bytes = std::fs::read(&sealed).expect("the sealed file");
    assert!(bytes.starts_with(b"CLAWKEYS"), "a node-key backup");
    let node_seed = std::fs::read(node.cli.data_dir().join("identity.key")).expect("seed");
    assert!(
        !bytes
            .windows(node_seed.len())
            .any(|w| w == node_seed.as_slice()),
        "the identity seed is not in the clear"
    );

    // Neither the stranger nor the node itself opens it; a changed copy does not open.
    let target = files.path().join("restored");
    let target_text = target.display().to_string();
    for who in [&stranger, &node] {
        let refused = who.cli.fails(&[
            "backup",
            "restore-keys",
            &sealed_text,
            "--into",
            &target_text,
        ]);
        assert!(
            refused.stderr.contains("is sealed to"),
            "{}",
            refused.stderr
        );
    }
    let changed = files.path().join("changed.keys");
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&changed, &tampered).expect("changed copy");
    let refused = admin.cli.fails(&[
        "backup",
        "restore-keys",
        &changed.display().to_string(),
        "--into",
        &target_text,
    ]);
    assert!(
        refused.stderr.contains("does not open"),
        "{}",
        refused.stderr
    );
    assert!(!target.join("identity.key").exists());

    // The admin restores the node: same peer id, same wallet.
    admin.cli.ok(&[
        "backup",
        "restore-keys",
        &sealed_text,
        "--into",
        &target_text,
    ]);
    let restored = Clawnode::new(&target);
    assert_eq!(
        restored.ok(&["--json", "identity"]).json()["peer_id"],
        node.peer_id
    );
    assert_eq!(restored.ok(&["wallet", "address"]).stdout.trim(), wallet);
    // An existing node is never overwritten.
    let refused = admin.cli.fails(&[
        "backup",
        "restore-keys",
        &sealed_text,
        "--into",
        &target_text,
    ]);
    assert!(
        refused.stderr.contains("already exists"),
        "{}",
        refused.stderr
    );
}

/// Whether `path` is a mount point on this machine.
fn is_mount_point(path: &std::path::Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mount table");
    let wanted = path.display().to_string();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// A volume created with a size is held to it: a container writing past it gets "no space
/// left on device" and the host keeps its room, while what fits stays. After a host restart
/// (its filesystem unmounted, the node killed with -9), Docker refuses to start a container on
/// it rather than write into the empty mount point, and the restarted node mounts it again
/// with the data. Deleting it takes its filesystem away.
#[test]
fn a_size_limited_volume_refuses_writes_past_its_size_and_survives_a_host_restart() {
    let Some(image) = test_image() else { return };
    let mut member = Member::new(None);
    member.start(&[]);

    let refused = member
        .invoke("volume.create", &json!({"name": "tiny", "size_mib": 4}))
        .expect_err("a size under the minimum");
    assert!(refused.contains("8 to"), "{refused}");
    let created = member
        .invoke("volume.create", &json!({"name": "small", "size_mib": 16}))
        .expect("volume.create with a size");
    assert_eq!(created["size_mib"], 16, "{created}");
    let docker_name = created["docker_name"]
        .as_str()
        .expect("docker name")
        .to_owned();
    let mount_point = member
        .cli
        .data_dir()
        .canonicalize()
        .expect("data dir")
        .join("volumes")
        .join(&docker_name);
    let image_file = mount_point.with_extension("ext4");
    assert!(is_mount_point(&mount_point), "its filesystem is mounted");
    let reserved = std::os::unix::fs::MetadataExt::blocks(
        &std::fs::metadata(&image_file).expect("the volume's image"),
    ) * 512;
    assert!(
        reserved >= 16 << 20,
        "the host reserved its space: {reserved}"
    );

    let listed = member
        .invoke("volume.list", &json!({}))
        .expect("volume.list");
    assert_eq!(listed["volumes"][0]["size_mib"], 16, "{listed}");

    // Writing 32 MiB into 16: the write fails, the rest of the volume is still usable.
    let filled = run_on(
        &member,
        &image,
        "small",
        "echo kept > /data/keep; dd if=/dev/zero of=/data/big bs=1M count=32 2>&1; \
         echo status=$?; wc -c < /data/big; rm /data/big; echo again > /data/again; cat /data/again",
    );
    assert!(filled.contains("No space left on device"), "{filled}");
    assert!(!filled.contains("status=0"), "{filled}");
    let written: u64 = filled
        .lines()
        .find_map(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("a byte count in {filled}"));
    assert!(
        written < 16 << 20,
        "at most the volume's size was written: {written}"
    );
    assert!(filled.ends_with("again"), "{filled}");

    // The host restarts: the node dies, its filesystem is no longer mounted.
    member.kill();
    let unmounted = std::process::Command::new("umount")
        .arg(&mount_point)
        .status()
        .expect("umount");
    assert!(unmounted.success());
    let docker = std::process::Command::new("docker")
        .args(["run", "--rm", "-v", &format!("{docker_name}:/data"), &image])
        .args(["sh", "-c", "echo leaked > /data/leak"])
        .output()
        .expect("docker run");
    assert!(
        !docker.status.success(),
        "a container on the unmounted volume must not start"
    );
    assert!(
        std::fs::read_dir(&mount_point)
            .expect("mount point")
            .next()
            .is_none(),
        "nothing was written into the empty mount point"
    );
    member.start(&[]);
    assert!(is_mount_point(&mount_point), "mounted again at start");
    assert_eq!(
        run_on(&member, &image, "small", "cat /data/keep /data/again"),
        "kept\nagain"
    );

    // A backup restores into a size-limited volume, too small or big enough.
    let backup = member
        .invoke("volume.snapshot", &json!({"name": "small"}))
        .expect("volume.snapshot");
    let id = backup["id"].as_str().expect("backup id");
    let restored = member
        .invoke(
            "backup.restore",
            &json!({"backup": id, "volume": "small-copy", "size_mib": 8}),
        )
        .expect("backup.restore with a size");
    assert_eq!(restored["size_mib"], 8, "{restored}");
    assert_eq!(
        run_on(&member, &image, "small-copy", "cat /data/keep"),
        "kept"
    );

    for name in ["small", "small-copy"] {
        member
            .invoke("volume.delete", &json!({"name": name}))
            .expect("volume.delete");
    }
    assert!(!is_mount_point(&mount_point), "its filesystem is unmounted");
    assert!(!image_file.exists(), "its image is gone");
    assert!(volume_names(&member).is_empty());
}
