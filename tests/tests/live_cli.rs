//! The live view through the real CLI: `logs` (each instance's lines, its agent's stderr
//! included, and `-f` following new ones) under every isolation level, the memory and CPU of
//! agents and of the host in `list` and `status`, and `watch` printing lines when its output
//! is not a terminal.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use supersocket_tests::{HostProcess, bin};

const HOST: &str = r#"shutdown_timeout = "1s"

[[servers]]
name = "N"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "R"
type = "echo"
isolation = "runtime"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "P"
type = "echo"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

/// A CLI left running (`logs -f`, `watch`), its stdout read line by line; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(host: &HostProcess, args: &[&str]) -> Self {
        let mut child = Command::new(bin("supersocket"))
            .arg("--url")
            .arg(&host.admin)
            .args(args)
            .env_remove("SUPERSOCKET_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run supersocket");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines until one holds `needle`, within `within`; panics with what came otherwise.
    fn until(&self, within: Duration, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("no line with {needle:?} within {within:?}; saw {seen:#?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_keeps_its_log_lines_its_agents_stderr_included() {
    let host = HostProcess::start(HOST);
    for name in ["N", "R", "P"] {
        let out = host.ctl(&["--output", "json", "logs", name]);
        assert_eq!(out.code, 0, "{out:?}");
        let lines = out.stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap());
        let lines: Vec<Value> = lines.collect();
        assert!(
            lines
                .iter()
                .any(|l| l["source"] == "host" && l["message"].as_str().unwrap().starts_with("started")),
            "{name}: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l["at"].as_str().is_some_and(|at| at.ends_with('Z')))
        );
    }
    // Under process isolation the agent's own stderr is there too, its records' levels kept.
    let agent = host.ctl(&["logs", "P"]);
    assert!(
        agent
            .stdout
            .lines()
            .any(|l| l.contains(" info   agent ") && l.contains("started")),
        "{}",
        agent.stdout
    );
    // Another instance's lines are not in it.
    assert!(!host.ctl(&["logs", "N"]).stdout.contains("agent"));
    // `-n` bounds the lines, `--since` their age.
    assert_eq!(host.ctl(&["logs", "P", "-n", "1"]).stdout.lines().count(), 1);
    assert!(host.ctl(&["logs", "P", "--since", "1h"]).stdout.lines().count() >= 2);

    let unknown = host.ctl(&["logs", "Nope"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    let bad = host.ctl(&["logs", "P", "--since", "soon"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_new_lines_as_they_come() {
    let host = HostProcess::start(HOST);
    for name in ["N", "P"] {
        let follow = Running::start(&host, &["logs", name, "-f", "-n", "1"]);
        // Its first line says the stream is open; a restart logs new lines.
        follow.until(Duration::from_secs(3), "started");
        assert_eq!(host.ctl(&["restart", name]).code, 0);
        let seen = follow.until(Duration::from_secs(5), "started");
        assert!(seen.iter().any(|l| l.contains("stopped")), "{name}: {seen:#?}");
    }
    // An agent killed: the host's line about it reaches a follower.
    let follow = Running::start(&host, &["logs", "P", "-f", "-n", "1"]);
    follow.until(Duration::from_secs(3), "started");
    let pid = host.server("P").await["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    follow.until(Duration::from_secs(5), "SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_the_host_show_their_memory_and_cpu() {
    let host = HostProcess::start(HOST);
    let p = host
        .wait_server("P", Duration::from_secs(5), |s| s["cpu_percent"].is_number())
        .await;
    let rss = p["rss_bytes"].as_u64().unwrap();
    assert!(rss > 1 << 20 && rss < 1 << 30, "{p}");
    let n = host.server("N").await;
    assert!(n["rss_bytes"].is_null() && n["cpu_percent"].is_null(), "{n}");
    let (_, info) = host.get("/api/v1/host").await;
    assert!(info["rss_bytes"].as_u64().unwrap() > 1 << 20, "{info}");

    let list = host.ctl(&["list"]);
    let header = list.stdout.lines().next().unwrap();
    assert!(header.ends_with("MEM/CPU"), "{}", list.stdout);
    let row = list.stdout.lines().find(|l| l.starts_with("P ")).unwrap();
    assert!(row.ends_with('%') && row.contains("M "), "{row}");
    let row = list.stdout.lines().find(|l| l.starts_with("N ")).unwrap();
    assert!(row.ends_with(" -"), "{row}");
    let status = host.ctl(&["status"]);
    assert!(status.stdout.contains("memory"), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_states_and_rates_as_lines_when_not_on_a_terminal() {
    let host = HostProcess::start(HOST);
    let port = host.port("P", 0).await;
    let watch = Running::start(&host, &["watch"]);
    watch.until(Duration::from_secs(3), "P running");
    // Traffic through P while watch runs: its rates show it.
    let mut echo = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let traffic = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        for _ in 0..400 {
            echo.write_all(&[b'x'; 4096]).await.unwrap();
            echo.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let seen = watch.until(Duration::from_secs(6), "P sessions=1 in=");
    let busy = watch.until(Duration::from_secs(3), "P sessions=1");
    assert!(
        busy.iter()
            .chain(&seen)
            .any(|l| l.contains("P sessions=1") && !l.contains("in=0B/s")),
        "{seen:#?} {busy:#?}"
    );
    traffic.abort();
    // A stop shows as a line.
    assert_eq!(host.ctl(&["stop", "N"]).code, 0);
    watch.until(Duration::from_secs(3), "N stopped");

    // `--count N` ends after N updates.
    let counted = host.ctl(&["watch", "--count", "2"]);
    assert_eq!(counted.code, 0, "{counted:?}");
    assert_eq!(counted.stdout.lines().filter(|l| l.contains(" R sessions=")).count(), 2);
}
