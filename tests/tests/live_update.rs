//! Live changes of a running instance through `PUT /api/v1/servers/{name}`: listeners that
//! move while the sessions on the old ones stay open (in an agent too, whose next incarnation
//! serves the new ones), a move to a port in use that changes nothing, an idle timeout
//! shortened.

use std::time::Duration;

use serde_json::{Value, json};
use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, free_consecutive_ports};

fn host(isolation: &str) -> HostProcess {
    HostProcess::start(&format!(
        "isolation = \"{isolation}\"\nshutdown_timeout = \"2s\"\n\n[[servers]]\nname = \"Cmd\"\ntype = \"command\"\nlisteners = [{{ ip = \"Loopback\", port = 0 }}]\n"
    ))
}

/// `PUT` of `Cmd`'s config as it is, with `change` applied; the status and the body.
async fn put(host: &HostProcess, change: impl FnOnce(&mut Value)) -> (u16, Value) {
    let (_, config) = host.get("/api/v1/config").await;
    let mut server = config["servers"][0].clone();
    change(&mut server);
    let response = host
        .http()
        .put(format!("{}/api/v1/servers/Cmd", host.admin))
        .json(&server)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

async fn listeners_move_under(isolation: &str) {
    let host = host(isolation);
    let old = host.port("Cmd", 0).await;
    let mut on_old = LineClient::connect(old).await;
    let id = on_old.request("WHOAMI").await;
    let new = free_consecutive_ports(1);
    let (status, body) = put(&host, |s| {
        s["listeners"] = json!([{ "ip": "127.0.0.1", "port": new }]);
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["listeners"][0]["port"], new, "{body}");
    let mut on_new = LineClient::connect(new).await;
    assert_eq!(on_new.request("PING").await, "PONG");
    assert_eq!(
        on_old.request("WHOAMI").await,
        id,
        "the session on the old listener stays"
    );
    assert!(refused(old).await, "the old listener is closed");

    // A move to a port in use changes nothing.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let (status, body) = put(&host, |s| {
        s["listeners"] = json!([{ "ip": "127.0.0.1", "port": busy_port }]);
    })
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("in use"), "{body}");
    assert_eq!(host.port("Cmd", 0).await, new);
    assert_eq!(on_new.request("PING").await, "PONG");
    assert_eq!(on_old.request("WHOAMI").await, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_open_in_process() {
    listeners_move_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_open_on_a_runtime_of_its_own() {
    listeners_move_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_open_in_an_agent() {
    listeners_move_under("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_agent_a_live_change_keeps_the_agent_and_its_next_one_serves_the_new_listeners() {
    let host = host("process");
    let pid = host.server("Cmd").await["pid"].clone();
    let old = host.port("Cmd", 0).await;
    let mut client = LineClient::connect(old).await;
    let id = client.request("WHOAMI").await;
    let new = free_consecutive_ports(1);
    let (status, body) = put(&host, |s| {
        s["max_connections"] = json!(5);
        s["listeners"] = json!([{ "ip": "127.0.0.1", "port": new }]);
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.request("WHOAMI").await, id, "the session stays");
    assert_eq!(host.server("Cmd").await["pid"], pid, "the same agent");

    // Its next incarnation is handed the new listener, not the old one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.as_i64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let again = host
        .wait_server("Cmd", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"] != pid
        })
        .await;
    assert_eq!(again["listeners"][0]["port"], new, "{again}");
    let mut on_new = LineClient::connect(new).await;
    assert_eq!(on_new.request("PING").await, "PONG");
    assert!(refused(old).await, "the old port stays closed");
}

async fn idle_timeout_shortened_under(isolation: &str) {
    let host = host(isolation);
    let port = host.port("Cmd", 0).await;
    let mut quiet = LineClient::connect(port).await;
    assert_eq!(quiet.request("PING").await, "PONG");
    let mut talking = LineClient::connect(port).await;
    let (status, body) = put(&host, |s| s["idle_timeout"] = json!("1s")).await;
    assert_eq!(status, 200, "{body}");
    // The talking one keeps talking through the quiet one's close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    while tokio::time::Instant::now() < deadline && !closed {
        assert_eq!(talking.request("PING").await, "PONG");
        closed = quiet.closes_within(Duration::from_millis(250)).await;
    }
    assert!(closed, "the quiet session closed under the new idle timeout");
    assert_eq!(talking.request("PING").await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_closes_quiet_sessions_in_process() {
    idle_timeout_shortened_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_closes_quiet_sessions_in_an_agent() {
    idle_timeout_shortened_under("process").await;
}
