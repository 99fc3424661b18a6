//! Tables and lines for people: servers, sessions, host status, plans and reload reports.
//! Tables stay within 80 columns.

use supersocket_proto::{HostInfo, PlanStep, Readiness, ReloadReport, ServerInfo, ServerState, SessionInfo};
use tabled::settings::location::ByColumnName;
use tabled::settings::object::Columns;
use tabled::settings::peaker::PriorityMax;
use tabled::settings::{Padding, Remove, Style, Width};
use tabled::{Table, Tabled};

/// Widest a table may be.
const MAX_WIDTH: usize = 80;

/// One row of `list`.
#[derive(Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct ServerRow {
    name: String,
    #[tabled(rename = "TYPE")]
    server_type: String,
    state: String,
    isolation: String,
    pid: String,
    listeners: String,
    sessions: String,
    uptime: String,
    restarts: String,
    /// What its agent uses (shown instead of the isolation when some server has an agent).
    #[tabled(rename = "MEM/CPU")]
    usage: String,
}

/// One row of `watch`.
#[derive(Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct WatchRow {
    pub name: String,
    pub state: String,
    pub sessions: String,
    #[tabled(rename = "IN")]
    pub bytes_in: String,
    #[tabled(rename = "OUT")]
    pub bytes_out: String,
    pub packages: String,
    pub mem: String,
    pub cpu: String,
}

/// The table of `watch`.
pub fn watch_table(rows: impl IntoIterator<Item = WatchRow>) -> String {
    table(rows)
}

/// One row of `sessions`.
#[derive(Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct SessionRow {
    id: String,
    remote: String,
    started: String,
    #[tabled(rename = "LAST-ACTIVE")]
    last_active: String,
    #[tabled(rename = "IN")]
    bytes_in: String,
    #[tabled(rename = "OUT")]
    bytes_out: String,
}

/// A value that may be missing, `-` when it is.
fn or_none(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn table<T: Tabled>(rows: impl IntoIterator<Item = T>) -> String {
    finish(Table::new(rows))
}

fn finish(mut table: Table) -> String {
    // Columns apart by one space, as `ps` and `kubectl` print them.
    table.with(Style::empty()).with(Padding::new(0, 1, 0, 0));
    table.modify(Columns::last(), Padding::zero());
    table.with(Width::wrap(MAX_WIDTH).keep_words(true).priority(PriorityMax::right()));
    table
        .to_string()
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

/// The bound ports, `/tls` marking TLS ones (the table has no room for addresses; `status
/// NAME` shows them).
fn ports(server: &ServerInfo) -> String {
    let list: Vec<String> = server
        .listeners
        .iter()
        .map(|l| format!("{}{}", l.port, if l.tls { "/tls" } else { "" }))
        .collect();
    if list.is_empty() { "-".into() } else { list.join(",") }
}

/// `ip:port` of every listener, `+tls` marking TLS ones.
pub fn listeners(server: &ServerInfo) -> String {
    let list: Vec<String> = server
        .listeners
        .iter()
        .map(|l| {
            let ip = if l.ip.contains(':') {
                format!("[{}]", l.ip)
            } else {
                l.ip.clone()
            };
            let tls = if l.tls { "+tls" } else { "" };
            format!("{ip}:{}{tls}", l.port)
        })
        .collect();
    if list.is_empty() { "-".into() } else { list.join(" ") }
}

/// `45s`, `12m03s`, `3h04m`, `2d03h`; `-` for a server not running.
pub fn uptime(server: &ServerInfo) -> String {
    if server.state != ServerState::Running {
        return "-".into();
    }
    let secs = server.uptime_secs;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// `16M 1.0%`: what a server's agent uses; `-` without one.
fn usage(server: &ServerInfo) -> String {
    match (server.rss_bytes, server.cpu_percent) {
        (Some(rss), Some(cpu)) => format!("{} {}", bytes(rss), percent(cpu)),
        (Some(rss), None) => bytes(rss),
        _ => "-".into(),
    }
}

/// `812K`, `12.3M`, `1.2G`: a size as `ps` and `top` show it.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && unit > 0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `0.5%`, `12%`.
pub fn percent(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}%")
    } else {
        format!("{value:.0}%")
    }
}

/// The table of `list`.
pub fn servers(servers: &[ServerInfo]) -> String {
    let rows = servers.iter().map(|s| ServerRow {
        name: s.name.clone(),
        server_type: s.server_type.clone(),
        state: s.state.to_string(),
        isolation: s.isolation.to_string(),
        pid: or_none(s.pid),
        listeners: ports(s),
        sessions: s.sessions.to_string(),
        uptime: uptime(s),
        restarts: s.restarts.to_string(),
        usage: usage(s),
    });
    let mut table = Table::new(rows);
    // Room for what agents use: a server with a value there is process-isolated (`status
    // NAME` shows every server's isolation).
    let agents = servers.iter().any(|s| s.rss_bytes.is_some());
    let column = if agents { "ISOLATION" } else { "MEM/CPU" };
    table.with(Remove::column(ByColumnName::new(column)));
    finish(table)
}

/// The table of `sessions`; times shown as `HH:MM:SS` UTC.
pub fn sessions(sessions: &[SessionInfo]) -> String {
    let time = |t: &str| t.get(11..19).unwrap_or("-").to_owned();
    let rows = sessions.iter().map(|s| SessionRow {
        id: s.id.clone(),
        remote: s.remote.clone(),
        started: time(&s.started_at),
        last_active: time(&s.last_active_at),
        bytes_in: s.bytes_in.to_string(),
        bytes_out: s.bytes_out.to_string(),
    });
    table(rows)
}

/// One server in detail, one `key: value` line per field.
pub fn server_detail(server: &ServerInfo) -> String {
    let fields = [
        ("Name", server.name.clone()),
        ("Type", server.server_type.clone()),
        ("State", server.state.to_string()),
        ("Isolation", server.isolation.to_string()),
        ("Autostart", server.autostart.to_string()),
        ("PID", or_none(server.pid)),
        ("Listeners", listeners(server)),
        ("Sessions", format!("{} of {}", server.sessions, server.max_connections)),
        ("Total sessions", server.total_sessions.to_string()),
        ("Packages", server.total_packages.to_string()),
        ("Bytes in/out", format!("{} / {}", server.bytes_in, server.bytes_out)),
        ("Started", or_none(server.started_at.as_ref())),
        ("Uptime", uptime(server)),
        ("Restarts", server.restarts.to_string()),
        ("Memory", server.rss_bytes.map_or_else(|| "-".into(), bytes)),
        ("CPU", server.cpu_percent.map_or_else(|| "-".into(), percent)),
        ("Last error", or_none(server.last_error.as_ref())),
    ];
    fields.iter().map(|(k, v)| format!("{k:<15} {v}\n")).collect()
}

/// The host summary above the table of `status`.
pub fn host_summary(host: &HostInfo, ready: &Readiness) -> String {
    let readiness = if ready.ready {
        "ready".to_owned()
    } else {
        format!("not ready ({})", not_ready(ready))
    };
    let usage = match (host.rss_bytes, host.cpu_percent) {
        (Some(rss), Some(cpu)) => format!(", {} memory, {} CPU", bytes(rss), percent(cpu)),
        (Some(rss), None) => format!(", {} memory", bytes(rss)),
        _ => String::new(),
    };
    format!(
        "Host     supersocketd {} (pid {}), {} for {}s{usage}\nConfig   {}\nReady    {readiness}\n",
        host.version,
        host.pid,
        host.state,
        host.uptime_secs,
        host.config_path.as_deref().unwrap_or("<embedded default>"),
    )
}

/// The failing checks of a readiness answer: `A is failed, B is stopped`.
pub fn not_ready(ready: &Readiness) -> String {
    let failing: Vec<String> = ready
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} is {}", c.name, c.state))
        .collect();
    failing.join(", ")
}

/// One row of a plan.
#[derive(Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct PlanRow {
    name: String,
    action: String,
    sessions: String,
    changes: String,
}

/// The table of a config check's plan: what applying it does to each server.
pub fn plan(steps: &[PlanStep]) -> String {
    let rows = steps.iter().map(|step| PlanRow {
        name: step.name.clone(),
        action: step.action.to_string(),
        sessions: step.sessions.to_string(),
        changes: or_dash(&step.changes, ","),
    });
    table(rows)
}

/// One line per group of a reload report: `added      A, B`.
pub fn reload_report(report: &ReloadReport) -> String {
    [
        ("added", &report.added),
        ("removed", &report.removed),
        ("changed", &report.changed),
        ("updated", &report.updated),
        ("unchanged", &report.unchanged),
    ]
    .iter()
    .map(|(group, names)| format!("{group:<10} {}\n", or_dash(names, ", ")))
    .collect()
}

/// `names` joined by `separator`, or `-` when there are none.
fn or_dash(names: &[String], separator: &str) -> String {
    match names.is_empty() {
        true => "-".to_owned(),
        false => names.join(separator),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_each_server_its_action_and_what_changed() {
        use supersocket_proto::PlanAction;
        let step = |name: &str, action, sessions, changes: &[&str]| PlanStep {
            name: name.into(),
            action,
            sessions,
            changes: changes.iter().map(|c| (*c).to_owned()).collect(),
        };
        let out = plan(&[
            step("Chat", PlanAction::Restart, 12, &["type"]),
            step("Edge", PlanAction::Update, 0, &["max_connections", "idle_timeout"]),
            step("Old", PlanAction::Remove, 3, &[]),
        ]);
        assert_eq!(
            out,
            "NAME ACTION  SESSIONS CHANGES\nChat restart 12       type\nEdge update  0        max_connections,idle_timeout\nOld  remove  3        -\n"
        );
    }

    #[test]
    fn a_reload_report_names_every_group() {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect();
        let report = ReloadReport {
            added: names(&["New"]),
            removed: Vec::new(),
            changed: names(&["Moved"]),
            updated: names(&["Tuned"]),
            unchanged: names(&["A", "B"]),
        };
        assert_eq!(
            reload_report(&report),
            "added      New\nremoved    -\nchanged    Moved\nupdated    Tuned\nunchanged  A, B\n"
        );
    }

    #[test]
    fn sizes_and_shares_are_short() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(16 * 1024 * 1024 + 300_000), "16M");
        assert_eq!(bytes(1_234_567_890), "1.1G");
        assert_eq!(percent(0.25), "0.2%");
        assert_eq!(percent(123.4), "123%");
    }

    /// A `Server` as the API sends it, with the fields `fields` sets.
    fn server(fields: serde_json::Value) -> ServerInfo {
        let mut json = serde_json::json!({
            "name": "A", "type": "echo", "state": "running", "isolation": "none", "autostart": true,
            "pid": 1, "listeners": [], "sessions": 0, "max_connections": 10, "total_sessions": 0,
            "total_packages": 0, "bytes_in": 0, "bytes_out": 0, "started_at": null, "uptime_secs": 0,
            "restarts": 0, "last_error": null,
        });
        for (key, value) in fields.as_object().expect("fields") {
            json[key] = value.clone();
        }
        serde_json::from_value(json).expect("a Server")
    }

    #[test]
    fn uptimes_are_short() {
        let at = |secs: u64| uptime(&server(serde_json::json!({"state": "running", "uptime_secs": secs})));
        assert_eq!(at(5), "5s");
        assert_eq!(at(125), "2m05s");
        assert_eq!(at(3 * 3600 + 4 * 60), "3h04m");
        assert_eq!(at(2 * 86400 + 3 * 3600), "2d03h");
        assert_eq!(
            uptime(&server(serde_json::json!({"state": "stopped", "uptime_secs": 0}))),
            "-"
        );
    }

    #[test]
    fn a_wide_server_table_fits_80_columns() {
        let wide = server(serde_json::json!({
            "name": "a-rather-long-server-name-indeed", "type": "connector", "state": "running",
            "isolation": "process", "pid": 123456, "sessions": 10000, "uptime_secs": 99999, "restarts": 3,
            "listeners": [{"ip": "fe80::1234:5678:9abc:def0", "port": 65535, "tls": true},
                          {"ip": "255.255.255.255", "port": 65535, "tls": false}]
        }));
        let out = servers(&[wide.clone(), wide]);
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line:?}", line.chars().count());
        }
        assert!(out.contains("NAME") && out.contains("RESTARTS"), "{out}");
        assert!(!out.contains("MEM/CPU"), "{out}");
    }

    #[test]
    fn agents_show_what_they_use_in_place_of_the_isolation() {
        let mut agent = server(serde_json::json!({
            "name": "chat-connector-12", "type": "connector", "state": "running",
            "isolation": "process", "pid": 123456, "sessions": 10000, "uptime_secs": 99999, "restarts": 3,
            "listeners": [{"ip": "127.0.0.1", "port": 65535, "tls": true}],
            "rss_bytes": 1_234_567_890, "cpu_percent": 123.4
        }));
        let out = servers(std::slice::from_ref(&agent));
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line:?}", line.chars().count());
        }
        assert!(out.lines().next().unwrap().ends_with("MEM/CPU"), "{out}");
        assert!(out.contains("1.1G 123%") && !out.contains("ISOLATION"), "{out}");
        agent.rss_bytes = None;
        assert!(servers(&[agent]).contains("ISOLATION"));
    }
}
