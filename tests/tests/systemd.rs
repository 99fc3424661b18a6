//! The host under systemd's protocols, played by the test: readiness, reload, stop and
//! watchdog notifications on a unix datagram socket in `NOTIFY_SOCKET`, and socket activation
//! (listening sockets passed at descriptor 3 and up) under every isolation level, across a
//! restart of an instance and of the whole host with no connection refused.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use supersocket_tests::{HostOptions, HostProcess, Scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The notifications the host sends, as systemd receives them.
struct Notifications {
    socket: UnixDatagram,
    _folder: Scratch,
}

impl Notifications {
    fn bind() -> (Self, String) {
        let folder = Scratch::new("notify");
        let path = folder.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let path = path.display().to_string();
        (
            Self {
                socket,
                _folder: folder,
            },
            path,
        )
    }

    /// Datagrams until one holds `needle`, within `within`.
    fn until(&self, within: Duration, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|line| line == needle);
                seen.push(message);
                if found {
                    return seen;
                }
            }
        }
        panic!("no {needle:?} within {within:?}; got {seen:?}");
    }
}

const NOTIFIED: &str = r#"shutdown_timeout = "1s"

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Agent"
type = "echo"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_tells_systemd_ready_reloading_stopping_and_pets_the_watchdog() {
    let (notifications, path) = Notifications::bind();
    let mut host = HostProcess::start_with(HostOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), path),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..HostOptions::new(NOTIFIED)
    });
    // Ready once the ready line is out: every autostart server runs.
    let first = notifications.until(Duration::from_secs(5), "READY=1");
    assert!(
        first.last().unwrap().contains("STATUS=serving: 2 servers running"),
        "{first:?}"
    );
    assert_eq!(host.server("Agent").await["state"], "running");
    // The watchdog at half its period: two within 300 ms.
    notifications.until(Duration::from_millis(300), "WATCHDOG=1");
    notifications.until(Duration::from_millis(300), "WATCHDOG=1");
    // A reload is bracketed.
    host.signal(Signal::SIGHUP);
    let reload = notifications.until(Duration::from_secs(5), "RELOADING=1");
    assert!(reload.last().unwrap().contains("MONOTONIC_USEC="), "{reload:?}");
    notifications.until(Duration::from_secs(5), "READY=1");
    // Agents do not speak for the host.
    let agent = host.server("Agent").await["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{agent}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"),
        "the agent inherited NOTIFY_SOCKET"
    );
    host.signal(Signal::SIGTERM);
    notifications.until(Duration::from_secs(5), "STOPPING=1");
    assert!(host.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}

/// A listening socket on loopback, as systemd would hold it, and a copy to pass.
fn listening() -> (TcpListener, OwnedFd) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let copy = OwnedFd::from(socket.try_clone().unwrap());
    (socket, copy)
}

const ACTIVATED: &str = r#"shutdown_timeout = "1s"

[[servers]]
name = "Web"
type = "echo"
listeners = [{ fd_name = "web" }]

[[servers]]
name = "Threads"
type = "echo"
isolation = "runtime"
listeners = [{ fd_name = "threads" }]

[[servers]]
name = "Agent"
type = "echo"
isolation = "process"
listeners = [{ fd_name = "agent" }]
"#;

async fn echo(port: u16, text: &[u8]) {
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client.write_all(text).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(back, text);
}

fn passed(sockets: &[(&str, &TcpListener)]) -> Vec<(String, OwnedFd)> {
    sockets
        .iter()
        .map(|(name, socket)| (name.to_string(), OwnedFd::from(socket.try_clone().unwrap())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_sockets_serve_under_every_isolation_and_outlive_restarts() {
    let (web, _) = listening();
    let (threads, _) = listening();
    let (agent, _) = listening();
    let sockets = [("web", &web), ("threads", &threads), ("agent", &agent)];
    let start = || {
        HostProcess::start_with(HostOptions {
            passed: passed(&sockets),
            ..HostOptions::new(ACTIVATED)
        })
    };
    let mut host = start();
    for (name, (_, socket)) in ["Web", "Threads", "Agent"].into_iter().zip(sockets) {
        let port = socket.local_addr().unwrap().port();
        assert_eq!(host.port(name, 0).await, port, "{name} serves the passed socket");
        echo(port, name.as_bytes()).await;
    }
    let (_, config) = host.get("/api/v1/config").await;
    assert_eq!(
        config["servers"][0]["listeners"][0],
        serde_json::json!({ "fd_name": "web" })
    );

    // An instance stopped: a client connecting meanwhile waits in the backlog, and is served
    // once it starts again.
    for name in ["Web", "Agent"] {
        let port = host.port(name, 0).await;
        assert_eq!(host.ctl(&["stop", name]).code, 0);
        let waiting = tokio::spawn(echo(port, b"queued"));
        assert_eq!(host.ctl(&["start", name]).code, 0);
        waiting.await.unwrap();
    }

    // The whole host restarted: connections made while none runs are served by the next.
    host.signal(Signal::SIGTERM);
    assert!(host.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
    let waiting: Vec<_> = sockets
        .iter()
        .map(|(_, socket)| tokio::spawn(echo(socket.local_addr().unwrap().port(), b"while down")))
        .collect();
    let _next = start();
    for client in waiting {
        client.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_name_nobody_passed_is_a_config_error_but_a_check_passes() {
    let refused = HostProcess::try_start(HostOptions::new(ACTIVATED))
        .err()
        .expect("refused");
    assert!(
        refused.contains("servers[0].listeners[0].fd_name") && refused.contains("no socket named \"web\""),
        "{refused}"
    );
    let (web, _) = listening();
    let partly = HostProcess::try_start(HostOptions {
        passed: passed(&[("web", &web)]),
        ..HostOptions::new(ACTIVATED)
    })
    .err()
    .expect("refused");
    assert!(
        partly.contains("no socket named \"threads\"") && partly.contains("passed: web"),
        "{partly}"
    );

    let folder = Scratch::new("check");
    let config = folder.write("host.toml", ACTIVATED);
    let check = std::process::Command::new(supersocket_tests::bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
