//! Instances reaching each other: DISPATCH to a session of another instance, BROADCAST, the
//! dispatcher against Python's zlib.crc32, and replicas.

use std::process::Command;
use std::time::Duration;

use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, free_consecutive_ports};

const SEED: &str = r#"
[[servers]]
name = "ServerA"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "ServerB"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test]
async fn dispatch_delivers_to_a_session_of_another_instance_exactly_once() {
    let host = HostProcess::start(SEED);
    let mut a = LineClient::connect(host.port("ServerA", 0).await).await;
    let mut b = LineClient::connect(host.port("ServerB", 0).await).await;
    let b_id = b.request("WHOAMI").await;

    assert_eq!(a.request(&format!("DISPATCH ServerB {b_id} hello from A")).await, "OK");
    assert_eq!(b.recv().await, "hello from A");
    assert_eq!(b.request("PING").await, "PONG", "delivered once, nothing more queued");

    assert_eq!(a.request("DISPATCH Nope 1 x").await, "ERR no server Nope");
    assert_eq!(a.request("dispatch ServerB ffffff x").await, "ERR no session ffffff");
    assert_eq!(a.request("DISPATCH ServerB not-hex x").await, "ERR no session not-hex");
    assert_eq!(
        a.request("DISPATCH ServerB").await,
        "ERR usage: DISPATCH <server> <session-id> <text>"
    );
    // And back, from B to A.
    let a_id = a.request("WHOAMI").await;
    assert_eq!(b.request(&format!("DISPATCH ServerA {a_id} and back")).await, "OK");
    assert_eq!(a.recv().await, "and back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_a_hundred_sessions_once_each() {
    let host = HostProcess::start(SEED);
    let port = host.port("ServerA", 0).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut client = LineClient::connect(port).await;
        assert_eq!(client.request("PING").await, "PONG");
        clients.push(client);
    }
    let mut other = LineClient::connect(host.port("ServerB", 0).await).await;
    let sender = &mut clients[0];
    sender.send("BROADCAST tea is ready").await;
    let mut sender_lines = vec![sender.recv().await, sender.recv().await];
    sender_lines.sort();
    assert_eq!(sender_lines, ["OK 100", "tea is ready"]);
    for client in &mut clients[1..] {
        assert_eq!(client.recv().await, "tea is ready");
        assert_eq!(client.request("PING").await, "PONG", "exactly once");
    }
    assert_eq!(
        other.request("PING").await,
        "PONG",
        "another instance's sessions get nothing"
    );
}

/// `zlib.crc32(key)` for each key, computed by Python.
fn python_crc32(keys: &[String]) -> Vec<u64> {
    let script = "import sys, zlib\nfor line in sys.stdin.read().splitlines():\n    print(zlib.crc32(line.encode()))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), keys.join("\n").as_bytes()).unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_agrees_with_zlib_crc32_for_one_to_five_instances() {
    let host = HostProcess::start(
        r#"
        [[servers]]
        name = "R"
        type = "echo"
        replicas = 5
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("user-{i}"))
        .chain(["abc".to_owned()])
        .collect();
    let crcs = python_crc32(&keys);
    assert_eq!(crcs[1000], 0x352441c2, "crc32(\"abc\")");
    let http = reqwest::Client::new();
    let mut running = vec!["R-1", "R-2", "R-3", "R-4", "R-5"];
    // Stop a middle one first, so "config order of the running ones" matters.
    for stop in ["R-2", "R-5", "R-1", "R-4"].into_iter().map(Some).chain([None]) {
        let n = running.len();
        for (key, crc) in keys.iter().zip(&crcs) {
            let url = format!("{}/api/v1/route/echo?key={key}", host.admin);
            let route: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            let index = (*crc % n as u64) as usize;
            assert_eq!(
                (route["index"].as_u64(), route["of"].as_u64()),
                (Some(index as u64), Some(n as u64)),
                "{key}"
            );
            assert_eq!(route["server"], running[index], "{key} with {n} running");
        }
        if let Some(name) = stop {
            assert_eq!(host.ctl(&["stop", name]).code, 0);
            running.retain(|r| *r != name);
        }
    }
    let cli = host.ctl(&["route", "echo", "abc"]);
    assert_eq!(cli.stdout.trim(), "R-3 (index 0 of 1)");
    let json = host.ctl(&["--output", "json", "route", "echo", "abc"]).json();
    assert_eq!(
        json,
        serde_json::json!({"type": "echo", "key": "abc", "server": "R-3", "index": 0, "of": 1})
    );
    assert_eq!(
        host.ctl(&["route", "chat", "abc"]).code,
        1,
        "no running server of that type"
    );
    let (status, _) = host.get("/api/v1/route/echo").await;
    assert_eq!(status, 400, "a key is required");
}

#[tokio::test]
async fn replicas_expand_to_numbered_instances_on_consecutive_ports() {
    // The ports are free when found; another process may bind one before the host does: retry.
    for _ in 0..5 {
        let base = free_consecutive_ports(3);
        let config = format!(
            "[[servers]]\nname = \"connector\"\ntype = \"command\"\nreplicas = 3\nlisteners = [{{ ip = \"Loopback\", port = {base} }}]\n"
        );
        let host = HostProcess::start(&config);
        let (_, servers) = host.get("/api/v1/servers").await;
        let pairs: Vec<(String, u64)> = servers
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["listeners"][0]["port"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if pairs.iter().any(|(_, port)| *port == 0) {
            continue; // a port was taken between the probe and the start
        }
        let base = u64::from(base);
        let expected = [
            ("connector-1".to_owned(), base),
            ("connector-2".to_owned(), base + 1),
            ("connector-3".to_owned(), base + 2),
        ];
        assert_eq!(pairs, expected);
        let mut second = LineClient::connect((base + 1) as u16).await;
        assert_eq!(second.request("SERVER").await, "connector-2");
        return;
    }
    panic!("three consecutive free ports were taken before the host could bind them, five times");
}

#[tokio::test]
async fn a_dispatch_to_a_stopped_server_is_refused_as_not_running() {
    let host = HostProcess::start(SEED);
    let mut a = LineClient::connect(host.port("ServerA", 0).await).await;
    let mut b = LineClient::connect(host.port("ServerB", 0).await).await;
    let b_id = b.request("WHOAMI").await;
    assert_eq!(host.ctl(&["stop", "ServerB", "--timeout", "100ms"]).code, 0);
    assert!(b.closes_within(Duration::from_secs(5)).await);
    assert_eq!(
        a.request(&format!("DISPATCH ServerB {b_id} x")).await,
        "ERR server ServerB is not running"
    );
}
