//! Faults a user's machine sees, against the real host: connections queued in the backlog at a
//! stop, an agent frozen with SIGSTOP, an instance that failed, restarts racing agent spawns,
//! a stop asked with a long timeout at shutdown, a reload that blocks, crashes.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use supersocket_tests::net::{IO_TIMEOUT, LineClient, connect, free_consecutive_ports};
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
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
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
    // The config file becomes a FIFO nobody writes: reading it blocks for ever.
    let path = host.config_path();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    host.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.stderr().contains("reloading the config") {
        assert!(Instant::now() < deadline, "the reload began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host exits");
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));
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
