//! The chaos soak, short (SPEC §9, "nothing lost at the seams"): the real host on a config that
//! mixes isolation levels, `loadgen soak` for 8 s — echo, command, DISPATCH, chat and FTP
//! traffic checked message by message while agents are killed and frozen and instances are
//! stopped, restarted and reloaded — then SIGTERM. Nothing acknowledged may be lost, every
//! message gets its outcome within the reply timeout, nobody is refused for a receiver that was
//! there, no connection is closed unserved, no agent may outlive the host, and the host must
//! exit 0. `scripts/soak.sh` is the long run.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use supersocket_tests::HostProcess;

/// Every level in every role (the config `scripts/soak.sh` runs for longer).
const MIXED: &str = include_str!("../configs/soak.toml");

#[test]
fn nothing_is_lost_at_the_seams_while_faults_hit_the_host() {
    let mut host = HostProcess::start(MIXED);
    let config = host.config_path();
    // A new fault schedule each run (its seed is in the failure message); SOAK_SEED replays one.
    let seed = std::env::var("SOAK_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| d.as_nanos() as u64).to_string()
    });
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--admin", &host.admin, "--duration", "8s", "soak"])
        .arg("--config")
        .arg(&config)
        .args(["--host-pid", &host.pid().to_string(), "--seed", &seed])
        .args(["--fault-every", "500ms", "--drain", "1s", "--reply-timeout", "4s"])
        .args(["--exit-timeout", "5s"])
        .output()
        .expect("run loadgen");
    let summary = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("loadgen printed no report: {stdout}\n{summary}"));
    // loadgen waited for the exit after its SIGTERM; the host is reaped here.
    let status = host.wait_exit(Duration::from_secs(2));

    let mut problems = Vec::new();
    if report["lost"] != 0 {
        problems.push(format!("lost {}: {}", report["lost"], report["lost_by_kind"]));
    }
    for (key, what) in [
        ("stalled", "messages left without an outcome"),
        ("wrongly_refused", "messages refused for a receiver that was there"),
        ("unserved_connections", "connections closed unserved"),
    ] {
        if report[key] != 0 {
            problems.push(format!("{what}: {}", report[key]));
        }
    }
    if report["faults_injected"] == 0 {
        problems.push("no fault was injected".to_owned());
    }
    if report["orphans"] != 0 {
        problems.push(format!("agents outlived the host: {}", report["orphan_pids"]));
    }
    match status {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!("the host exited with {status}")),
        None => problems.push(format!(
            "the host did not exit within {} ms of its SIGTERM",
            report["shutdown_ms"]
        )),
    }
    assert!(report["sent"].as_u64() > Some(0), "no traffic: {report}\n{summary}");
    assert!(
        problems.is_empty(),
        "{}\n--- loadgen soak (seed {seed}) ---\n{summary}",
        problems.join("\n")
    );
    assert!(output.status.success(), "loadgen soak failed:\n{summary}");
}
