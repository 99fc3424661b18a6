//! Isolation levels end to end: instances in the host's runtime, on a runtime of their own and
//! in supervised agent processes, side by side in one host.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use supersocket_tests::net::{LineClient, connect, echo_roundtrip};
use supersocket_tests::{HostProcess, Scratch};

const MIXED: &str = r#"
shutdown_timeout = "2s"

[[servers]]
name = "Shared"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "OwnRuntime"
type = "echo"
isolation = "runtime"
threads = 2
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "AgentEcho"
type = "echo"
isolation = "process"
threads = 1
restart = { policy = "on-failure", max_retries = 3, backoff = "100ms", max_backoff = "400ms" }
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "AgentCmd"
type = "command"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

/// The command line and parent of a process, from /proc.
fn process(pid: u64) -> (String, u64) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The parent pid is the second field after the command name in parentheses.
    let parent = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok());
    (cmdline, parent.unwrap_or(0))
}

/// How many threads a process runs.
fn threads(pid: u64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

fn alive(pid: u64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// More agents that leave `threads` unset than cores: each gets one worker, its main thread,
/// as an agent of `threads = 1` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_leave_threads_unset_share_the_cores() {
    let agents = std::thread::available_parallelism().unwrap().get() + 1;
    let host = HostProcess::start(&format!(
        r#"
isolation = "process"

[[servers]]
name = "Narrow"
type = "echo"
threads = 1
listeners = [{{ ip = "Loopback", port = 0 }}]

[[servers]]
name = "Shared"
type = "echo"
replicas = {agents}
listeners = [{{ ip = "Loopback", port = 0 }}]
"#
    ));
    let list = host.ctl(&["--output", "json", "list"]).json();
    let pids: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(pids.len(), agents + 1, "{list}");
    let narrow = threads(pids[0].1);
    for (name, pid) in &pids[1..] {
        assert_eq!(threads(*pid), narrow, "{name} runs one worker, as Narrow does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_serves_and_agents_are_real_processes() {
    let host = HostProcess::start(MIXED);
    let mut shared = LineClient::connect(host.port("Shared", 0).await).await;
    assert_eq!(shared.request("ADD 1 2").await, "3");
    let mut own = connect(host.port("OwnRuntime", 0).await).await;
    assert_eq!(echo_roundtrip(&mut own, b"own runtime").await, b"own runtime");
    let mut agent_echo = connect(host.port("AgentEcho", 0).await).await;
    assert_eq!(echo_roundtrip(&mut agent_echo, b"in an agent").await, b"in an agent");
    let mut agent_cmd = LineClient::connect(host.port("AgentCmd", 0).await).await;
    assert_eq!(agent_cmd.request("SERVER").await, "AgentCmd");

    let list = host.ctl(&["--output", "json", "list"]).json();
    let pid = |name: &str| {
        list.as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    let host_pid = u64::from(host.pid());
    assert_eq!((pid("Shared"), pid("OwnRuntime")), (host_pid, host_pid));
    let (echo_pid, cmd_pid) = (pid("AgentEcho"), pid("AgentCmd"));
    assert!(
        echo_pid != host_pid && cmd_pid != host_pid && echo_pid != cmd_pid,
        "{list}"
    );
    for (name, agent) in [("AgentEcho", echo_pid), ("AgentCmd", cmd_pid)] {
        let (cmdline, parent) = process(agent);
        assert!(
            cmdline.contains(&format!("agent --name {name}")),
            "ps shows the instance: {cmdline:?}"
        );
        assert_eq!(parent, host_pid, "the host started it");
    }
    // An agent runs its share of the cores (the cores divided among the agents that leave
    // `threads` unset: here AgentCmd alone, at most 4) unless `threads` says otherwise; with one,
    // its main thread is the worker. (Both also have the thread that prepared the instance.)
    let share = std::thread::available_parallelism().unwrap().get().min(4);
    let workers_besides_main = if share == 1 { 0 } else { share };
    assert_eq!(
        threads(cmd_pid) - threads(echo_pid),
        workers_besides_main,
        "AgentCmd has its share of the cores, AgentEcho (threads = 1) no worker besides its main thread"
    );
    let table = host.ctl(&["list"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("AgentEcho ") && l.contains(&echo_pid.to_string()))
    );

    // The control plane works the same on a process instance.
    let id = agent_cmd.request("WHOAMI").await;
    let sessions = host.ctl(&["--output", "json", "sessions", "AgentCmd"]).json();
    assert_eq!(sessions[0]["id"], id.as_str());
    assert_eq!(
        sessions[0]["remote"],
        agent_cmd.stream().local_addr().unwrap().to_string()
    );
    assert_eq!(host.ctl(&["send", "AgentCmd", &id, "from the operator"]).code, 0);
    assert_eq!(agent_cmd.recv().await, "from the operator");
    assert_eq!(host.ctl(&["kick", "AgentCmd", &id]).code, 0);
    assert!(agent_cmd.closes_within(Duration::from_secs(5)).await);
    host.wait_server("AgentCmd", Duration::from_secs(5), |s| {
        s["total_packages"].as_u64() >= Some(2)
    })
    .await;

    assert_eq!(host.ctl(&["stop", "AgentCmd"]).stdout.trim(), "AgentCmd: stopped");
    assert!(!alive(cmd_pid), "the stopped agent is gone");
    assert_eq!(host.ctl(&["start", "AgentCmd"]).stdout.trim(), "AgentCmd: running");
    let mut again = LineClient::connect(host.port("AgentCmd", 0).await).await;
    assert_eq!(again.request("MULT 6 7").await, "42");
    assert_eq!(host.ctl(&["restart", "AgentCmd"]).code, 0);
    let mut after = LineClient::connect(host.port("AgentCmd", 0).await).await;
    assert_eq!(after.request("PING").await, "PONG");
    assert_ne!(
        host.server("AgentCmd").await["pid"].as_u64(),
        Some(cmd_pid),
        "a new agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_crosses_from_the_host_into_an_agent_and_back() {
    let host = HostProcess::start(MIXED);
    let mut shared = LineClient::connect(host.port("Shared", 0).await).await;
    let mut agent = LineClient::connect(host.port("AgentCmd", 0).await).await;
    let shared_id = shared.request("WHOAMI").await;
    let agent_id = agent.request("WHOAMI").await;
    assert_ne!(shared_id, agent_id, "session ids stay unique across processes");
    assert_eq!(
        shared
            .request(&format!("DISPATCH AgentCmd {agent_id} into the agent"))
            .await,
        "OK"
    );
    assert_eq!(agent.recv().await, "into the agent");
    assert_eq!(
        agent
            .request(&format!("DISPATCH Shared {shared_id} and back out"))
            .await,
        "OK"
    );
    assert_eq!(shared.recv().await, "and back out");
    assert_eq!(agent.request("DISPATCH Nowhere 1 x").await, "ERR no server Nowhere");
    assert_eq!(
        agent.request(&format!("DISPATCH Shared {agent_id} x")).await,
        format!("ERR no session {agent_id}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_replaced_and_no_connection_is_refused() {
    let host = HostProcess::start(MIXED);
    let port = host.port("AgentEcho", 0).await;
    let first_pid = host.server("AgentEcho").await["pid"].as_u64().unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let (refused, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Connects again and again; a connection the dying agent had accepted may break, but a
    // connection attempt must never be refused.
    let looper = tokio::spawn({
        let (running, refused, served) = (running.clone(), refused.clone(), served.clone());
        async move {
            while running.load(Ordering::SeqCst) {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(mut stream) => {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut back = [0u8; 4];
                        if stream.write_all(b"ping").await.is_ok() && stream.read_exact(&mut back).await.is_ok() {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    });
    // Beside it, the other levels keep serving without a single error.
    let mut shared = LineClient::connect(host.port("Shared", 0).await).await;
    let mut own = connect(host.port("OwnRuntime", 0).await).await;
    while served.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first_pid as i32), Signal::SIGKILL).unwrap();
    let before = served.load(Ordering::SeqCst);
    for i in 0..50 {
        assert_eq!(shared.request(&format!("ADD {i} 1")).await, (i + 1).to_string());
        assert_eq!(echo_roundtrip(&mut own, b"undisturbed").await, b"undisturbed");
    }
    let server = host
        .wait_server("AgentEcho", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(first_pid)
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.load(Ordering::SeqCst) < before + 50 {
        assert!(Instant::now() < deadline, "the new agent serves the port");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.store(false, Ordering::SeqCst);
    looper.await.unwrap();
    assert_eq!(refused.load(Ordering::SeqCst), 0, "no connection attempt was refused");
    assert_eq!(server["restarts"], 1);
    assert!(server["last_error"].as_str().unwrap().contains("signal 9"), "{server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_fails_at_every_start_ends_failed_after_its_retries() {
    let scratch = Scratch::new("crash");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = scratch.write("cert.pem", made.cert.pem());
    let key = scratch.write("key.pem", made.signing_key.serialize_pem());
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Doomed"
        type = "echo"
        autostart = false
        isolation = "process"
        tls = {{ cert = "{}", key = "{}" }}
        restart = {{ max_retries = 3, backoff = "100ms", max_backoff = "400ms" }}
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#,
        cert.display(),
        key.display()
    ));
    // The key disappears after the host checked the config: every agent fails to load it.
    std::fs::remove_file(&key).unwrap();
    let (admin, states) = (host.admin.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (states, watching) = (states.clone(), watching.clone());
        async move {
            let http = reqwest::Client::new();
            while watching.load(Ordering::SeqCst) {
                let server: serde_json::Value = http
                    .get(format!("{admin}/api/v1/servers/Doomed"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let state = server["state"].as_str().unwrap().to_owned();
                let mut seen = states.lock().unwrap();
                if seen.last() != Some(&state) {
                    seen.push(state);
                }
            }
        }
    });
    let start = host.ctl(&["start", "Doomed"]);
    watching.store(false, Ordering::SeqCst);
    watcher.await.unwrap();
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("key.pem") && start.stderr.contains("gave up after 3"),
        "{}",
        start.stderr
    );
    let server = host.server("Doomed").await;
    assert_eq!(
        (server["state"].as_str(), server["restarts"].as_u64()),
        (Some("failed"), Some(3)),
        "{server}"
    );
    let mut states = states.lock().unwrap().clone();
    // The watcher may have stopped just before the last change.
    if states.last().map(String::as_str) != server["state"].as_str() {
        states.push(server["state"].as_str().unwrap().to_owned());
    }
    assert!(states.contains(&"backoff".to_owned()), "back-off visible: {states:?}");
    assert_eq!(states.last().map(String::as_str), Some("failed"), "{states:?}");
}

#[tokio::test]
async fn agents_stop_with_the_host_gracefully_or_die_with_it() {
    // SIGTERM: the agents drain and the host exits 0.
    let mut host = HostProcess::start(MIXED);
    let agents: Vec<u64> = ["AgentEcho", "AgentCmd"]
        .iter()
        .map(|name| agent_pid(&host, name))
        .collect();
    let mut client = LineClient::connect(server_port(&host, "AgentCmd")).await;
    assert_eq!(client.request("PING").await, "PONG");
    host.signal(Signal::SIGTERM);
    assert!(
        client.closes_within(Duration::from_secs(5)).await,
        "the agent's session was drained"
    );
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        agents.iter().all(|pid| !alive(*pid)),
        "no agent outlives a graceful shutdown"
    );

    // SIGKILL: the agents die with the host within a second.
    let mut host = HostProcess::start(MIXED);
    let agents: Vec<u64> = ["AgentEcho", "AgentCmd"]
        .iter()
        .map(|name| agent_pid(&host, name))
        .collect();
    host.signal(Signal::SIGKILL);
    host.wait_exit(Duration::from_secs(5)).expect("the host is gone");
    let deadline = Instant::now() + Duration::from_secs(1);
    while agents.iter().any(|pid| alive(*pid) && !process(*pid).0.is_empty()) {
        assert!(Instant::now() < deadline, "an agent outlived its killed host");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pid a server reports (its agent's, under process isolation), through the CLI.
fn agent_pid(host: &HostProcess, name: &str) -> u64 {
    let output = host.ctl(&["--output", "json", "status", name]).json();
    output["pid"].as_u64().unwrap()
}

/// The first port of a server, through the CLI.
fn server_port(host: &HostProcess, name: &str) -> u16 {
    let output = host.ctl(&["--output", "json", "status", name]).json();
    output["listeners"][0]["port"].as_u64().unwrap() as u16
}
