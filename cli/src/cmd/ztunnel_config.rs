//! `ambit ztunnel-config workloads|services|policies|certificates [--node N] [-o json]`: what
//! the node agents actually hold, read from their `/config_dump`.
//!
//! Workloads and services are the same on every agent, so without `--node` they come from one
//! agent (the lab's node1, a cluster's first node by name); policies and certificates are per
//! node, so without `--node` every agent is shown. The lab's dumps are read here
//! ([`lab_dumps`]), a cluster's by `cluster::agents`; [`output`] prints either.

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::table::Table;
use crate::lab::admin;
use crate::lab::state::{LabDir, LabState};

/// Which part of the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Workloads,
    Services,
    Policies,
    Certificates,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Section::Workloads => "workloads",
            Section::Services => "services",
            Section::Policies => "policies",
            Section::Certificates => "certificates",
        }
    }

    /// Workloads and services are the same on every agent: one agent's answer will do.
    pub fn same_on_every_agent(self) -> bool {
        matches!(self, Section::Workloads | Section::Services)
    }
}

/// The lab's agents' whole dumps, by node name: `node`'s, else one agent's or every agent's
/// (see [`Section::same_on_every_agent`]).
pub fn lab_dumps(
    dir: &LabDir,
    section: Section,
    node: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let state = dir.load()?;
    let nodes: Vec<u8> = match node {
        Some(name) => vec![state.node_index(name).with_context(|| {
            format!("no node {name:?}: the lab has node1 to node{}", state.nodes)
        })?],
        None if section.same_on_every_agent() => vec![1],
        None => (1..=state.nodes).collect(),
    };
    let mut dumps = Vec::new();
    for n in nodes {
        let name = LabState::node_name(n);
        let netns = format!("{}-{name}", state.prefix);
        let (status, body) =
            admin::get(&netns, admin::AGENT_ADMIN, "/config_dump").with_context(|| {
                format!("asking the agent on {name} (is the lab up? `ambit lab status`)")
            })?;
        if status != 200 {
            bail!("the agent on {name} answered {status}: {body}");
        }
        let dump: Value = serde_json::from_str(&body)
            .with_context(|| format!("the agent on {name} sent a config dump that is not JSON"))?;
        dumps.push((name, dump));
    }
    Ok(dumps)
}

/// What `ztunnel-config` prints from the agents' whole dumps (by node name), lab or cluster
/// alike: `section` of each, as a table or (`json`) as the raw dump by agent.
pub fn output(section: Section, dumps: Vec<(String, Value)>, json: bool) -> Result<String> {
    let parts: Vec<(String, Value)> = dumps
        .into_iter()
        .map(|(node, dump)| (node, dump[section.key()].clone()))
        .collect();
    if json {
        let map: serde_json::Map<String, Value> = parts.into_iter().collect();
        return Ok(serde_json::to_string_pretty(&Value::Object(map))? + "\n");
    }
    Ok(render(section, &parts))
}

/// The table for `section` from each agent's part of its dump (pure; snapshot-tested).
pub fn render(section: Section, dumps: &[(String, Value)]) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut table;
    match section {
        Section::Workloads => {
            table = Table::new(&[
                "namespace",
                "name",
                "address",
                "node",
                "captured",
                "protocol",
                "mtls",
                "identity",
            ]);
            for (_, dump) in dumps {
                for w in items(dump) {
                    table.row(vec![
                        s(&w["namespace"]),
                        s(&w["name"]),
                        s(&w["addresses"]),
                        s(&w["node"]),
                        if w["captured"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        s(&w["protocol"]),
                        s(&w["mtls_mode"]),
                        s(&w["identity"]),
                    ]);
                }
            }
        }
        Section::Services => {
            table = Table::new(&["namespace", "name", "vips", "ports", "waypoint"]);
            for (_, dump) in dumps {
                for svc in items(dump) {
                    table.row(vec![
                        s(&svc["namespace"]),
                        s(&svc["name"]),
                        s(&svc["vips"]),
                        s(&svc["ports"]),
                        s(&svc["waypoint"]),
                    ]);
                }
            }
        }
        Section::Policies => {
            table = Table::new(&["agent", "namespace", "name", "action", "scope", "rules"]);
            for (node, dump) in dumps {
                for p in items(dump) {
                    table.row(vec![
                        node.clone(),
                        s(&p["namespace"]),
                        s(&p["name"]),
                        s(&p["action"]),
                        s(&p["scope"]),
                        s(&p["rules"]),
                    ]);
                }
            }
        }
        Section::Certificates => {
            table = Table::new(&["agent", "identity", "state", "expires in"]);
            for (node, dump) in dumps {
                for c in items(dump) {
                    let expires = c["expires_in_seconds"]
                        .as_i64()
                        .map_or_else(|| "-".to_owned(), human_duration);
                    table.row(vec![
                        node.clone(),
                        s(&c["identity"]),
                        s(&c["state"]),
                        expires,
                    ]);
                }
            }
        }
    }
    table.render()
}

fn human_duration(seconds: i64) -> String {
    match seconds {
        s if s < 0 => "expired".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
