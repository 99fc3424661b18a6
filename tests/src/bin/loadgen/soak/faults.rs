//! The faults: at random intervals (from the seeded generator), SIGKILL an agent, freeze one
//! (SIGSTOP, SIGCONT 0.5–4 s later), stop an instance and start it again, restart one, and
//! reload a rewritten config that adds, changes or removes instances. The instances the
//! traffic needs are never removed. At the end every instance not running is started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::backlog;
use super::ledger::{Examples, PathReport};
use super::procfs;
use super::rng::Rng;
use super::world::World;

/// Names of the instances reloads add (and remove again).
const EXTRA: &str = "SoakExtra-";

/// What the injector did, and what the host did wrong while it did.
#[derive(Debug, Default)]
pub struct FaultReport {
    pub counts: BTreeMap<&'static str, u64>,
    /// The connections opened just before stops and restarts (see `backlog`).
    pub backlog: PathReport,
    /// Admin requests that failed or took too long, reloads refused, and the like.
    pub problems: Examples,
}

/// The host's config file, as the reload faults rewrite it.
pub struct ConfigFile {
    path: PathBuf,
    original: String,
    doc: Value,
    json: bool,
    /// Instances the soak added.
    extras: Vec<String>,
    added: u32,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let original = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        let doc: Value = if json {
            serde_json::from_str(&original).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            toml::from_str(&original).map_err(|e| format!("{}: {e}", path.display()))?
        };
        if !doc["servers"].is_array() {
            return Err(format!("{} has no [[servers]]", path.display()));
        }
        Ok(Self {
            path: path.to_owned(),
            original,
            doc,
            json,
            extras: Vec::new(),
            added: 0,
        })
    }

    fn servers(&mut self) -> &mut Vec<Value> {
        match &mut self.doc["servers"] {
            Value::Array(servers) => servers,
            _ => unreachable!("checked at load"),
        }
    }

    /// Writes the file as a whole (write, then rename), as an operator's editor would.
    fn save(&self) -> Result<(), String> {
        let text = if self.json {
            serde_json::to_string_pretty(&self.doc).map_err(|e| e.to_string())?
        } else {
            toml::to_string(&self.doc).map_err(|e| e.to_string())?
        };
        let temporary = self.path.with_extension("soak-tmp");
        std::fs::write(&temporary, text).map_err(|e| e.to_string())?;
        std::fs::rename(&temporary, &self.path).map_err(|e| e.to_string())
    }

    /// Puts the file back as it was before the run.
    pub fn restore(&self) {
        let _ = std::fs::write(&self.path, &self.original);
    }
}

/// Injects faults until `until`, then waits for the ones under way and starts every instance
/// that is not running.
pub async fn inject(
    world: Arc<World>,
    host_pid: u32,
    mut config: Option<ConfigFile>,
    mut rng: Rng,
    every: Duration,
    until: Instant,
) -> (FaultReport, Option<ConfigFile>) {
    let mut report = FaultReport::default();
    let mut under_way: JoinSet<(Examples, PathReport)> = JoinSet::new();
    loop {
        let pause = rng.between(every / 2, every * 3 / 2);
        if Instant::now() + pause >= until || !world.running() {
            break;
        }
        tokio::time::sleep(pause).await;
        let servers = match world.admin.servers().await {
            Ok(servers) => servers,
            Err(e) => {
                report.problems.add("admin", || format!("GET /api/v1/servers: {e}"));
                continue;
            }
        };
        let running: Vec<&Value> = servers.iter().filter(|s| s["state"] == "running").collect();
        let agents: Vec<(String, u32)> = running
            .iter()
            .filter(|s| s["isolation"] == "process")
            .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["pid"].as_u64()? as u32)))
            .filter(|(_, pid)| *pid != host_pid && procfs::is_agent_of(*pid, host_pid))
            .collect();
        let names: Vec<String> = running
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        let mut kinds: Vec<&'static str> = Vec::new();
        if !agents.is_empty() {
            kinds.extend(["kill", "kill", "freeze", "freeze"]);
        }
        if !names.is_empty() {
            kinds.extend(["stop", "stop", "restart", "restart"]);
        }
        if config.is_some() {
            kinds.extend(["reload", "reload", "reload"]);
        }
        let Some(&kind) = rng.pick(&kinds) else { continue };
        match kind {
            "kill" | "freeze" => {
                let Some((name, pid)) = rng.pick(&agents).cloned() else {
                    continue;
                };
                if kind == "kill" {
                    if !signal(host_pid, pid, Signal::SIGKILL) {
                        continue;
                    }
                    world.record_fault("kill", &name, format!("pid {pid}"));
                    // Served by the next agent: the host keeps the listeners.
                    let probe = probe(&world, &running, &name, "just after its agent was killed").await;
                    let world = world.clone();
                    under_way.spawn(async move {
                        let mut backlog = PathReport::default();
                        if let Some(probe) = probe {
                            probe.check(&world, &mut backlog).await;
                        }
                        (Examples::default(), backlog)
                    });
                } else if signal(host_pid, pid, Signal::SIGSTOP) {
                    let frozen = rng.between(Duration::from_millis(500), Duration::from_secs(4));
                    world.record_fault("freeze", &name, format!("pid {pid} for {} ms", frozen.as_millis()));
                    under_way.spawn(async move {
                        tokio::time::sleep(frozen).await;
                        // The host may have killed it meanwhile; signal only a live agent.
                        if procfs::is_live_agent(pid) {
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                        }
                        Default::default()
                    });
                } else {
                    continue;
                }
            }
            "stop" | "restart" => {
                let Some(name) = rng.pick(&names).cloned() else {
                    continue;
                };
                let server = running
                    .iter()
                    .find(|s| s["name"] == name.as_str())
                    .map(|s| (*s).clone());
                let (path, down, when) = if kind == "stop" {
                    let down = rng.between(Duration::from_millis(200), Duration::from_secs(2));
                    world.record_fault("stop", &name, format!("start again after {} ms", down.as_millis()));
                    (
                        format!("/api/v1/servers/{name}/stop?timeout=2s"),
                        Some(down),
                        "as a stop began",
                    )
                } else {
                    world.record_fault("restart", &name, String::new());
                    (format!("/api/v1/servers/{name}/restart"), None, "as a restart began")
                };
                let world = world.clone();
                under_way.spawn(async move {
                    let mut problems = Examples::default();
                    // Connections opened while the stop begins: those the kernel takes must
                    // be served.
                    let opening = async {
                        match &server {
                            Some(server) => backlog::open(&world, server, when).await,
                            None => None,
                        }
                    };
                    let (_, probe) = tokio::join!(admin(&world, &path, &mut problems), opening);
                    let mut backlog = PathReport::default();
                    if let Some(probe) = probe {
                        probe.check(&world, &mut backlog).await;
                    }
                    if let Some(down) = down {
                        tokio::time::sleep(down).await;
                        admin(&world, &format!("/api/v1/servers/{name}/start"), &mut problems).await;
                    }
                    (problems, backlog)
                });
            }
            _ => {
                let Some(file) = config.as_mut() else { continue };
                let kind = reload(&world, file, &names, &mut rng, &mut report.problems).await;
                *report.counts.entry(kind).or_default() += 1;
                continue;
            }
        }
        *report.counts.entry(kind).or_default() += 1;
    }
    while let Some(done) = under_way.join_next().await {
        if let Ok((problems, backlog)) = done {
            report.problems.merge(problems);
            report.backlog.merge(backlog);
        }
    }
    heal(&world, &mut report).await;
    (report, config)
}

/// Opens backlog probes to the running instance `name` just before it is stopped.
async fn probe(world: &World, running: &[&Value], name: &str, before: &'static str) -> Option<backlog::Probe> {
    let server = running.iter().find(|s| s["name"] == name)?;
    backlog::open(world, server, before).await
}

/// Signals `pid` if it is an agent of the host (and nothing else).
fn signal(host_pid: u32, pid: u32, signal: Signal) -> bool {
    procfs::is_agent_of(pid, host_pid) && kill(Pid::from_raw(pid as i32), signal).is_ok()
}

/// An admin POST that must answer 200 within a bound an operator would accept. An instance
/// the soak added may have been removed by one of its reloads meanwhile: a 404 for it is no
/// problem.
async fn admin(world: &World, path: &str, problems: &mut Examples) -> Option<Value> {
    let began = Instant::now();
    let answer = world.admin.post(path).await;
    let took = began.elapsed();
    let at = world.secs(began);
    match answer {
        Ok((404, _)) if path.starts_with(&format!("/api/v1/servers/{EXTRA}")) => None,
        Ok((200, body)) => {
            if took > Duration::from_secs(5) {
                problems.add("slow admin request", || {
                    format!("POST {path} at {at:.2}s took {took:?}")
                });
            }
            Some(body)
        }
        Ok((status, body)) => {
            problems.add("admin request failed", || {
                format!(
                    "POST {path} at {at:.2}s: {status} {body}; {}",
                    world.faults_before(began)
                )
            });
            None
        }
        Err(e) => {
            problems.add("admin request failed", || {
                format!(
                    "POST {path} at {at:.2}s: {e} after {took:?}; {}",
                    world.faults_before(began)
                )
            });
            None
        }
    }
}

/// Rewrites the config (adds an instance, changes one's `max_connections`, or removes one the
/// soak added) and asks the host to reload it; the answer must say what changed.
async fn reload(
    world: &World,
    file: &mut ConfigFile,
    running: &[String],
    rng: &mut Rng,
    problems: &mut Examples,
) -> &'static str {
    let choice = match rng.below(3) {
        0 if file.extras.len() < 4 => "add",
        2 if file.extras.is_empty() => "add",
        2 => "remove",
        _ => "change",
    };
    let (kind, name, list) = if choice == "add" {
        file.added += 1;
        let name = format!("{EXTRA}{}", file.added);
        let isolation = *rng.pick(&["none", "runtime", "process"]).unwrap_or(&"none");
        let kind = *rng.pick(&["echo", "command"]).unwrap_or(&"echo");
        let mut server = json!({
            "name": name,
            "type": kind,
            "isolation": isolation,
            "listeners": [{ "ip": "Loopback", "port": 0 }],
        });
        if isolation == "process" {
            server["restart"] =
                json!({ "policy": "always", "max_retries": 1000, "backoff": "100ms", "max_backoff": "500ms" });
        }
        file.servers().push(server);
        file.extras.push(name.clone());
        ("reload_add", name, "added")
    } else if choice == "remove" {
        let index = rng.below(file.extras.len() as u64) as usize;
        let name = file.extras.remove(index);
        file.servers().retain(|s| s["name"] != name.as_str());
        ("reload_remove", name, "removed")
    } else {
        // Any instance of the file (the traffic's included), preferably a running one.
        let names: Vec<String> = file
            .servers()
            .iter()
            .filter(|s| s["replicas"].is_null())
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        let preferred: Vec<String> = names.iter().filter(|n| running.contains(n)).cloned().collect();
        let Some(name) = rng
            .pick(if preferred.is_empty() { &names } else { &preferred })
            .cloned()
        else {
            return "reload_change";
        };
        let limit = 1_000 + rng.below(9_000);
        for server in file.servers().iter_mut().filter(|s| s["name"] == name.as_str()) {
            server["max_connections"] = json!(limit);
        }
        ("reload_change", name, "changed")
    };
    world.record_fault(kind, &name, String::new());
    if let Err(e) = file.save() {
        problems.add("config file", || format!("cannot write {}: {e}", file.path.display()));
        return kind;
    }
    let began = Instant::now();
    if let Some(answer) = admin(world, "/api/v1/reload", problems).await {
        let listed = answer[list]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n == name.as_str()));
        if !listed {
            problems.add("reload", || {
                format!(
                    "reload at {:.2}s did not list {name} as {list}: {answer}",
                    world.secs(began)
                )
            });
        }
    }
    kind
}

/// Starts every instance that is not running (a stop whose start failed, an instance the
/// supervisor gave up on), so the run ends with everything serving.
async fn heal(world: &World, report: &mut FaultReport) {
    let Ok(servers) = world.admin.servers().await else {
        return;
    };
    for server in servers {
        let (Some(name), Some(state)) = (server["name"].as_str(), server["state"].as_str()) else {
            continue;
        };
        if state == "running" || !server["autostart"].as_bool().unwrap_or(true) {
            continue;
        }
        world.record_fault("heal", name, format!("was {state}"));
        *report.counts.entry("heal").or_default() += 1;
        admin(world, &format!("/api/v1/servers/{name}/start"), &mut report.problems).await;
    }
}
