//! The control plane end to end: every admin endpoint and every CLI command against a real
//! host, table and JSON output, exit codes, and instances controlled one by one while the
//! others keep serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, closes_within, connect, echo_roundtrip};

const CONFIG: &str = r#"
shutdown_timeout = "2s"

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Spare"
type = "command"
autostart = false
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_start_stop_restart_through_the_cli() {
    let host = HostProcess::start(CONFIG);

    let list = host.ctl(&["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let header: Vec<&str> = list.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "STATE",
            "ISOLATION",
            "PID",
            "LISTENERS",
            "SESSIONS",
            "UPTIME",
            "RESTARTS"
        ]
    );
    let spare_row = list
        .stdout
        .lines()
        .find(|l| l.starts_with("Spare "))
        .expect("a row per server");
    assert!(spare_row.contains("stopped"), "{spare_row}");
    let echo_port = host.port("Echo", 0).await;
    let echo_row = list.stdout.lines().find(|l| l.starts_with("Echo ")).unwrap();
    assert!(
        echo_row.contains("running") && echo_row.contains(&echo_port.to_string()),
        "{echo_row}"
    );
    assert!(
        list.stdout.lines().all(|l| l.chars().count() <= 80),
        "fits 80 columns:\n{}",
        list.stdout
    );
    assert_eq!(host.ctl(&["ls"]).stdout, list.stdout, "ls is list");

    // JSON output is the API's JSON.
    let json = host.ctl(&["--output", "json", "list"]).json();
    let (_, api) = host.get("/api/v1/servers").await;
    let names = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&json), names(&api));
    assert_eq!(json[0]["listeners"], api[0]["listeners"]);

    let status = host.ctl(&["status"]);
    assert_eq!(status.code, 0);
    assert!(
        status.stdout.contains("Ready    ready") && status.stdout.contains("Cmd "),
        "{}",
        status.stdout
    );
    let detail = host.ctl(&["status", "Echo"]);
    assert!(
        detail.stdout.contains(&format!("127.0.0.1:{echo_port}")),
        "{}",
        detail.stdout
    );
    let missing = host.ctl(&["status", "Nope"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no server named \"Nope\""),
        "{}",
        missing.stderr
    );

    // Stop refuses new connections; start brings the server back.
    let stop = host.ctl(&["stop", "Echo", "--timeout", "1s"]);
    assert_eq!((stop.code, stop.stdout.trim()), (0, "Echo: stopped"), "{stop:?}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", echo_port)).await.is_err(),
        "listener closed"
    );
    assert_eq!(
        host.ctl(&["stop", "Echo"]).stdout.trim(),
        "Echo: stopped",
        "stopping twice is fine"
    );
    let start = host.ctl(&["start", "Echo", "Spare"]);
    assert_eq!(start.stdout, "Echo: running\nSpare: running\n", "{start:?}");
    let mut echo = connect(host.port("Echo", 0).await).await;
    assert_eq!(echo_roundtrip(&mut echo, b"back").await, b"back");
    let mut spare = LineClient::connect(host.port("Spare", 0).await).await;
    assert_eq!(spare.request("SERVER").await, "Spare");

    let restart = host.ctl(&["--output", "json", "restart", "Cmd"]);
    assert_eq!(restart.code, 0);
    assert_eq!(restart.json()[0]["state"], "running");

    let partly = host.ctl(&["start", "Cmd", "Nope"]);
    assert_eq!(partly.code, 1, "one unknown server fails the command");
    assert!(
        partly.stdout.contains("Cmd: running") && partly.stderr.contains("Nope"),
        "{partly:?}"
    );

    drop((echo, spare));
    let all = host.ctl(&["stop", "--all"]);
    assert_eq!(all.stdout, "Echo: stopped\nCmd: stopped\nSpare: stopped\n");
    let health = host.ctl(&["health"]);
    assert_eq!(health.code, 1, "autostart servers are stopped");
    assert!(
        health.stderr.contains("not ready") && health.stderr.contains("Echo is stopped"),
        "{}",
        health.stderr
    );
    let all = host.ctl(&["start", "--all"]);
    assert_eq!(all.code, 0, "{all:?}");
    let health = host.ctl(&["health", "--wait", "5s"]);
    assert_eq!((health.code, health.stdout.trim()), (0, "ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_send_and_kick_act_on_real_clients() {
    let host = HostProcess::start(CONFIG);
    let port = host.port("Cmd", 0).await;
    let mut first = LineClient::connect(port).await;
    let mut second = LineClient::connect(port).await;
    let first_id = first.request("WHOAMI").await;
    let second_id = second.request("WHOAMI").await;
    let first_local = first.stream().local_addr().unwrap().to_string();
    let second_local = second.stream().local_addr().unwrap().to_string();

    let sessions = host.ctl(&["--output", "json", "sessions", "Cmd"]).json();
    let pairs: Vec<(String, String)> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["remote"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [(first_id.clone(), first_local), (second_id.clone(), second_local)]
    );
    assert_eq!(sessions[0]["local"], format!("127.0.0.1:{port}"));
    assert!(sessions[0]["bytes_in"].as_u64().unwrap() >= 8);
    let table = host.ctl(&["sessions", "Cmd", "--limit", "1"]);
    let header: Vec<&str> = table.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "REMOTE", "STARTED", "LAST-ACTIVE", "IN", "OUT"]);
    assert_eq!(table.stdout.lines().count(), 2, "--limit 1: {}", table.stdout);

    let sent = host.ctl(&["send", "Cmd", &second_id, "hello from the operator"]);
    assert_eq!(sent.code, 0, "{sent:?}");
    assert_eq!(second.recv().await, "hello from the operator");
    let (status, _) = post_json(
        &host,
        &format!("/api/v1/servers/Cmd/sessions/{first_id}/send"),
        r#"{"base64": "AAEC/w=="}"#,
    )
    .await;
    assert_eq!(status, 202);
    let mut raw = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(first.stream(), &mut raw)
        .await
        .unwrap();
    assert_eq!(raw, [0, 1, 2, 255]);
    let (status, body) = post_json(
        &host,
        &format!("/api/v1/servers/Cmd/sessions/{first_id}/send"),
        r#"{"text": "a", "base64": "YQ=="}"#,
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));

    let kicked = host.ctl(&["kick", "Cmd", &first_id]);
    assert_eq!(kicked.code, 0, "{kicked:?}");
    assert!(
        first.closes_within(Duration::from_secs(5)).await,
        "the kicked client is closed"
    );
    assert_eq!(second.request("PING").await, "PONG", "the other session is untouched");
    let gone = host.ctl(&["kick", "Cmd", &first_id]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains(&first_id), "{}", gone.stderr);
    assert_eq!(host.ctl(&["send", "Cmd", "zz-not-an-id", "x"]).code, 1);
    assert_eq!(host.ctl(&["sessions", "Nope"]).code, 1);
}

async fn post_json(host: &HostProcess, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", host.admin))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_server_never_disturbs_twenty_live_sessions_of_another() {
    let host = HostProcess::start(CONFIG);
    let port = host.port("Echo", 0).await;
    let running = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let (running, rounds) = (running.clone(), rounds.clone());
            tokio::spawn(async move {
                let mut stream = connect(port).await;
                let message = format!("client {i} says hello");
                while running.load(Ordering::SeqCst) {
                    assert_eq!(
                        echo_roundtrip(&mut stream, message.as_bytes()).await,
                        message.as_bytes()
                    );
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    host.wait_server("Echo", Duration::from_secs(5), |s| s["sessions"] == 20)
        .await;
    for _ in 0..3 {
        let before = rounds.load(Ordering::SeqCst);
        assert_eq!(host.ctl(&["stop", "Cmd"]).code, 0);
        assert_eq!(host.ctl(&["start", "Cmd"]).code, 0);
        assert_eq!(host.ctl(&["restart", "Spare"]).code, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while rounds.load(Ordering::SeqCst) < before + 100 {
            assert!(Instant::now() < deadline, "echo traffic stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    running.store(false, Ordering::SeqCst);
    for client in clients {
        client.await.expect("every echo round trip succeeded");
    }
    assert_eq!(
        host.server("Echo").await["total_sessions"],
        20,
        "no session was dropped and reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_at_once_during_a_long_drain_and_a_start_waits_for_the_stop() {
    let host = HostProcess::start(CONFIG);
    let mut stubborn = connect(host.port("Echo", 0).await).await;
    assert_eq!(echo_roundtrip(&mut stubborn, b"x").await, b"x");
    let admin = host.admin.clone();
    let http = reqwest::Client::new();
    let stop = tokio::spawn({
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            http.post(format!("{admin}/api/v1/servers/Echo/stop?timeout=10s"))
                .send()
                .await
                .unwrap()
        }
    });
    host.wait_server("Echo", Duration::from_secs(5), |s| s["state"] == "stopping")
        .await;
    let began = Instant::now();
    let (status, servers) = host.get("/api/v1/servers").await;
    assert_eq!(status, 200);
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "listing took {:?} during a drain",
        began.elapsed()
    );
    assert_eq!(servers[0]["state"], "stopping");
    assert_eq!(host.server("Cmd").await["state"], "running");

    // A start during the stop waits for it, then starts.
    let start = tokio::spawn({
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            http.post(format!("{admin}/api/v1/servers/Echo/start"))
                .send()
                .await
                .unwrap()
        }
    });
    assert_eq!(host.server("Echo").await["state"], "stopping", "the start waits");
    // The peer closes: the drain ends early, well before its 10 s bound.
    drop(stubborn);
    let stopped = stop.await.unwrap();
    assert_eq!(stopped.status(), 200);
    let started = start.await.unwrap();
    assert_eq!(started.status(), 200);
    let server: serde_json::Value = started.json().await.unwrap();
    assert_eq!(server["state"], "running");
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_session_is_cut_at_the_stop_timeout_and_the_operation_survives_a_hung_up_client() {
    let host = HostProcess::start(CONFIG);
    let mut stubborn = connect(host.port("Echo", 0).await).await;
    assert_eq!(echo_roundtrip(&mut stubborn, b"x").await, b"x");
    // The client gives up after 100 ms; the stop must still complete and not leave the
    // instance half-stopped.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/api/v1/servers/Echo/stop?timeout=700ms", host.admin))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client timed out first");
    let server = host
        .wait_server("Echo", Duration::from_secs(5), |s| s["state"] == "stopped")
        .await;
    assert_eq!(server["listeners"].as_array().unwrap().len(), 0);
    assert!(closes_within(&mut stubborn, Duration::from_secs(5)).await);
    assert_eq!(host.ctl(&["start", "Echo"]).code, 0);
}

/// A kick that comes while the session's handler waits (for room in a reader's full queue)
/// closes it as soon as that handler is done, not at some later wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_while_a_handler_waits_closes_the_session_when_it_is_done() {
    a_kick_while_a_handler_waits("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_while_a_handler_waits_in_an_agent_closes_the_session_when_it_is_done() {
    a_kick_while_a_handler_waits("process").await;
}

async fn a_kick_while_a_handler_waits(isolation: &str) {
    let host = HostProcess::start(&format!(
        r#"
[[servers]]
name = "Cmd"
type = "command"
isolation = "{isolation}"
send_queue = 1
send_queue_bytes = 1024
max_package_length = 200000
idle_timeout = "0s"
listeners = [{{ ip = "Loopback", port = 0 }}]
"#
    ));
    let port = host.port("Cmd", 0).await;
    // Whether the kick lands inside a waiting handler or between two is a matter of timing
    // (about half the rounds land inside one): six rounds.
    for _ in 0..6 {
        kick_while_a_handler_waits(&host, port).await;
    }
}

async fn kick_while_a_handler_waits(host: &HostProcess, port: u16) {
    // A member that never reads: broadcasts to it wait for room, then close it as a slow reader.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let silent = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let (reader, mut writer) = connect(port).await.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    let mut line = String::new();
    let mut ask = async |request: &str, line: &mut String| {
        tokio::io::AsyncWriteExt::write_all(&mut writer, format!("{request}\r\n").as_bytes())
            .await
            .unwrap();
        // Skipping what this session's own broadcasts bring it.
        loop {
            line.clear();
            tokio::io::AsyncBufReadExt::read_line(&mut reader, line).await.unwrap();
            if line.trim_end() != "hello" {
                return line.trim_end().to_owned();
            }
        }
    };
    // Until the silent member is registered.
    let mut registered = false;
    for _ in 0..100 {
        if ask("BROADCAST hello", &mut line).await == "OK 2" {
            registered = true;
            break;
        }
    }
    assert!(registered, "the silent member never showed among the sessions");
    let id = ask("WHOAMI", &mut line).await;
    let pipeline = format!("BROADCAST {}\r\n", "x".repeat(100_000)).repeat(60);
    let writing = tokio::spawn(async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut writer, pipeline.as_bytes()).await;
        writer
    });
    // The first broadcasts are answered at once; the later ones wait for the silent member.
    let mut first = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut reader, &mut first)
        .await
        .unwrap();
    let kicked_at = Instant::now();
    assert_eq!(host.ctl(&["kick", "Cmd", &id]).code, 0);
    assert!(
        closes_within(&mut reader, Duration::from_secs(10)).await,
        "the kicked session is closed"
    );
    let closed_after = kicked_at.elapsed();
    // The waiting handlers end once the silent member is closed as a slow reader (a second of
    // patience); the kick takes effect right after.
    assert!(
        closed_after < Duration::from_millis(2500),
        "closed {closed_after:?} after the kick"
    );
    drop((silent, writing));
}
