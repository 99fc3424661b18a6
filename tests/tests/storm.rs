//! 1,000 mixed admin requests from 8 concurrent clients while instances are started and
//! stopped in a loop: no 5xx but `start_failed`, the host stays up, and every instance ends in
//! the state its last command asked for, with its listeners to match.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, echo_roundtrip};
use tokio::sync::Mutex;

const SERVERS: [&str; 4] = ["A", "B", "C", "D"];

fn config() -> String {
    let mut config = String::from("shutdown_timeout = \"300ms\"\n");
    for (i, name) in SERVERS.iter().enumerate() {
        let kind = if i % 2 == 0 { "echo" } else { "command" };
        config.push_str(&format!(
            "[[servers]]\nname = \"{name}\"\ntype = \"{kind}\"\nlisteners = [{{ ip = \"Loopback\", port = 0 }}]\n"
        ));
    }
    config
}

/// A tiny deterministic generator, so a failing mix can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// The last state-changing command each instance received, in the order the host saw them.
type LastCommand = Arc<HashMap<&'static str, Mutex<&'static str>>>;

/// Sends one state-changing command to an instance twice at once (the host must serialise
/// them), with the instance's lock held so the order of commands per instance is known.
async fn command(
    http: &reqwest::Client,
    admin: &str,
    last: &LastCommand,
    name: &'static str,
    op: &'static str,
) -> Vec<(u16, String)> {
    let mut recorded = last[name].lock().await;
    let url = format!("{admin}/api/v1/servers/{name}/{op}");
    let (a, b) = tokio::join!(http.post(&url).send(), http.post(&url).send());
    *recorded = op.split('?').next().unwrap();
    let mut answers = Vec::new();
    for response in [a, b] {
        let response = response.expect("the host answers");
        let status = response.status().as_u16();
        answers.push((status, response.text().await.unwrap_or_default()));
    }
    answers
}

fn acceptable(status: u16, body: &str) -> bool {
    status < 500 || (status == 500 && body.contains("\"start_failed\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_requests_while_instances_cycle() {
    let host = HostProcess::start(&config());
    let admin = host.admin.clone();
    let http = reqwest::Client::new();
    let last: LastCommand = Arc::new(SERVERS.iter().map(|n| (*n, Mutex::new("start"))).collect());
    let looping = Arc::new(AtomicBool::new(true));

    // Instances started and stopped in a loop, beside the clients.
    let looper = tokio::spawn({
        let (http, admin, last, looping) = (http.clone(), admin.clone(), last.clone(), looping.clone());
        async move {
            let mut cycles = 0;
            while looping.load(Ordering::SeqCst) {
                for name in SERVERS {
                    for op in ["stop?timeout=100ms", "start"] {
                        for (status, body) in command(&http, &admin, &last, name, op).await {
                            assert!(acceptable(status, &body), "looper {op} {name}: {status} {body}");
                        }
                    }
                }
                cycles += 1;
            }
            cycles
        }
    });

    let clients: Vec<_> = (0..8u64)
        .map(|client| {
            let (http, admin, last) = (http.clone(), admin.clone(), last.clone());
            tokio::spawn(async move {
                let mut rng = Lcg(client + 1);
                let mut sent = 0;
                while sent < 125 {
                    let name = SERVERS[rng.next(SERVERS.len())];
                    let read = match rng.next(9) {
                        0 => "/api/v1/servers".to_owned(),
                        1 => format!("/api/v1/servers/{name}"),
                        2 => format!("/api/v1/servers/{name}/sessions?limit=5"),
                        3 => "/metrics".to_owned(),
                        4 => "/readyz".to_owned(),
                        5 => "/api/v1/host".to_owned(),
                        choice => {
                            let op = ["start", "stop?timeout=50ms", "restart?timeout=50ms"][choice - 6];
                            for (status, body) in command(&http, &admin, &last, name, op).await {
                                assert!(acceptable(status, &body), "{op} {name}: {status} {body}");
                            }
                            sent += 2;
                            continue;
                        }
                    };
                    let response = http
                        .get(format!("{admin}{read}"))
                        .send()
                        .await
                        .expect("the host answers");
                    let status = response.status().as_u16();
                    let ok = status == 200 || (read == "/readyz" && status == 503);
                    assert!(ok, "GET {read}: {status} {}", response.text().await.unwrap_or_default());
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.expect("a client saw an unacceptable answer");
    }
    looping.store(false, Ordering::SeqCst);
    let cycles = looper.await.expect("the looper saw an unacceptable answer");
    assert!(total >= 1000, "{total} requests");
    assert!(cycles >= 1, "the looper cycled the instances");

    for (i, name) in SERVERS.iter().enumerate() {
        let expected = match *last[name].lock().await {
            "stop" => "stopped",
            _ => "running",
        };
        let server = host.server(name).await;
        assert_eq!(
            server["state"], expected,
            "{name}: last command asked for {expected}: {server}"
        );
        let listeners = server["listeners"].as_array().unwrap().len();
        assert_eq!(listeners, usize::from(expected == "running"), "{name}: {server}");
        if expected == "running" {
            let port = host.port(name, 0).await;
            if i % 2 == 0 {
                let mut stream = supersocket_tests::net::connect(port).await;
                assert_eq!(
                    echo_roundtrip(&mut stream, b"after the storm").await,
                    b"after the storm"
                );
            } else {
                assert_eq!(LineClient::connect(port).await.request("SERVER").await, *name);
            }
        }
    }
    assert!(!host.stderr().contains("panic"), "{}", host.stderr());
}
