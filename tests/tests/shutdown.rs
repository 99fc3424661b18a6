//! Graceful shutdown on SIGTERM: listeners close, every byte a client sent before the signal is
//! echoed back, sessions end with a FIN (no reset), the host exits 0 within the timeout; the
//! admin API answers what it was asked before the signal and ends its event streams cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use supersocket_tests::HostProcess;
use supersocket_tests::net::IO_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes a client keeps in flight: well under a loopback receive buffer, so everything the
/// client has written is in the server's socket, not still in the client's.
const WINDOW: u64 = 32 * 1024;
/// Upper bound on what one client sends.
const MAX_BYTES: u64 = 256 * 1024 * 1024;

fn pattern(client: u64, offset: u64) -> u8 {
    ((offset * 31 + client * 7) % 251) as u8
}

struct Progress {
    sent: AtomicU64,
    received: AtomicU64,
}

/// Streams a pattern through the echo server and checks every byte that comes back, until the
/// server closes. Returns the bytes received.
async fn stream_client(port: u16, client: u64, progress: Arc<Progress>) -> Result<u64, String> {
    let stream = supersocket_tests::net::connect(port).await;
    let (mut reader, mut writer) = stream.into_split();
    let mut chunk = vec![0u8; 4096];
    let mut buf = vec![0u8; 16 * 1024];
    let (mut sent, mut received) = (0u64, 0u64);
    loop {
        let can_write = sent - received < WINDOW && sent < MAX_BYTES;
        for (i, byte) in chunk.iter_mut().enumerate() {
            *byte = pattern(client, sent + i as u64);
        }
        tokio::select! {
            read = tokio::time::timeout(IO_TIMEOUT, reader.read(&mut buf)) => {
                let n = read.map_err(|_| format!("client {client}: no data for {IO_TIMEOUT:?}"))?
                    .map_err(|e| format!("client {client}: read failed (reset?) after {received} bytes: {e}"))?;
                if n == 0 {
                    return Ok(received);
                }
                for (i, byte) in buf[..n].iter().enumerate() {
                    if *byte != pattern(client, received + i as u64) {
                        return Err(format!("client {client}: wrong byte at offset {}", received + i as u64));
                    }
                }
                received += n as u64;
                progress.received.store(received, Ordering::SeqCst);
            }
            written = writer.write(&chunk), if can_write => {
                // After the server's FIN it still reads (and drops) what we send: no error here.
                let n = written.map_err(|e| format!("client {client}: write failed: {e}"))?;
                sent += n as u64;
                progress.sent.store(sent, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_echoes_every_byte_sent_before_it_and_exits_zero() {
    let mut host = HostProcess::start(
        r#"
        shutdown_timeout = "5s"
        [[servers]]
        name = "Stream"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Stream", 0).await;
    let clients: Vec<_> = (0..50u64)
        .map(|client| {
            let progress = Arc::new(Progress {
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            });
            let task = tokio::spawn(stream_client(port, client, progress.clone()));
            (progress, task)
        })
        .collect();
    // Mid-stream: every client has had data echoed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients
        .iter()
        .any(|(p, _)| p.received.load(Ordering::SeqCst) < 64 * 1024)
    {
        assert!(Instant::now() < deadline, "clients did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_before: Vec<u64> = clients.iter().map(|(p, _)| p.sent.load(Ordering::SeqCst)).collect();
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);

    for (client, ((_, task), before)) in clients.into_iter().zip(sent_before).enumerate() {
        let received = task.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            received >= before,
            "client {client}: sent {before} before SIGTERM, got {received} back"
        );
    }
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("host exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "within shutdown_timeout: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn sessions_that_do_not_close_are_cut_at_the_shutdown_timeout() {
    let mut host = HostProcess::start(
        r#"
        shutdown_timeout = "500ms"
        [[servers]]
        name = "Stubborn"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Stubborn", 0).await;
    // A client that never closes its side.
    let mut stubborn = supersocket_tests::net::connect(port).await;
    assert_eq!(
        supersocket_tests::net::echo_roundtrip(&mut stubborn, b"hi").await,
        b"hi"
    );
    let signalled = Instant::now();
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(10)).expect("host exits");
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "waited for the peer until the timeout, took {took:?}"
    );
    assert!(took < Duration::from_secs(5), "but not much longer: {took:?}");
    let mut rest = Vec::new();
    let _ = stubborn.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing more was sent after the FIN");
}

#[tokio::test]
async fn a_second_sigint_exits_at_once() {
    let mut host = HostProcess::start(
        r#"
        shutdown_timeout = "30s"
        [[servers]]
        name = "Slow"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Slow", 0).await;
    let mut stubborn = supersocket_tests::net::connect(port).await;
    assert_eq!(supersocket_tests::net::echo_roundtrip(&mut stubborn, b"x").await, b"x");
    host.signal(Signal::SIGINT);
    // The first SIGINT has begun a 30 s drain once readiness fails.
    host.wait_ready_state(503).await;
    let signalled = Instant::now();
    host.signal(Signal::SIGINT);
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("host exits on the second SIGINT");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_ne!(status.code(), Some(0), "a forced exit is not a graceful one");
    stubborn.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_before_sigterm_gets_its_answer_and_event_streams_end_cleanly() {
    let mut host = HostProcess::start_with(supersocket_tests::HostOptions {
        args: vec!["--log-level".into(), "debug".into()],
        ..supersocket_tests::HostOptions::new(
            r#"shutdown_timeout = "3s"

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
"#,
        )
    });
    let events = host
        .http()
        .get(format!("{}/api/v1/events", host.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // A session that does not close makes the stop drain for its whole bound.
    let _stubborn = supersocket_tests::net::connect(host.port("Echo", 0).await).await;
    let stop = tokio::spawn({
        let url = format!("{}/api/v1/servers/Echo/stop?timeout=1500ms", host.admin);
        let http = host.http().clone();
        async move { http.post(url).send().await }
    });
    host.wait_server("Echo", Duration::from_secs(5), |s| s["state"] == "stopping")
        .await;
    // A request whose body is still coming when the signal comes.
    let admin = host.admin.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&admin).await.unwrap();
    let head = format!(
        "POST /api/v1/config/check HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\n{{}}"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    host.signal(Signal::SIGTERM);
    let answer = stop.await.unwrap().expect("the stop is answered, not cut");
    assert_eq!(answer.status(), 200);
    let server: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(server["state"], "stopped");
    // The stream ends with the end of its body (no reset), after the last state.
    let body = tokio::time::timeout(Duration::from_secs(10), events.text())
        .await
        .expect("the stream ends")
        .expect("and ends cleanly");
    assert!(body.contains(r#""state":"stopped""#), "{body}");
    // The host has stopped, but waits for the request still coming; completed, it is answered.
    assert!(
        host.wait_exit(Duration::from_millis(500)).is_none(),
        "the host left with a request unanswered"
    );
    slow.write_all(b"  ").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut answer))
        .await
        .expect("answered")
        .expect("not reset");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
    assert!(host.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    // Every request is logged at debug level with its status and duration.
    let log = host.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("admin request") && l.contains("/api/v1/servers/Echo/stop"))
        .unwrap_or_else(|| panic!("no request line: {log}"));
    assert!(line.contains("status=200") && line.contains("elapsed="), "{line}");
}
