//! The fleet console in a real headless Chromium (Debian's `chromium`), against three
//! `clawnode run` processes with simulated GPUs on loopback: without the node's token the page is
//! a login prompt and holds nothing; with it, it shows every node and GPU and keeps up without a
//! reload: a node killed with `kill -9` turns silent, then leaves. A fleet member that names itself
//! with markup is shown as text. Screenshots of the main views are saved under the test's target
//! directory.

#[path = "console/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::Duration;

use claw_tests::{Clawnode, MarketNode as Node, required_part};
use serde_json::Value;

use browser::Browser;

/// A name a hostile fleet member gives itself.
const MARKUP: &str = "<img src=x onerror=\"document.title='owned'\">";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

#[test]
fn the_console_shows_the_fleet_live_and_nothing_without_the_token() {
    let Some(chromium) = required_part("CLAW_CHROMIUM", "headless Chromium (Debian's chromium)")
    else {
        return;
    };
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Node a is the fleet's operator (it signs the API key below).
    let a_cli = Node::init(Clawnode::new(&dir.path().join("a")), 2);
    let operator = claw_attestation::NodeIdentity::load(&a_cli.data_dir().join("identity.key"))
        .expect("node key")
        .peer_id()
        .to_string();
    let start = |cli: Clawnode, bootstrap: &[String], node_name: &str| {
        cli.configure_market("", "");
        // Announced every second, forgotten after 8 missed: a silent node shows for a while.
        cli.edit_config(|text| {
            let text = text
                .replace("missed_intervals = 3", "missed_intervals = 8")
                .replace("operators = []", &format!("operators = [{operator:?}]"));
            format!("[node]\nname = {node_name:?}\n\n{text}")
        });
        Node::start(cli, bootstrap)
    };
    let node = |name: &str, gpus: u32| Node::init(Clawnode::new(&dir.path().join(name)), gpus);
    let a = start(a_cli, &[], "console-a");
    let b = start(node("b", 1), &a.addrs(), "console-b");
    let mut c = start(node("c", 1), &a.addrs(), MARKUP);
    let control = std::fs::read_to_string(a.cli.data_dir().join("control.addr")).expect("address");
    let token = std::fs::read_to_string(a.cli.data_dir().join("control.token")).expect("token");
    let url = format!("http://{}/console", control.trim());

    let mut browser = Browser::launch(&chromium);
    browser.navigate(&url);
    browser.wait_until(
        "the login prompt",
        "!document.getElementById('login').hidden && document.getElementById('app').hidden",
    );
    // A wrong token gets the prompt again, and no data.
    browser.sign_in("not-the-token");
    browser.wait_until(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('not (or no longer) valid')",
    );
    assert_eq!(
        browser.eval("document.getElementById('app').hidden"),
        Value::Bool(true)
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#nodes .row').length"),
        0
    );
    assert_eq!(browser.eval("window.clawConsole.snapshots()"), 0);
    browser.screenshot(&shots().join("login.png"));

    // The right one: every node, every GPU, live.
    browser.sign_in(&token);
    browser.wait_until(
        "three nodes in the console",
        "document.querySelectorAll('#nodes .row').length === 3",
    );
    let loaded = browser.eval("window.clawConsole.loadedAt");
    let peers = browser
        .eval("[...document.querySelectorAll('#nodes .row')].map(r => r.dataset.peer).sort()");
    let mut expected = vec![a.peer_id.clone(), b.peer_id.clone(), c.peer_id.clone()];
    expected.sort();
    assert_eq!(peers, serde_json::json!(expected));
    assert_eq!(
        browser
            .eval("[...document.querySelectorAll('#fleet-cards .card')].map(c => c.textContent)"),
        serde_json::json!(["3nodes", "4GPUs", "4free GPUs", "4simulated GPUs"])
    );
    // The hostile name is text: no element was made of it, no script ran.
    let names = browser
        .eval("[...document.querySelectorAll('#nodes .row')].map(r => r.children[0].textContent)");
    assert!(
        names
            .as_array()
            .expect("names")
            .iter()
            .any(|n| n.as_str() == Some(MARKUP)),
        "{names}"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#nodes img').length"),
        0
    );
    assert_ne!(browser.eval("document.title"), "owned");
    browser.screenshot(&shots().join("fleet.png"));
    browser.eval("document.querySelector('[data-tab=gpus]').click(); true");
    browser.wait_until(
        "every GPU listed",
        "document.querySelectorAll('#gpus .row').length === 4",
    );
    let readings = browser.eval("document.getElementById('readings').textContent");
    assert!(
        readings.as_str().is_some_and(|t| t.contains("simulated")),
        "simulated GPUs are said to have no readings: {readings}"
    );
    browser.screenshot(&shots().join("gpus.png"));
    // A workload's output, live.
    let run = a.ok(
        "workload.run",
        &serde_json::json!({
            "image": image,
            "name": "ticker",
            "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done"],
        }),
    );
    let workload = run["id"].as_str().expect("workload id").to_owned();
    browser.eval("document.querySelector('[data-tab=workloads]').click(); true");
    let row = format!("document.querySelector('#workloads .row[data-workload=\"{workload}\"]')");
    browser.wait_until("the workload listed", &format!("{row} !== null"));
    browser.eval(&format!("{row}.click(); true"));
    browser.wait_until(
        "its output",
        "document.getElementById('logs').textContent.includes('tick 2')",
    );
    browser.wait_until(
        "its output going on",
        "document.getElementById('logs').textContent.includes('tick 8')",
    );
    browser.screenshot(&shots().join("workload-logs.png"));

    // With the control token the console acts: each action asks for a second click.
    let stop = format!("{row}.querySelector('button[data-action=stop_workload]')");
    browser.eval(&format!("{stop}.click(); true"));
    browser.wait_until(
        "the stop asks to be confirmed",
        &format!("{stop}.textContent === 'confirm: stop'"),
    );
    browser.eval(&format!("{stop}.click(); true"));
    browser.wait_until(
        "the workload stopped from the console",
        &format!("{row}.children[4].textContent !== 'running'"),
    );
    let listed = a.ok("workload.list", &serde_json::json!({"all": true}));
    assert!(
        listed["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .any(|w| w["id"] == workload.as_str() && w["state"] != "running"),
        "{listed}"
    );
    browser.eval("document.querySelector('[data-tab=fleet]').click(); true");
    let cordon = "document.querySelector('#node-actions button[data-action=cordon]')";
    browser.wait_until("the cordon button", &format!("{cordon} !== null"));
    browser.eval(&format!("{cordon}.click(); true"));
    browser.eval(&format!("{cordon}.click(); true"));
    let local_status = format!(
        "document.querySelector('#nodes .row[data-peer=\"{}\"] [data-status]').dataset.status",
        a.peer_id
    );
    browser.wait_until(
        "this node cordoned",
        &format!("{local_status} === 'cordoned'"),
    );
    browser.screenshot(&shots().join("fleet-cordoned.png"));
    let uncordon = "document.querySelector('#node-actions button[data-action=uncordon]')";
    browser.eval(&format!("{uncordon}.click(); true"));
    browser.eval(&format!("{uncordon}.click(); true"));
    browser.wait_until(
        "this node uncordoned",
        &format!("{local_status} === 'healthy'"),
    );
    // Only the console's own actions are taken, strictly.
    let refused = browser.eval(&format!(
        "fetch('/v1/console/act', {{method: 'POST', headers: {{Authorization: 'Bearer {}'}}, \
         body: JSON.stringify({{action: 'drain'}})}}).then(r => r.status)",
        token.trim()
    ));
    assert_eq!(
        refused, 400,
        "an action the console does not have is refused"
    );

    browser.eval("document.querySelector('[data-tab=market]').click(); true");
    browser.wait_until(
        "the market view",
        "!document.querySelector('[data-view=market]').hidden",
    );
    browser.screenshot(&shots().join("market.png"));
    browser.eval("document.querySelector('[data-tab=fleet]').click(); true");

    // A node killed: silent, then gone, with no reload of the page.
    c.kill();
    let row = format!(
        "document.querySelector('#nodes .row[data-peer=\"{}\"]')",
        c.peer_id
    );
    browser.wait_until(
        "the killed node shown silent",
        &format!("{row}?.querySelector('[data-status]')?.dataset.status === 'silent'"),
    );
    browser.screenshot(&shots().join("fleet-node-silent.png"));
    browser.wait_until(
        "the killed node gone",
        &format!("{row} === null && document.querySelectorAll('#nodes .row').length === 2"),
    );
    assert_eq!(
        browser.eval("window.clawConsole.loadedAt"),
        loaded,
        "the page was not reloaded"
    );
    assert!(browser.eval("window.clawConsole.snapshots()").as_u64() > Some(3));

    // An API key with the read role signs in too, sees what the key may read (not the leases,
    // which need operate), and is shown out as soon as it is revoked.
    let created = a.ok(
        "auth.create_key",
        &serde_json::json!({"name": "viewer", "role": "read", "expires_in_s": 3600}),
    );
    let key = created["api_key"].as_str().expect("the key").to_owned();
    browser.eval("sessionStorage.clear(); location.reload(); true");
    browser.wait_until(
        "the login prompt again",
        "!document.getElementById('login').hidden",
    );
    browser.sign_in(&key);
    browser.wait_until(
        "the fleet seen with the key",
        "document.querySelectorAll('#nodes .row').length === 2",
    );
    browser.wait_until(
        "the key named",
        "document.getElementById('where').textContent.includes('API key viewer (read)')",
    );
    browser.wait_until("the leases withheld from a read key",
        "document.getElementById('withheld').textContent.includes('market.leases needs the operate role')",
    );
    browser.screenshot(&shots().join("fleet-read-key.png"));
    // A read key is offered no action, and one asked for anyway is refused by the command's
    // own role check: nothing changes.
    assert_eq!(
        browser.eval("document.querySelectorAll('button.act').length"),
        0
    );
    let refused = browser.eval(&format!(
        "fetch('/v1/console/act', {{method: 'POST', headers: {{Authorization: 'Bearer {key}'}}, \
         body: JSON.stringify({{action: 'cordon'}})}}).then(async r => [r.status, await r.text()])"
    ));
    assert!(
        refused[1].as_str().is_some_and(|t| t.contains("operate")),
        "{refused}"
    );
    assert_ne!(refused[0], 200, "{refused}");
    let health = a.ok("node.health", &serde_json::json!({}));
    assert_ne!(health["cordoned"], true, "{health}");
    a.ok("auth.revoke_key", &serde_json::json!({"name": "viewer"}));
    browser.wait_until(
        "the revoked key shown out",
        "!document.getElementById('login').hidden && document.getElementById('app').hidden \
         && document.getElementById('login-error').textContent.includes('no longer')",
    );

    // An open console does not hold up the node's stop (its stop grace is 10 s), and the page
    // says it lost the node.
    let mut a = a;
    let stopping = std::time::Instant::now();
    let running = a.running.take().expect("node a runs");
    assert!(running.terminate(), "node a stopped cleanly");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "node a took {took:?} to stop with the console open"
    );
    browser.wait_until(
        "the page to say it lost the node",
        "!document.getElementById('live').textContent.startsWith('live')",
    );
    eprintln!("console screenshots: {}", shots().display());
}

/// The same console as the Fleet tab of OpenClaw's own Control UI: the real gateway with the
/// plugin installed, the bridge presenting two nodes, and Chromium signed in to the Control UI
/// with the gateway's token. The tab is in the sidebar; its frame shows both nodes with their
/// GPUs, the bridge's view of a workload deployed through the gateway, and keeps up without a
/// reload.
#[test]
fn the_fleet_tab_in_openclaws_control_ui_shows_the_bridges_fleet() {
    let Some(chromium) = required_part("CLAW_CHROMIUM", "headless Chromium (Debian's chromium)")
    else {
        return;
    };
    let Some((node24, openclaw, image)) = claw_tests::gateway_parts() else {
        return;
    };
    let fleet = claw_tests::AgentFleet::start(
        node24,
        openclaw,
        &[
            claw_tests::NodeSpec::new("tab-n1", 2),
            claw_tests::NodeSpec::new("tab-n2", 1),
        ],
        0,
        serde_json::json!({}),
    );
    let peers: Vec<String> = fleet
        .nodes
        .iter()
        .map(|n| n.process.peer_id.clone())
        .collect();
    let port = fleet
        .gateway
        .url()
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();

    let mut browser = Browser::launch(&chromium);
    browser.navigate(&format!(
        "http://127.0.0.1:{port}/plugin?plugin=clawbernetes&id=fleet#token={}",
        claw_tests::TOKEN
    ));
    let fleet_link = "[...document.querySelectorAll('a.nav-item')]\
                      .find(a => a.textContent.trim() === 'Fleet')";
    browser.wait_until("the Fleet tab in the sidebar", &format!("!!{fleet_link}"));
    assert_eq!(
        browser.eval(&format!("{fleet_link}.getAttribute('href')")),
        "/plugin?plugin=clawbernetes&id=fleet"
    );
    browser.eval(&format!("{fleet_link}.click(); true"));
    browser.wait_until(
        "the tab's frame",
        "!!document.querySelector('iframe.plugin-tab-embed__frame[title=\"Fleet\"]')",
    );
    assert_eq!(
        browser.eval(
            "document.querySelector('iframe.plugin-tab-embed__frame').getAttribute('sandbox')"
        ),
        "allow-scripts",
        "the tab runs sandboxed, without the Control UI's origin"
    );

    browser.enter_frame("/plugins/clawbernetes/console");
    browser.wait_until(
        "both nodes in the tab",
        "document.querySelectorAll('#nodes .row').length === 2",
    );
    let shown = browser.eval(
        "JSON.stringify([...document.querySelectorAll('#nodes .row')].map(r => r.dataset.peer).sort())",
    );
    let mut expected = peers.clone();
    expected.sort();
    assert_eq!(
        shown
            .as_str()
            .map(|s| serde_json::from_str::<Vec<String>>(s).expect("peer list")),
        Some(expected)
    );
    let header = browser.eval("document.getElementById('where').textContent");
    assert!(
        header
            .as_str()
            .is_some_and(|h| h.contains("through its bridge") && h.contains("OpenClaw gateway")),
        "{header}"
    );
    assert_eq!(
        browser.eval("document.getElementById('login').hidden"),
        true,
        "no sign-in inside the gateway"
    );
    let loaded = browser.eval("window.clawConsole.loadedAt");
    let first = browser.eval("window.clawConsole.snapshots()");
    browser.screenshot(&shots().join("openclaw-fleet-tab.png"));

    // Every GPU, marked simulated.
    browser.eval("document.querySelector('[data-tab=gpus]').click(); true");
    browser.wait_until(
        "three GPUs",
        "document.querySelectorAll('#gpus .row').length === 3",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#gpus .row .sim').length"),
        3
    );

    // A workload deployed through the gateway appears with its node, without a reload.
    let deployed = fleet
        .call(
            "fleet.deploy",
            &serde_json::json!({
                "image": image,
                "command": ["sh", "-c", "echo tab says hello; echo tab warns >&2; sleep 300"],
                "name": "tab-sleeper",
            }),
        )
        .expect("deploy through the bridge");
    let workload = deployed["workload"]["id"]
        .as_str()
        .expect("workload id")
        .to_owned();
    browser.eval("document.querySelector('[data-tab=workloads]').click(); true");
    let row = format!("document.querySelector('#workloads .row[data-workload=\"{workload}\"]')");
    browser.wait_until(
        "the deployed workload in the tab",
        &format!("{row} !== null"),
    );
    let node = browser.eval(&format!("{row}.firstChild.textContent"));
    assert_eq!(node, deployed["node"], "{deployed}");
    // Its output, asked by the tab's page with the tab's own capability (the sandboxed frame
    // sends no cookie), from the node the bridge's snapshot places it on.
    browser.eval(&format!("{row}.click(); true"));
    browser.wait_until(
        "the workload's output in the tab",
        "document.getElementById('logs').textContent.includes('tab says hello') \
         && document.querySelector('#logs .stderr')?.textContent === 'tab warns'",
    );
    // The logs route answers nothing without an open tab's capability, whoever asks.
    let forged = format!(
        "fetch('/plugins/clawbernetes-tab/logs', {{method: 'POST', body: JSON.stringify({{tab: \
         'A'.repeat(43), workload: '{workload}'}})}}).then(async r => [r.status, await r.text()])"
    );
    let refused = browser.eval(&forged);
    assert_eq!(refused[0], 401, "{refused}");
    assert!(
        !refused[1].as_str().unwrap_or_default().contains("hello"),
        "{refused}"
    );
    // A deployment made through the gateway, with its replica counted where it runs.
    fleet
        .call(
            "deploy.create",
            &serde_json::json!({"name": "tab-web", "spec": {
                "replicas": 1,
                "template": {"image": image, "command": ["sleep", "300"]},
            }}),
        )
        .expect("deploy.create through the bridge");
    let deployment = "document.querySelector('#deployments .row[data-deployment=\"tab-web\"]')";
    browser.wait_until(
        "the deployment's replica running",
        &format!("{deployment}?.children[4].textContent === '1 / 1'"),
    );
    browser.screenshot(&shots().join("openclaw-fleet-tab-workloads.png"));
    assert!(
        browser.eval("window.clawConsole.snapshots()").as_u64() > first.as_u64(),
        "snapshots keep coming"
    );
    assert_eq!(
        browser.eval("window.clawConsole.loadedAt"),
        loaded,
        "no reload"
    );
    browser.leave_frame();
    // Nor from the Control UI's own page, with the gateway's session.
    let refused = browser.eval(&forged);
    assert_eq!(refused[0], 401, "{refused}");
}
