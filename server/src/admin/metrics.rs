//! `GET /metrics`: Prometheus text exposition of the host and of every server, labelled by
//! server name and type.

use std::fmt::Write as _;

use supersocket_proto::ServerState;

use crate::host::Host;

const STATES: [ServerState; 6] = [
    ServerState::Stopped,
    ServerState::Starting,
    ServerState::Running,
    ServerState::Stopping,
    ServerState::Backoff,
    ServerState::Failed,
];

/// Renders every metric family.
pub(crate) fn render(host: &Host) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "supersocket_host_uptime_seconds",
        "gauge",
        "Seconds since the host started.",
    );
    let _ = writeln!(out, "supersocket_host_uptime_seconds {}", host.info().uptime_secs);

    let servers: Vec<_> = host.instances().iter().map(|i| (i.info(), i.rejected())).collect();
    let labels = |info: &supersocket_proto::ServerInfo| {
        format!(
            "server=\"{}\",type=\"{}\"",
            escape(&info.name),
            escape(&info.server_type)
        )
    };

    family(
        &mut out,
        "supersocket_server_state",
        "gauge",
        "1 for the state the server is in, 0 for the others.",
    );
    for (info, _) in &servers {
        for state in STATES {
            let _ = writeln!(
                out,
                "supersocket_server_state{{{},state=\"{state}\"}} {}",
                labels(info),
                u8::from(info.state == state)
            );
        }
    }
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&supersocket_proto::ServerInfo, u64) -> u64,
    );
    let metrics: [Metric; 8] = [
        ("supersocket_server_sessions", "gauge", "Sessions open now.", |i, _| {
            i.sessions
        }),
        (
            "supersocket_server_accepted_total",
            "counter",
            "Connections accepted, rejected ones included.",
            |i, r| i.total_sessions + r,
        ),
        (
            "supersocket_server_rejected_total",
            "counter",
            "Connections closed at once over max_connections.",
            |_, r| r,
        ),
        (
            "supersocket_server_received_bytes_total",
            "counter",
            "Bytes received from peers.",
            |i, _| i.bytes_in,
        ),
        (
            "supersocket_server_sent_bytes_total",
            "counter",
            "Bytes sent to peers.",
            |i, _| i.bytes_out,
        ),
        (
            "supersocket_server_packages_total",
            "counter",
            "Packages decoded.",
            |i, _| i.total_packages,
        ),
        (
            "supersocket_server_restarts_total",
            "counter",
            "Restarts by the supervisor.",
            |i, _| i.restarts,
        ),
        (
            "supersocket_server_uptime_seconds",
            "gauge",
            "Seconds since the server started, 0 when not running.",
            |i, _| i.uptime_secs,
        ),
    ];
    for (name, kind, help, value) in metrics {
        family(&mut out, name, kind, help);
        for (info, rejected) in &servers {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(info), value(info, *rejected));
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (type names are free text).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
