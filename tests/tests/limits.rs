//! Limits a peer or the machine imposes: connection limit, package length, idle timeout, slow
//! readers, busy ports.

use std::time::{Duration, Instant};

use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, closes_within, connect, echo_roundtrip, free_consecutive_ports};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_the_others_keep_working() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Small"
        type = "command"
        max_connections = 3
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Small", 0).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = LineClient::connect(port).await;
        assert_eq!(client.request(&format!("ADD {i} 1")).await, (i + 1).to_string());
        clients.push(client);
    }
    let mut fourth = LineClient::connect(port).await;
    fourth.send("PING").await;
    assert_eq!(
        fourth.try_recv().await,
        None,
        "the connection over the limit gets no answer, only a close"
    );
    for client in &mut clients {
        assert_eq!(client.request("PING").await, "PONG");
    }
    assert_eq!(host.server("Small").await["sessions"], 3);
    // A freed slot is usable again.
    clients.pop().unwrap().send("QUIT").await;
    host.wait_server("Small", Duration::from_secs(5), |s| s["sessions"] == 2)
        .await;
    let mut again = LineClient::connect(port).await;
    assert_eq!(again.request("PING").await, "PONG");
}

#[tokio::test]
async fn a_two_mib_line_closes_only_its_session_and_memory_stays_flat() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Lines"
        type = "command"
        max_package_length = 1048576
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Lines", 0).await;
    let mut bystander = LineClient::connect(port).await;
    assert_eq!(bystander.request("PING").await, "PONG");
    // A line just under the limit is fine.
    let mut fits = LineClient::connect(port).await;
    let text = "x".repeat(1024 * 1024 - 8);
    assert_eq!(fits.request(&format!("ECHO {text}")).await.len(), text.len());
    drop(fits);
    let (rss_before, _) = host.rss_kib();

    let mut attacker = connect(port).await;
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < 2 * 1024 * 1024 {
        if attacker.write_all(&chunk).await.is_err() {
            break; // the server closed on us: that is the point
        }
        sent += chunk.len();
    }
    assert!(
        closes_within(&mut attacker, Duration::from_secs(5)).await,
        "oversized line closes the session"
    );
    let (rss_after, peak) = host.rss_kib();
    assert!(
        rss_after < rss_before + 4 * 1024 && peak < rss_before + 6 * 1024,
        "RSS before {rss_before} KiB, after {rss_after} KiB, peak {peak} KiB"
    );
    assert_eq!(
        bystander.request("ADD 2 2").await,
        "4",
        "the other session is unaffected"
    );
}

#[tokio::test]
async fn idle_sessions_time_out_and_busy_ones_do_not() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Idle"
        type = "command"
        idle_timeout = "400ms"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Idle", 0).await;
    let began = Instant::now();
    let mut idle = connect(port).await;
    let mut busy = LineClient::connect(port).await;
    for _ in 0..8 {
        assert_eq!(busy.request("PING").await, "PONG");
        tokio::time::sleep(Duration::from_millis(100)).await; // the client's own pace, not synchronisation
    }
    assert!(
        closes_within(&mut idle, Duration::from_secs(5)).await,
        "idle session closed"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "not before the idle timeout"
    );
    assert_eq!(busy.request("PING").await, "PONG", "a session that talks stays open");
}

#[tokio::test]
async fn a_busy_port_fails_that_server_only_and_readiness_says_so() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap().port();
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Blocked"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = 0 }}, {{ ip = "Loopback", port = {busy} }}]

        [[servers]]
        name = "Fine"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#
    ));
    let blocked = host.server("Blocked").await;
    assert_eq!(blocked["state"], "failed");
    let error = blocked["last_error"].as_str().unwrap();
    assert!(error.contains(&busy.to_string()) && error.contains("in use"), "{error}");
    assert_eq!(
        blocked["listeners"].as_array().unwrap().len(),
        0,
        "all or nothing: no listener kept"
    );
    let mut fine = connect(host.port("Fine", 0).await).await;
    assert_eq!(echo_roundtrip(&mut fine, b"still here").await, b"still here");
    let (status, ready) = host.get("/readyz?verbose").await;
    assert_eq!(status, 503, "{ready}");
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Blocked")
        .unwrap();
    assert_eq!(
        (check["ok"].as_bool(), check["state"].as_str()),
        (Some(false), Some("failed"))
    );
    assert!(check["detail"].as_str().unwrap().contains("in use"));
}

#[tokio::test]
async fn port_fallback_takes_a_following_port() {
    // A busy port and the nine after it free; the squatter holds it to the end.
    let busy = free_consecutive_ports(10);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", busy)).unwrap();
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Fallback"
        type = "echo"
        port_fallback = 9
        listeners = [{{ ip = "127.0.0.1", port = {busy} }}]
        "#
    ));
    let port = host.port("Fallback", 0).await;
    assert_eq!(port, busy + 1, "the first free port after busy {busy}");
    let mut client = connect(port).await;
    assert_eq!(echo_roundtrip(&mut client, b"fallback").await, b"fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_memory_or_slow_others() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Replies"
        type = "command"
        send_queue = 16
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Replies", 0).await;
    let mut other = LineClient::connect(port).await;
    let mut quiet = Duration::ZERO;
    for _ in 0..20 {
        let began = Instant::now();
        assert_eq!(other.request("PING").await, "PONG");
        quiet = quiet.max(began.elapsed());
    }
    let (rss_before, _) = host.rss_kib();

    // Pipeline requests whose replies are as big as the requests, and never read a reply.
    let mut sink = connect(port).await;
    let request = format!("ECHO {}\r\n", "r".repeat(1000)).repeat(64);
    let mut written = 0usize;
    let mut worst = Duration::ZERO;
    while written < 256 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_millis(500), sink.write_all(request.as_bytes())).await {
            Ok(Ok(())) => written += request.len(),
            Ok(Err(e)) => panic!("the server should push back, not close: {e}"),
            Err(_) => break, // the server stopped reading: backpressure reached the writer
        }
        if written % (4 * 1024 * 1024) < request.len() {
            let began = Instant::now();
            assert_eq!(other.request("PING").await, "PONG");
            worst = worst.max(began.elapsed());
        }
    }
    assert!(
        written < 256 * 1024 * 1024,
        "the server never pushed back after {written} bytes"
    );
    for _ in 0..20 {
        let began = Instant::now();
        assert_eq!(other.request("PING").await, "PONG");
        worst = worst.max(began.elapsed());
    }
    let (rss_after, peak) = host.rss_kib();
    assert!(
        rss_after < rss_before + 4 * 1024 && peak < rss_before + 4 * 1024,
        "{written} bytes written without reading: RSS {rss_before} -> {rss_after} KiB (peak {peak})"
    );
    // Generous: a blocked peer must not stall the others; typical is well under a millisecond.
    assert!(
        worst < Duration::from_millis(250),
        "others' worst PING {worst:?} (quiet {quiet:?})"
    );
}

/// Pipelines requests whose replies are as big as they are, reading none, until the server
/// stops taking more: from then on the server is blocked writing to this peer.
async fn stall_the_server<S: tokio::io::AsyncWrite + Unpin>(mut sink: S) -> S {
    let request = format!("ECHO {}\r\n", "s".repeat(1000)).repeat(64);
    for _ in 0..(64 * 1024) {
        match tokio::time::timeout(Duration::from_millis(500), sink.write_all(request.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the server should push back, not close: {e}"),
            Err(_) => return sink,
        }
    }
    panic!("the server never pushed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_still_closed_by_the_idle_timeout_or_a_kick() {
    a_peer_that_stops_reading_is_closed(false).await;
}

/// Over TLS, writes are taken into rustls' buffer at once: the session waits in its flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_that_stops_reading_is_still_closed_by_the_idle_timeout_or_a_kick() {
    a_peer_that_stops_reading_is_closed(true).await;
}

async fn a_peer_that_stops_reading_is_closed(tls: bool) {
    let tls_line = if tls { "tls = { self_signed = true }" } else { "" };
    let host = HostProcess::start(&format!(
        r#"
        [[servers]]
        name = "Stalled"
        type = "command"
        idle_timeout = "1s"
        {tls_line}
        listeners = [{{ ip = "Loopback", port = 0 }}]

        [[servers]]
        name = "Kickable"
        type = "command"
        {tls_line}
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#
    ));
    let gone = |server: &serde_json::Value| server["sessions"] == 0;
    let stall = |port: u16| async move {
        let stalled: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if tls {
            let trusted = supersocket_tests::tls::fetch_certificate(port).await;
            Box::new(stall_the_server(supersocket_tests::tls::connect_trusting(port, &trusted).await).await)
        } else {
            Box::new(stall_the_server(connect(port).await).await)
        };
        stalled
    };

    let stalled = stall(host.port("Stalled", 0).await).await;
    assert_eq!(host.server("Stalled").await["sessions"], 1);
    host.wait_server("Stalled", Duration::from_secs(10), gone).await;

    let kicked = stall(host.port("Kickable", 0).await).await;
    let (_, sessions) = host.get("/api/v1/servers/Kickable/sessions").await;
    let id = sessions[0]["id"].as_str().expect("one session").to_owned();
    let kick = host.ctl(&["kick", "Kickable", &id]);
    assert_eq!(kick.code, 0, "{}", kick.stderr);
    host.wait_server("Kickable", Duration::from_secs(5), gone).await;
    drop((stalled, kicked));
}

#[tokio::test]
async fn a_tls_handshake_that_never_starts_holds_its_slot_no_longer_than_the_idle_timeout() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Secure"
        type = "echo"
        max_connections = 1
        idle_timeout = "500ms"
        tls = { self_signed = true }
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Secure", 0).await;
    let trusted = supersocket_tests::tls::fetch_certificate(port).await;
    host.wait_server("Secure", Duration::from_secs(5), |s| s["sessions"] == 0)
        .await;
    // Connects and says nothing: a TLS handshake that never starts.
    let mut silent = connect(port).await;
    let began = Instant::now();
    assert!(
        closes_within(&mut silent, Duration::from_secs(5)).await,
        "the silent peer is closed"
    );
    let held = began.elapsed();
    assert!(held < Duration::from_secs(2), "it held the only slot for {held:?}");
    // The slot is free again: a real client gets in.
    host.wait_server("Secure", Duration::from_secs(5), |s| s["sessions"] == 0)
        .await;
    let mut client = supersocket_tests::tls::connect_trusting(port, &trusted).await;
    assert_eq!(echo_roundtrip(&mut client, b"in").await, b"in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_large_lines_to_readers_that_never_read_is_bounded_in_memory() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "Cast"
        type = "command"
        max_package_length = 2097152
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let port = host.port("Cast", 0).await;
    let mut deaf = Vec::new();
    for _ in 0..20 {
        let mut client = LineClient::connect(port).await;
        assert_eq!(client.request("PING").await, "PONG");
        deaf.push(client);
    }
    let (before, _) = host.rss_kib();
    // The sender reads (and drops) everything it gets, its own copies included.
    let (mut from_host, mut to_host) = connect(port).await.into_split();
    let drain = tokio::spawn(async move { tokio::io::copy(&mut from_host, &mut tokio::io::sink()).await });
    let line = format!("BROADCAST {}\r\n", "x".repeat(1024 * 1024));
    for _ in 0..40 {
        to_host.write_all(line.as_bytes()).await.unwrap();
    }
    // Every reader that never reads is closed as a slow reader once its queue stays full.
    host.wait_server("Cast", Duration::from_secs(30), |s| s["sessions"] == 1)
        .await;
    let (_, peak) = host.rss_kib();
    let grew = peak.saturating_sub(before);
    // 40 lines of 1 MiB to 21 sessions were 840 MiB to queue; each session holds about one
    // line queued and one being written.
    assert!(grew < 160 * 1024, "the host grew by {grew} KiB");
    drop(to_host);
    drain.abort();
}
