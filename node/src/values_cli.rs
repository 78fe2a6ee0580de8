//! `clawnode config` and `clawnode secret`: the fleet's configs and secrets. A secret's values
//! are read from files or standard input, never from the command line (where the shell history
//! and `ps` would keep them), and no command prints them.

use std::collections::BTreeMap;
use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use claw_api::configs::{
    Config, ConfigCreate, ConfigDelete, ConfigGet, ConfigList, ConfigParams, ConfigRef,
    ConfigUpdate, Deleted,
};
use claw_api::secrets::{
    Secret, SecretCreate, SecretDelete, SecretDescribe, SecretList, SecretParams, SecretRef,
    SecretRotate,
};
use claw_api::{Command, NoParams};
use zeroize::Zeroizing;

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Create a config from KEY=VALUE pairs and files.
    Create(ConfigArgs),
    /// Replace a config's values (a new revision).
    Update(ConfigArgs),
    /// A config's values.
    Get {
        /// The config.
        name: String,
    },
    /// The fleet's configs and their keys.
    List,
    /// Delete a config.
    Delete {
        /// The config.
        name: String,
    },
}

/// `clawnode config create|update`.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The config's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    /// A value KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A value read from a file, KEY=PATH (repeatable).
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    from_file: Vec<String>,
}

/// `clawnode secret …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Create a secret sealed to the nodes allowed to use it.
    Create(SecretArgs),
    /// Give a secret new values, sealed afresh; deployments using it roll.
    Rotate(SecretArgs),
    /// A secret's keys, revision and nodes (never its values).
    Describe {
        /// The secret.
        name: String,
    },
    /// The fleet's secrets.
    List,
    /// Delete a secret.
    Delete {
        /// The secret.
        name: String,
    },
}

/// `clawnode secret create|rotate`.
#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// The secret's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    /// A value read from a file, KEY=PATH (repeatable).
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    from_file: Vec<String>,
    /// A value read from standard input, to its end (one key at most).
    #[arg(long = "from-stdin", value_name = "KEY")]
    from_stdin: Option<String>,
    /// A node allowed to use it, by peer id or name (repeatable). Default on create: every
    /// member the node sees; on rotate: the same nodes as before.
    #[arg(long = "node", value_name = "NODE")]
    nodes: Vec<String>,
}

fn pair<'a>(text: &'a str, flag: &str) -> Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("{flag} {text:?} is not KEY=..."))
}

fn read_file(key: &str, path: &str) -> Result<(String, String)> {
    let value =
        std::fs::read_to_string(path).with_context(|| format!("reading {path} for key {key:?}"))?;
    Ok((key.to_owned(), value))
}

/// `clawnode config …`: one arm per subcommand.
pub(crate) fn config(global: &GlobalArgs, command: ConfigCommand) -> Result<()> {
    let params = |args: ConfigArgs| -> Result<ConfigParams> {
        let mut data = BTreeMap::new();
        for text in &args.set {
            let (key, value) = pair(text, "--set")?;
            data.insert(key.to_owned(), value.to_owned());
        }
        for text in &args.from_file {
            let (key, path) = pair(text, "--from-file")?;
            let (key, value) = read_file(key, path)?;
            data.insert(key, value);
        }
        Ok(ConfigParams {
            name: args.name,
            data,
        })
    };
    let config = match command {
        ConfigCommand::Create(args) => {
            ops::call::<ConfigCreate>(global, &params(args)?, None, None)?
        }
        ConfigCommand::Update(args) => {
            ops::call::<ConfigUpdate>(global, &params(args)?, None, None)?
        }
        ConfigCommand::Get { name } => {
            ops::call::<ConfigGet>(global, &ConfigRef { name }, None, None)?
        }
        ConfigCommand::List => {
            let listing = ops::call::<ConfigList>(global, &NoParams {}, None, None)?;
            if global.json {
                print_json(&listing);
            } else {
                let rows: Vec<Vec<String>> = listing
                    .configs
                    .iter()
                    .map(|c| vec![c.name.clone(), c.revision.to_string(), c.keys.join(",")])
                    .collect();
                print_table(&["NAME", "REVISION", "KEYS"], &rows);
            }
            return Ok(());
        }
        ConfigCommand::Delete { name } => {
            let deleted = ops::call::<ConfigDelete>(global, &ConfigRef { name }, None, None)?;
            return show_deleted(global, "config", &deleted);
        }
    };
    show_config(global, &config);
    Ok(())
}

fn show_config(global: &GlobalArgs, config: &Config) {
    if global.json {
        print_json(config);
        return;
    }
    println!("config {} revision {}", config.name, config.revision);
    for (key, value) in &config.data {
        println!("  {key}: {value}");
    }
}

fn show_deleted(global: &GlobalArgs, what: &str, deleted: &Deleted) -> Result<()> {
    if global.json {
        print_json(deleted);
    } else {
        println!(
            "{what} {} deleted (revision {})",
            deleted.name, deleted.revision
        );
    }
    Ok(())
}

/// `clawnode secret …`: one arm per subcommand.
pub(crate) fn secret(global: &GlobalArgs, command: SecretCommand) -> Result<()> {
    let secret = match command {
        SecretCommand::Create(args) => put::<SecretCreate>(global, args)?,
        SecretCommand::Rotate(args) => put::<SecretRotate>(global, args)?,
        SecretCommand::Describe { name } => {
            ops::call::<SecretDescribe>(global, &SecretRef { name }, None, None)?
        }
        SecretCommand::List => {
            let listing = ops::call::<SecretList>(global, &NoParams {}, None, None)?;
            if global.json {
                print_json(&listing);
            } else {
                let rows: Vec<Vec<String>> = listing
                    .secrets
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.revision.to_string(),
                            s.keys.join(","),
                            s.nodes.len().to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "REVISION", "KEYS", "NODES"], &rows);
            }
            return Ok(());
        }
        SecretCommand::Delete { name } => {
            let deleted = ops::call::<SecretDelete>(global, &SecretRef { name }, None, None)?;
            return show_deleted(global, "secret", &deleted);
        }
    };
    if global.json {
        print_json(&secret);
    } else {
        print_secret(&secret);
    }
    Ok(())
}

fn put<C: Command<Params = SecretParams, Answer = Secret>>(
    global: &GlobalArgs,
    args: SecretArgs,
) -> Result<Secret> {
    let mut data = BTreeMap::new();
    for text in &args.from_file {
        let (key, path) = pair(text, "--from-file")?;
        let (key, value) = read_file(key, path)?;
        data.insert(key, value);
    }
    if let Some(key) = args.from_stdin {
        let mut value = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut value)
            .context("reading the secret value from standard input")?;
        data.insert(key, value.to_string());
    }
    if data.is_empty() {
        bail!("no value: give --from-file KEY=PATH or --from-stdin KEY");
    }
    let params = SecretParams {
        name: args.name,
        data,
        nodes: (!args.nodes.is_empty()).then_some(args.nodes),
    };
    let answer = ops::call::<C>(global, &params, None, None);
    // The values go no further than this call.
    let SecretParams { data, .. } = params;
    for value in data.into_values() {
        drop(Zeroizing::new(value));
    }
    answer
}

fn print_secret(secret: &Secret) {
    println!(
        "secret {} revision {}: keys {}, sealed to {} node(s)",
        secret.name,
        secret.revision,
        secret.keys.join(", "),
        secret.nodes.len()
    );
    for node in &secret.nodes {
        println!("  {node}");
    }
    if !secret.rolled.is_empty() {
        println!("rolled deployments: {}", secret.rolled.join(", "));
    }
}
