//! Reload from the API, the CLI and SIGHUP: added, removed, changed and unchanged servers, the
//! sessions of unchanged ones surviving, and a broken file changing nothing.

use std::time::Duration;

use nix::sys::signal::Signal;
use supersocket_tests::HostProcess;
use supersocket_tests::net::LineClient;

fn server(name: &str, extra: &str) -> String {
    format!(
        r#"
[[servers]]
name = "{name}"
type = "command"
listeners = [{{ ip = "Loopback", port = 0 }}]
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_restarts_changed_and_keeps_unchanged_sessions() {
    let before = [
        "shutdown_timeout = \"1s\"\n".to_owned(),
        server("Keep", ""),
        server("Own", "isolation = \"runtime\""),
        server("Drop", ""),
        server("Change", "max_connections = 10"),
        server("Tune", "max_connections = 10"),
    ]
    .concat();
    let host = HostProcess::start(&before);
    let mut kept = LineClient::connect(host.port("Keep", 0).await).await;
    let kept_id = kept.request("WHOAMI").await;
    let mut changed_client = LineClient::connect(host.port("Change", 0).await).await;
    assert_eq!(changed_client.request("PING").await, "PONG");
    let mut tuned = LineClient::connect(host.port("Tune", 0).await).await;
    let tuned_id = tuned.request("WHOAMI").await;

    let after = [
        "shutdown_timeout = \"1s\"\n".to_owned(),
        server("Keep", ""),
        // Its default written out: the same config.
        server("Own", "isolation = \"runtime\"\nthreads = 1"),
        server("Change", "max_connections = 20\nisolation = \"runtime\""),
        server("Tune", "max_connections = 20"),
        server("Add", ""),
    ]
    .concat();
    std::fs::write(host.config_path(), after).unwrap();
    let reload = host.ctl(&["--output", "json", "reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
    let report = reload.json();
    assert_eq!(report["added"], serde_json::json!(["Add"]));
    assert_eq!(report["removed"], serde_json::json!(["Drop"]));
    assert_eq!(report["changed"], serde_json::json!(["Change"]));
    assert_eq!(report["updated"], serde_json::json!(["Tune"]));
    assert_eq!(
        tuned.request("WHOAMI").await,
        tuned_id,
        "a server whose limits changed keeps its sessions"
    );
    assert_eq!(
        host.server("Tune").await["max_connections"],
        20,
        "and takes the new ones"
    );
    assert_eq!(report["unchanged"], serde_json::json!(["Keep", "Own"]));

    assert_eq!(
        kept.request("WHOAMI").await,
        kept_id,
        "the unchanged server's session survived"
    );
    assert_eq!(host.get("/api/v1/servers/Drop").await.0, 404);
    let change = host.server("Change").await;
    assert_eq!(
        (change["state"].as_str(), change["max_connections"].as_u64()),
        (Some("running"), Some(20))
    );
    assert!(
        changed_client.closes_within(Duration::from_secs(5)).await,
        "a changed server restarts"
    );
    let mut added = LineClient::connect(host.port("Add", 0).await).await;
    assert_eq!(added.request("SERVER").await, "Add");
    let (_, servers) = host.get("/api/v1/servers").await;
    let names: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Keep", "Own", "Change", "Tune", "Add"], "the new config order");

    // The table form names each group.
    let again = host.ctl(&["reload"]);
    assert_eq!(
        again.stdout,
        "added      -\nremoved    -\nchanged    -\nupdated    -\nunchanged  Keep, Own, Change, Tune, Add\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_lists_every_error() {
    let config = server("Only", "");
    let host = HostProcess::start(&config);
    let mut client = LineClient::connect(host.port("Only", 0).await).await;
    let id = client.request("WHOAMI").await;
    let broken = format!(
        "{}{}\nbogus = 1\n",
        server("Only", "max_connections = -5"),
        server("Only", "")
    );
    std::fs::write(host.config_path(), broken).unwrap();

    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/reload", host.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let details: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(details.len(), 3, "{details:?}");
    assert!(
        details
            .iter()
            .any(|d| d.contains("max_connections") && d.contains("-5 is out of range"))
    );
    assert!(details.iter().any(|d| d.contains("duplicate server name")));
    assert!(details.iter().any(|d| d.contains("key `bogus`")));

    let cli = host.ctl(&["reload"]);
    assert_eq!(cli.code, 1);
    assert!(
        cli.stderr.contains("nothing was changed") && cli.stderr.contains("duplicate server name"),
        "{}",
        cli.stderr
    );
    assert_eq!(client.request("WHOAMI").await, id, "nothing restarted");
    assert_eq!(host.server("Only").await["max_connections"], 10000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let host = HostProcess::start(&server("First", ""));
    std::fs::write(host.config_path(), [server("First", ""), server("Second", "")].concat()).unwrap();
    host.signal(Signal::SIGHUP);
    let second = host.wait_for_server("Second", Duration::from_secs(10)).await;
    assert_eq!(second["state"], "running");
    let mut client = LineClient::connect(host.port("Second", 0).await).await;
    assert_eq!(client.request("SERVER").await, "Second");
    // A broken file on SIGHUP is logged and changes nothing; the host keeps running.
    std::fs::write(host.config_path(), "[[servers]]\nname = \n").unwrap();
    host.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !host.stderr().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "the refused reload is logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.request("SERVER").await, "Second");
    assert_eq!(host.get("/api/v1/servers").await.1.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_applied_is_an_error_and_the_old_instance_keeps_serving() {
    let host = HostProcess::start(&[server("Stay", ""), server("Move", "")].concat());
    let mut client = LineClient::connect(host.port("Move", 0).await).await;
    let id = client.request("WHOAMI").await;
    let old_port = host.port("Move", 0).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let moved = format!(
        "[[servers]]\nname = \"Move\"\ntype = \"command\"\nlisteners = [{{ ip = \"Loopback\", port = {busy_port} }}]\n"
    );
    std::fs::write(
        host.config_path(),
        [server("Stay", ""), moved, server("Added", "")].concat(),
    )
    .unwrap();

    let (status, body) = host.post("/api/v1/reload").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "start_failed");
    let details = body["error"]["details"].to_string();
    assert!(
        details.contains("Move") && details.contains(&busy_port.to_string()),
        "{details}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("added Added"),
        "{body}"
    );
    // Not even restarted: the session is the same, on the same port.
    assert_eq!(client.request("WHOAMI").await, id);
    let kept = host.server("Move").await;
    assert_eq!(
        (kept["state"].as_str(), kept["listeners"][0]["port"].as_u64()),
        (Some("running"), Some(u64::from(old_port)))
    );
    assert_eq!(host.server("Added").await["state"], "running");
    let cli = host.ctl(&["reload"]);
    assert_eq!(cli.code, 1, "{cli:?}");
    assert!(cli.stderr.contains("Move"), "{}", cli.stderr);
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_without_servers_is_refused_unless_asked_for() {
    let host = HostProcess::start(&server("Only", ""));
    let mut client = LineClient::connect(host.port("Only", 0).await).await;
    let id = client.request("WHOAMI").await;
    std::fs::write(host.config_path(), "shutdown_timeout = \"1s\"\n").unwrap();
    let (status, body) = host.post("/api/v1/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("allow_empty"),
        "{body}"
    );
    assert_eq!(client.request("WHOAMI").await, id, "nothing changed");
    let (status, report) = host.post("/api/v1/reload?allow_empty=true").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["removed"], serde_json::json!(["Only"]));
    assert_eq!(host.get("/api/v1/servers/Only").await.0, 404);
}
