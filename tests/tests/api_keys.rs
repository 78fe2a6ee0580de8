//! API keys across `clawnode run` processes: an admin's key reaches every member, and each one
//! runs a call under it with no more than the key allows (its role, command families and
//! namespaces); a revoked key and an expired one are refused by every member within one
//! announce interval; the audit log names the key. Attacks, each with only the attacker's own
//! keys: a guessed secret, a revoked key's name taken again, a member that is no operator
//! minting a key, and a fleet member using a stolen admin key over the mesh.
//!
//! Needs no Docker: every call here is refused or answered before a container would start.

use std::time::{Duration, Instant};

use claw_tests::deployments::Member;
use claw_tests::eventually;
use serde_json::{Value, json};

/// The members announce every second (`Member::new`): a revocation must reach each within that.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// What the CLI round trip adds to the wait on a busy machine (process start, control API).
const CLI_SLACK: Duration = Duration::from_secs(4);

fn key_of(created: &Value) -> String {
    created["api_key"]
        .as_str()
        .expect("the key is shown once")
        .to_owned()
}

/// How long until every member refuses `key` with a message containing `why`.
fn refused_everywhere(members: &[Member], key: &str, why: &str, since: Instant) -> Duration {
    for member in members {
        eventually(
            ANNOUNCE_INTERVAL + CLI_SLACK,
            "every member to refuse the key",
            || {
                let refused = member
                    .cli
                    .invoke_under_key(None, "auth.whoami", &json!({}), key)
                    .err()?;
                refused.contains(why).then_some(())
            },
        );
    }
    since.elapsed()
}

#[test]
fn a_key_narrows_every_call_and_revocation_and_expiry_reach_every_member() {
    let members = Member::fleet(3);
    let admin = &members[0];
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || {
            members
                .iter()
                .all(|m| {
                    members
                        .iter()
                        .all(|o| o.peer_id == m.peer_id || m.sees(&o.peer_id))
                })
                .then_some(())
        },
    );

    let created = admin
        .invoke(
            "auth.create_key",
            &json!({"name": "ci", "role": "operate", "namespaces": ["team-a"],
                    "families": ["auth", "workload", "node"], "expires_in_s": 3600}),
        )
        .expect("auth.create_key");
    let key = key_of(&created);
    assert!(key.starts_with("claw_ci."), "{created}");
    assert_eq!(created["key"]["role"], "operate");

    // Every member takes it, and keeps only its digest: no listing shows it.
    for member in &members {
        let whoami = eventually(Duration::from_secs(30), "the key on every member", || {
            member
                .cli
                .invoke_under_key(None, "auth.whoami", &json!({}), &key)
                .ok()
        });
        assert_eq!(whoami["key"]["name"], "ci", "{whoami}");
        assert_eq!(
            whoami["role"], "operate",
            "the local admin runs at the key's role"
        );
        let listed = member.invoke("auth.list_keys", &json!({})).expect("list");
        assert_eq!(listed["keys"][0]["name"], "ci");
        let secret = key.split_once('.').expect("name.secret").1;
        assert!(!listed.to_string().contains(secret), "{listed}");
    }

    // What the key does not allow, refused on a member, each with the scope named.
    let member = &members[1].cli;
    let under_key =
        |command: &str, params: Value| member.invoke_under_key(None, command, &params, &key);
    for (command, params, why) in [
        (
            "system.run",
            json!({"command": ["true"]}),
            "needs the admin role",
        ),
        (
            "gpu.list",
            json!({}),
            "families auth, workload, node, not gpu",
        ),
        (
            "workload.run",
            json!({"image": "nothing:1", "namespace": "team-b"}),
            "namespaces team-a, not team-b",
        ),
        ("workload.run", json!({"image": "nothing:1"}), "not default"),
        ("node.label", json!({"set": {"a": "b"}}), "not default"),
    ] {
        let refused = under_key(command, params).expect_err(command);
        assert!(refused.contains(why), "{command}: {refused}");
    }
    // Reading is allowed in every namespace; a run in the key's namespace passes the key (and
    // stops only at the image, which is not there).
    under_key("workload.list", json!({})).expect("workload.list under the key");
    let past_the_key = under_key(
        "workload.run",
        json!({"image": "clawbernetes/absent:1", "namespace": "team-a"}),
    )
    .expect_err("no such image");
    assert!(!past_the_key.contains("API key"), "{past_the_key}");

    // The audit log names the key, found by it.
    let audited = members[1]
        .invoke(
            "audit.query",
            &json!({"api_key": "ci", "outcome": "UNAUTHORIZED"}),
        )
        .expect("audit.query");
    let records = audited["records"].as_array().expect("records");
    assert_eq!(records.len(), 5, "{audited}");
    assert!(records.iter().all(|r| r["api_key"] == "ci"));

    // A guessed secret for the key's name is refused, and says nothing of the real one.
    let guessed = format!("claw_ci.{}", "A".repeat(43));
    let refused = member
        .invoke_under_key(None, "workload.list", &json!({}), &guessed)
        .expect_err("a guessed secret");
    assert!(refused.contains("does not match"), "{refused}");

    // A fleet member with a stolen admin key gains nothing over the mesh: the call runs with
    // the lower of the member's role on the target (read) and the key's.
    let root = key_of(
        &admin
            .invoke(
                "auth.create_key",
                &json!({"name": "root", "role": "admin", "expires_in_s": 600}),
            )
            .expect("an admin key"),
    );
    let target = &members[2];
    let whoami = eventually(
        Duration::from_secs(30),
        "the root key on the target",
        || {
            member
                .invoke_under_key(Some(&target.peer_id), "auth.whoami", &json!({}), &root)
                .ok()
        },
    );
    assert_eq!(whoami["role"], "read", "{whoami}");
    assert_eq!(whoami["caller"], members[1].peer_id);
    let refused = member
        .invoke_under_key(Some(&target.peer_id), "node.cordon", &json!({}), &root)
        .expect_err("a member cannot cordon with a stolen key");
    assert!(refused.contains("needs the operate role"), "{refused}");

    // A member that is no operator cannot mint a key.
    let refused = members[1]
        .invoke(
            "auth.create_key",
            &json!({"name": "mine", "role": "admin", "expires_in_s": 60}),
        )
        .expect_err("not an operator");
    assert!(refused.contains("not a fleet operator"), "{refused}");

    // Revoked: every member refuses it within one announce interval.
    let revoking = Instant::now();
    let revoked = admin
        .invoke("auth.revoke_key", &json!({"name": "ci"}))
        .expect("auth.revoke_key");
    assert_eq!(revoked["revoked"], true);
    let took = refused_everywhere(&members, &key, "is revoked", revoking);
    println!(
        "revocation refused on all 3 members {} ms after it was signed",
        took.as_millis()
    );
    // Its name cannot be taken again to bring a key of that name back.
    let refused = admin
        .invoke(
            "auth.create_key",
            &json!({"name": "ci", "role": "operate", "expires_in_s": 60}),
        )
        .expect_err("names are not reused");
    assert!(refused.contains("not reused"), "{refused}");

    // Expired: a key that lives six seconds works on every member, then every member refuses
    // it.
    let created = admin
        .invoke(
            "auth.create_key",
            &json!({"name": "brief", "role": "read", "expires_in_s": 6}),
        )
        .expect("a brief key");
    let brief = key_of(&created);
    let expires_at_ms = created["key"]["expires_at_ms"].as_u64().expect("expiry");
    for member in &members {
        eventually(
            Duration::from_secs(5),
            "the brief key on every member",
            || {
                member
                    .cli
                    .invoke_under_key(None, "auth.whoami", &json!({}), &brief)
                    .ok()
            },
        );
    }
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    std::thread::sleep(Duration::from_millis(expires_at_ms.saturating_sub(now_ms)));
    let took = refused_everywhere(&members, &brief, "expired at", Instant::now());
    println!(
        "expiry refused on all 3 members within {} ms",
        took.as_millis()
    );
}
