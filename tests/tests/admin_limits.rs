//! The admin port's own limits, against the real host over raw TCP: a bounded number of
//! connections that can never take the instances' descriptors, header and idle timeouts, and
//! the JSON error envelope on answers that come from below the handlers.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use supersocket_tests::net::{IO_TIMEOUT, closes_within, connect, echo_roundtrip, free_consecutive_ports};
use supersocket_tests::{HostProcess, freeze};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn admin_port(host: &HostProcess) -> u16 {
    host.admin.rsplit(':').next().unwrap().parse().unwrap()
}

/// Sends `request` on a new connection and reads the answer to its end (the host closes
/// after it, or it says `connection: close`): status and JSON body.
async fn raw(port: u16, request: &[u8]) -> (u16, serde_json::Value) {
    let (mut reader, mut writer) = connect(port).await.into_split();
    // Written while the answer is read: the host may answer before it has read it all.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let answer = answer(&mut reader).await;
    drop(writing.await);
    answer
}

/// Sends `request` on a new connection: the answer must be `status` with the error `code`.
async fn expect_error(port: u16, request: &[u8], status: u16, code: &str) {
    let (got, body) = raw(port, request).await;
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body} for {}",
        String::from_utf8_lossy(request)
    );
}

/// Reads one answer: status and JSON body.
async fn answer(stream: &mut (impl AsyncReadExt + Unpin)) -> (u16, serde_json::Value) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed without an answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .unwrap();
    let mut body = got[head_end + 4..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the body ended early");
        body.extend_from_slice(&buf[..n]);
    }
    assert!(head.contains("content-type: application/json"), "{head}");
    (status, serde_json::from_slice(&body[..length]).unwrap())
}

/// Sends a probe on `stream`: the answer's status, or `None` if the host had closed it.
async fn status_or_closed(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    stream.write_all(PROBE).await.ok()?;
    let mut first = [0u8; 1];
    match tokio::time::timeout(IO_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(answer(stream).await.0),
        _ => None,
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

const PROBE: &[u8] = b"GET /livez HTTP/1.1\r\nhost: localhost\r\n\r\n";

/// Waits until the host has at most `most` descriptors open; how long that took.
async fn descriptors_fall_to(pid: u32, most: usize, within: Duration) -> Duration {
    let began = Instant::now();
    while open_descriptors(pid) > most {
        assert!(
            began.elapsed() < within,
            "descriptors stayed at {} (> {most})",
            open_descriptors(pid)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    began.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admin_port_makes_room_from_its_quietest_connections_and_the_instances_keep_serving() {
    // A fixed port for the instance: asking the API for it would hold an admin connection.
    let echo = free_consecutive_ports(1);
    let host = HostProcess::start(&format!(
        r#"
        [admin]
        max_connections = 8

        [[servers]]
        name = "Echo"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = {echo} }}]
        "#
    ));
    let port = admin_port(&host);
    let before = open_descriptors(host.pid());
    // Eight connections that hold their places and say nothing.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect(port).await);
    }
    // Eight more, each asks and stays: each is served in the place of a silent one.
    let mut stayers = Vec::new();
    for _ in 0..8 {
        let mut stayer = connect(port).await;
        stayer.write_all(PROBE).await.unwrap();
        assert_eq!(answer(&mut stayer).await.0, 200);
        stayers.push(stayer);
    }
    for stream in &mut silent {
        assert!(
            closes_within(stream, IO_TIMEOUT).await,
            "a silent connection kept its place"
        );
    }
    // A flood of silent connections takes the place of one that talked, then of each other.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(connect(port).await);
    }
    // A probe after them: the host has taken them all.
    let mut probe = connect(port).await;
    probe.write_all(PROBE).await.unwrap();
    assert_eq!(answer(&mut probe).await.0, 200);
    let mut kept = 0;
    for stayer in &mut stayers {
        kept += usize::from(status_or_closed(stayer).await == Some(200));
    }
    assert!(kept >= 7, "{kept} of 8 connections that talked kept their places");
    drop(flood);
    // However many more come, each is served, the quietest making room, and the port never
    // holds more than its eight.
    for _ in 0..300 {
        let mut newcomer = connect(port).await;
        newcomer.write_all(PROBE).await.unwrap();
        assert_eq!(answer(&mut newcomer).await.0, 200);
        assert!(open_descriptors(host.pid()) <= before + 8 + 2);
    }
    drop(stayers);
    descriptors_fall_to(host.pid(), before, IO_TIMEOUT).await;

    // The instances have every descriptor they need.
    let mut clients = Vec::new();
    for i in 0..200u32 {
        let mut client = connect(echo).await;
        assert_eq!(echo_roundtrip(&mut client, &i.to_be_bytes()).await, i.to_be_bytes());
        clients.push(client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_a_flood_of_silent_connections_is_answered() {
    let host = HostProcess::start("[admin]\nmax_connections = 4\n");
    let port = admin_port(&host);
    // While the host is stopped, the kernel queues: silent connections, a probe that sends its
    // request, then many more silent ones. Taken in that order, each silent one after the
    // probe makes room by closing another, never the probe, whose request waited already.
    freeze(u64::from(host.pid())).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(port).await);
    }
    let mut probe = connect(port).await;
    probe.write_all(PROBE).await.unwrap();
    for _ in 0..200 {
        silent.push(connect(port).await);
    }
    host.signal(Signal::SIGCONT);
    assert_eq!(answer(&mut probe).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_admin_connection_has_a_request_in_flight_more_are_closed_at_once() {
    let host = HostProcess::start(
        r#"
        [admin]
        max_connections = 4
        header_timeout = "3s"
        "#,
    );
    let port = admin_port(&host);
    // Four requests whose bodies never come; the interim 100 says each is in a handler.
    let head = b"POST /api/v1/servers/x/sessions/1/send HTTP/1.1\r\nhost: localhost\r\n\
        content-length: 100\r\nexpect: 100-continue\r\n\r\n";
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(port).await;
        stream.write_all(head).await.unwrap();
        let mut interim = [0u8; 25];
        tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut interim))
            .await
            .expect("an interim answer")
            .unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        busy.push(stream);
    }
    let refused_from = Instant::now();
    for _ in 0..100 {
        let mut extra = connect(port).await;
        assert!(
            closes_within(&mut extra, IO_TIMEOUT).await,
            "one over the limit was kept"
        );
    }
    assert!(
        refused_from.elapsed() < Duration::from_secs(3),
        "the requests ended first"
    );
    // The bodies' deadline ends the requests, and the places are free again.
    for stream in &mut busy {
        let (status, body) = answer(stream).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    }
    let mut again = connect(port).await;
    again.write_all(PROBE).await.unwrap();
    assert_eq!(answer(&mut again).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_peer_does_not_read_is_given_up_after_the_header_timeout() {
    let host = HostProcess::start("[admin]\nheader_timeout = \"1s\"\n");
    let port = admin_port(&host);
    let before = open_descriptors(host.pid());
    // Far more answers than the sockets' buffers hold, asked for at once and never read.
    let ask = b"GET /api/v1/servers HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let requests = 100_000;
    let mut stream = connect(port).await;
    // One answered first: the host has taken the connection.
    stream.write_all(ask).await.unwrap();
    assert_eq!(answer(&mut stream).await.0, 200);
    let (mut reader, mut writer) = stream.split();
    let sending = async {
        for _ in 0..requests / 1000 {
            if writer.write_all(&ask.repeat(1000)).await.is_err() {
                break;
            }
        }
    };
    let gone = descriptors_fall_to(host.pid(), before, Duration::from_secs(20));
    let (_, took) = tokio::join!(sending, gone);
    assert!(took >= Duration::from_millis(900), "given up after {took:?}");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(IO_TIMEOUT, reader.read(&mut buf)).await {
        all.extend_from_slice(&buf[..n]);
    }
    let answers = count(&all, b"HTTP/1.1 200");
    assert!(answers > 0 && answers < requests, "{answers} answers");
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    let host = HostProcess::start(
        r#"
        [admin]
        header_timeout = "1s"
        idle_timeout = "2s"
        "#,
    );
    let port = admin_port(&host);

    // Headers that never end: closed after header_timeout, though bytes keep coming.
    let mut slow = connect(port).await;
    let began = Instant::now();
    slow.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"x-slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::ZERO, slow.read(&mut byte)).await {
            closed = true;
            break;
        }
    }
    let took = began.elapsed();
    assert!(closed, "a header one line every 100 ms was kept open 4 s");
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before header_timeout"
    );

    // A body that trickles in, a byte every 100 ms: refused once header_timeout has passed.
    let (mut reader, mut writer) = connect(port).await.into_split();
    writer
        .write_all(
            b"POST /api/v1/servers/x/sessions/1/send HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let began = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let (status, body) = answer(&mut reader).await;
    let took = began.elapsed();
    trickle.abort();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A connection that never sends, and one idle after its answer: closed after idle_timeout.
    let mut silent = connect(port).await;
    let mut kept = connect(port).await;
    kept.write_all(b"GET /livez HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer(&mut kept).await.0, 200);
    let idle_from = Instant::now();
    assert!(
        closes_within(&mut silent, Duration::from_secs(5)).await,
        "silent kept open"
    );
    assert!(closes_within(&mut kept, Duration::from_secs(5)).await, "idle kept open");
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_below_the_handlers_carry_the_envelope() {
    let host = HostProcess::start("[admin]\ntoken = \"s3cret\"\n");
    let port = admin_port(&host);
    let auth = "authorization: Bearer s3cret\r\n";

    let long_target = format!(
        "GET /api/v1/servers/{} HTTP/1.1\r\nhost: localhost\r\n\r\n",
        "a".repeat(9000)
    );
    let (status, body) = raw(port, long_target.as_bytes()).await;
    assert_eq!(status, 431, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let many = format!(
        "GET /livez HTTP/1.1\r\nhost: localhost\r\n{}\r\n",
        "x-pad: 0123456789\r\n".repeat(100)
    );
    expect_error(port, many.as_bytes(), 431, "headers_too_large").await;
    expect_error(port, b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request").await;
    let bad_utf8 = format!("GET /api/v1/servers/%FF%FE HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n");
    expect_error(port, bad_utf8.as_bytes(), 400, "bad_request").await;

    // A chunked body over the limit: 413 in the envelope.
    let mut chunked = format!(
        "POST /api/v1/servers/x/sessions/1/send HTTP/1.1\r\nhost: localhost\r\n{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    expect_error(port, &chunked, 413, "payload_too_large").await;

    // Host missing or not visible ASCII: refused.
    for request in [
        &b"GET /livez HTTP/1.1\r\n\r\n"[..],
        b"GET /livez HTTP/1.0\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nhost: local\xffhost\r\n\r\n",
    ] {
        expect_error(port, request, 403, "forbidden").await;
    }

    // Plain /readyz stays open to probes; its details need the token.
    let plain = raw(port, b"GET /readyz HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert_eq!(plain.0, 200);
    for query in ["verbose", "verbose=1", "verb%6Fse", "x=1&verbose"] {
        let request = format!("GET /readyz?{query} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        expect_error(port, request.as_bytes(), 401, "unauthorized").await;
    }
    let request = format!("GET /readyz?verbose HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n");
    assert_eq!(raw(port, request.as_bytes()).await.0, 200);
}
