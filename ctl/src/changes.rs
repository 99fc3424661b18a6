//! The commands that change the host's config through its API (SPEC §10): `add`, `apply`,
//! `remove`, `config get` and `config check`.

use std::io::Read;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use supersocket_proto::{ConfigCheck, ReloadReport, ServerInfo};

use crate::client::{Body, Client, CtlError, decode, drain, query, segment};
use crate::{Output, Printer, render, stdout};

/// Reads a config file: TOML, or JSON for a `.json` file; `-` is standard input (JSON if it
/// starts with `{`).
fn read(file: &str) -> Result<Body, CtlError> {
    let cannot = |e: std::io::Error| CtlError::Failed(format!("cannot read {file}: {e}"));
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map_err(cannot)?;
        let toml = !bytes.trim_ascii_start().starts_with(b"{");
        return Ok(Body { bytes, toml });
    }
    let bytes = std::fs::read(file).map_err(cannot)?;
    let toml = !file.to_ascii_lowercase().ends_with(".json");
    Ok(Body { bytes, toml })
}

/// `add -f FILE`: the new server and its state.
pub async fn add(client: &Client, printer: &Printer, file: &str) -> Result<(), CtlError> {
    let answer = client
        .send(Method::POST, "/api/v1/servers", Some(read(file)?), None)
        .await?
        .success()?;
    let server: ServerInfo = decode(answer.body.clone())?;
    printer.show(&answer.body, || format!("{}: added, {}", server.name, server.state));
    Ok(())
}

/// `remove NAME [--timeout DUR]`: drains it, then removes it.
pub async fn remove(client: &Client, printer: &Printer, name: &str, timeout: Option<Duration>) -> Result<(), CtlError> {
    let path = format!("/api/v1/servers/{}{}", segment(name), query([drain(timeout)]));
    client.ok(Method::DELETE, &path, None).await?;
    printer.show(&serde_json::json!({ "server": name, "removed": true }), || {
        format!("{name}: removed")
    });
    Ok(())
}

/// The first line of `config get`'s TOML: the `ETag` of the config it shows, so that `apply`
/// of an edited copy is refused if the host's config changed meanwhile.
const ETAG_LINE: &str = "# etag: ";

/// `config get`: the config in force, as TOML headed by its `ETag` (or the API's JSON).
pub async fn get(client: &Client, printer: &Printer) -> Result<(), CtlError> {
    let answer = client.call(Method::GET, "/api/v1/config", None).await?.success()?;
    let toml =
        toml::to_string(&answer.body).map_err(|e| CtlError::Failed(format!("cannot show the config as TOML: {e}")))?;
    let etag = answer.etag.as_deref().unwrap_or_default();
    printer.show(&answer.body, || format!("{ETAG_LINE}{etag}\n{toml}"));
    Ok(())
}

/// The `ETag` a file made by `config get` starts with.
fn etag_of(body: &Body) -> Option<String> {
    let first = body.bytes.split(|&b| b == b'\n').next()?;
    let tag = std::str::from_utf8(first).ok()?.strip_prefix(ETAG_LINE)?.trim();
    (!tag.is_empty()).then(|| tag.to_owned())
}

/// `config check FILE`: its errors, or its plan; fails (exit 1) when it is invalid.
pub async fn check(client: &Client, printer: &Printer, file: &str) -> Result<(), CtlError> {
    let (json, check) = dry_run(client, read(file)?).await?;
    show_check(printer, &json, &check)
}

/// `apply -f FILE [--dry-run]`: the plan, then (unless a dry run) the change, made only if the
/// config is still the one the plan was made against — or, for a file `config get` made, the
/// one it was made from.
pub async fn apply(client: &Client, printer: &Printer, file: &str, dry_run_only: bool) -> Result<(), CtlError> {
    let body = read(file)?;
    let seen = match etag_of(&body) {
        Some(tag) => Some(tag),
        None => client.call(Method::GET, "/api/v1/config", None).await?.success()?.etag,
    };
    let (json, check) = dry_run(client, body.clone()).await?;
    if dry_run_only || !check.valid {
        return show_check(printer, &json, &check);
    }
    if printer.output == Output::Table {
        stdout::write(render::plan(&check.plan));
    }
    let answer = client
        .send(Method::PUT, "/api/v1/config", Some(body), seen.as_deref())
        .await?;
    if answer.status == StatusCode::PRECONDITION_FAILED {
        return Err(CtlError::Failed(
            "the host's config changed since the plan was made (or since `config get` wrote the file); nothing was applied".into(),
        ));
    }
    let answer = answer.success()?;
    let report: ReloadReport = decode(answer.body.clone())?;
    printer.show(&answer.body, || render::reload_report(&report));
    Ok(())
}

/// What the host would do with a whole config, changing nothing: the answer as it came, and
/// read.
async fn dry_run(client: &Client, body: Body) -> Result<(Value, ConfigCheck), CtlError> {
    let answer = client
        .send(Method::POST, "/api/v1/config/check", Some(body), None)
        .await?
        .success()?;
    let check = decode(answer.body.clone())?;
    Ok((answer.body, check))
}

/// Prints a check: the plan when valid, else every error; an invalid config fails.
fn show_check(printer: &Printer, json: &Value, check: &ConfigCheck) -> Result<(), CtlError> {
    if check.valid {
        printer.show(json, || render::plan(&check.plan));
        return Ok(());
    }
    if printer.output == Output::Json {
        printer.show(json, String::new);
    } else {
        for error in &check.errors {
            stdout::write(format!("{error}\n"));
        }
    }
    Err(CtlError::Failed(format!(
        "the config has {} error(s); nothing was applied",
        check.errors.len()
    )))
}
