//! `start`, `stop` and `restart`: the servers a command names or selects (by `--all`, `--type`
//! and `--label`), then the operation on each in turn.

use reqwest::Method;
use serde_json::Value;
use supersocket_proto::ServerInfo;

use crate::cli::Targets;
use crate::client::{Client, CtlError, decode, segment};
use crate::{Output, Printer, stdout};

/// Runs `verb` (with `query`, e.g. `?save=true`) on each target in turn: one line per server;
/// fails (exit 1) if any did, after trying them all.
pub async fn operate(
    client: &Client,
    printer: &Printer,
    targets: Targets,
    verb: &str,
    query: &str,
) -> Result<(), CtlError> {
    let names = if targets.names.is_empty() {
        selected(client, &targets).await?
    } else {
        targets.names
    };
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let path = format!("/api/v1/servers/{}/{verb}{query}", segment(name));
        match client.ok(Method::POST, &path, None).await {
            Ok(server) => {
                if printer.output == Output::Table {
                    let state = decode::<ServerInfo>(server.clone())?.state;
                    stdout::write(format!("{name}: {state}\n"));
                }
                results.push(server);
            }
            Err(CtlError::Failed(message)) => {
                if printer.output == Output::Table {
                    stdout::write(format!("{name}: {verb} failed\n"));
                }
                failures.push(format!("{verb} {name}: {message}"));
            }
            Err(other) => return Err(other),
        }
    }
    if printer.output == Output::Json {
        printer.show(&Value::Array(results), String::new);
    }
    match failures.len() {
        0 => Ok(()),
        _ => Err(CtlError::Failed(failures.join("; "))),
    }
}

/// The names of the host's servers `targets` selects; a selection of none fails.
async fn selected(client: &Client, targets: &Targets) -> Result<Vec<String>, CtlError> {
    let servers: Vec<ServerInfo> = client.typed(Method::GET, "/api/v1/servers").await?;
    let chosen = select(&servers, targets);
    if chosen.is_empty() {
        return Err(CtlError::Failed(none_selected(targets)));
    }
    Ok(chosen)
}

/// The names of the servers `targets` selects by type and labels (all of them with `--all`),
/// in config order.
fn select(servers: &[ServerInfo], targets: &Targets) -> Vec<String> {
    servers
        .iter()
        .filter(|s| targets.server_type.as_ref().is_none_or(|t| s.server_type == *t))
        .filter(|s| targets.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.name.clone())
        .collect()
}

/// Why a selection chose nothing, in words.
fn none_selected(targets: &Targets) -> String {
    let mut parts: Vec<String> = targets.server_type.iter().map(|t| format!("of type {t:?}")).collect();
    parts.extend(targets.labels.iter().map(|(k, v)| format!("labelled {k}={v}")));
    match parts.is_empty() {
        true => "the host has no servers".to_owned(),
        false => format!("no server is {}", parts.join(" and ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, server_type: &str, labels: &[(&str, &str)]) -> ServerInfo {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        serde_json::from_value(serde_json::json!({
            "name": name, "type": server_type, "state": "running", "isolation": "none",
            "autostart": true, "pid": 1, "listeners": [], "sessions": 0, "max_connections": 10,
            "total_sessions": 0, "total_packages": 0, "bytes_in": 0, "bytes_out": 0,
            "started_at": null, "uptime_secs": 0, "restarts": 0, "last_error": null,
            "labels": labels,
        }))
        .expect("a Server as the API sends it")
    }

    fn targets(all: bool, server_type: Option<&str>, labels: &[(&str, &str)]) -> Targets {
        Targets {
            names: Vec::new(),
            all,
            server_type: server_type.map(str::to_owned),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    fn host() -> Vec<ServerInfo> {
        vec![
            server("ChatA", "command", &[("team", "chat")]),
            server("Echo", "echo", &[]),
            server("ChatB", "command", &[("team", "chat"), ("tier", "edge")]),
            server("Edge", "echo", &[("tier", "edge")]),
        ]
    }

    #[test]
    fn all_selects_every_server_in_config_order() {
        assert_eq!(
            select(&host(), &targets(true, None, &[])),
            ["ChatA", "Echo", "ChatB", "Edge"]
        );
    }

    #[test]
    fn a_type_and_labels_must_all_match() {
        assert_eq!(select(&host(), &targets(false, Some("echo"), &[])), ["Echo", "Edge"]);
        assert_eq!(
            select(&host(), &targets(false, None, &[("tier", "edge")])),
            ["ChatB", "Edge"]
        );
        let both = targets(false, None, &[("team", "chat"), ("tier", "edge")]);
        assert_eq!(select(&host(), &both), ["ChatB"]);
        let typed = targets(false, Some("echo"), &[("tier", "edge")]);
        assert_eq!(select(&host(), &typed), ["Edge"]);
        let wrong_value = targets(false, None, &[("team", "edge")]);
        assert!(select(&host(), &wrong_value).is_empty());
    }

    #[test]
    fn a_selection_of_none_says_what_was_asked() {
        let asked = targets(false, Some("ftp"), &[("team", "chat"), ("tier", "edge")]);
        assert_eq!(
            none_selected(&asked),
            "no server is of type \"ftp\" and labelled team=chat and labelled tier=edge"
        );
        assert_eq!(none_selected(&targets(true, None, &[])), "the host has no servers");
    }
}
