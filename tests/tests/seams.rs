//! What crosses instances works the same at every isolation level and with levels mixed:
//! DISPATCH both ways (exactly once, in order, pipelined), BROADCAST, the admin API's sessions,
//! send and kick, and a reload that restarts one instance while the other keeps its sessions.

use std::time::Duration;

use supersocket_tests::HostProcess;
use supersocket_tests::net::LineClient;
use tokio::io::AsyncWriteExt;

/// Two `command` instances, `A` at isolation `a` and `B` at isolation `b`.
fn config(a: &str, b: &str, extra_a: &str) -> String {
    format!(
        r#"
        shutdown_timeout = "1s"
        [[servers]]
        name = "A"
        type = "command"
        isolation = "{a}"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        {extra_a}

        [[servers]]
        name = "B"
        type = "command"
        isolation = "{b}"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        "#
    )
}

async fn across(a: &str, b: &str) {
    let host = HostProcess::start(&config(a, b, ""));
    let mut from_a = LineClient::connect(host.port("A", 0).await).await;
    let mut from_b = LineClient::connect(host.port("B", 0).await).await;
    let mut other_b = LineClient::connect(host.port("B", 0).await).await;
    let a_id = from_a.request("WHOAMI").await;
    let b_id = from_b.request("WHOAMI").await;
    let label = format!("{a}->{b}");

    // A pipelined burst: every line arrives once, in order, and every answer is OK.
    let burst: String = (0..200).map(|i| format!("DISPATCH B {b_id} line-{i}\r\n")).collect();
    from_a.stream().write_all(burst.as_bytes()).await.unwrap();
    for i in 0..200 {
        assert_eq!(from_a.recv().await, "OK", "{label}: answer {i}");
    }
    for i in 0..200 {
        assert_eq!(from_b.recv().await, format!("line-{i}"), "{label}: line {i}");
    }
    assert_eq!(from_b.request("PING").await, "PONG", "{label}: nothing more arrived");
    // And back.
    assert_eq!(from_b.request(&format!("DISPATCH A {a_id} back")).await, "OK");
    assert_eq!(from_a.recv().await, "back");
    assert_eq!(
        from_a.request("DISPATCH B 123abc x").await,
        "ERR no session 123abc",
        "{label}"
    );

    // BROADCAST inside B reaches both of its sessions once.
    other_b.send("BROADCAST all of B").await;
    let mut got = vec![other_b.recv().await, other_b.recv().await];
    got.sort();
    assert_eq!(got, ["OK 2", "all of B"], "{label}");
    assert_eq!(from_b.recv().await, "all of B", "{label}");

    // The admin API reaches B's sessions wherever B runs.
    let sessions = host.ctl(&["--output", "json", "sessions", "B"]).json();
    let ids: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&b_id.as_str()), "{label}: {sessions}");
    assert_eq!(host.ctl(&["send", "B", &b_id, "from the API"]).code, 0, "{label}");
    assert_eq!(from_b.recv().await, "from the API", "{label}");
    assert_eq!(host.ctl(&["kick", "B", &b_id]).code, 0, "{label}");
    assert!(from_b.closes_within(Duration::from_secs(5)).await, "{label}: kicked");
    let kicked = host.ctl(&["kick", "B", &b_id]);
    assert_eq!(kicked.code, 1, "{label}: a session kicked twice is gone: {kicked:?}");

    // A reload that changes A (a key that is not live) restarts it; B keeps its session, and
    // both reach each other.
    let other_id = other_b.request("WHOAMI").await;
    std::fs::write(host.config_path(), config(a, b, "threads = 3")).unwrap();
    let reload = host.ctl(&["reload"]);
    assert_eq!(reload.code, 0, "{label}: {reload:?}");
    assert!(
        from_a.closes_within(Duration::from_secs(5)).await,
        "{label}: A restarted"
    );
    assert_eq!(other_b.request("WHOAMI").await, other_id, "{label}: B untouched");
    let mut new_a = LineClient::connect(host.port("A", 0).await).await;
    let new_a_id = new_a.request("WHOAMI").await;
    assert_eq!(
        new_a.request(&format!("DISPATCH B {other_id} after")).await,
        "OK",
        "{label}"
    );
    assert_eq!(other_b.recv().await, "after", "{label}");
    assert_eq!(
        other_b.request(&format!("DISPATCH A {new_a_id} and back")).await,
        "OK",
        "{label}"
    );
    assert_eq!(new_a.recv().await, "and back", "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level() {
    for level in ["none", "runtime", "process"] {
        across(level, level).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_levels() {
    for (a, b) in [("none", "process"), ("process", "runtime"), ("runtime", "none")] {
        across(a, b).await;
    }
}

/// A client that sends its requests and closes its side at once still gets every answer,
/// those that wait for another process included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_gets_every_answer() {
    use tokio::io::AsyncReadExt;
    for (a, b) in [("none", "process"), ("process", "process"), ("none", "none")] {
        let host = HostProcess::start(&config(a, b, ""));
        let mut target = LineClient::connect(host.port("B", 0).await).await;
        let id = target.request("WHOAMI").await;
        let mut client = supersocket_tests::net::connect(host.port("A", 0).await).await;
        let requests = format!("DISPATCH B {id} hello\r\nPING\r\n");
        client.write_all(requests.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answers = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answers)).await;
        assert!(matches!(read, Ok(Ok(_))), "{a}->{b}: {read:?}");
        assert_eq!(answers, "OK\r\nPONG\r\n", "{a}->{b}");
        assert_eq!(target.recv().await, "hello", "{a}->{b}");
    }
}
