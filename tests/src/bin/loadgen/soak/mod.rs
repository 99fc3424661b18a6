//! `soak`: mixed traffic in which every message is checked, while faults are injected into the
//! host — agents killed and frozen, instances stopped, restarted, added, changed and removed by
//! reloads — then a SIGTERM. Reports what was sent, acknowledged, delivered, refused, dropped
//! with a closed session, and lost (SPEC §9, "nothing lost at the seams": it must be 0), the
//! agents left behind, the host's memory drift, exit code and shutdown time.
//!
//! Layout: `world` (what the tasks share: admin API, phase, fault log), `replies` (echo and
//! command), `dispatch` (DISPATCH and the admin API's send), `chat` and `ftp` (the traffic and
//! the analysis of what arrived), `backlog` (connections opened as stops begin and agents die),
//! `faults`, `procfs` (the host's processes), `ledger` (the counts, and the judging of what
//! each receiver got from each sender), `rng` (the seeded choices).
//!
//! The run: traffic on every instance the host serves at the start (found through the admin
//! API) for `--duration`; faults during its first three quarters, then every instance is
//! started again and the traffic goes on calmly; then no new message is sent, the answers
//! in flight are awaited and receivers drain for `--drain`; then the counting cut, the host's
//! memory, and SIGTERM with every client connection still open.

mod backlog;
mod chat;
mod dispatch;
mod faults;
mod ftp;
mod ledger;
mod procfs;
mod replies;
mod rng;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use self::faults::ConfigFile;
use self::ledger::{PathReport, Tally};
use self::rng::Rng;
use self::world::{Admin, Phase, World};

#[derive(clap::Args)]
pub struct Options {
    /// The host's config file: reload faults rewrite it (and put it back at the end).
    /// Without it, no reloads.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The host's pid: its agents are watched, and it gets the final SIGTERM.
    #[arg(long)]
    pub host_pid: u32,
    /// Seed of the fault schedule and the traffic's choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Connections of each kind per instance: echo, command, DISPATCH senders and receivers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub connections: u64,
    /// Chat users (each in one of `--rooms` rooms).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub users: u64,
    /// Chat rooms.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rooms: u64,
    /// Messages each connection sends per second at most (chat users a quarter of it).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Requests each pipelining connection keeps in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub window: u64,
    /// Mean time between faults (each pause is 0.5 to 1.5 times it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub fault_every: Duration,
    /// How long receivers keep reading once every answer is in.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// An answer not here after this long is a stall (the client drops the connection).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub reply_timeout: Duration,
    /// How long the host may take to exit after the SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub exit_timeout: Duration,
    /// Write every DISPATCH and chat message and every receipt to this file (to check a
    /// reported loss by hand).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    supersocket_proto::parse_duration(text).map_err(|e| e.to_string())
}

/// Longest whole run, setup and shutdown included: ten minutes of traffic and their margins.
const MAX_RUN: Duration = Duration::from_secs(720);

/// The instances the traffic uses, by type.
#[derive(Default)]
struct Targets {
    echo: Vec<String>,
    command: Vec<String>,
    gate: Option<String>,
    ftp: Vec<String>,
}

/// What the traffic tasks hand in.
struct Traffic {
    echo: Vec<JoinHandle<PathReport>>,
    command: Vec<JoinHandle<PathReport>>,
    receivers: Vec<JoinHandle<(Vec<dispatch::ReceiverLog>, PathReport)>>,
    senders: Vec<JoinHandle<(Vec<dispatch::SenderLog>, PathReport)>>,
    admin_sender: Option<JoinHandle<(Vec<dispatch::SenderLog>, PathReport)>>,
    users: Vec<JoinHandle<(Vec<chat::UserLog>, PathReport)>>,
    ftp: Vec<JoinHandle<PathReport>>,
}

/// How the host ended.
struct Exit {
    exited: bool,
    code: Option<i32>,
    signal: Option<i32>,
    /// Reaped by its parent before the soak could read its exit code.
    reaped: bool,
    shutdown: Duration,
}

/// Runs the soak; returns the JSON line and whether it passed.
pub async fn run(admin_url: &str, duration: Duration, options: &Options) -> Result<(String, bool), String> {
    let overhead = options.drain + options.reply_timeout * 2 + options.exit_timeout + Duration::from_secs(20);
    if duration + overhead > MAX_RUN {
        return Err(format!(
            "--duration {duration:?} with drain, reply and exit timeouts would exceed {MAX_RUN:?}"
        ));
    }
    let admin = Admin::new(admin_url)?;
    let host = admin.get("/api/v1/host").await?;
    if host["pid"].as_u64() != Some(u64::from(options.host_pid)) {
        return Err(format!(
            "--host-pid {} is not the host at {admin_url} (its pid is {})",
            options.host_pid, host["pid"]
        ));
    }
    let servers = admin.servers().await?;
    let isolation: BTreeMap<String, String> = servers
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["isolation"].as_str()?.to_owned())))
        .collect();
    let mut targets = Targets::default();
    for s in servers.iter().filter(|s| s["state"] == "running") {
        let name = s["name"].as_str().unwrap_or_default().to_owned();
        match s["type"].as_str() {
            Some("echo") => targets.echo.push(name),
            Some("command") => targets.command.push(name),
            Some("gate") if targets.gate.is_none() => targets.gate = Some(name),
            Some("ftp") => targets.ftp.push(name),
            _ => {}
        }
    }
    let config = options.config.as_deref().map(ConfigFile::load).transpose()?;
    let seed = options.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()) << 32
    });
    eprintln!(
        "soak: seed {seed}; {} instances; echo {:?}, command {:?}, gate {:?}, ftp {:?}; {duration:?}",
        servers.len(),
        targets.echo,
        targets.command,
        targets.gate,
        targets.ftp
    );
    let mut rng = Rng::new(seed);
    let world = Arc::new(World::new(admin, options.reply_timeout, isolation));
    let host_pid = options.host_pid;
    let rss_start = procfs::rss_kib(host_pid);

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch_agents(world.clone(), host_pid, watching.clone()));
    let registry = Arc::new(dispatch::Registry::new(
        targets.command.len() * options.connections as usize,
    ));
    let traffic = start_traffic(&world, &targets, &registry, options, &mut rng);
    let faults_until = world.epoch + duration * 3 / 4;
    let faults = tokio::spawn(faults::inject(
        world.clone(),
        host_pid,
        config,
        rng.fork(),
        options.fault_every,
        faults_until,
    ));

    tokio::time::sleep(duration.saturating_sub(world.epoch.elapsed())).await;
    world.set_phase(Phase::Drain);
    eprintln!("soak: {:7.2}s traffic ends; draining", world.secs(Instant::now()));
    let (fault_report, config) = match tokio::time::timeout(Duration::from_secs(60), faults).await {
        Ok(Ok(done)) => done,
        _ => return Err("the fault injector did not finish (an admin request hangs?)".into()),
    };
    let answers_due = Instant::now() + options.reply_timeout + Duration::from_secs(1);
    while world.in_flight() > 0 && Instant::now() < answers_due {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(options.drain).await;
    let cut = Instant::now();
    let rss_end = procfs::rss_kib(host_pid);

    let mut probes = Vec::new();
    for server in world.admin.servers().await.unwrap_or_default() {
        if server["state"] == "running"
            && let Some(probe) = backlog::open(&world, &server, "just before the host's SIGTERM").await
        {
            probes.push(probe);
        }
    }
    world.record_fault("sigterm", "host", format!("pid {host_pid}"));
    let exit = terminate(host_pid, options.exit_timeout).await;
    let mut fault_report = fault_report;
    for probe in probes {
        probe.check(&world, &mut fault_report.backlog).await;
    }
    watching.store(false, Ordering::SeqCst);
    let agents = watcher.await.unwrap_or_default();
    world.set_phase(Phase::Finish);
    let (mut collected, records) = collect(&world, traffic, cut).await;
    if let Some(path) = &options.dump {
        dump(path, &records).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    collected.insert("backlog", std::mem::take(&mut fault_report.backlog));
    // Agents of a host that is still running are its children, not orphans.
    let orphans = if exit.exited {
        orphans(&agents).await
    } else {
        BTreeMap::new()
    };
    if let Some(config) = &config {
        config.restore();
    }

    let report = Report {
        seed,
        duration,
        paths: collected,
        faults: fault_report,
        agents,
        orphans,
        rss: (rss_start, rss_end),
        exit,
    };
    report.tell(&world);
    Ok((report.json(), report.passed()))
}

fn start_traffic(
    world: &Arc<World>,
    targets: &Targets,
    registry: &Arc<dispatch::Registry>,
    options: &Options,
    rng: &mut Rng,
) -> Traffic {
    let period = Duration::from_secs(1) / options.rate;
    let per_instance = options.connections as usize;
    let window = options.window as usize;
    // Echo first, then command: the order the traffic's seeds are forked in.
    let mut clients = |kind, servers: &[String]| -> Vec<JoinHandle<PathReport>> {
        let slots = servers.iter().flat_map(|s| std::iter::repeat_n(s, per_instance));
        slots
            .map(|server| {
                let load = replies::Load {
                    kind,
                    server: server.clone(),
                    window,
                    period,
                    rng: rng.fork(),
                };
                let world = world.clone();
                tokio::spawn(async move { replies::client(&world, load).await })
            })
            .collect()
    };
    let echo = clients(replies::Kind::Echo, &targets.echo);
    let command = clients(replies::Kind::Command, &targets.command);
    let mut traffic = Traffic {
        echo,
        command,
        receivers: Vec::new(),
        senders: Vec::new(),
        admin_sender: None,
        users: Vec::new(),
        ftp: Vec::new(),
    };
    for (slot, server) in targets
        .command
        .iter()
        .flat_map(|s| std::iter::repeat_n(s, per_instance))
        .enumerate()
    {
        let (world, registry, server) = (world.clone(), registry.clone(), server.clone());
        traffic.receivers.push(tokio::spawn(async move {
            dispatch::receiver(&world, &registry, slot, server).await
        }));
    }
    for server in &targets.command {
        for _ in 0..per_instance {
            let (world, registry, server, rng) = (world.clone(), registry.clone(), server.clone(), rng.fork());
            traffic.senders.push(tokio::spawn(async move {
                dispatch::sender(&world, &registry, server, window, period, rng).await
            }));
        }
    }
    if !targets.command.is_empty() {
        let (world, registry, rng) = (world.clone(), registry.clone(), rng.fork());
        traffic.admin_sender = Some(tokio::spawn(async move {
            dispatch::admin_sender(&world, &registry, period * 4, rng).await
        }));
    }
    if let Some(gate) = &targets.gate {
        for i in 0..options.users {
            let (world, gate) = (world.clone(), gate.clone());
            let room = format!("soak-room-{}", i % options.rooms);
            traffic.users.push(tokio::spawn(
                async move { chat::user(&world, gate, room, period * 4).await },
            ));
        }
    }
    for server in &targets.ftp {
        let (world, server, rng) = (world.clone(), server.clone(), rng.fork());
        traffic.ftp.push(tokio::spawn(async move {
            ftp::client(&world, server, Duration::from_millis(250), rng).await
        }));
    }
    traffic
}

/// Every agent process of the host seen during the run (pid → instance), from the admin API
/// and from /proc, until `watching` turns false.
async fn watch_agents(world: Arc<World>, host_pid: u32, watching: Arc<AtomicBool>) -> BTreeMap<u32, String> {
    let mut agents = BTreeMap::new();
    while watching.load(Ordering::SeqCst) {
        agents.extend(procfs::agent_children(host_pid));
        if world.phase() == Phase::Run
            && let Ok(servers) = world.admin.servers().await
        {
            for s in servers.iter().filter(|s| s["isolation"] == "process") {
                if let (Some(pid), Some(name)) = (s["pid"].as_u64(), s["name"].as_str()) {
                    let pid = pid as u32;
                    if pid != host_pid && procfs::is_agent_of(pid, host_pid) {
                        agents.insert(pid, name.to_owned());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agents.extend(procfs::agent_children(host_pid));
    agents
}

/// SIGTERM to the host, then waits (bounded) for it to exit.
async fn terminate(host_pid: u32, bound: Duration) -> Exit {
    let began = Instant::now();
    let sent = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut exit = Exit {
        exited: false,
        code: None,
        signal: None,
        reaped: false,
        shutdown: Duration::ZERO,
    };
    if sent.is_err() {
        return exit;
    }
    while began.elapsed() < bound {
        match procfs::life(host_pid) {
            procfs::Life::Running => tokio::time::sleep(Duration::from_millis(5)).await,
            procfs::Life::Exited { code, signal } => {
                (exit.exited, exit.code, exit.signal) = (true, code, signal);
                break;
            }
            procfs::Life::Gone => {
                (exit.exited, exit.reaped) = (true, true);
                break;
            }
        }
    }
    exit.shutdown = began.elapsed();
    exit
}

/// The raw records of the paths checked after the run, for `--dump`.
struct Records {
    senders: Vec<dispatch::SenderLog>,
    receivers: Vec<dispatch::ReceiverLog>,
    users: Vec<chat::UserLog>,
    epoch: Instant,
    cut: Instant,
}

/// Writes every DISPATCH and chat message sent and every receipt, one a line, for checking a
/// reported loss by hand.
fn dump(path: &std::path::Path, records: &Records) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let secs = |at: Instant| at.saturating_duration_since(records.epoch).as_secs_f64();
    writeln!(
        out,
        "# times in seconds since the start; the counting cut at {:.6}",
        secs(records.cut)
    )?;
    dispatch::dump(&mut out, &records.senders, &records.receivers, &secs)?;
    chat::dump(&mut out, &records.users, &secs)?;
    out.flush()
}

/// Hands in what the traffic recorded and counts it.
async fn collect(world: &World, traffic: Traffic, cut: Instant) -> (BTreeMap<&'static str, PathReport>, Records) {
    let mut paths = BTreeMap::new();
    paths.insert("echo", join_reports(traffic.echo).await);
    paths.insert("command", join_reports(traffic.command).await);
    paths.insert("ftp", join_reports(traffic.ftp).await);
    let (receivers, mut dispatch_report) = join_logs(traffic.receivers).await;
    let (mut senders, sender_report) = join_logs(traffic.senders).await;
    dispatch_report.merge(sender_report);
    // Receivers get lines from both kinds of sender: each analysis needs them all.
    let (admin_senders, mut send_report) = join_logs(traffic.admin_sender.into_iter().collect()).await;
    senders.extend(admin_senders);
    dispatch_report.merge(dispatch::analyse(world, dispatch::DISPATCH, &senders, &receivers, cut));
    paths.insert("dispatch", dispatch_report);
    send_report.merge(dispatch::analyse(
        world,
        dispatch::ADMIN_SEND,
        &senders,
        &receivers,
        cut,
    ));
    paths.insert("send", send_report);
    let (users, mut chat_report) = join_logs(traffic.users).await;
    chat_report.merge(chat::analyse(world, &users, cut));
    paths.insert("chat", chat_report);
    let records = Records {
        senders,
        receivers,
        users,
        epoch: world.epoch,
        cut,
    };
    (paths, records)
}

/// How long a traffic task may take to hand in once the run finishes.
const HAND_IN: Duration = Duration::from_secs(10);

async fn join_reports(tasks: Vec<JoinHandle<PathReport>>) -> PathReport {
    let mut report = PathReport::default();
    for task in tasks {
        match tokio::time::timeout(HAND_IN, task).await {
            Ok(Ok(part)) => report.merge(part),
            _ => report
                .examples
                .add("soak task lost", || "a traffic task did not hand in".into()),
        }
    }
    report
}

async fn join_logs<L>(tasks: Vec<JoinHandle<(Vec<L>, PathReport)>>) -> (Vec<L>, PathReport) {
    let mut logs = Vec::new();
    let mut report = PathReport::default();
    for task in tasks {
        match tokio::time::timeout(HAND_IN, task).await {
            Ok(Ok((part_logs, part))) => {
                logs.extend(part_logs);
                report.merge(part);
            }
            _ => report
                .examples
                .add("soak task lost", || "a traffic task did not hand in".into()),
        }
    }
    (logs, report)
}

/// The agents seen during the run that are still alive once the host has exited (given a
/// moment to notice); they are reported, then killed so the machine is left clean.
async fn orphans(agents: &BTreeMap<u32, String>) -> BTreeMap<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive: BTreeMap<u32, String> = agents
            .iter()
            .filter(|(pid, _)| procfs::is_live_agent(**pid))
            .map(|(pid, name)| (*pid, name.clone()))
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            for pid in alive.keys() {
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Report {
    seed: u64,
    duration: Duration,
    paths: BTreeMap<&'static str, PathReport>,
    faults: faults::FaultReport,
    agents: BTreeMap<u32, String>,
    orphans: BTreeMap<u32, String>,
    rss: (Option<u64>, Option<u64>),
    exit: Exit,
}

impl Report {
    fn total(&self) -> Tally {
        let mut total = Tally::default();
        for path in self.paths.values() {
            total.add(&path.tally);
        }
        total
    }

    /// Exactly once or an error, within the deadline: nothing lost, nothing left without an
    /// outcome (a stall breaks the promise as a loss does), no refusal for a receiver that was
    /// there, no connection closed unserved; at least one fault injected; no agent left behind;
    /// a clean exit.
    fn passed(&self) -> bool {
        let total = self.total();
        total.lost() == 0
            && total.stalled == 0
            && total.wrongly_refused == 0
            && total.unserved_connections == 0
            && self.faults_injected() > 0
            && self.orphans.is_empty()
            && self.exit.exited
            && self.exit.signal.is_none()
            && self.exit.code.is_none_or(|c| c == 0)
    }

    /// Faults injected (a frozen agent's thaw is the end of a fault, not one more).
    fn faults_injected(&self) -> u64 {
        self.faults
            .counts
            .iter()
            .filter(|(kind, _)| **kind != "heal")
            .map(|(_, n)| n)
            .sum()
    }

    /// How far the host's RSS moved from the start to the end of traffic, in KiB.
    fn rss_drift(&self) -> Option<i64> {
        let (start, end) = self.rss;
        start.zip(end).map(|(s, e)| e as i64 - s as i64)
    }

    fn examples(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .paths
            .iter()
            .flat_map(|(path, r)| r.examples.lines().into_iter().map(move |l| format!("{path} {l}")))
            .collect();
        lines.extend(self.faults.problems.lines().into_iter().map(|l| format!("host {l}")));
        lines
    }

    fn json(&self) -> String {
        let total = self.total();
        let paths: serde_json::Map<String, Value> = self
            .paths
            .iter()
            .filter(|(_, r)| r.tally.sent > 0 || r.tally.connections > 0 || r.tally.connect_failures > 0)
            .map(|(name, r)| {
                let mut tally = serde_json::to_value(&r.tally).unwrap_or_default();
                tally["lost"] = json!(r.tally.lost());
                tally["reasons"] = json!(r.reasons);
                ((*name).to_owned(), tally)
            })
            .collect();
        let (start, end) = self.rss;
        json!({
            "mode": "soak",
            "seed": self.seed,
            "duration_s": self.duration.as_secs_f64(),
            "sent": total.sent,
            "acked": total.acked,
            "delivered": total.delivered,
            "refused": total.refused,
            "stalled": total.stalled,
            "slow": total.slow,
            "dropped_with_session": total.dropped_with_session,
            "late": total.late,
            "refused_but_delivered": total.refused_but_delivered,
            "wrongly_refused": total.wrongly_refused,
            "unserved_connections": total.unserved_connections,
            "connections": total.connections,
            "lost": total.lost(),
            "lost_by_kind": {
                "missing": total.missing,
                "duplicate": total.duplicate,
                "reordered": total.reordered,
                "wrong": total.wrong,
            },
            "paths": paths,
            "faults": self.faults.counts,
            "faults_injected": self.faults_injected(),
            "host_problems": self.faults.problems.lines().len(),
            "agents_seen": self.agents.len(),
            "orphans": self.orphans.len(),
            "orphan_pids": self.orphans.keys().collect::<Vec<_>>(),
            "host_rss_kib": { "start": start, "end": end, "drift": self.rss_drift() },
            "host_exited": self.exit.exited,
            "exit_code": self.exit.code,
            "exit_signal": self.exit.signal,
            "exit_code_known": !self.exit.reaped && self.exit.exited,
            "shutdown_ms": self.exit.shutdown.as_millis() as u64,
            "examples": self.examples(),
        })
        .to_string()
    }

    /// The readable summary, on stderr.
    fn tell(&self, world: &World) {
        eprintln!("soak: seed {}", self.seed);
        eprintln!(
            "soak: {:<9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>5} {:>7} {:>7} {:>5} {:>7} {:>9} {:>7} {:>5}",
            "path",
            "sent",
            "acked",
            "delivered",
            "refused",
            "stalled",
            "lost",
            "dropped",
            "missing",
            "dup",
            "reorder",
            "wrong",
            "late",
            "slow"
        );
        let mut rows: Vec<(&str, Tally)> = self.paths.iter().map(|(n, r)| (*n, r.tally.clone())).collect();
        rows.push(("total", self.total()));
        for (name, t) in rows {
            eprintln!(
                "soak: {:<9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>5} {:>7} {:>7} {:>5} {:>7} {:>9} {:>7} {:>5}",
                name,
                t.sent,
                t.acked,
                t.delivered,
                t.refused,
                t.stalled,
                t.lost(),
                t.dropped_with_session,
                t.missing,
                t.duplicate,
                t.reordered,
                t.wrong,
                t.late,
                t.slow
            );
        }
        eprintln!(
            "soak: {} connections, {} closed by the host during traffic, {} closed unserved; refused messages: {} delivered all the same, {} refused for a receiver that was there",
            self.total().connections,
            self.total().closed_by_host,
            self.total().unserved_connections,
            self.total().refused_but_delivered,
            self.total().wrongly_refused
        );
        for (name, r) in &self.paths {
            if !r.reasons.is_empty() {
                eprintln!("soak: {name} refused or dropped: {:?}", r.reasons);
            }
        }
        let faults: Vec<String> = self.faults.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "soak: faults: {} injected ({})",
            self.faults_injected(),
            faults.join(", ")
        );
        let instances: BTreeSet<&String> = self.agents.values().collect();
        eprintln!(
            "soak: agents seen: {} ({} instances); orphans: {:?}",
            self.agents.len(),
            instances.len(),
            self.orphans
        );
        eprintln!(
            "soak: host RSS {:?} KiB at the start, {:?} KiB at the end of traffic (drift {:?} KiB)",
            self.rss.0,
            self.rss.1,
            self.rss_drift()
        );
        let how = match (self.exit.exited, self.exit.reaped, self.exit.code, self.exit.signal) {
            (false, ..) => "did not exit".to_owned(),
            (true, true, ..) => "exited (reaped by its parent before its code could be read)".to_owned(),
            (true, false, _, Some(signal)) => format!("was killed by signal {signal}"),
            (true, false, code, None) => format!("exited with code {code:?}"),
        };
        eprintln!(
            "soak: host {how}, {:?} after SIGTERM (at {:.2}s)",
            self.exit.shutdown,
            world.secs(Instant::now())
        );
        for line in self.examples() {
            eprintln!("soak: {line}");
        }
        eprintln!("soak: {}", if self.passed() { "PASSED" } else { "FAILED" });
    }
}
