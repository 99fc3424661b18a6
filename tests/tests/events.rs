//! The live view through the real host: the events stream (`state` on every change, `stats`
//! every second, `config` after a change) under every isolation level, a reconnect with
//! `Last-Event-ID` that misses nothing, a client that fell behind told why and dropped, the
//! bound on open streams, and each instance's history.

use std::time::Duration;

use serde_json::Value;
use supersocket_tests::HostProcess;

const HOST: &str = r#"shutdown_timeout = "1s"

[[servers]]
name = "A"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "B"
type = "command"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "R"
type = "echo"
isolation = "runtime"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

/// One event of the stream.
#[derive(Debug, Clone)]
struct Received {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// A client of `GET /api/v1/events`.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(host: &HostProcess, last_event_id: Option<u64>) -> Self {
        Self::open_as(host, last_event_id, None).await
    }

    async fn open_as(host: &HostProcess, last_event_id: Option<u64>, token: Option<&str>) -> Self {
        let mut request = host.http().get(format!("{}/api/v1/events", host.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, waiting at most `within`.
    async fn next(&mut self, within: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if kind.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Some(Received { id, kind, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?;
            let chunk = chunk.unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until an event matches, within `within`; every event read on the way is returned.
    async fn until(&mut self, within: Duration, matches: impl Fn(&Received) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(event) = self.next(deadline - tokio::time::Instant::now()).await {
            let done = matches(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("no matching event within {within:?}; saw {seen:#?}");
    }
}

fn is_state(name: &'static str, state: &'static str) -> impl Fn(&Received) -> bool {
    move |e| e.kind == "state" && e.data["name"] == name && e.data["state"] == state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_states_stats_and_config_changes_as_they_happen() {
    let host = HostProcess::start(HOST);
    let mut events = Events::open(&host, None).await;
    // First the state of every instance.
    events.until(Duration::from_secs(2), is_state("A", "running")).await;
    events.until(Duration::from_secs(2), is_state("B", "running")).await;
    events.until(Duration::from_secs(2), is_state("R", "running")).await;
    // Stats within the next second or two, with every running server.
    let stats = events.until(Duration::from_secs(3), |e| e.kind == "stats").await;
    let servers = &stats.last().unwrap().data["servers"];
    let names: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B", "R"]);

    // A stop done with the CLI shows within 2 s, stopping then stopped, at every isolation
    // level; and a start, starting then running.
    for name in ["A", "B", "R"] {
        assert_eq!(host.ctl(&["stop", name]).code, 0);
        let seen = events.until(Duration::from_secs(2), is_state(name, "stopped")).await;
        assert!(seen.iter().any(is_state(name, "stopping")), "{seen:#?}");
        assert_eq!(host.ctl(&["start", name]).code, 0);
        let seen = events.until(Duration::from_secs(5), is_state(name, "running")).await;
        assert!(seen.iter().any(is_state(name, "starting")), "{seen:#?}");
    }
    // An agent killed: its instance backs off and comes back, each change told.
    let pid = host.server("B").await["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let seen = events.until(Duration::from_secs(5), is_state("B", "running")).await;
    assert!(seen.iter().any(is_state("B", "backoff")), "{seen:#?}");

    // A config change.
    let added = host
        .http()
        .post(format!("{}/api/v1/servers", host.admin))
        .json(&serde_json::json!({ "name": "C", "type": "echo" }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let seen = events.until(Duration::from_secs(2), |e| e.kind == "config").await;
    assert_eq!(seen.last().unwrap().data["report"]["added"], serde_json::json!(["C"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_with_last_event_id_misses_nothing() {
    let host = HostProcess::start(HOST);
    let mut events = Events::open(&host, None).await;
    let seen = events.until(Duration::from_secs(3), |e| e.id.is_some()).await;
    let last = seen.last().unwrap().id.unwrap();
    drop(events);
    // Meanwhile A stops and starts again.
    assert_eq!(host.ctl(&["restart", "A"]).code, 0);
    let mut again = Events::open(&host, Some(last)).await;
    let seen = again.until(Duration::from_secs(3), is_state("A", "running")).await;
    assert!(seen.iter().any(is_state("A", "stopped")), "{seen:#?}");
    let ids: Vec<u64> = seen.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids.first(),
        Some(&(last + 1)),
        "it resumes right after the last id it saw"
    );
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no id skipped: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_keeps_a_sample_a_second() {
    let host = HostProcess::start(HOST);
    let mut events = Events::open(&host, None).await;
    // Three stats ticks: at least two samples kept for A.
    for _ in 0..3 {
        events.until(Duration::from_secs(3), |e| e.kind == "stats").await;
    }
    let (status, history) = host.get("/api/v1/servers/A/history").await;
    assert_eq!(status, 200);
    let samples = history.as_array().unwrap();
    assert!(samples.len() >= 2, "{history}");
    assert!(samples.windows(2).all(|w| w[1]["at"].as_u64() > w[0]["at"].as_u64()));
    assert_eq!(host.get("/api/v1/servers/Nope/history").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_fell_behind_is_told_why_and_dropped() {
    let host = HostProcess::start(HOST);
    let mut events = Events::open(&host, None).await;
    let seen = events.until(Duration::from_secs(3), |e| e.id.is_some()).await;
    let first = seen.last().unwrap().id.unwrap();
    drop(events);
    // Over a thousand events while it is away: four states per restart.
    for _ in 0..280 {
        let (status, _) = host.post("/api/v1/servers/A/restart").await;
        assert_eq!(status, 200);
    }
    let mut late = Events::open(&host, Some(first)).await;
    let told = late.next(Duration::from_secs(2)).await.expect("an event");
    assert_eq!(told.kind, "error", "{told:?}");
    let reason = told.data["reason"].as_str().unwrap();
    assert!(reason.contains("fell behind"), "{reason}");
    assert!(
        late.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends after it"
    );
    // The host answers as before.
    assert_eq!(host.get("/api/v1/servers/A").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_before_a_restart_of_the_host_starts_afresh() {
    let host = HostProcess::start(HOST);
    let mut events = Events::open(&host, Some(1_000_000)).await;
    // Every instance's state first, as for a new client.
    events.until(Duration::from_secs(2), is_state("A", "running")).await;
    events.until(Duration::from_secs(2), is_state("R", "running")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_so_the_admin_port_keeps_room() {
    // 16 admin connections: at most 4 streams.
    let host = HostProcess::start(&format!("{HOST}\n[admin]\nmax_connections = 16\n"));
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(Events::open(&host, None).await);
    }
    let refused = host
        .http()
        .get(format!("{}/api/v1/events", host.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("streams are open"),
        "{body}"
    );
    let follow = format!("{}/api/v1/servers/A/logs?follow", host.admin);
    assert_eq!(host.http().get(&follow).send().await.unwrap().status(), 503);
    // Everything else still answers; a closed stream gives its place back.
    assert_eq!(host.get("/api/v1/servers").await.0, 200);
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = host.http().get(&follow).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back: {status}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_is_revoked() {
    let tokens = "[admin]\ntoken = \"root\"\ntokens = [{ name = \"watch\", token = \"w-secret\", role = \"read\" }]\n";
    let host = HostProcess::start(&format!("{HOST}\n{tokens}"));
    let mut events = Events::open_as(&host, None, Some("w-secret")).await;
    events.until(Duration::from_secs(2), is_state("A", "running")).await;
    // The token goes from the file; a reload applies it.
    let path = host.config_path();
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, config.replace(tokens, "[admin]\ntoken = \"root\"\n")).unwrap();
    let reload = host
        .http()
        .post(format!("{}/api/v1/reload", host.admin))
        .bearer_auth("root")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let seen = events.until(Duration::from_secs(3), |e| e.kind == "error").await;
    let reason = seen.last().unwrap().data["reason"].as_str().unwrap();
    assert!(reason.contains("no longer opens"), "{reason}");
    assert!(
        events.next(Duration::from_secs(2)).await.is_none(),
        "and the stream ends"
    );
}
