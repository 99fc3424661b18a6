//! The runtime config API (SPEC §10) through the real host: every route under each isolation
//! level, the If-Match race, bad bodies changing nothing, persistence across a real restart
//! with the file's comments kept, the embedded default's first change, a write that cannot be
//! saved, a file changed by hand, roles, and masked secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use supersocket_tests::net::LineClient;
use supersocket_tests::{HostOptions, HostProcess, Scratch};

/// One answer of the admin API.
struct Answer {
    status: u16,
    body: Value,
    etag: Option<String>,
}

/// A request body: JSON, or TOML.
enum Body {
    None,
    Json(Value),
    Toml(&'static str),
}

async fn call(host: &HostProcess, method: Method, path: &str, body: Body, if_match: Option<&str>) -> Answer {
    call_as(host, method, path, body, if_match, None).await
}

async fn call_as(
    host: &HostProcess,
    method: Method,
    path: &str,
    body: Body,
    if_match: Option<&str>,
    token: Option<&str>,
) -> Answer {
    let mut request = host.http().request(method, format!("{}{path}", host.admin));
    request = match body {
        Body::None => request,
        Body::Json(value) => request.json(&value),
        Body::Toml(text) => request.header("content-type", "application/toml").body(text),
    };
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("admin API reachable");
    let status = response.status().as_u16();
    let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"))
    };
    Answer { status, body, etag }
}

async fn etag(host: &HostProcess) -> String {
    let answer = call(host, Method::GET, "/api/v1/config", Body::None, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.etag.expect("GET /api/v1/config has an ETag")
}

fn command_server(name: &str, extra: &str) -> String {
    format!(
        "\n[[servers]]\nname = \"{name}\"\ntype = \"command\"\nlisteners = [{{ ip = \"Loopback\", port = 0 }}]\n{extra}\n"
    )
}

/// Whether a fresh connection to `port` is served (`PING` answered) or turned away.
async fn served(port: u16) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut client = LineClient::new(stream);
    client.send("PING").await;
    tokio::time::timeout(Duration::from_secs(3), client.try_recv())
        .await
        .ok()
        .flatten()
        .as_deref()
        == Some("PONG")
}

async fn every_route_under(isolation: &str) {
    let config = format!(
        "isolation = \"{isolation}\"\nshutdown_timeout = \"2s\"\n{}",
        command_server("Keep", "")
    );
    let host = HostProcess::start(&config);
    let mut kept = LineClient::connect(host.port("Keep", 0).await).await;
    let kept_id = kept.request("WHOAMI").await;

    let first = call(&host, Method::GET, "/api/v1/config", Body::None, None).await;
    assert_eq!(first.body["servers"][0]["name"], "Keep");
    assert_eq!(first.body["servers"][0]["isolation"], isolation);
    let tag = first.etag.unwrap();

    // Added from TOML, started, answering.
    let added = call(
        &host,
        Method::POST,
        "/api/v1/servers",
        Body::Toml("name = \"Added\"\ntype = \"command\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\nlabels = { team = \"chat\" }\n"),
        Some(&tag),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.body["state"], "running");
    assert_eq!(added.body["labels"]["team"], "chat");
    assert_ne!(added.etag.as_deref(), Some(tag.as_str()), "a change makes a new ETag");
    let port = host.port("Added", 0).await;
    let mut on_added = LineClient::connect(port).await;
    assert_eq!(on_added.request("SERVER").await, "Added");

    // Its limit lowered below its open sessions: the open one stays, a new one is turned away.
    let mut server = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body["servers"][1].clone();
    server["max_connections"] = json!(1);
    let put = call(&host, Method::PUT, "/api/v1/servers/Added", Body::Json(server), None).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["max_connections"], 1);
    assert_eq!(on_added.request("SERVER").await, "Added", "the open session stays");
    assert!(!served(port).await, "a session beyond the new limit is turned away");

    // Removed: drained, gone.
    let removed = call(
        &host,
        Method::DELETE,
        "/api/v1/servers/Added?timeout=1s",
        Body::None,
        None,
    )
    .await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert_eq!(host.get("/api/v1/servers/Added").await.0, 404);
    assert!(on_added.closes_within(Duration::from_secs(5)).await);
    assert!(!served(port).await);

    // A dry run says what a whole config would do, and changes nothing.
    let mut whole = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body;
    whole["servers"][0]["max_package_length"] = json!(4096);
    whole["servers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "Fresh", "type": "echo", "listeners": [{ "ip": "Loopback", "port": 0 }] }));
    let check = call(
        &host,
        Method::POST,
        "/api/v1/config/check",
        Body::Json(whole.clone()),
        None,
    )
    .await;
    assert_eq!(check.status, 200, "{}", check.body);
    assert_eq!(check.body["valid"], true, "{}", check.body);
    let plan: Vec<(String, String, u64)> = check.body["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["action"].as_str().unwrap().to_owned(),
                s["sessions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        plan,
        [("Keep".into(), "update".into(), 0), ("Fresh".into(), "add".into(), 0)]
    );
    let mut restarting = whole.clone();
    restarting["servers"][0]["type"] = json!("echo");
    let check = call(
        &host,
        Method::POST,
        "/api/v1/config/check",
        Body::Json(restarting),
        None,
    )
    .await;
    assert_eq!(check.body["plan"][0]["action"], "restart", "{}", check.body);
    assert_eq!(check.body["plan"][0]["sessions"], 1, "the one session it would drain");
    assert_eq!(
        host.get("/api/v1/servers/Fresh").await.0,
        404,
        "a check changes nothing"
    );

    // Applied: Keep updated in place (its session stays), Fresh added.
    let applied = call(&host, Method::PUT, "/api/v1/config", Body::Json(whole), None).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!(applied.body["added"], json!(["Fresh"]));
    assert_eq!(applied.body["updated"], json!(["Keep"]));
    assert_eq!(kept.request("WHOAMI").await, kept_id, "Keep's session survived");
    assert_eq!(host.server("Fresh").await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_isolation_none() {
    every_route_under("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_isolation_runtime() {
    every_route_under("runtime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_isolation_process() {
    every_route_under("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_racing_with_one_etag_one_gets_412_and_nothing_is_lost() {
    let host = HostProcess::start(&command_server("Keep", ""));
    let tag = etag(&host).await;
    let server = |limit: u64| {
        Body::Json(
            json!({ "type": "command", "listeners": [{ "ip": "Loopback", "port": 0 }], "max_connections": limit }),
        )
    };
    let (a, b) = tokio::join!(
        call(&host, Method::PUT, "/api/v1/servers/Keep", server(5), Some(&tag)),
        call(&host, Method::PUT, "/api/v1/servers/Keep", server(6), Some(&tag)),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{} / {}", a.body, b.body);
    let (winner, loser) = if a.status == 200 { (5, &b) } else { (6, &a) };
    assert_eq!(loser.body["error"]["code"], "precondition_failed");
    assert_eq!(host.server("Keep").await["max_connections"], winner);
    let file = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(file.contains(&format!("max_connections = {winner}")), "{file}");

    // The loser reads again and makes its change on top.
    let retried = call(
        &host,
        Method::PUT,
        "/api/v1/servers/Keep",
        server(7),
        Some(&etag(&host).await),
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(host.server("Keep").await["max_connections"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_a_clear_answer_and_change_nothing() {
    let host = HostProcess::start(&format!(
        "{}{}",
        command_server("Keep", ""),
        "\n[[servers]]\nname = \"Many\"\ntype = \"echo\"\nreplicas = 2\n"
    ));
    let mut kept = LineClient::connect(host.port("Keep", 0).await).await;
    let kept_id = kept.request("WHOAMI").await;
    let before = (etag(&host).await, std::fs::read_to_string(host.config_path()).unwrap());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let cases: Vec<(Method, &str, Body, u16, &str)> = vec![
        (
            Method::POST,
            "/api/v1/servers",
            Body::Toml("name = \"Broken\"\ntype = "),
            400,
            "line 2",
        ),
        (Method::POST, "/api/v1/servers", Body::Json(json!([1])), 400, "table"),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(json!({ "name": "Odd", "type": "echo", "colour": 1 })),
            400,
            "unknown key `colour`",
        ),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(json!({ "name": "Has Space", "type": "echo" })),
            400,
            "server name \\\"Has Space\\\"",
        ),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(
                json!({ "name": "Busy", "type": "echo", "listeners": [{ "ip": "127.0.0.1", "port": busy_port }] }),
            ),
            400,
            "in use",
        ),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(json!({ "name": "Keep", "type": "echo" })),
            409,
            "exists",
        ),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(json!({ "name": "Masked", "type": "echo", "options": { "password": "***" } })),
            400,
            "stands for a secret",
        ),
        (
            Method::POST,
            "/api/v1/servers",
            Body::Json(json!({ "name": "Bad", "type": "no-such-type" })),
            400,
            "no-such-type",
        ),
        (
            Method::PUT,
            "/api/v1/servers/Nope",
            Body::Json(json!({ "type": "echo" })),
            404,
            "Nope",
        ),
        (
            Method::PUT,
            "/api/v1/servers/Keep",
            Body::Json(json!({ "name": "Other", "type": "echo" })),
            400,
            "renamed",
        ),
        (
            Method::PUT,
            "/api/v1/servers/Keep",
            Body::Json(json!({ "type": "command", "max_connections": 0 })),
            400,
            "out of range",
        ),
        (
            Method::DELETE,
            "/api/v1/servers/Many-2",
            Body::None,
            409,
            "replica of \\\"Many\\\"",
        ),
        (
            Method::PUT,
            "/api/v1/config",
            Body::Json(json!({ "servers": [] })),
            400,
            "no servers",
        ),
        (
            Method::PUT,
            "/api/v1/config",
            Body::Json(json!({ "servers": [{ "name": "A", "type": "echo", "listeners": [{ "port": 70000 }] }] })),
            400,
            "out of range",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let label = format!("{method} {path}");
        let answer = call(&host, method, path, body, None).await;
        assert_eq!(answer.status, status, "{label}: {}", answer.body);
        assert!(
            answer.body.to_string().contains(says),
            "{label}: {} lacks {says:?}",
            answer.body
        );
    }
    // A check of a bad config says so with every error, and changes nothing either.
    let check = call(
        &host,
        Method::POST,
        "/api/v1/config/check",
        Body::Json(
            json!({ "servers": [{ "name": "A", "type": "echo", "send_queue": 0 }, { "name": "A", "type": "echo" }] }),
        ),
        None,
    )
    .await;
    assert_eq!(check.status, 200);
    assert_eq!(check.body["valid"], false);
    assert_eq!(check.body["errors"].as_array().unwrap().len(), 2, "{}", check.body);
    let after = (etag(&host).await, std::fs::read_to_string(host.config_path()).unwrap());
    assert_eq!(after, before, "neither the config nor the file changed");
    assert_eq!(kept.request("WHOAMI").await, kept_id);
    drop(busy);
}

/// A host run on `config` (its own file, which outlives the host).
fn host_on(config: &Path, workdir: Option<PathBuf>) -> HostProcess {
    HostProcess::start_with(HostOptions {
        config: None,
        args: vec!["--config".into(), config.display().to_string()],
        workdir,
        ..HostOptions::new("")
    })
}

async fn stop_gracefully(mut host: HostProcess) {
    host.signal(nix::sys::signal::Signal::SIGTERM);
    let status = host.wait_exit(Duration::from_secs(15)).expect("the host exits");
    assert!(status.success(), "{status:?}");
}

const COMMENTED: &str = r#"# The host's config: edited by hand and by the API.
shutdown_timeout = "2s" # short, for the tests

# The public command server.
[[servers]]
name = "Keep"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }] # any free port
max_connections = 100 # tuned by hand
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_a_restart_and_the_file_keeps_its_comments() {
    let folder = Scratch::new("persist");
    let path = folder.write("host.toml", COMMENTED);
    let host = host_on(&path, None);
    let add = |name: &'static str| {
        Body::Json(
            json!({ "name": name, "type": "echo", "listeners": [{ "ip": "Loopback", "port": 0 }], "labels": { "tier": "edge" } }),
        )
    };
    assert_eq!(
        call(&host, Method::POST, "/api/v1/servers", add("Added"), None)
            .await
            .status,
        201
    );
    assert_eq!(
        call(&host, Method::POST, "/api/v1/servers", add("Gone"), None)
            .await
            .status,
        201
    );
    assert_eq!(
        call(&host, Method::DELETE, "/api/v1/servers/Gone", Body::None, None)
            .await
            .status,
        204
    );
    let mut keep = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body["servers"][0].clone();
    keep["max_connections"] = json!(50);
    assert_eq!(
        call(&host, Method::PUT, "/api/v1/servers/Keep", Body::Json(keep), None)
            .await
            .status,
        200
    );
    let stopped = call(
        &host,
        Method::POST,
        "/api/v1/servers/Keep/stop?save=true",
        Body::None,
        None,
    )
    .await;
    assert_eq!((stopped.status, &stopped.body["state"]), (200, &json!("stopped")));

    let file = std::fs::read_to_string(&path).unwrap();
    let expected = COMMENTED.replace(
        "max_connections = 100 # tuned by hand",
        "max_connections = 50 # tuned by hand\nautostart = false",
    ) + "\n[[servers]]\nname = \"Added\"\ntype = \"echo\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\nlabels = { tier = \"edge\" }\n";
    assert_eq!(file, expected, "only what changed was written; every comment kept");

    let before = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body;
    stop_gracefully(host).await;
    let again = host_on(&path, None);
    let after = call(&again, Method::GET, "/api/v1/config", Body::None, None).await.body;
    assert_eq!(after["servers"], before["servers"], "the same instances, key for key");
    assert_eq!(
        again.server("Keep").await["state"],
        "stopped",
        "autostart = false was saved"
    );
    assert_eq!(again.server("Added").await["state"], "running");
    assert_eq!(again.get("/api/v1/host").await.1["persisted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_is_written_to_supersocket_toml_at_the_first_change() {
    let folder = Scratch::new("embedded");
    let start = || {
        HostProcess::start_with(HostOptions {
            config: None,
            workdir: Some(folder.path().to_path_buf()),
            ..HostOptions::new("")
        })
    };
    let host = start();
    let info = host.get("/api/v1/host").await.1;
    assert_eq!(
        (info["config_path"].clone(), info["persisted"].clone()),
        (Value::Null, json!(false))
    );
    let saved = call(
        &host,
        Method::POST,
        "/api/v1/servers/ServerB/stop?save=true",
        Body::None,
        None,
    )
    .await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    let file =
        std::fs::read_to_string(folder.path().join("supersocket.toml")).expect("the first change wrote the file");
    assert!(
        file.contains("# The embedded default"),
        "written from the embedded text: {file}"
    );
    let info = host.get("/api/v1/host").await.1;
    assert_eq!(info["persisted"], true);
    assert_eq!(info["config_path"], "./supersocket.toml");
    stop_gracefully(host).await;

    let again = start();
    let server = again.server("ServerB").await;
    assert_eq!(
        (server["autostart"].clone(), server["state"].clone()),
        (json!(false), json!("stopped"))
    );
    assert_eq!(again.get("/api/v1/host").await.1["config_path"], "./supersocket.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_not_applied() {
    let folder = Scratch::new("unsaved");
    let path = folder.write("host.toml", COMMENTED);
    let host = host_on(&path, None);
    let limit = |n: u64| {
        Body::Json(json!({ "type": "command", "listeners": [{ "ip": "Loopback", "port": 0 }], "max_connections": n }))
    };
    // The temporary file beside the config cannot be made.
    let blocker = folder.path().join(".host.toml.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let answer = call(&host, Method::PUT, "/api/v1/servers/Keep", limit(7), None).await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed")
    );
    assert_eq!(host.server("Keep").await["max_connections"], 100, "not applied");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);
    std::fs::remove_dir(&blocker).unwrap();

    // A full disk: the config on a small file system filled to the brim (where this machine
    // lets the test mount one).
    let disk = folder.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let full = disk.join("host.toml");
        std::fs::write(&full, COMMENTED).unwrap();
        let on_full = host_on(&full, None);
        let filler = vec![0u8; 4096];
        let mut fill = std::fs::File::create(disk.join("filler")).unwrap();
        while std::io::Write::write_all(&mut fill, &filler).is_ok() {}
        drop(fill);
        let answer = call(&on_full, Method::PUT, "/api/v1/servers/Keep", limit(8), None).await;
        assert_eq!(answer.status, 500, "{}", answer.body);
        assert_eq!(on_full.server("Keep").await["max_connections"], 100, "not applied");
        assert_eq!(std::fs::read_to_string(&full).unwrap(), COMMENTED);
        drop(on_full);
        let _ = std::process::Command::new("umount").arg(&disk).status();
    } else {
        eprintln!("no tmpfs could be mounted here: the full-disk case was not run");
    }

    let answer = call(&host, Method::PUT, "/api/v1/servers/Keep", limit(9), None).await;
    assert_eq!(answer.status, 200, "writable again: {}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edited_by_hand_is_not_overwritten_until_it_is_reloaded() {
    let folder = Scratch::new("by-hand");
    let path = folder.write("host.toml", COMMENTED);
    let host = host_on(&path, None);
    let edited = COMMENTED.replace("# The public command server.", "# The public command server, edited.");
    std::fs::write(&path, &edited).unwrap();
    let add = || Body::Json(json!({ "name": "Added", "type": "echo" }));
    let refused = call(&host, Method::POST, "/api/v1/servers", add(), None).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.to_string().contains("reload"), "{}", refused.body);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited, "the hand edit is kept");
    assert_eq!(host.post("/api/v1/reload").await.0, 200);
    assert_eq!(
        call(&host, Method::POST, "/api/v1/servers", add(), None).await.status,
        201
    );
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.contains("edited.") && file.contains("name = \"Added\""), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_change_what_it_may() {
    let folder = Scratch::new("roles");
    folder.write("ci.token", "ci-secret\n");
    let config = format!(
        "[admin]\ntokens = [\n  {{ name = \"ci\", token_file = \"ci.token\", role = \"read\" }},\n  {{ name = \"ops\", token = \"ops-secret\", role = \"operate\" }},\n  {{ name = \"root\", token = \"root-secret\", role = \"admin\" }},\n]\n{}",
        command_server("Keep", "")
    );
    let path = folder.write("host.toml", &config);
    let host = host_on(&path, None);
    let add = || Body::Json(json!({ "name": "Added", "type": "echo" }));
    let get = call_as(
        &host,
        Method::GET,
        "/api/v1/config",
        Body::None,
        None,
        Some("ci-secret"),
    )
    .await;
    assert_eq!(get.status, 200);
    let shown = get.body.to_string();
    assert!(!shown.contains("secret"), "no token is shown: {shown}");
    assert_eq!(get.body["admin"]["tokens"][1]["token"], "***");
    for token in ["ci-secret", "ops-secret"] {
        let answer = call_as(&host, Method::POST, "/api/v1/servers", add(), None, Some(token)).await;
        assert_eq!(answer.status, 403, "{token}: {}", answer.body);
        let check = call_as(
            &host,
            Method::POST,
            "/api/v1/config/check",
            Body::Json(json!({})),
            None,
            Some(token),
        )
        .await;
        assert_eq!(check.status, 403, "{token} may not check");
    }
    let stop = call_as(
        &host,
        Method::POST,
        "/api/v1/servers/Keep/stop?save=true",
        Body::None,
        None,
        Some("ops-secret"),
    )
    .await;
    assert_eq!(stop.status, 200, "operate may stop and save: {}", stop.body);
    let added = call_as(&host, Method::POST, "/api/v1/servers", add(), None, Some("root-secret")).await;
    assert_eq!(added.status, 201, "{}", added.body);

    // Written back through the API, the masked tokens keep their secrets in the file.
    let mut whole = call_as(
        &host,
        Method::GET,
        "/api/v1/config",
        Body::None,
        None,
        Some("root-secret"),
    )
    .await
    .body;
    whole["shutdown_timeout"] = json!("3s");
    let put = call_as(
        &host,
        Method::PUT,
        "/api/v1/config",
        Body::Json(whole),
        None,
        Some("root-secret"),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        file.contains("token_file = \"ci.token\"") && file.contains("token = \"ops-secret\"") && !file.contains("***"),
        "{file}"
    );
    let log = host.stderr();
    assert!(
        log.contains("admin write token=\"ops\" method=POST path=\"/api/v1/servers/Keep/stop?save=true\" status=200"),
        "{log}"
    );
    assert!(
        log.contains("token=\"ci\" method=POST path=\"/api/v1/servers\" status=403"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_config_file_is_written_back_as_json() {
    let host = HostProcess::start_with(HostOptions {
        json: true,
        ..HostOptions::new(
            r#"{ "shutdown_timeout": "2s", "servers": [{ "name": "Keep", "type": "echo", "listeners": [{ "ip": "Loopback", "port": 0 }] }] }"#,
        )
    });
    let added = call(
        &host,
        Method::POST,
        "/api/v1/servers",
        Body::Toml("name = \"Added\"\ntype = \"echo\"\n"),
        None,
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(host.config_path()).unwrap()).expect("still JSON");
    assert_eq!(
        file,
        json!({ "shutdown_timeout": "2s", "servers": [
            { "name": "Keep", "type": "echo", "listeners": [{ "ip": "Loopback", "port": 0 }] },
            { "name": "Added", "type": "echo" },
        ] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_change_keeps_the_socket_and_a_server_renamed_keeps_its_port() {
    let port = supersocket_tests::net::free_consecutive_ports(1);
    let host = HostProcess::start(&format!(
        "shutdown_timeout = \"1s\"\n\n[[servers]]\nname = \"Old\"\ntype = \"command\"\nport_fallback = 3\nlisteners = [{{ ip = \"127.0.0.1\", port = {port} }}]\n"
    ));
    let mut client = LineClient::connect(port).await;
    let id = client.request("WHOAMI").await;
    let mut server = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body["servers"][0].clone();
    server["listeners"][0]["backlog"] = json!(512);
    let put = call(
        &host,
        Method::PUT,
        "/api/v1/servers/Old",
        Body::Json(server.clone()),
        None,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        put.body["listeners"][0]["port"], port,
        "the same port, not a fallback one"
    );
    assert_eq!(client.request("WHOAMI").await, id);

    // Renamed in one whole config: the new server binds the port the old one gave up.
    server["name"] = json!("New");
    let renamed = call(
        &host,
        Method::PUT,
        "/api/v1/config",
        Body::Json(json!({ "shutdown_timeout": "1s", "servers": [server] })),
        None,
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(
        (&renamed.body["added"], &renamed.body["removed"]),
        (&json!(["New"]), &json!(["Old"]))
    );
    assert_eq!(host.port("New", 0).await, port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_saves_and_files_made_meanwhile_are_refused_before_anything_happens() {
    let folder = Scratch::new("refused");
    let many = "\n[[servers]]\nname = \"Many\"\ntype = \"command\"\nreplicas = 2\nlisteners = [{ ip = \"Loopback\", port = 0 }]\n";
    let path = folder.write("host.toml", format!("{COMMENTED}{many}"));
    let host = host_on(&path, None);
    let replicated = json!({ "name": "R", "type": "echo", "replicas": 2 });
    let answer = call(&host, Method::POST, "/api/v1/servers", Body::Json(replicated), None).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.to_string().contains("replicas"), "{}", answer.body);
    let answer = call(
        &host,
        Method::PUT,
        "/api/v1/servers/Many",
        Body::Json(json!({ "type": "echo" })),
        None,
    )
    .await;
    assert_eq!(answer.status, 409, "{}", answer.body);

    // A save that cannot be recorded leaves the server as it was.
    let answer = call(
        &host,
        Method::POST,
        "/api/v1/servers/Many-1/stop?save=true",
        Body::None,
        None,
    )
    .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(host.server("Many-1").await["state"], "running");

    // A config without servers is refused by a check as by a change.
    let check = call(
        &host,
        Method::POST,
        "/api/v1/config/check",
        Body::Json(json!({ "servers": [] })),
        None,
    )
    .await;
    assert_eq!(check.body["valid"], false, "{}", check.body);

    // A body the file cannot hold.
    let answer = call(
        &host,
        Method::POST,
        "/api/v1/servers",
        Body::Toml("name = \"N\"\ntype = \"echo\"\n[options]\nx = nan\n"),
        None,
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.to_string().contains("options.x"), "{}", answer.body);

    // The embedded default's file, made by hand after the host started, is not overwritten.
    let empty = Scratch::new("made-meanwhile");
    let embedded = HostProcess::start_with(HostOptions {
        config: None,
        workdir: Some(empty.path().to_path_buf()),
        ..HostOptions::new("")
    });
    let by_hand = empty.write("supersocket.toml", "# mine\n");
    let answer = call(
        &embedded,
        Method::POST,
        "/api/v1/servers",
        Body::Json(json!({ "name": "X", "type": "echo" })),
        None,
    )
    .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(std::fs::read_to_string(by_hand).unwrap(), "# mine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_config_means_what_it_says_about_isolation_and_labels() {
    let folder = Scratch::new("meaning");
    let path = folder.write(
        "host.toml",
        "isolation = \"runtime\"\n\n[[servers]]\nname = \"S\"\ntype = \"echo\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\nlabels = { ttl = \"1m\" }\n",
    );
    let host = host_on(&path, None);
    let mut whole = call(&host, Method::GET, "/api/v1/config", Body::None, None).await.body;
    whole.as_object_mut().unwrap().remove("isolation");
    whole["servers"][0]["labels"]["ttl"] = json!("60s");
    let put = call(&host, Method::PUT, "/api/v1/config", Body::Json(whole), None).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let server = host.server("S").await;
    assert_eq!(server["isolation"], "runtime", "the server's own isolation stays");
    assert_eq!(server["labels"]["ttl"], "60s", "a label is text, not a duration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_never_leaves_a_change_half_made() {
    let host = HostProcess::start(
        r#"shutdown_timeout = "5s"

[[servers]]
name = "Keep"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Gone"
type = "echo"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]
"#,
    );
    // A frozen agent makes the removal wait for its whole drain bound.
    let agent = host.server("Gone").await["pid"].as_u64().unwrap();
    supersocket_tests::freeze(agent).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let hung_up = impatient
        .delete(format!("{}/api/v1/servers/Gone?timeout=1s", host.admin))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up first");
    // The removal is made whole: gone from the API and from the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while host.get("/api/v1/servers/Gone").await.0 != 404 {
        assert!(std::time::Instant::now() < deadline, "the removal was left half made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(!file.contains("Gone") && file.contains("Keep"), "{file}");
    assert_eq!(host.server("Keep").await["state"], "running");
}
