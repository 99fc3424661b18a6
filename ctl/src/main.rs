//! `supersocket`: the command-line client of the SuperSocket host's admin API (SPEC §7).
//!
//! Exit codes: 0 success; 1 the operation failed or a server/session does not exist; 2 usage;
//! 3 host unreachable; 4 unauthorized. Every error is one line on stderr. A closed stdout
//! (`| head`) ends the output quietly and changes no exit code (see `stdout`).

mod changes;
mod cli;
mod client;
mod live;
mod operate;
mod render;
mod stdout;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use cli::{Cli, Command, ConfigCommand, Output};
use client::{Client, CtlError, decode, drain, query, segment};
use operate::operate;
use supersocket_proto::{HostInfo, Readiness, ReloadReport, RouteInfo, SendReceipt, ServerInfo, SessionInfo};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            eprintln!("supersocket: {} (see --help)", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("supersocket: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) if stdout::failed() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("supersocket: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// The message part of a clap error (before its usage block), on one line.
fn one_line(rendered: &str) -> String {
    let message = rendered.split("\n\n").next().unwrap_or(rendered);
    let message = message.strip_prefix("error: ").unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a command prints: for people, and for `--output json`.
struct Printer {
    output: Output,
}

impl Printer {
    /// Prints the API's JSON as it came, or the human rendering of what was read from it.
    fn show(&self, json: &Value, human: impl FnOnce() -> String) {
        match self.output {
            Output::Json => stdout::write(serde_json::to_string_pretty(json).unwrap_or_default() + "\n"),
            Output::Table => stdout::write(ensure_newline(human())),
        };
    }
}

fn ensure_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let printer = Printer { output: cli.output };
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "supersocket", &mut script);
        stdout::write(script);
        return Ok(());
    }
    let client = Client::new(&cli.url, cli.token, cli.request_timeout)?;
    match cli.command {
        Command::List => {
            let (json, servers) = client.read::<Vec<ServerInfo>>("/api/v1/servers").await?;
            printer.show(&json, || render::servers(&servers));
        }
        Command::Status { name: Some(name) } => {
            let path = format!("/api/v1/servers/{}", segment(&name));
            let (json, server) = client.read::<ServerInfo>(&path).await?;
            printer.show(&json, || render::server_detail(&server));
        }
        Command::Status { name: None } => {
            let (host_json, host) = client.read::<HostInfo>("/api/v1/host").await?;
            let ready_json = client.call(Method::GET, "/readyz", None).await?.body;
            let ready: Readiness = decode(ready_json.clone())?;
            let (servers_json, servers) = client.read::<Vec<ServerInfo>>("/api/v1/servers").await?;
            let status = json!({ "host": host_json, "readiness": ready_json, "servers": servers_json });
            printer.show(&status, || {
                format!("{}\n{}", render::host_summary(&host, &ready), render::servers(&servers))
            });
        }
        Command::Start { targets, save } => {
            operate(&client, &printer, targets, "start", &query([saving(save)])).await?;
        }
        Command::Stop {
            targets,
            drain_timeout,
            save,
        } => {
            let query = query([drain(drain_timeout), saving(save)]);
            operate(&client.draining(drain_timeout), &printer, targets, "stop", &query).await?;
        }
        Command::Restart { targets } => operate(&client, &printer, targets, "restart", "").await?,
        Command::Sessions { name, limit } => {
            let path = format!("/api/v1/servers/{}/sessions?limit={limit}", segment(&name));
            let (json, sessions) = client.read::<Vec<SessionInfo>>(&path).await?;
            printer.show(&json, || render::sessions(&sessions));
        }
        Command::Send { name, session, text } => {
            let path = format!("/api/v1/servers/{}/sessions/{}/send", segment(&name), segment(&session));
            let body = json!({ "text": format!("{text}\r\n") });
            let json = client.ok(Method::POST, &path, Some(&body)).await?;
            let receipt: SendReceipt = decode(json.clone())?;
            printer.show(&json, || {
                format!("sent {} bytes to session {} of {name}", receipt.bytes, receipt.session)
            });
        }
        Command::Kick { name, session } => {
            let path = format!("/api/v1/servers/{}/sessions/{}", segment(&name), segment(&session));
            client.ok(Method::DELETE, &path, None).await?;
            printer.show(&json!({ "server": name, "session": session, "closed": true }), || {
                format!("closed session {session} of {name}")
            });
        }
        Command::Route { server_type, key } => {
            let path = format!("/api/v1/route/{}?key={}", segment(&server_type), segment(&key));
            let (json, route) = client.read::<RouteInfo>(&path).await?;
            printer.show(&json, || {
                format!("{} (index {} of {})", route.server, route.index, route.of)
            });
        }
        Command::Reload => {
            let answer = client.ok(Method::POST, "/api/v1/reload", None).await?;
            let report: ReloadReport = decode(answer.clone())?;
            printer.show(&answer, || render::reload_report(&report));
        }
        Command::Logs {
            name,
            follow,
            since,
            lines,
        } => live::logs(&client, cli.output, &name, lines, since, follow).await?,
        Command::Watch { count } => live::watch(&client, &cli.url, count).await?,
        Command::Health { wait } => health(&client, &printer, wait).await?,
        Command::Add { file } => changes::add(&client, &printer, &file).await?,
        Command::Apply { file, dry_run } => changes::apply(&client, &printer, &file, dry_run).await?,
        Command::Remove { name, drain_timeout } => {
            changes::remove(&client.draining(drain_timeout), &printer, &name, drain_timeout).await?;
        }
        Command::Config {
            command: ConfigCommand::Get,
        } => changes::get(&client, &printer).await?,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => changes::check(&client, &printer, &file).await?,
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// The `save=true` parameter of `start|stop --save`.
fn saving(save: bool) -> Option<String> {
    save.then(|| "save=true".to_owned())
}

/// Readiness, once or polled until ready within `wait`.
async fn health(client: &Client, printer: &Printer, wait: Option<Duration>) -> Result<(), CtlError> {
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let outcome = client.call(Method::GET, "/readyz", None).await;
        let done = Instant::now() >= deadline;
        match outcome {
            Ok(answer) if answer.status == StatusCode::OK => {
                decode::<Readiness>(answer.body.clone())?;
                printer.show(&answer.body, || "ready".to_owned());
                return Ok(());
            }
            Ok(answer) if done => {
                let readiness: Readiness = decode(answer.body.clone())?;
                if printer.output == Output::Json {
                    printer.show(&answer.body, String::new);
                }
                return Err(CtlError::Failed(format!(
                    "not ready: {}",
                    render::not_ready(&readiness)
                )));
            }
            Err(error @ (CtlError::Unauthorized { .. } | CtlError::Forbidden { .. })) => return Err(error),
            Err(error) if done => return Err(error),
            _ => tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await,
        }
    }
}
