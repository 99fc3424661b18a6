//! Live changes of a running instance (SPEC §10), made by rewriting the config file and
//! `POST /api/v1/reload`, under every isolation level: limits that apply without closing a
//! session, listeners that move while the sessions on the old ones stay and the connections
//! queued on them are served, a move to a port in use that changes nothing, and (in an agent)
//! a restart after a move that serves the new listeners.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supersocket_tests::net::{LineClient, free_consecutive_ports};
use supersocket_tests::{HostOptions, HostProcess, example};
use tokio::net::TcpStream;

/// A host running one `command` instance, `Cmd`, at one isolation level, whose config the
/// tests rewrite.
struct Live {
    host: HostProcess,
    isolation: &'static str,
}

impl Live {
    /// `Cmd` listening on `port` with the `keys` given.
    fn start(isolation: &'static str, port: u16, keys: &str) -> Self {
        let host = HostProcess::start(&config(isolation, port, keys));
        Self { host, isolation }
    }

    /// Rewrites the config with `Cmd` on `port` with `keys`, and reloads it: the status and
    /// the report.
    async fn reload(&self, port: u16, keys: &str) -> (u16, Value) {
        std::fs::write(self.host.config_path(), config(self.isolation, port, keys)).unwrap();
        self.host.post("/api/v1/reload").await
    }

    /// Like [`reload`](Self::reload), which must apply `Cmd`'s change live.
    async fn update(&self, port: u16, keys: &str) {
        let (status, report) = self.reload(port, keys).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["updated"], json!(["Cmd"]), "{report}");
        assert_eq!(report["changed"], json!([]), "{report}");
    }

    async fn server(&self) -> Value {
        self.host.server("Cmd").await
    }

    /// Waits until `Cmd` reports `count` open sessions (an agent reports its counters five
    /// times a second).
    async fn wait_sessions(&self, count: u64) {
        let open = |s: &Value| s["sessions"] == count;
        self.host.wait_server("Cmd", Duration::from_secs(5), open).await;
    }
}

fn config(isolation: &str, port: u16, keys: &str) -> String {
    format!(
        "isolation = \"{isolation}\"\nshutdown_timeout = \"2s\"\n\n[[servers]]\nname = \"Cmd\"\ntype = \"command\"\nlisteners = [{{ ip = \"127.0.0.1\", port = {port} }}]\n{keys}\n"
    )
}

/// Sessions open on `port`, each with its id.
async fn sessions(port: u16, count: usize) -> Vec<(LineClient<TcpStream>, String)> {
    let mut open = Vec::new();
    for _ in 0..count {
        let mut client = LineClient::connect(port).await;
        let id = client.request("WHOAMI").await;
        open.push((client, id));
    }
    open
}

/// Every session still answers: its own id, and a line echoed byte for byte.
async fn all_answer(sessions: &mut [(LineClient<TcpStream>, String)]) {
    for (client, id) in sessions {
        assert_eq!(client.request("WHOAMI").await, *id, "the session stays");
        let line = format!("still here, {id} ✓");
        assert_eq!(client.request(&format!("ECHO {line}")).await, line);
    }
}

async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

/// Whether a new connection to `port` is closed unanswered (over `max_connections`).
async fn rejected(port: u16) -> bool {
    let mut client = LineClient::connect(port).await;
    client.try_recv().await.is_none()
}

async fn max_connections_under(isolation: &'static str) {
    let port = free_consecutive_ports(1);
    let live = Live::start(isolation, port, "max_connections = 10");
    let mut open = sessions(port, 3).await;

    live.update(port, "max_connections = 2").await;
    assert_eq!(live.server().await["max_connections"], 2);
    all_answer(&mut open).await;
    live.wait_sessions(3).await;
    assert!(
        rejected(port).await,
        "a connection over the new limit is closed at once"
    );

    live.update(port, "max_connections = 5").await;
    let mut admitted = LineClient::connect(port).await;
    assert_eq!(admitted.request("PING").await, "PONG", "the raised limit admits again");
    all_answer(&mut open).await;
    live.wait_sessions(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_connections_rejects_new_connections_and_closes_none_in_process() {
    max_connections_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_connections_rejects_new_connections_and_closes_none_on_a_runtime_of_its_own() {
    max_connections_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_connections_rejects_new_connections_and_closes_none_in_an_agent() {
    max_connections_under("process").await;
}

async fn idle_timeout_shortened_under(isolation: &'static str) {
    let port = free_consecutive_ports(1);
    let live = Live::start(isolation, port, "idle_timeout = \"300s\"");
    let mut quiet = LineClient::connect(port).await;
    assert_eq!(quiet.request("PING").await, "PONG");
    let mut talking = LineClient::connect(port).await;

    live.update(port, "idle_timeout = \"1s\"").await;
    let reloaded = Instant::now();
    // The talking one keeps talking, more often than the new timeout, through the quiet one's
    // close: one sweep under the old timeout's pace (1 s), then the new timeout.
    let bound = Duration::from_secs(3);
    let mut closed = false;
    while reloaded.elapsed() < bound + Duration::from_secs(1) && !closed {
        assert_eq!(talking.request("PING").await, "PONG");
        closed = quiet.closes_within(Duration::from_millis(250)).await;
    }
    assert!(closed, "the quiet session closed under the new idle timeout");
    assert!(
        reloaded.elapsed() < bound,
        "closed {:?} after the reload",
        reloaded.elapsed()
    );
    assert_eq!(talking.request("PING").await, "PONG");
    live.wait_sessions(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_closes_quiet_sessions_in_process() {
    idle_timeout_shortened_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_closes_quiet_sessions_on_a_runtime_of_its_own() {
    idle_timeout_shortened_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_idle_timeout_closes_quiet_sessions_in_an_agent() {
    idle_timeout_shortened_under("process").await;
}

/// `count` connections to `port` tried at once: each connected stream, or why it did not
/// connect.
async fn connect_many(port: u16, count: usize) -> Vec<std::io::Result<TcpStream>> {
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..count {
        connects.spawn(TcpStream::connect(("127.0.0.1", port)));
    }
    connects.join_all().await
}

/// Each connection answers (none was reset).
async fn each_answers(connections: Vec<TcpStream>) {
    for stream in connections {
        let mut client = LineClient::new(stream);
        assert_eq!(client.request("PING").await, "PONG");
    }
}

/// Moves `Cmd` from port A to port B; answers the host, port B, and the sessions on A.
async fn moved_under(isolation: &'static str) -> (Live, u16, Vec<(LineClient<TcpStream>, String)>) {
    let a = free_consecutive_ports(2);
    let b = a + 1;
    let live = Live::start(isolation, a, "");
    let pid = live.server().await["pid"].clone();
    let mut on_a = sessions(a, 3).await;

    // Connections made just before the move, and some while it happens. The accept loop may
    // have taken each of them before the move or not: those it had not are in A's backlog when
    // A closes, and are taken from it. Either way each is served; none is reset. One that
    // races the move either connects (and is then served) or finds A closed.
    let queued: Vec<TcpStream> = connect_many(a, 16).await.into_iter().map(Result::unwrap).collect();
    let ((), racing) = tokio::join!(live.update(b, ""), connect_many(a, 16));

    let server = live.server().await;
    assert_eq!(
        server["listeners"],
        json!([{ "ip": "127.0.0.1", "port": b, "tls": false }])
    );
    assert_eq!(server["pid"], pid, "the same process serves");
    let mut on_b = LineClient::connect(b).await;
    assert_eq!(on_b.request("PING").await, "PONG");
    assert!(refused(a).await, "the old listener is closed");
    all_answer(&mut on_a).await;
    each_answers(queued).await;
    each_answers(racing.into_iter().flatten().collect()).await;
    (live, b, on_a)
}

/// Connections known to wait in the backlog of a listener that a move drops: the instance's
/// only worker spins (the example host's `burn` type) while they connect and while the move
/// begins, so its accept loop takes them only as the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_on_a_listener_that_a_move_drops_are_served() {
    let a = free_consecutive_ports(2);
    let b = a + 1;
    let busy = |port: u16| {
        format!(
            "shutdown_timeout = \"2s\"\n\n[[servers]]\nname = \"Busy\"\ntype = \"burn\"\nisolation = \"runtime\"\nthreads = 1\nlisteners = [{{ ip = \"127.0.0.1\", port = {port} }}]\n"
        )
    };
    let mut options = HostOptions::new(&busy(a));
    options.program = example("kv-server");
    let host = HostProcess::start_with(options);
    let mut burner = LineClient::connect(a).await;
    burner.send("BURN 1000").await;
    let queued = connect_many(a, 16).await;
    std::fs::write(host.config_path(), busy(b)).unwrap();
    let (status, report) = host.post("/api/v1/reload").await;
    assert_eq!((status, &report["updated"]), (200, &json!(["Busy"])), "{report}");
    assert_eq!(burner.recv().await, "DONE");
    for stream in queued {
        let mut client = LineClient::new(stream.expect("connected before the move"));
        assert_eq!(client.request("BURN 0").await, "DONE");
    }
    assert!(refused(a).await, "the old listener is closed");
    let mut on_b = LineClient::connect(b).await;
    assert_eq!(on_b.request("BURN 0").await, "DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_and_backlog_kept_in_process() {
    moved_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_and_backlog_kept_on_a_runtime_of_its_own() {
    moved_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_sessions_and_backlog_kept_in_an_agent() {
    moved_under("process").await;
}

async fn move_to_a_busy_port_under(isolation: &'static str) {
    let port = free_consecutive_ports(1);
    let live = Live::start(isolation, port, "max_connections = 10");
    let mut open = sessions(port, 2).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();

    // Limits change in the same reload: nothing of it applies.
    let (status, body) = live.reload(busy_port, "max_connections = 20").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "start_failed", "{body}");
    let details = body["error"]["details"].to_string();
    assert!(
        details.contains("Cmd") && details.contains(&format!("port {busy_port} on 127.0.0.1 is in use")),
        "{details}"
    );
    let server = live.server().await;
    assert_eq!(server["state"], "running");
    assert_eq!(server["max_connections"], 10);
    assert_eq!(server["listeners"][0]["port"], port);
    all_answer(&mut open).await;
    let mut client = LineClient::connect(port).await;
    assert_eq!(client.request("PING").await, "PONG", "the old listener still accepts");
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_port_in_use_changes_nothing_in_process() {
    move_to_a_busy_port_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_port_in_use_changes_nothing_on_a_runtime_of_its_own() {
    move_to_a_busy_port_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_port_in_use_changes_nothing_in_an_agent() {
    move_to_a_busy_port_under("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_a_move_comes_back_on_the_new_listeners() {
    let (live, b, _on_a) = moved_under("process").await;
    let a = b - 1;
    let pid = live.server().await["pid"].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.as_i64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let again = live
        .host
        .wait_server("Cmd", Duration::from_secs(10), |s| {
            s["state"] == "running" && s["pid"] != pid
        })
        .await;
    assert_eq!(
        again["listeners"],
        json!([{ "ip": "127.0.0.1", "port": b, "tls": false }])
    );
    let mut on_b = LineClient::connect(b).await;
    assert_eq!(on_b.request("PING").await, "PONG");
    assert!(refused(a).await, "the old port stays closed");
}
