//! Fleet objects across three nodes started in one process over loopback: a deployment an
//! operator creates reaches every member, each change is a revision every member keeps, a member
//! that was away catches up when it returns, and a plain member with only its own keys can
//! neither forge an object nor replay an old revision.

use std::path::Path;
use std::time::{Duration, Instant};

use claw_api::Role;
use claw_attestation::{Envelope, PayloadKind, Validity};
use claw_mesh::{InvokeRequest, TopicKind};
use clawnode::objects::FleetObject;
use clawnode::store::ObjectKind;
use clawnode::{DataDir, Node, NodeConfig, NodeHandle, NodeOptions};
use serde_json::{Value, json};

fn init(root: &Path, operators: Vec<String>) -> DataDir {
    let mut config = NodeConfig::default();
    config.mesh.listen = vec!["/ip4/127.0.0.1/tcp/0".to_owned()];
    config.mesh.quic = false;
    config.mesh.mdns = false;
    config.mesh.announce_interval_secs = 1;
    config.access.operators = operators;
    DataDir::init(root, &config, false)
        .expect("init the data directory")
        .0
}

/// Starts the node in `root`; a node started again right after it stopped waits for sled's
/// flusher to let go of the store's lock.
async fn start(root: &Path, bootstrap: Vec<String>) -> NodeHandle {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let options = NodeOptions {
            bootstrap: bootstrap.clone(),
            ..NodeOptions::default()
        };
        match Node::start(DataDir::open(root).expect("open"), options).await {
            Ok(node) => return node,
            Err(error) if Instant::now() < deadline => {
                eprintln!("starting again shortly: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the node does not start: {error}"),
        }
    }
}

/// Runs `command` on `node` as a caller with `role` would.
async fn call(
    node: &NodeHandle,
    role: Role,
    command: &str,
    params: Value,
) -> Result<Value, String> {
    let request = InvokeRequest::new(command, Duration::from_secs(10)).with_params(params);
    node.commands()
        .invoke_for_gateway(role, request)
        .await
        .map_err(|failure| format!("{:?}: {}", failure.code, failure.message))
}

/// `deploy.status` of `name` on `node`: its revision and replica count, if it has it.
async fn status(node: &NodeHandle, name: &str) -> Option<(u64, u64)> {
    let answer = call(node, Role::Read, "deploy.status", json!({ "name": name }))
        .await
        .ok()?;
    Some((
        answer["revision"].as_u64()?,
        answer["spec"]["replicas"].as_u64()?,
    ))
}

async fn everywhere(nodes: &[&NodeHandle], name: &str, expected: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut seen = Vec::new();
        for node in nodes {
            seen.push(status(node, name).await);
        }
        if seen.iter().all(|s| *s == Some(expected)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {expected:?} (revision, replicas) on every member: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A paused deployment's spec: this test is about the records, so no replica is started.
fn spec(replicas: u32, image: &str) -> Value {
    json!({
        "replicas": replicas,
        "template": { "image": image, "command": ["sleep", "60"] },
        "paused": true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_reach_every_member_survive_absence_and_refuse_forgery_and_replay() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (root_a, root_b, root_c) = (
        temp.path().join("a"),
        temp.path().join("b"),
        temp.path().join("c"),
    );
    // Node a's key is the fleet's operator key: every member's config lists it.
    let operator = init(&root_a, vec![]).identity().peer_id().to_string();
    let config_a = root_a.join("config.toml");
    let text = std::fs::read_to_string(&config_a).expect("a's config");
    assert!(text.contains("operators = []"), "{text}");
    std::fs::write(
        &config_a,
        text.replace("operators = []", &format!("operators = [{operator:?}]")),
    )
    .expect("listing a as an operator");
    init(&root_b, vec![operator.clone()]);
    init(&root_c, vec![operator.clone()]);

    let a = start(&root_a, vec![]).await;
    let seed = a.joinable_addrs(Duration::from_secs(5)).await;
    let b = start(&root_b, seed.clone()).await;
    let c = start(&root_c, seed.clone()).await;

    let created = call(
        &a,
        Role::Operate,
        "deploy.create",
        json!({"name": "web", "spec": spec(2, "busybox")}),
    )
    .await
    .expect("the operator creates a deployment");
    assert_eq!(
        (created["revision"].clone(), created["signed_by"].clone()),
        (json!(1), json!(operator))
    );
    everywhere(&[&a, &b, &c], "web", (1, 2)).await;
    // The signed first revision, as any member hands it to another: a replay later.
    let page = call(&b, Role::Read, "object.sync", json!({}))
        .await
        .expect("b's objects");
    let first_revision = page["objects"][0].as_str().expect("one object").to_owned();

    call(
        &a,
        Role::Operate,
        "deploy.update",
        json!({"name": "web", "image": "busybox:v2"}),
    )
    .await
    .expect("update");
    everywhere(&[&a, &b, &c], "web", (2, 2)).await;

    // c is away while the deployment changes and another is created; it catches up on return.
    assert_eq!(c.stop().await, 0, "c stops cleanly");
    call(
        &a,
        Role::Operate,
        "deploy.update",
        json!({"name": "web", "replicas": 3}),
    )
    .await
    .expect("update while c is away");
    call(
        &a,
        Role::Operate,
        "deploy.create",
        json!({"name": "api", "spec": spec(1, "busybox")}),
    )
    .await
    .expect("create while c is away");
    let c = start(&root_c, seed).await;
    everywhere(&[&a, &b, &c], "web", (3, 3)).await;
    everywhere(&[&c], "api", (1, 1)).await;
    let history = call(&c, Role::Read, "deploy.history", json!({"name": "web"}))
        .await
        .expect("history");
    let revisions: Vec<u64> = history["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .filter_map(|r| r["revision"].as_u64())
        .collect();
    assert_eq!(
        revisions,
        [3, 2, 1],
        "c keeps the history it missed: {history}"
    );

    // b, a plain member with only its own keys, tries to take the deployment over.
    let refused = call(
        &b,
        Role::Admin,
        "deploy.update",
        json!({"name": "web", "replicas": 0}),
    )
    .await
    .expect_err("b cannot sign fleet objects");
    assert!(refused.starts_with("Unauthorized"), "{refused}");
    let forged = FleetObject {
        network: b.data_dir().config().network.name.clone(),
        kind: ObjectKind::Deployment,
        name: "web".to_owned(),
        revision: 99,
        spec: Some(spec(0, "attacker/miner").to_string()),
    };
    let envelope = Envelope::seal(
        b.data_dir().identity(),
        1,
        Validity::from_now(PayloadKind::FleetObject.max_lifetime()),
        &forged,
    );
    b.mesh()
        .publish(TopicKind::Objects, envelope.to_bytes())
        .await
        .expect("b gossips its forgery");
    let replay =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &first_revision)
            .expect("base-64");
    b.mesh()
        .publish(TopicKind::Objects, replay)
        .await
        .expect("b gossips the old revision again");

    // A later honest change reaches everyone: the forgery (revision 99) and the replay
    // (revision 1) would have been applied before it, and neither was.
    call(
        &a,
        Role::Operate,
        "deploy.update",
        json!({"name": "web", "image": "busybox:v4"}),
    )
    .await
    .expect("update");
    everywhere(&[&a, &b, &c], "web", (4, 3)).await;
    for node in [&a, &b, &c] {
        let history = call(node, Role::Read, "deploy.history", json!({"name": "web"}))
            .await
            .expect("history");
        let text = history.to_string();
        assert!(
            !text.contains("attacker/miner") && !text.contains("\"revision\":99"),
            "{text}"
        );
        let status = call(node, Role::Read, "deploy.status", json!({"name": "web"}))
            .await
            .expect("status");
        assert_eq!(status["spec"]["template"]["image"], "busybox:v4");
        assert_eq!(status["signed_by"], json!(operator));
    }

    // Rollback signs a new revision with a kept one's spec; delete removes it everywhere.
    let rolled = call(
        &a,
        Role::Operate,
        "deploy.rollback",
        json!({"name": "web", "revision": 2}),
    )
    .await
    .expect("rollback");
    assert_eq!(
        (
            rolled["revision"].clone(),
            rolled["spec"]["template"]["image"].clone()
        ),
        (json!(5), json!("busybox:v2"))
    );
    call(&a, Role::Operate, "deploy.delete", json!({"name": "api"}))
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(40);
    while status(&c, "api").await.is_some() || status(&b, "api").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the deletion reaches every member"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = call(&b, Role::Read, "deploy.list", json!({}))
        .await
        .expect("list");
    assert_eq!(
        listed["deployments"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    for node in [a, b, c] {
        assert_eq!(node.stop().await, 0);
    }
}

/// A revoked API key stays revoked on every member, whoever signs otherwise: a later revision
/// that un-revokes it, signed with the operator's own key, is refused when handed in
/// (`object.put`) and dropped when gossiped, and the key is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_key_stays_revoked_whoever_signs_otherwise() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (root_a, root_b) = (temp.path().join("a"), temp.path().join("b"));
    let operator = init(&root_a, vec![]).identity().peer_id().to_string();
    let config_a = root_a.join("config.toml");
    let text = std::fs::read_to_string(&config_a).expect("a's config");
    std::fs::write(
        &config_a,
        text.replace("operators = []", &format!("operators = [{operator:?}]")),
    )
    .expect("listing a as an operator");
    init(&root_b, vec![operator.clone()]);
    let a = start(&root_a, vec![]).await;
    let seed = a.joinable_addrs(Duration::from_secs(5)).await;
    let b = start(&root_b, seed).await;

    let created = call(
        &a,
        Role::Admin,
        "auth.create_key",
        json!({"name": "ci", "role": "read", "expires_in_s": 600}),
    )
    .await
    .expect("auth.create_key");
    call(&a, Role::Admin, "auth.revoke_key", json!({"name": "ci"}))
        .await
        .expect("auth.revoke_key");
    let revoked_on_b = || async {
        let listed = call(&b, Role::Operate, "auth.list_keys", json!({}))
            .await
            .expect("auth.list_keys");
        (
            listed["keys"][0]["revoked"].clone(),
            listed["keys"][0]["revision"].clone(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while revoked_on_b().await != (json!(true), json!(2)) {
        assert!(Instant::now() < deadline, "the revocation reaches b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revision 3, live again, signed by the operator's own key.
    let spec = json!({
        "role": "read", "namespaces": [], "families": [],
        "expires_at_ms": created["key"]["expires_at_ms"],
        "secret_sha256": "1".repeat(64), "revoked": false,
    });
    let unrevoking = FleetObject {
        network: a.data_dir().config().network.name.clone(),
        kind: ObjectKind::ApiKey,
        name: "ci".to_owned(),
        revision: 3,
        spec: Some(spec.to_string()),
    };
    let envelope = Envelope::seal(
        a.data_dir().identity(),
        1_000_000,
        Validity::from_now(PayloadKind::FleetObject.max_lifetime()),
        &unrevoking,
    );
    let object = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        envelope.to_bytes(),
    );
    let refused = call(&b, Role::Admin, "object.put", json!({"object": object}))
        .await
        .expect_err("an un-revoking revision is refused");
    assert!(refused.contains("stays revoked"), "{refused}");
    a.mesh()
        .publish(TopicKind::Objects, envelope.to_bytes())
        .await
        .expect("a gossips it");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(revoked_on_b().await, (json!(true), json!(2)));
    let key = created["api_key"].as_str().expect("the key").to_owned();
    let mut whoami = InvokeRequest::new("auth.whoami", Duration::from_secs(5));
    whoami.api_key = Some(claw_mesh::ApiToken::new(key));
    let refused = b
        .commands()
        .invoke_for_gateway(Role::Read, whoami)
        .await
        .expect_err("the key is still refused");
    assert!(
        refused.message.contains("is revoked"),
        "{}",
        refused.message
    );

    for node in [a, b] {
        assert_eq!(node.stop().await, 0);
    }
}

/// A node with `gateway.require_api_key` refuses every gateway call without a key (and audits
/// the refusal), answers one with a key within what the key allows, and still answers its own
/// operator's mesh calls without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_requires_api_keys_answers_gateway_calls_only_with_one() {
    use claw_mesh::{InvokeHandler as _, InvokeResponse};

    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().join("a");
    let own = init(&root, vec![]).identity().peer_id().to_string();
    let config = root.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("the config");
    assert!(text.contains("require_api_key = false"), "{text}");
    std::fs::write(
        &config,
        text.replace("operators = []", &format!("operators = [{own:?}]"))
            .replace("require_api_key = false", "require_api_key = true"),
    )
    .expect("requiring keys");
    let a = start(&root, vec![]).await;
    let local = |command: &str, params: Value| {
        let request = InvokeRequest::new(command, Duration::from_secs(10)).with_params(params);
        let handled = a.commands().handle(a.peer_id(), request);
        async move {
            match handled.await {
                InvokeResponse::Ok(value) => Ok(value),
                InvokeResponse::Error(failure) => Err(failure.message),
            }
        }
    };

    let refused = call(&a, Role::Admin, "gpu.list", json!({}))
        .await
        .expect_err("no key, no answer");
    assert!(
        refused.contains("only gateway calls that carry an API key"),
        "{refused}"
    );
    let created = local(
        "auth.create_key",
        json!({"name": "agent", "role": "read", "families": ["gpu"], "expires_in_s": 600}),
    )
    .await
    .expect("the node's own operator makes a key without one");
    let key = created["api_key"].as_str().expect("the key").to_owned();
    let under_key = |command: &str| {
        let mut request = InvokeRequest::new(command, Duration::from_secs(10));
        request.api_key = Some(claw_mesh::ApiToken::new(key.clone()));
        a.commands().invoke_for_gateway(Role::Admin, request)
    };
    under_key("gpu.list").await.expect("gpu.list under the key");
    let refused = under_key("node.health")
        .await
        .expect_err("not the key's family");
    assert!(
        refused.message.contains("families gpu, not node"),
        "{}",
        refused.message
    );
    let audited = local(
        "audit.query",
        json!({"actor": "openclaw-gateway", "outcome": "UNAUTHORIZED"}),
    )
    .await
    .expect("audit.query");
    assert_eq!(
        audited["records"].as_array().map(Vec::len),
        Some(2),
        "{audited}"
    );
    assert_eq!(a.stop().await, 0);
}
