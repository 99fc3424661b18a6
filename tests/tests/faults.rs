//! Faults a user's machine sees, against the real host: connections queued in the backlog at a
//! stop, an agent frozen with SIGSTOP, an instance that failed, restarts racing agent spawns,
//! a stop asked with a long timeout at shutdown, a reload that blocks, crashes.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use supersocket_tests::net::{IO_TIMEOUT, LineClient, connect, echo_roundtrip, free_consecutive_ports};
use supersocket_tests::{HostOptions, HostProcess, Scratch, example, freeze};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn signal(pid: u64, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).expect("signal the process");
}

/// `POST`s `path` in a task of its own; the task ends with the answer's status.
fn post_in_background(host: &HostProcess, path: &str) -> tokio::task::JoinHandle<reqwest::Result<u16>> {
    let (http, url) = (host.http().clone(), format!("{}{path}", host.admin));
    tokio::spawn(async move { http.post(url).send().await.map(|r| r.status().as_u16()) })
}

/// Bytes of client `n`, different for every client.
fn pattern(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + n * 7) % 251) as u8).collect()
}

/// Clients that each send their request to `port` (nobody accepts them yet).
async fn queued_clients(port: u16, request: impl Fn(usize) -> Vec<u8>) -> Vec<tokio::net::TcpStream> {
    let mut clients = Vec::new();
    for n in 0..50 {
        let mut client = connect(port).await;
        client.write_all(&request(n)).await.unwrap();
        clients.push(client);
    }
    clients
}

/// Every client gets its answer and a clean end, none a reset; the host exits 0.
async fn every_queued_client_is_served(
    mut host: HostProcess,
    clients: Vec<tokio::net::TcpStream>,
    answer: impl Fn(usize) -> Vec<u8>,
    isolation: &str,
) {
    every_client_gets_its_answer(clients, answer, isolation).await;
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
}

/// Every client gets its answer and a clean end, none a reset.
async fn every_client_gets_its_answer(
    mut clients: Vec<tokio::net::TcpStream>,
    answer: impl Fn(usize) -> Vec<u8>,
    isolation: &str,
) {
    for (n, client) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        let read = tokio::time::timeout(IO_TIMEOUT, client.read_to_end(&mut got)).await;
        let read = read.unwrap_or_else(|_| panic!("client {n}: no end within {IO_TIMEOUT:?}"));
        read.unwrap_or_else(|e| panic!("client {n} ({isolation}): {e} instead of its answer"));
        assert!(got == answer(n), "client {n} ({isolation}): {} bytes back", got.len());
        // Its end too, so the host's drain need not wait for it.
        let _ = client.shutdown().await;
    }
}

/// SIGTERM while 50 clients wait in the listen backlog, each having sent 5,000 bytes.
async fn the_backlog_is_served_at_sigterm(isolation: &str) {
    let host = HostProcess::start(&format!(
        r#"
        shutdown_timeout = "5s"
        [[servers]]
        name = "Queue"
        type = "echo"
        isolation = "{isolation}"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#
    ));
    let port = host.port("Queue", 0).await;
    // Nobody accepts while the host is stopped: the kernel queues the connections.
    freeze(u64::from(host.pid())).await;
    let clients = queued_clients(port, |n| pattern(n, 5000)).await;
    host.signal(Signal::SIGTERM);
    signal(u64::from(host.pid()), Signal::SIGCONT);
    every_queued_client_is_served(host, clients, |n| pattern(n, 5000), isolation).await;
}

#[tokio::test]
async fn the_backlog_is_served_at_sigterm_in_the_host() {
    the_backlog_is_served_at_sigterm("none").await;
}

#[tokio::test]
async fn the_backlog_is_served_at_sigterm_on_a_runtime_of_its_own() {
    the_backlog_is_served_at_sigterm("runtime").await;
}

#[tokio::test]
async fn the_backlog_of_a_busy_runtime_is_served_at_sigterm() {
    let mut options = HostOptions::new(
        r#"
        shutdown_timeout = "5s"
        [[servers]]
        name = "Busy"
        type = "burn"
        isolation = "runtime"
        threads = 1
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    options.program = example("kv-server");
    let host = HostProcess::start_with(options);
    let port = host.port("Busy", 0).await;
    // The instance's only worker spins for a second: its accept loop cannot run, and the
    // connections queue in the backlog until the stop has begun.
    let mut burner = LineClient::connect(port).await;
    burner.send("BURN 1000").await;
    let clients = queued_clients(port, |_| b"BURN 0\r\n".to_vec()).await;
    host.signal(Signal::SIGTERM);
    assert_eq!(burner.recv().await, "DONE");
    drop(burner);
    every_queued_client_is_served(host, clients, |_| b"DONE\r\n".to_vec(), "runtime").await;
}

#[tokio::test]
async fn the_backlog_of_an_agent_in_back_off_is_served_at_sigterm() {
    let host = HostProcess::start(
        r#"
        shutdown_timeout = "5s"
        [[servers]]
        name = "Queue"
        type = "echo"
        isolation = "process"
        restart = { backoff = "5s", max_backoff = "5s" }
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Queue", 0).await;
    // Two crashes in a row: the second restart waits for the back-off, and meanwhile nobody
    // accepts the port's connections.
    let first = host.server("Queue").await["pid"].as_u64().unwrap();
    signal(first, Signal::SIGKILL);
    let restarted = host
        .wait_server("Queue", Duration::from_secs(15), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(first)
        })
        .await;
    signal(restarted["pid"].as_u64().unwrap(), Signal::SIGKILL);
    host.wait_server("Queue", Duration::from_secs(15), |s| {
        s["state"] == "backoff" && s["restarts"] == 2
    })
    .await;
    let clients = queued_clients(port, |n| pattern(n, 5000)).await;
    host.signal(Signal::SIGTERM);
    every_queued_client_is_served(host, clients, |n| pattern(n, 5000), "process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_noticed_replaced_and_stalls_nobody() {
    let host = HostProcess::start(
        r#"
        shutdown_timeout = "3s"
        [[servers]]
        name = "Front"
        type = "command"
        listeners = [{ ip = "Loopback", port = 0 }]

        [[servers]]
        name = "Frozen"
        type = "command"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let frozen_port = host.port("Frozen", 0).await;
    let mut victim = LineClient::connect(frozen_port).await;
    let victim_id = victim.request("WHOAMI").await;
    let first_pid = host.server("Frozen").await["pid"].as_u64().unwrap();
    let mut sender = LineClient::connect(host.port("Front", 0).await).await;
    let mut bystander = LineClient::connect(host.port("Front", 0).await).await;
    freeze(first_pid).await;
    let frozen_at = Instant::now();

    // A DISPATCH into the frozen agent fails within its bound; meanwhile another session of the
    // sending instance is answered at once, every time.
    sender.send(&format!("DISPATCH Frozen {victim_id} hello")).await;
    let mut slowest = Duration::ZERO;
    let answer = loop {
        let asked = Instant::now();
        assert_eq!(bystander.request("PING").await, "PONG");
        slowest = slowest.max(asked.elapsed());
        let pending = tokio::time::timeout(Duration::from_millis(50), sender.recv()).await;
        if let Ok(answer) = pending {
            break answer;
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(6),
            "the DISPATCH never failed"
        );
    };
    assert!(answer.starts_with("ERR server Frozen"), "{answer}");
    assert!(slowest < Duration::from_millis(500), "a bystander waited {slowest:?}");

    // Readiness says so, the API answers within its bound, and the agent is replaced.
    let (status, readiness) = host.get("/readyz?verbose").await;
    assert_eq!(status, 503, "{readiness}");
    let asked = Instant::now();
    let (status, sessions) = host.get("/api/v1/servers/Frozen/sessions").await;
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "sessions took {:?}",
        asked.elapsed()
    );
    assert!(status == 503 || status == 200, "{status} {sessions}");
    let replaced = host
        .wait_server("Frozen", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(first_pid)
        })
        .await;
    assert_eq!(replaced["restarts"], 1, "{replaced}");
    assert!(
        replaced["last_error"].as_str().unwrap().contains("did not answer"),
        "{replaced}"
    );
    assert!(frozen_at.elapsed() < Duration::from_secs(8));
    let mut after = LineClient::connect(frozen_port).await;
    assert_eq!(after.request("PING").await, "PONG");
    host.wait_ready_state(200).await;

    // A stop of a frozen agent does not wait for it: it is killed at once.
    let second_pid = replaced["pid"].as_u64().unwrap();
    freeze(second_pid).await;
    host.wait_ready_state(503).await;
    let stopping = Instant::now();
    assert_eq!(host.ctl(&["stop", "Frozen"]).code, 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(
        kill(Pid::from_raw(second_pid as i32), None).is_err(),
        "the frozen agent is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_start_leaves_failed() {
    let scratch = Scratch::new("failed");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = scratch.write("cert.pem", made.cert.pem());
    let key_pem = made.signing_key.serialize_pem();
    let key = scratch.write("key.pem", &key_pem);
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Doomed"
        type = "echo"
        isolation = "process"
        tls = {{ cert = "{}", key = "{}" }}
        restart = {{ max_retries = 1, backoff = "10ms" }}
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#,
        cert.display(),
        key.display()
    ));
    let first_pid = host.server("Doomed").await["pid"].as_u64().unwrap();
    // The key disappears, then the agent dies: every restart fails, and the supervisor gives up.
    std::fs::remove_file(&key).unwrap();
    signal(first_pid, Signal::SIGKILL);
    let failed = host
        .wait_server("Doomed", Duration::from_secs(10), |s| s["state"] == "failed")
        .await;
    assert!(failed["last_error"].as_str().unwrap().contains("gave up"), "{failed}");
    // A start that fails says so, with the cause, and exits 1.
    let refused = host.ctl(&["start", "Doomed"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("key.pem"), "{}", refused.stderr);
    // With the key back, an explicit start runs it again.
    std::fs::write(&key, &key_pem).unwrap();
    let started = host.ctl(&["start", "Doomed"]);
    assert_eq!(
        (started.code, started.stdout.trim()),
        (0, "Doomed: running"),
        "{started:?}"
    );
    let server = host.server("Doomed").await;
    assert_ne!(server["pid"].as_u64(), Some(first_pid), "a new agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_do_not_collide_with_their_own_port_while_agents_spawn() {
    let port = free_consecutive_ports(1);
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Fixed"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = {port} }}]

        [[servers]]
        name = "Spawner"
        type = "echo"
        isolation = "process"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#
    ));
    let restart = |name: &'static str| {
        let (http, admin) = (host.http().clone(), host.admin.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..40 {
                let url = format!("{admin}/api/v1/servers/{name}/restart?timeout=10ms");
                let response = http.post(url).send().await.expect("the host answers");
                if response.status() != 200 {
                    failures.push(response.text().await.unwrap_or_default());
                }
            }
            failures
        })
    };
    let (fixed, spawner) = (restart("Fixed"), restart("Spawner"));
    let (fixed, spawner) = (fixed.await.unwrap(), spawner.await.unwrap());
    assert!(fixed.is_empty(), "restarts of Fixed failed: {fixed:?}");
    assert!(spawner.is_empty(), "restarts of Spawner failed: {spawner:?}");
    assert_eq!(host.server("Fixed").await["listeners"][0]["port"], port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_with_a_long_timeout_does_not_outlive_the_shutdown() {
    let mut host = HostProcess::start(
        r#"
        shutdown_timeout = "1s"
        [[servers]]
        name = "Hold"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Hold", 0).await;
    // A client that never closes keeps the stop draining for as long as it is allowed.
    let _stubborn = connect(port).await;
    let stop = post_in_background(&host, "/api/v1/servers/Hold/stop?timeout=1000h");
    host.wait_server("Hold", Duration::from_secs(5), |s| s["state"] == "stopping")
        .await;
    // A start queued behind the stop.
    let start = post_in_background(&host, "/api/v1/servers/Hold/start");
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("the host exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "took {:?}",
        signalled.elapsed()
    );
    // The start, if it was answered before the host exited, did not start anything.
    if let Ok(answered) = start.await.unwrap() {
        assert_ne!(answered, 200, "a start during the shutdown was refused");
    }
    let _ = stop.await;
}

#[tokio::test]
async fn signals_are_answered_while_a_reload_blocks() {
    let mut host = HostProcess::start(
        r#"
        [[servers]]
        name = "Only"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    block_a_reload(&host).await;
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

/// Starts a reload that never ends: the config file becomes a FIFO nobody writes, then SIGHUP.
async fn block_a_reload(host: &HostProcess) {
    let path = host.config_path();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    host.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.stderr().contains("reloading the config") {
        assert!(Instant::now() < deadline, "the reload began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_restarted_at_once_and_a_stopped_one_shows_no_sessions() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Crashy"
        type = "command"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Crashy", 0).await;
    let mut client = LineClient::connect(port).await;
    assert_eq!(client.request("PING").await, "PONG");
    host.wait_server("Crashy", Duration::from_secs(5), |s| s["sessions"] == 1)
        .await;
    let first_pid = host.server("Crashy").await["pid"].as_u64().unwrap();
    let killed = Instant::now();
    signal(first_pid, Signal::SIGKILL);
    let server = host
        .wait_server("Crashy", Duration::from_secs(5), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(first_pid)
        })
        .await;
    // The first restart after a crash waits for no back-off.
    assert!(killed.elapsed() < Duration::from_millis(900), "{:?}", killed.elapsed());
    assert_eq!(server["restarts"], 1);
    let mut again = LineClient::connect(port).await;
    assert_eq!(again.request("PING").await, "PONG");
    assert_eq!(host.ctl(&["stop", "Crashy"]).code, 0);
    let stopped = host.server("Crashy").await;
    assert_eq!(
        (stopped["sessions"].as_u64(), stopped["pid"].is_null()),
        (Some(0), true),
        "{stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_ends_a_back_off_at_once() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Slow"
        type = "echo"
        isolation = "process"
        restart = { backoff = "30s", max_backoff = "30s" }
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    // Two crashes in a row: the next restart would wait 30 s.
    let first = host.server("Slow").await["pid"].as_u64().unwrap();
    signal(first, Signal::SIGKILL);
    let second = host
        .wait_server("Slow", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(first)
        })
        .await;
    signal(second["pid"].as_u64().unwrap(), Signal::SIGKILL);
    host.wait_server("Slow", Duration::from_secs(10), |s| s["state"] == "backoff")
        .await;
    let asked = Instant::now();
    let started = host.ctl(&["start", "Slow"]);
    assert_eq!(
        (started.code, started.stdout.trim()),
        (0, "Slow: running"),
        "{started:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "it waited {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_answered_while_a_first_start_retries() {
    let scratch = Scratch::new("retrying");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = scratch.write("cert.pem", made.cert.pem());
    let key = scratch.write("key.pem", made.signing_key.serialize_pem());
    let mut host = HostProcess::start(&format!(
        r#"
        shutdown_timeout = "1s"
        [[servers]]
        name = "Retrying"
        type = "echo"
        autostart = false
        isolation = "process"
        tls = {{ cert = "{}", key = "{}" }}
        restart = {{ max_retries = 5, backoff = "20s", max_backoff = "20s" }}
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#,
        cert.display(),
        key.display()
    ));
    // Every agent fails to load the key: the start retries with 20 s between attempts.
    std::fs::remove_file(&key).unwrap();
    let start = post_in_background(&host, "/api/v1/servers/Retrying/start");
    host.wait_server("Retrying", Duration::from_secs(10), |s| s["state"] == "backoff")
        .await;
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(15)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "took {:?}",
        signalled.elapsed()
    );
    if let Ok(answered) = start.await.unwrap() {
        assert_ne!(answered, 200);
    }
}

#[tokio::test]
async fn a_stop_with_an_absurd_timeout_leaves_no_agent_behind() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Agent"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let pid = host.server("Agent").await["pid"].as_u64().unwrap();
    let (status, body) = host.post("/api/v1/servers/Agent/stop?timeout=4000000000000000h").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("stopped")), "{body}");
    assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "the agent is gone");
    assert!(!host.stderr().contains("panic"), "{}", host.stderr());
    assert_eq!(host.ctl(&["start", "Agent"]).code, 0);
}

/// Whether `pid` is gone: no such process, or a zombie not reaped yet (it holds nothing).
fn is_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// SIGTERM while an agent is frozen, with `shutdown_timeout = "1s"`: the host exits 0 within the
/// shutdown bound plus the margin of an agent's stop (RELIABILITY §3: the drain bound + 1 s, then
/// SIGKILL; §4: a shutdown bounds every stop by `shutdown_timeout`), 2 s, before the 3 s after
/// which the agent would be killed as silent anyway; and the frozen agent is gone by then.
/// `reported`: SIGTERM once `/readyz` reports the agent (silent for 1 s): it is killed at once and
/// one more agent serves the 50 clients queued meanwhile; else SIGTERM at once, while the agent
/// still counts as answering: it is asked to drain and killed at the bound.
async fn sigterm_with_a_frozen_agent(reported: bool) {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
    const STOP_MARGIN: Duration = Duration::from_secs(1);
    let mut host = HostProcess::start(&format!(
        r#"
        shutdown_timeout = "{}s"
        [[servers]]
        name = "Frozen"
        type = "echo"
        isolation = "process"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#,
        SHUTDOWN_TIMEOUT.as_secs()
    ));
    let port = host.port("Frozen", 0).await;
    // A session the frozen agent holds: nobody can drain it.
    let mut held = connect(port).await;
    assert_eq!(echo_roundtrip(&mut held, b"held").await, b"held");
    let pid = host.server("Frozen").await["pid"].as_u64().unwrap();
    freeze(pid).await;
    let clients = if reported {
        host.wait_ready_state(503).await;
        queued_clients(port, |n| pattern(n, 5000)).await
    } else {
        Vec::new()
    };
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    every_client_gets_its_answer(clients, |n| pattern(n, 5000), "process, frozen").await;
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("the host exits after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The bound, and half a second for the host to kill, reap and exit.
    let bound = SHUTDOWN_TIMEOUT + STOP_MARGIN + Duration::from_millis(500);
    assert!(took < bound, "the host took {took:?} to exit (bound {bound:?})");
    // Killed and reaped by the host itself before it exited, not left to PR_SET_PDEATHSIG.
    assert!(is_gone(pid), "the frozen agent {pid} outlived the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_freshly_frozen_agent_exits_within_the_bound_and_leaves_no_agent() {
    sigterm_with_a_frozen_agent(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_reported_frozen_agent_serves_its_backlog_and_leaves_no_agent() {
    sigterm_with_a_frozen_agent(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_of_a_frozen_agent_serves_the_connections_queued_meanwhile() {
    let host = HostProcess::start(
        r#"
        shutdown_timeout = "5s"
        [[servers]]
        name = "Frozen"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Frozen", 0).await;
    let pid = host.server("Frozen").await["pid"].as_u64().unwrap();
    freeze(pid).await;
    // Once it is reported frozen, 50 clients queue in the backlog, each having sent 5,000 bytes.
    host.wait_ready_state(503).await;
    let clients = queued_clients(port, |n| pattern(n, 5000)).await;
    let stopping = Instant::now();
    let stop = post_in_background(&host, "/api/v1/servers/Frozen/stop");
    // One more agent takes them and echoes every byte, then ends each cleanly.
    every_client_gets_its_answer(clients, |n| pattern(n, 5000), "process, frozen").await;
    let status = stop.await.unwrap().expect("the stop is answered");
    assert_eq!(status, 200);
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(is_gone(pid), "the frozen agent {pid} is gone");
    let stopped = host.server("Frozen").await;
    assert_eq!(
        (stopped["state"].as_str(), stopped["pid"].is_null()),
        (Some("stopped"), true),
        "{stopped}"
    );
}

/// An agent that froze just before its stop (not yet reported silent) is asked to drain like a
/// live one; when it stays silent, it is killed and one more agent serves the connections that
/// queued meanwhile, which the host's copies of the listeners kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_an_agent_froze_serves_the_connections_queued_meanwhile() {
    let host = HostProcess::start(
        r#"
        shutdown_timeout = "8s"
        [[servers]]
        name = "Frozen"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Frozen", 0).await;
    let pid = host.server("Frozen").await["pid"].as_u64().unwrap();
    freeze(pid).await;
    let clients = queued_clients(port, |n| pattern(n, 5000)).await;
    let stopping = Instant::now();
    let stop = post_in_background(&host, "/api/v1/servers/Frozen/stop");
    every_client_gets_its_answer(clients, |n| pattern(n, 5000), "process, just frozen").await;
    assert_eq!(stop.await.unwrap().expect("the stop is answered"), 200);
    // The silence that tells a frozen agent (3 s), then the backlog's drain.
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(is_gone(pid), "the frozen agent {pid} is gone");
}

/// An answer of the admin API within 10 s (a hang fails): its status, its body, and how long it
/// took.
async fn timed(request: reqwest::RequestBuilder) -> (u16, serde_json::Value, Duration) {
    let asked = Instant::now();
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer after {:?}: {e}", asked.elapsed()));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_and_a_session_list_of_a_frozen_agent_answer_unavailable_within_their_deadline() {
    // RELIABILITY §3: a session list and a kick across processes answer within 5 s.
    const DEADLINE: Duration = Duration::from_secs(5);
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Frozen"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Frozen", 0).await;
    let mut held = connect(port).await;
    assert_eq!(echo_roundtrip(&mut held, b"held").await, b"held");
    let (status, sessions) = host.get("/api/v1/servers/Frozen/sessions").await;
    assert_eq!(status, 200, "{sessions}");
    let id = sessions[0]["id"].as_str().expect("the session's id").to_owned();
    let pid = host.server("Frozen").await["pid"].as_u64().unwrap();
    freeze(pid).await;

    let session_url = format!("{}/api/v1/servers/Frozen/sessions/{id}", host.admin);
    let list_url = format!("{}/api/v1/servers/Frozen/sessions", host.admin);
    let (kick, list) = tokio::join!(
        timed(host.http().delete(&session_url)),
        timed(host.http().get(&list_url))
    );
    // Clients that queue while the agent is frozen, served by the agent that replaces it.
    let mut queued = queued_clients(port, |n| pattern(n, 1000)).await;
    for (what, (status, body, took)) in [("kick", kick), ("session list", list)] {
        assert!(took < DEADLINE + Duration::from_secs(1), "the {what} took {took:?}");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "the {what}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains("did not answer"),
            "{body}"
        );
    }
    let replaced = host
        .wait_server("Frozen", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"].as_u64() != Some(pid)
        })
        .await;
    assert!(
        replaced["last_error"].as_str().unwrap().contains("did not answer"),
        "{replaced}"
    );
    for (n, client) in queued.iter_mut().enumerate() {
        let mut back = vec![0; 1000];
        tokio::time::timeout(IO_TIMEOUT, client.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| panic!("client {n}: no echo within {IO_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("client {n}: {e}"));
        assert!(back == pattern(n, 1000), "client {n}: wrong bytes back");
    }
    // The session went with its agent: a kick of it now is a missing session, answered at once.
    let (status, body, took) = timed(host.http().delete(&session_url)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u64) -> std::collections::HashSet<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the process's descriptors");
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The TCP sockets of this network namespace: inode, local port, state (`0A` is LISTEN).
fn tcp_sockets() -> Vec<(u64, u16, String)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields[1]
                .rsplit_once(':')
                .map(|(_, p)| u16::from_str_radix(p, 16).unwrap());
            sockets.push((fields[9].parse().unwrap(), port.unwrap(), fields[3].to_owned()));
        }
    }
    sockets
}

/// The inodes of the sockets listening on `port`.
fn listening_on(port: u16) -> std::collections::HashSet<u64> {
    tcp_sockets()
        .into_iter()
        .filter(|(_, p, state)| *p == port && state == "0A")
        .map(|(inode, ..)| inode)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_holds_a_socket_of_the_host_it_was_not_given() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Plain"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]

        [[servers]]
        name = "Agent"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let plain_port = host.port("Plain", 0).await;
    let admin_port: u16 = host.admin.rsplit_once(':').unwrap().1.parse().unwrap();
    // The host holds a session of Plain and this admin connection when the agent is started
    // again.
    let mut session = connect(plain_port).await;
    assert_eq!(echo_roundtrip(&mut session, b"x").await, b"x");
    let (status, restarted) = host.post("/api/v1/servers/Agent/restart").await;
    assert_eq!(status, 200, "{restarted}");
    let agent = restarted["pid"].as_u64().unwrap();
    assert_ne!(agent, u64::from(host.pid()), "{restarted}");
    // Its port, bound again (port 0) by the restart.
    let agent_port = restarted["listeners"][0]["port"].as_u64().unwrap() as u16;

    let in_host = socket_inodes(u64::from(host.pid()));
    let in_agent = socket_inodes(agent);
    let (plain, admin, own) = (
        listening_on(plain_port),
        listening_on(admin_port),
        listening_on(agent_port),
    );
    // What is looked for is there to be seen: the host holds all three listeners, and the agent
    // the one it was given.
    for (what, inodes) in [("Plain", &plain), ("admin", &admin), ("Agent", &own)] {
        assert!(
            !inodes.is_empty() && inodes.is_subset(&in_host),
            "the host's {what} listener {inodes:?} among {in_host:?}"
        );
    }
    assert!(!own.is_disjoint(&in_agent), "the agent holds its own listener");
    assert!(plain.is_disjoint(&in_agent), "the agent holds Plain's listener");
    assert!(admin.is_disjoint(&in_agent), "the agent holds the admin listener");
    // Every TCP socket the agent holds is on its own port: no session of Plain, no admin
    // connection.
    let foreign: Vec<_> = tcp_sockets()
        .into_iter()
        .filter(|(inode, port, _)| in_agent.contains(inode) && *port != agent_port)
        .collect();
    assert!(
        foreign.is_empty(),
        "the agent holds TCP sockets of the host: {foreign:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_is_answered_while_a_reload_blocks() {
    let mut host = HostProcess::start(
        r#"
        shutdown_timeout = "30s"
        [[servers]]
        name = "Slow"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]

        [[servers]]
        name = "Agent"
        type = "echo"
        isolation = "process"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    // A client that never closes keeps the graceful shutdown draining for 30 s.
    let mut stubborn = connect(host.port("Slow", 0).await).await;
    assert_eq!(echo_roundtrip(&mut stubborn, b"x").await, b"x");
    let agent = host.server("Agent").await["pid"].as_u64().unwrap();
    block_a_reload(&host).await;
    host.signal(Signal::SIGINT);
    host.wait_ready_state(503).await;
    let signalled = Instant::now();
    host.signal(Signal::SIGINT);
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("the host exits on the second SIGINT");
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "took {:?}",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(130), "a forced exit is not a graceful one");
    // Its agent dies with it.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !is_gone(agent) {
        assert!(Instant::now() < deadline, "the agent {agent} outlived the host");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
