//! The load generator itself: every traffic mode reports real numbers against the host and the
//! baseline, a failing connection is counted rather than fatal, and idle mode holds and checks
//! its connections.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use supersocket_tests::HostProcess;

const HOST: &str = r#"
[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

/// The `baseline` echo server, killed when dropped.
struct Baseline {
    child: Child,
    port: u16,
}

impl Baseline {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baseline"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start baseline");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("baseline prints its port");
        let port = line
            .trim()
            .strip_prefix("baseline ready: ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("baseline said {line:?}"));
        Self { child, port }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `loadgen` with `args` (a short run); it must succeed and print one JSON line.
fn loadgen(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--duration", "300ms"])
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("loadgen {args:?} printed {stdout:?}: {e}"))
}

fn assert_clean_run(report: &Value) {
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(report["mb_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    let (p50, p999) = (report["p50_us"].as_u64().unwrap(), report["p999_us"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p999, "{report}");
}

#[tokio::test]
async fn every_traffic_mode_measures_the_host_and_the_baseline() {
    let host = HostProcess::start(HOST);
    let baseline = Baseline::start();
    let base = baseline.port.to_string();
    let admin = host.admin.as_str();
    let runs: [&[&str]; 8] = [
        &["--admin", admin, "echo", "--server", "Echo", "--connections", "4"],
        &["--port", &base, "echo", "--connections", "4", "--window", "4"],
        &["--admin", admin, "stream", "--server", "Echo", "--connections", "2"],
        &["--port", &base, "stream", "--connections", "2", "--size", "1000"],
        &["--admin", admin, "line", "--server", "Cmd", "--connections", "4"],
        &["--port", &base, "line", "--connections", "4", "--echo"],
        &["--admin", admin, "command", "--server", "Cmd", "--connections", "4"],
        &["--port", &base, "command", "--connections", "4", "--echo"],
    ];
    for args in runs {
        let report = loadgen(args);
        assert_clean_run(&report);
        assert_eq!(report["mode"], args[2], "{report}");
    }
}

#[tokio::test]
async fn failing_connections_are_counted_and_the_run_still_reports() {
    let host = HostProcess::start(HOST);
    // An echo server sends the ECHO lines back whole, not the text: every connection fails.
    let report = loadgen(&["--admin", &host.admin, "line", "--server", "Echo", "--connections", "3"]);
    assert_eq!(report["errors"], 3, "{report}");
    assert_eq!(report["requests"], 0, "{report}");
}

#[tokio::test]
async fn idle_mode_holds_its_connections_and_checks_each_one() {
    let host = HostProcess::start(HOST);
    let pid = host.pid().to_string();
    let args = [
        "--admin",
        &host.admin,
        "idle",
        "--server",
        "Echo",
        "--connections",
        "300",
        "--talk",
        "100",
        "--quiet",
        "100ms",
    ];
    let report = loadgen(&[&args[..], &["--pid", &pid]].concat());
    assert_eq!(report["alive"], 300, "{report}");
    assert_eq!(report["talk"], 100, "{report}");
    assert!(
        report["rss_held_kib"].as_u64() >= report["rss_before_kib"].as_u64(),
        "{report}"
    );
    assert!(report["rss_after_kib"].as_u64() > Some(0), "{report}");
    assert!(report["left_percent"].as_f64().is_some(), "{report}");
}
