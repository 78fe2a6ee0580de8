//! Every skill is valid OpenClaw SKILL.md (frontmatter with a well-formed name that matches its
//! folder, a description of at most 1,024 characters, and `metadata.openclaw` as JSON), names
//! only commands and tools that exist (the node's and the bridge's command tables, the
//! plugin's declared tools, its gateway method), and is bundled unchanged inside the plugin.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The frontmatter's `key: value` lines, and the body.
fn frontmatter(text: &str) -> (Vec<(String, String)>, String) {
    let rest = text
        .strip_prefix("---\n")
        .expect("SKILL.md starts with ---");
    let (head, body) = rest
        .split_once("\n---\n")
        .expect("the frontmatter ends with ---");
    let fields = head
        .lines()
        .map(|line| {
            let (key, value) = line.split_once(": ").expect("key: value");
            (key.to_owned(), value.to_owned())
        })
        .collect();
    (fields, body.to_owned())
}

fn valid_name(name: &str) -> bool {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (1..=64).contains(&name.len())
        && ok_chars
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Backticked words of the body.
fn code_spans(body: &str) -> Vec<String> {
    body.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

const COMMAND_PREFIXES: &[&str] = &[
    "gpu.",
    "workload.",
    "node.",
    "system.",
    "container.",
    "market.",
    "wallet.",
    "fleet.",
    "deploy.",
    "job.",
    "cron.",
    "autoscale.",
    "config.",
    "secret.",
    "volume.",
    "backup.",
    "service.",
    "ingress.",
    "policy.",
    "namespace.",
    "audit.",
    "auth.",
    "clawbernetes.",
];

#[test]
fn skills_are_valid_name_only_what_exists_and_ship_inside_the_plugin() {
    let root = repo();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("plugin/openclaw-clawbernetes/openclaw.plugin.json"))
            .expect("plugin manifest"),
    )
    .expect("manifest JSON");
    let tools: BTreeSet<String> = manifest["contracts"]["tools"]
        .as_array()
        .expect("declared tools")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let plugin_source =
        std::fs::read_to_string(root.join("plugin/openclaw-clawbernetes/src/index.ts"))
            .expect("plugin entry");
    let mut commands: BTreeSet<String> = clawnode::commands::NodeCommands::names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    commands.extend(claw_bridge::fleet::FleetCommands::names());

    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("skills")).expect("skills/") {
        let dir = entry.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let folder = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let text = std::fs::read_to_string(dir.join("SKILL.md")).expect("SKILL.md");
        let (fields, body) = frontmatter(&text);
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{folder}: no {key}"))
        };
        let name = field("name");
        assert!(valid_name(&name), "{folder}: bad name {name:?}");
        assert_eq!(name, folder, "the name is the folder's");
        let description = field("description");
        assert!(
            !description.is_empty() && description.len() <= 1024,
            "{folder}: description"
        );
        let metadata: serde_json::Value =
            serde_json::from_str(&field("metadata")).expect("metadata is JSON");
        assert!(
            metadata["openclaw"].is_object(),
            "{folder}: metadata.openclaw"
        );
        for span in code_spans(&body) {
            if span.starts_with("claw_") {
                assert!(
                    tools.contains(&span),
                    "{folder} names {span}, which the plugin lacks"
                );
            } else if COMMAND_PREFIXES.iter().any(|p| span.starts_with(p)) && !span.contains(' ') {
                let known = commands.contains(&span)
                    || (span.starts_with("clawbernetes.") && plugin_source.contains(&span));
                assert!(
                    known,
                    "{folder} names {span}, which no node, bridge or plugin offers"
                );
            }
        }
        let bundled = root
            .join("plugin/openclaw-clawbernetes/skills")
            .join(&folder)
            .join("SKILL.md");
        assert_eq!(
            std::fs::read_to_string(&bundled).unwrap_or_default(),
            text,
            "{folder}: the plugin's copy is stale (run plugin/openclaw-clawbernetes/sync-skills.sh)"
        );
        names.push(name);
    }
    names.sort();
    for expected in [
        "clawbernetes",
        "gpu-cluster",
        "gpu-diagnose",
        "workload-manager",
        "system-admin",
        "observability",
        "molt-marketplace",
        "cost-optimize",
        "incident-response",
        "auto-heal",
        "training-job",
        "spot-migration",
        "secrets-config",
        "storage",
        "networking",
        "auth-rbac",
    ] {
        assert!(names.iter().any(|n| n == expected), "no skill {expected}");
    }
    let bundled = std::fs::read_dir(root.join("plugin/openclaw-clawbernetes/skills"))
        .expect("bundled skills")
        .count();
    assert_eq!(
        bundled,
        names.len(),
        "the plugin bundles exactly the skills"
    );
}
