//! Config changes through the API, timed as a client sees them: from `POST /api/v1/servers` to
//! the new instance answering, and `PUT` of one server's limits while many sessions are open on
//! the host (none of which may close).

use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::IO_TIMEOUT;
use crate::lifecycle::{p50_and_max, until_it_echoes};

fn failed(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Adds an echo server `cycles` times (isolation `isolation`), each time timing the request
/// and the wait for its first echo; removes it after each.
pub async fn add_time(admin: &str, isolation: &str, cycles: usize) -> Result<String, String> {
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        let name = format!("Added-{cycle}");
        let body = json!({ "name": name, "type": "echo", "isolation": isolation,
                           "listeners": [{ "ip": "Loopback", "port": 0 }] });
        let began = Instant::now();
        let response = http
            .post(format!("{admin}/api/v1/servers"))
            .json(&body)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let added: serde_json::Value = response.json().await.map_err(failed)?;
        let port = added["listeners"][0]["port"]
            .as_u64()
            .ok_or_else(|| format!("{name} was not added ({status}): {added}"))? as u16;
        until_it_echoes(&name, port, began).await?;
        samples.push(began.elapsed());
        http.delete(format!("{admin}/api/v1/servers/{name}?timeout=1s"))
            .send()
            .await
            .map_err(failed)?;
    }
    let (p50, max) = p50_and_max(samples);
    Ok(format!(
        r#"{{"mode":"add-time","isolation":"{isolation}","cycles":{cycles},"p50_ms":{p50:.2},"max_ms":{max:.2}}}"#
    ))
}

/// Opens `sessions` echo sessions spread over every running server of the host, then changes
/// `server`'s `max_connections` `cycles` times with `PUT`, timing each; at the end every session
/// must still echo.
pub async fn tune_time(admin: &str, server: &str, sessions: usize, cycles: usize) -> Result<String, String> {
    let http = reqwest::Client::new();
    let servers: Vec<serde_json::Value> = http
        .get(format!("{admin}/api/v1/servers"))
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    let ports: Vec<u16> = servers
        .iter()
        .filter_map(|s| s["listeners"][0]["port"].as_u64().map(|p| p as u16))
        .collect();
    if ports.is_empty() {
        return Err("no running server has a listener".into());
    }
    let mut open = Vec::with_capacity(sessions);
    for i in 0..sessions {
        open.push(crate::common::connect(ports[i % ports.len()]).await?);
    }
    let config: serde_json::Value = http
        .get(format!("{admin}/api/v1/config"))
        .send()
        .await
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    let mut body = config["servers"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == server))
        .cloned()
        .ok_or_else(|| format!("no server {server:?} in the config"))?;
    let mut samples = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        body["max_connections"] = json!(20_000 + cycle);
        let began = Instant::now();
        let response = http
            .put(format!("{admin}/api/v1/servers/{server}"))
            .json(&body)
            .send()
            .await
            .map_err(failed)?;
        samples.push(began.elapsed());
        if !response.status().is_success() {
            return Err(format!("PUT {server}: {}", response.text().await.unwrap_or_default()));
        }
    }
    let mut closed = 0;
    for stream in &mut open {
        let mut back = [0u8; 1];
        let echoed = async {
            stream.write_all(b"x").await?;
            stream.read_exact(&mut back).await
        };
        if !matches!(tokio::time::timeout(IO_TIMEOUT, echoed).await, Ok(Ok(_))) {
            closed += 1;
        }
    }
    let (p50, max) = p50_and_max(samples);
    Ok(format!(
        r#"{{"mode":"tune-time","servers":{},"sessions":{sessions},"cycles":{cycles},"p50_ms":{p50:.2},"max_ms":{max:.2},"sessions_closed":{closed}}}"#,
        servers.len()
    ))
}
