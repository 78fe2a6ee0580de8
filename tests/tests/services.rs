//! Services through the mesh across `clawnode run` processes on the real Docker Engine: an HTTP
//! server in a container on one node is reached through `service.forward` on another node,
//! over libp2p streams, spread over the service's endpoints on two nodes; a member without the
//! operate role on an endpoint's node is refused there, with only its own key; and a forward
//! listens on loopback only. A canary that names a service takes its share of the service's
//! traffic and is promoted, or rolled back, on what that traffic shows; a plain member's
//! made-up tallies do not move it.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use claw_tests::deployments::Member;
use claw_tests::{eventually, http_get, required_part};
use serde_json::{Value, json};

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

/// Starts on `member` an HTTP server on port 8080 that answers `text`, labelled `app=web`.
fn serve(member: &Member, image: &str, text: &str) -> String {
    let script =
        format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www");
    let run = member
        .invoke(
            "workload.run",
            &json!({
                "image": image,
                "command": ["sh", "-c", script],
                "labels": {"app": "web"},
            }),
        )
        .expect("workload.run");
    run["id"].as_str().expect("id").to_owned()
}

/// The body of `GET /` through `addr`, or `None` when the connection brings no answer.
fn fetch(addr: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some(body.trim().to_owned())
}

#[test]
fn a_service_is_reached_through_the_mesh_by_those_allowed_only() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(3);
    let ids: Vec<String> = members.iter().map(|m| m.peer_id.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "every member to see the others",
        || {
            members
                .iter()
                .all(|m| ids.iter().all(|id| m.sees(id)))
                .then_some(())
        },
    );
    let (operator, first, second) = (&members[0], &members[1], &members[2]);
    serve(first, &image, "from-first");
    let second_endpoint = serve(second, &image, "from-second");
    operator
        .invoke(
            "service.create",
            &json!({"name": "web", "spec": {"selector": {"app": "web"}, "port": 8080}}),
        )
        .expect("service.create");
    for member in &members {
        eventually(
            Duration::from_secs(30),
            "every member to keep the service",
            || {
                member
                    .invoke("service.list", &json!({}))
                    .ok()
                    .and_then(|l| (l["services"][0]["name"] == "web").then_some(()))
            },
        );
    }
    let endpoints = first
        .invoke("service.endpoints", &json!({"name": "web"}))
        .expect("endpoints");
    assert_eq!(endpoints["endpoints"][0]["node"], json!(ids[1]));

    // The operator's node has no endpoint: every answer crosses the mesh, from both nodes.
    let forward = operator
        .invoke("service.forward", &json!({"service": "web"}))
        .expect("service.forward");
    let listen = forward["listen"].as_str().expect("listen").to_owned();
    assert!(listen.starts_with("127.0.0.1:"), "{listen}");
    let seen: BTreeSet<String> = eventually(
        Duration::from_secs(60),
        "answers from both endpoints",
        || {
            let seen: BTreeSet<String> = (0..6).filter_map(|_| fetch(&listen)).collect();
            (seen.len() == 2).then_some(seen)
        },
    );
    assert_eq!(
        seen,
        BTreeSet::from(["from-first".to_owned(), "from-second".to_owned()])
    );
    assert!(http_get(&listen, "/").contains("from-"));
    let listed = operator
        .invoke("service.forwards", &json!({}))
        .expect("forwards");
    assert!(listed["forwards"][0]["connections"].as_u64().unwrap_or(0) >= 3);

    // network.status: the members and the traffic, on both ends.
    let status = operator
        .invoke("network.status", &json!({}))
        .expect("network.status");
    let peers = status["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{status}");
    assert!(peers.iter().all(|p| p["connected"] == true), "{status}");
    let out = status["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .find(|t| t["target"] == "service/web" && t["direction"] == "out")
        .cloned()
        .expect("outbound traffic");
    assert!(out["connections"].as_u64() >= Some(3), "{out}");
    assert!(out["bytes_from_workload"].as_u64() > Some(0), "{out}");
    let served = second
        .invoke("network.status", &json!({}))
        .expect("network.status");
    assert!(
        served["traffic"]
            .as_array()
            .expect("traffic")
            .iter()
            .any(|t| t["target"] == "service/web" && t["direction"] == "in"),
        "{served}"
    );

    // A forward listens on loopback only.
    let exposed = operator.invoke(
        "service.forward",
        &json!({"service": "web", "listen": "0.0.0.0:0"}),
    );
    assert!(exposed.is_err_and(|e| e.contains("loopback")));

    // The first member, with only its own key and the read role on the second, forwards too:
    // its own endpoint answers, the second's node refuses its streams.
    let own = first
        .invoke("service.forward", &json!({"service": "web"}))
        .expect("a forward on a plain member");
    let own_listen = own["listen"].as_str().expect("listen").to_owned();
    let answers: Vec<Option<String>> = (0..6).map(|_| fetch(&own_listen)).collect();
    assert!(
        answers.iter().flatten().all(|a| a == "from-first"),
        "the second node let a plain member in: {answers:?}"
    );
    assert!(answers.iter().any(|a| a.as_deref() == Some("from-first")));
    // With its own endpoint gone, nothing answers it at all.
    let first_endpoint = first
        .invoke(
            "workload.list",
            &json!({"labels": {"app": "web"}, "all": false}),
        )
        .expect("list")["workloads"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    first
        .invoke("workload.stop", &json!({"workload": first_endpoint}))
        .expect("stop");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(fetch(&own_listen), None, "a refused stream carries nothing");
    // The operator still reaches the second.
    assert_eq!(fetch(&listen).as_deref(), Some("from-second"));

    let closed = operator
        .invoke("service.unforward", &json!({"listen": listen}))
        .expect("unforward");
    assert_eq!(closed["target"], "service/web");
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the port is closed"
    );
    second
        .invoke("workload.stop", &json!({"workload": second_endpoint}))
        .expect("stop");
}

/// An operator named `edge` with an ingress listener, and a member `web` joined through it,
/// each seeing the other; with the listener's address.
fn edge_and_web() -> (Member, Member, String) {
    let mut edge = Member::new(None);
    edge.cli
        .ok(&["configure", "--name", "edge", "--ingress", "127.0.0.1:0"]);
    edge.start(&[]);
    let mut web = Member::new(Some(&edge.peer_id));
    web.start(&edge.joinable());
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (edge.sees(&web.peer_id) && web.sees(&edge.peer_id)).then_some(()),
    );
    let listener = std::fs::read_to_string(edge.cli.data_dir().join("ingress.addr"))
        .expect("the ingress listener's address");
    (edge, web, listener)
}

/// `GET path` with `Host: host` through `addr`: the status and the body, or `None` when the
/// connection brings no answer.
fn get(addr: &str, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.trim().to_owned()))
}

/// An ingress rule maps a host and path on one member's HTTP listener to a service whose
/// endpoint runs on another member: requests reach the container over the mesh; the exact host
/// beats `*` and the longer prefix wins; a request no rule matches is answered 404 and one for a
/// service with no endpoint 502, each saying why; rules naming another member are not served
/// here; a member that is no operator cannot add a rule, with only its own key.
#[test]
fn an_ingress_rule_routes_http_by_host_and_path_to_a_service_through_the_mesh() {
    let Some(image) = test_image() else { return };
    let (edge, web, listener) = edge_and_web();
    serve(&web, &image, "from-web");
    edge.invoke(
        "service.create",
        &json!({"name": "web", "spec": {"selector": {"app": "web"}, "port": 8080}}),
    )
    .expect("service.create");
    edge.invoke(
        "service.create",
        &json!({"name": "idle", "spec": {"selector": {"app": "none"}, "port": 8080}}),
    )
    .expect("service.create");
    for (name, node, host, path, service) in [
        ("site", "edge", "web.example", "/", "web"),
        ("any-root", "edge", "*", "/", "idle"),
        ("any-page", "edge", "*", "/index.html", "web"),
        ("elsewhere", web.peer_id.as_str(), "*", "/other", "web"),
    ] {
        edge.invoke(
            "ingress.create",
            &json!({"name": name, "spec": {"node": node, "host": host, "path": path, "service": service}}),
        )
        .expect("ingress.create");
    }

    let (status, body) = eventually(
        Duration::from_secs(60),
        "the site through the ingress",
        || get(&listener, "web.example:8080", "/").filter(|(status, _)| *status == 200),
    );
    assert_eq!((status, body.as_str()), (200, "from-web"));
    // `*` with the longer prefix reaches the page; `*` at the root names a service with no
    // endpoint.
    assert_eq!(
        get(&listener, "other.example", "/index.html"),
        Some((200, "from-web".to_owned()))
    );
    let (status, body) = get(&listener, "other.example", "/").expect("an answer");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("service idle has no running endpoint"),
        "{body}"
    );
    // The rule naming the other member is not served here.
    edge.invoke("ingress.delete", &json!({"name": "any-root"}))
        .expect("ingress.delete");
    let (_, body) = eventually(Duration::from_secs(10), "the deleted rule gone", || {
        get(&listener, "other.example", "/other").filter(|(status, _)| *status == 404)
    });
    assert!(
        body.contains("no ingress rule for other.example/other on this member"),
        "{body}"
    );
    // The edge counts what its ingress carried per service.
    let counted = eventually(
        Duration::from_secs(10),
        "the ingress traffic counted",
        || {
            let status = edge.invoke("network.status", &json!({})).ok()?;
            status["traffic"]
                .as_array()?
                .iter()
                .find(|t| t["target"] == "service/web" && t["direction"] == "ingress")
                .filter(|t| t["connections"].as_u64() >= Some(2))
                .cloned()
        },
    );
    assert!(
        counted["bytes_from_workload"].as_u64() > Some(0),
        "{counted}"
    );
    assert!(counted["bytes_to_workload"].as_u64() > Some(0), "{counted}");
    let listed = web
        .invoke("ingress.list", &json!({}))
        .expect("ingress.list");
    assert_eq!(
        listed["ingresses"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // The member, with only its own key, cannot add a rule of its own.
    let refused = web
        .invoke(
            "ingress.create",
            &json!({"name": "mine", "spec": {"node": "edge", "host": "*", "path": "/", "service": "web"}}),
        )
        .expect_err("not an operator");
    assert!(refused.contains("not a fleet operator"), "{refused}");
}

/// A service sends connections only to ready endpoints: of two deployments whose replicas it
/// selects, the one whose health check never passes gets none (its replicas are replaced again
/// and again and never listed), the healthy one gets them all.
#[test]
fn a_service_reaches_only_replicas_that_pass_their_health_check() {
    let Some(image) = test_image() else { return };
    let members = Member::fleet(2);
    let (operator, member) = (&members[0], &members[1]);
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (operator.sees(&member.peer_id) && member.sees(&operator.peer_id)).then_some(()),
    );
    // Ready once its server answers /ready, which the container serves unless V is "bad".
    let script = "mkdir -p /www && echo \"from-$V\" > /www/index.html && \
                  if [ \"$V\" != bad ]; then echo ok > /www/ready; fi; exec httpd -f -p 8080 -h /www";
    for version in ["good", "bad"] {
        let spec = json!({
            "replicas": 1,
            "template": {"image": image, "command": ["sh", "-c", script],
                         "env": {"V": version}, "labels": {"app": "web"}},
            "health": {
                "probe": {"type": "http", "port": 8080, "path": "/ready"},
                "interval_secs": 1,
                "failure_threshold": 1,
            },
        });
        operator
            .invoke("deploy.create", &json!({"name": version, "spec": spec}))
            .expect("deploy.create");
    }
    operator
        .invoke(
            "service.create",
            &json!({"name": "web", "spec": {"selector": {"app": "web"}, "port": 8080}}),
        )
        .expect("service.create");
    let endpoints = |member: &Member| -> Vec<String> {
        member
            .invoke("service.endpoints", &json!({"name": "web"}))
            .ok()
            .and_then(|l| l["endpoints"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["workload"].as_str().map(str::to_owned))
            .collect()
    };
    let running_bad = |member: &Member| -> Vec<String> {
        member
            .invoke("workload.list", &json!({}))
            .ok()
            .and_then(|l| l["workloads"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|w| w["labels"]["clawbernetes-deployment"] == "bad" && w["state"] == "running")
            .filter_map(|w| w["id"].as_str().map(str::to_owned))
            .collect()
    };
    // The good replica becomes the one endpoint, while a bad replica runs unlisted.
    let forward = operator
        .invoke("service.forward", &json!({"service": "web"}))
        .expect("service.forward");
    let listen = forward["listen"].as_str().expect("listen").to_owned();
    eventually(
        Duration::from_secs(90),
        "the good replica listed, a bad one running",
        || {
            let listed: Vec<String> = members.iter().flat_map(endpoints).collect();
            let bad: Vec<String> = members.iter().flat_map(running_bad).collect();
            (listed.len() == 1 && !bad.is_empty() && bad.iter().all(|b| !listed.contains(b)))
                .then_some(())
        },
    );
    for _ in 0..6 {
        let body = eventually(
            Duration::from_secs(15),
            "an answer through the forward",
            || fetch(&listen),
        );
        assert_eq!(body, "from-good");
    }
}

/// `GET /cgi-bin/app` through the ingress at `addr`: the status and the "from-…" line of the
/// (chunked) body.
fn app(addr: &str) -> Option<(u16, String)> {
    let (status, body) = get(addr, "site", "/cgi-bin/app")?;
    let line = body.lines().find(|l| l.starts_with("from-")).unwrap_or("");
    Some((status, line.to_owned()))
}

/// A plain member of the fleet, in this process, with only its own key: it announces itself
/// (cordoned, so nothing is placed on it) and answers every `deploy.replicas` for a deployment
/// with the canary record it reads from `source` and a tally it made up, in which every request
/// to the template under test, on its own endpoints, it says, failed.
struct Liar {
    runtime: tokio::runtime::Runtime,
    peer_id: String,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

struct LyingReports {
    mesh: Arc<std::sync::OnceLock<claw_mesh::MeshHandle>>,
    source: claw_mesh::PeerId,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl claw_mesh::InvokeHandler for LyingReports {
    fn handle(
        &self,
        _caller: claw_mesh::PeerId,
        request: claw_mesh::InvokeRequest,
    ) -> claw_mesh::HandlerFuture {
        let (mesh, source, answered) = (
            self.mesh.get().cloned(),
            self.source,
            Arc::clone(&self.answered),
        );
        Box::pin(async move {
            let refused = |why: &str| {
                claw_mesh::InvokeResponse::Error(claw_mesh::InvokeFailure::new(
                    claw_mesh::ErrorCode::Unavailable,
                    why,
                ))
            };
            let (Some(mesh), "deploy.replicas") = (mesh, request.command.as_str()) else {
                return refused("not answered");
            };
            let name = request.params["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let read = claw_mesh::InvokeRequest::new("deploy.replicas", Duration::from_secs(3))
                .with_params(json!({ "name": name }));
            let Ok(honest) = mesh.invoke(source, read).await else {
                return refused("no record to copy");
            };
            let record = honest["canary"].clone();
            let template = record["template"].clone();
            // Its own endpoints, it says: a host's word about its own containers counts, when it
            // runs them.
            let node = mesh.local_peer_id().to_string();
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            claw_mesh::InvokeResponse::Ok(json!({
                "name": name, "fence": null, "replicas": [], "canary": record,
                "traffic": [{"template": template, "node": node, "requests": 1000, "errors": 1000,
                             "latency": []}],
            }))
        })
    }
}

impl Liar {
    /// Joins through `seed` (a member's address), reading records from `source`, with a key
    /// that does not rank first among `members` for deployment `deployment` (it is to lie in
    /// reports, not to control).
    fn join(seed: &[String], source: &str, members: &[&str], deployment: &str) -> Self {
        use claw_attestation::{Envelope, NodeIdentity, Validity};
        let key = clawnode::store::ObjectKind::Deployment.key(deployment);
        let peers: Vec<claw_mesh::PeerId> = members
            .iter()
            .map(|m| m.parse().expect("peer id"))
            .collect();
        let identity = loop {
            let identity = NodeIdentity::generate();
            let mut all = peers.clone();
            all.push(identity.peer_id());
            let first = clawnode::controller::plan::ranking(&key, all)[0];
            if first != identity.peer_id() {
                break Arc::new(identity);
            }
        };
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let answered = Arc::default();
        let handler = LyingReports {
            mesh: Arc::default(),
            source: source.parse().expect("peer id"),
            answered: Arc::clone(&answered),
        };
        let slot = Arc::clone(&handler.mesh);
        let config = claw_mesh::MeshConfig {
            network: "localnet".to_owned(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            bootstrap: seed.iter().filter_map(|a| a.parse().ok()).collect(),
            allow_colocated_peers: true,
            ..claw_mesh::MeshConfig::default()
        };
        let peer_id = identity.peer_id().to_string();
        runtime.block_on(async {
            let mesh = claw_mesh::Mesh::spawn(&identity, config, Arc::new(handler))
                .expect("the liar's mesh");
            let mut events = mesh.events;
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            let _ = slot.set(mesh.handle.clone());
            let announcement = claw_mesh::NodeAnnouncement {
                name: "liar".into(),
                network: "localnet".into(),
                region: None,
                labels: Default::default(),
                software_version: "liar".into(),
                listen_addrs: vec![],
                inventory: claw_attestation::HardwareInventory {
                    host: Default::default(),
                    nvml: claw_attestation::NvmlStatus::Unavailable {
                        reason: "none".into(),
                    },
                    gpus: vec![],
                },
                allocated_gpus: vec![],
                running_workloads: 0,
                taints: Vec::new(),
                reachability: Default::default(),
                membership: None,
                cordoned: true,
            };
            let handle = mesh.handle;
            tokio::spawn(async move {
                for seq in 1.. {
                    let bytes = Envelope::seal(
                        &identity,
                        seq,
                        Validity::from_now(Duration::from_secs(60)),
                        &announcement,
                    )
                    .to_bytes();
                    let _ = handle.announce(bytes).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        });
        Self {
            runtime,
            peer_id,
            answered,
        }
    }
}

/// The canary's share of `status`: (its requests, all requests) in the current step.
fn canary_share(status: &Value) -> (u64, u64) {
    let canary = status["canary"]["canary"]["requests"].as_u64().unwrap_or(0);
    let stable = status["canary"]["stable"]["requests"].as_u64().unwrap_or(0);
    (canary, canary + stable)
}

/// A canary that names a service takes each step's share of the service's traffic, and its
/// controller moves it on by what the traffic shows: through an ingress on one member, the new
/// revision of a deployment on another gets 10 % of the requests, then 50 % once its step
/// passed, then all; a later revision whose every answer is a 500 is rolled back by the fleet
/// within its first step, with the measured error rate named, and the stable revision takes
/// all the traffic again. Meanwhile a plain member, with only its own key, answers the
/// controller's reads with made-up tallies in which every request to the good revision failed:
/// they count for nothing (without the check on who may carry traffic, the good revision was
/// rolled back).
#[test]
fn a_canary_takes_its_share_of_a_services_traffic_and_moves_on_or_rolls_back_by_what_it_shows() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(image) = test_image() else { return };
    let (edge, web, listener) = edge_and_web();
    // A plain member that will report every request to a new revision failed.
    let liar = Liar::join(
        &edge.joinable(),
        &edge.peer_id,
        &[&edge.peer_id, &web.peer_id],
        "app",
    );
    eventually(Duration::from_secs(60), "the liar in the fleet", || {
        (edge.sees(&liar.peer_id) && web.sees(&liar.peer_id)).then_some(())
    });
    // /cgi-bin/app answers "from-$V", with a 500 status when V is "bad".
    let script = "mkdir -p /www/cgi-bin; \
        if [ \"$V\" = bad ]; then S='Status: 500 Internal Server Error'; else S='Status: 200 OK'; fi; \
        printf '#!/bin/sh\\necho \"%s\"\\necho \"Content-Type: text/plain\"\\necho\\necho \"from-%s\"\\n' \"$S\" \"$V\" \
          > /www/cgi-bin/app; chmod +x /www/cgi-bin/app; exec httpd -f -p 8080 -h /www";
    let spec = json!({
        "replicas": 2,
        "template": {"image": image, "command": ["sh", "-c", script],
                     "env": {"V": "1"}, "labels": {"app": "web"}},
        "strategy": {"type": "canary", "steps": [10, 50], "analysis": {
            "service": "web", "interval_secs": 5, "max_error_percent": 5.0, "min_requests": 30,
        }},
        "health": {"probe": {"type": "tcp", "port": 8080}, "interval_secs": 1},
    });
    edge.invoke("deploy.create", &json!({"name": "app", "spec": spec}))
        .expect("deploy.create");
    edge.invoke(
        "service.create",
        &json!({"name": "web", "spec": {"selector": {"app": "web"}, "port": 8080}}),
    )
    .expect("service.create");
    edge.invoke(
        "ingress.create",
        &json!({"name": "site", "spec": {"node": "edge", "host": "*", "path": "/", "service": "web"}}),
    )
    .expect("ingress.create");
    let body = eventually(
        Duration::from_secs(90),
        "revision 1 through the ingress",
        || app(&listener).filter(|(status, _)| *status == 200),
    );
    assert_eq!(body.1, "from-1");

    // Steady traffic through the ingress from here on: every answer's status and body.
    let answers: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, stop, listener) = (Arc::clone(&answers), Arc::clone(&stop), listener.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(answer) = app(&listener) {
                    answers.lock().unwrap().push(answer);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = |what: &str, done: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut last = Value::Null;
        while std::time::Instant::now() < deadline {
            if let Some(status) = edge.status("app") {
                if done(&status) {
                    return status;
                }
                last = status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}: {last:#}");
    };

    // Revision 2: 10 % of the requests once its replica serves, exactly as the edge splits
    // them (measured between two readings of the same step).
    edge.invoke("deploy.update", &json!({"name": "app", "env": {"V": "2"}}))
        .expect("deploy.update");
    let serving = status("the canary serving", &|s| {
        s["revision"] == json!(2) && s["canary"]["step"] == json!(0) && canary_share(s).0 >= 1
    });
    assert_eq!(
        serving["canary"]["traffic_percent"],
        json!(10),
        "{serving:#}"
    );
    let first = status("the canary's first step measured", &|s| {
        s["canary"]["since_ms"] == serving["canary"]["since_ms"]
            && canary_share(s).1 >= canary_share(&serving).1 + 80
    });
    let (canary, total) = (
        canary_share(&first).0 - canary_share(&serving).0,
        canary_share(&first).1 - canary_share(&serving).1,
    );
    assert!(
        (canary * 10).abs_diff(total) <= 10,
        "10 % of the traffic to the canary: {canary} of {total}: {serving:#} then {first:#}"
    );
    // Its step passed: 50 %.
    let second = status("the canary's second step measured", &|s| {
        s["canary"]["step"] == json!(1) && canary_share(s).1 >= 40
    });
    let (canary, total) = canary_share(&second);
    assert_eq!(second["canary"]["traffic_percent"], json!(50), "{second:#}");
    assert!(
        canary * 2 <= total && total <= canary * 2 + 2,
        "half the traffic to the canary: {canary} of {total}: {second:#}"
    );
    let note = second["canary"]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("step 1 (10 % of traffic) passed"),
        "{second:#}"
    );
    // Promoted: every replica on revision 2, all the traffic to it.
    let promoted = status("the canary promoted to every replica", &|s| {
        s["canary"]["traffic_percent"] == json!(100)
            && s["ready"] == json!(2)
            && s["replicas"].as_array().is_some_and(|r| r.len() == 2)
    });
    assert_eq!(promoted["failed_revisions"], json!([]), "{promoted:#}");
    // The liar's reports reached the controller, and counted for nothing: promoted, with no
    // error counted on the new revision.
    assert!(
        liar.answered.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the liar was asked for reports"
    );
    assert_eq!(
        promoted["canary"]["canary"]["errors"],
        json!(0),
        "{promoted:#}"
    );
    drop(liar.runtime);
    let seen_at_promotion = answers.lock().unwrap().len();

    // Revision 3 answers every request with a 500: rolled back within its first step.
    edge.invoke(
        "deploy.update",
        &json!({"name": "app", "env": {"V": "bad"}}),
    )
    .expect("deploy.update");
    let failed = status("the failing canary rolled back", &|s| {
        s["failed_revisions"] == json!([3]) && s["canary"]["failed"] == json!(true)
    });
    let note = failed["canary"]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("revision 3 failed its canary analysis at step 1 (10 % of traffic)")
            && note.contains("error rate 100.0 % over the allowed 5 %"),
        "{failed:#}"
    );
    assert_eq!(failed["canary"]["traffic_percent"], json!(0), "{failed:#}");
    let pending = failed["pending"].as_str().unwrap_or_default();
    assert!(
        pending.contains("rolled back to revision 2's template"),
        "{failed:#}"
    );
    // The stable revision serves everything again, and no bad replica is left.
    status("only revision 2's replicas left", &|s| {
        s["ready"].as_u64() == Some(0)
            && s["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["revision"] == json!(2)))
    });
    let since = answers.lock().unwrap().len();
    eventually(
        Duration::from_secs(60),
        "30 answers after the rollback",
        || (answers.lock().unwrap().len() >= since + 30).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    client.join().expect("the client");
    let answers = answers.lock().unwrap();
    let bad_ones = answers[seen_at_promotion..since]
        .iter()
        .filter(|(status, _)| *status == 500)
        .count();
    assert!(
        bad_ones >= 20,
        "the failing canary took its share: {bad_ones} 500s"
    );
    assert!(
        answers[since..]
            .iter()
            .all(|(status, body)| *status == 200 && body == "from-2"),
        "after the rollback only revision 2 answers: {:?}",
        &answers[since..]
    );
}
