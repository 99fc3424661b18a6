//! The admin API's manners: bearer token (config, token_file, environment), health routes open,
//! Host and Origin checks, the body limit, the unix socket, and the metrics it guards.

use std::os::unix::fs::PermissionsExt;

use supersocket_tests::net::LineClient;
use supersocket_tests::{HostOptions, HostProcess, Scratch, ctl_at};

const SERVER: &str = r#"
[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

async fn get_with(host: &HostProcess, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", host.admin));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route_but_health() {
    let host = HostProcess::start(&format!("[admin]\ntoken = \"s3cret\"\n{SERVER}"));
    for open in ["/livez", "/healthz", "/readyz"] {
        assert_eq!(get_with(&host, open, &[]).await.0, 200, "{open} needs no token");
    }
    for guarded in [
        "/api/v1/servers",
        "/api/v1/host",
        "/metrics",
        "/api/v1/servers/Cmd/sessions",
    ] {
        let (status, body) = get_with(&host, guarded, &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{guarded}"
        );
        assert_eq!(
            get_with(&host, guarded, &[("authorization", "Bearer wrong")]).await.0,
            401
        );
        assert_eq!(
            get_with(&host, guarded, &[("authorization", "Bearer s3cret")]).await.0,
            200,
            "{guarded}"
        );
    }
    let denied = host.ctl(&["list"]);
    assert_eq!(denied.code, 4, "{denied:?}");
    assert!(
        denied.stderr.contains("unauthorized") && denied.stderr.contains(&host.admin),
        "{}",
        denied.stderr
    );
    assert_eq!(host.ctl(&["--token", "nope", "list"]).code, 4);
    assert_eq!(host.ctl(&["--token", "s3cret", "list"]).code, 0);
    assert_eq!(
        ctl_at(&host.admin, &["list"], &[("SUPERSOCKET_TOKEN", "s3cret")]).code,
        0
    );
    assert_eq!(host.ctl(&["health"]).code, 0, "health needs no token");
}

#[tokio::test]
async fn token_file_and_environment_tokens() {
    let scratch = Scratch::new("token");
    let file = scratch.write("admin.token", "from-file\n");
    let host = HostProcess::start(&format!("[admin]\ntoken_file = \"{}\"\n{SERVER}", file.display()));
    assert_eq!(
        get_with(&host, "/api/v1/host", &[("authorization", "Bearer from-file")])
            .await
            .0,
        200
    );

    // The environment wins over the config.
    let mut options = HostOptions::new(&format!("[admin]\ntoken = \"from-config\"\n{SERVER}"));
    options.env.push(("SUPERSOCKET_TOKEN".into(), "from-env".into()));
    let host = HostProcess::start_with(options);
    assert_eq!(
        get_with(&host, "/api/v1/host", &[("authorization", "Bearer from-config")])
            .await
            .0,
        401
    );
    assert_eq!(
        get_with(&host, "/api/v1/host", &[("authorization", "Bearer from-env")])
            .await
            .0,
        200
    );

    // No token at all: the loopback API is open.
    let host = HostProcess::start(SERVER);
    assert_eq!(get_with(&host, "/api/v1/host", &[]).await.0, 200);
}

#[tokio::test]
async fn forged_host_and_cross_origin_requests_are_refused() {
    let host = HostProcess::start(SERVER);
    let own = host.admin.trim_start_matches("http://").to_owned();
    let port = own.rsplit(':').next().unwrap().to_owned();
    for forged in ["evil.example", "evil.example:80", "localhost.evil.example"] {
        let (status, body) = get_with(&host, "/api/v1/servers", &[("host", forged)]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "Host {forged}"
        );
    }
    assert_eq!(
        get_with(&host, "/readyz", &[("host", "evil.example")]).await.0,
        403,
        "health routes too"
    );
    for fine in [own.as_str(), &format!("localhost:{port}"), "localhost"] {
        assert_eq!(
            get_with(&host, "/api/v1/servers", &[("host", fine)]).await.0,
            200,
            "Host {fine}"
        );
    }
    let same_origin = format!("http://{own}");
    assert_eq!(
        get_with(&host, "/api/v1/servers", &[("origin", &same_origin)]).await.0,
        200
    );
    let (status, _) = get_with(&host, "/api/v1/servers", &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "a browser page elsewhere may not drive the API");
    assert_eq!(get_with(&host, "/api/v1/servers", &[("origin", "null")]).await.0, 403);
}

#[tokio::test]
async fn bodies_over_one_mib_get_413_and_unknown_routes_404() {
    let host = HostProcess::start(SERVER);
    let mut client = LineClient::connect(host.port("Cmd", 0).await).await;
    let id = client.request("WHOAMI").await;
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(1024 * 1024));
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/servers/Cmd/sessions/{id}/send", host.admin))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let (status, body) = get_with(&host, "/api/v1/nothing-here", &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let wrong_method = reqwest::Client::new()
        .delete(format!("{}/api/v1/servers", host.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
}

#[tokio::test]
async fn the_admin_api_on_a_unix_socket() {
    let scratch = Scratch::new("unix");
    let socket = scratch.path().join("admin.sock");
    let mut options = HostOptions::new(SERVER);
    options.admin = Some(format!("unix:{}", socket.display()));
    let host = HostProcess::start_with(options);
    assert_eq!(host.admin, format!("unix:{}", socket.display()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may talk to the admin socket");
    let list = host.ctl(&["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains("Cmd "), "{}", list.stdout);
    let curl = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/api/v1/servers/Cmd")
        .output()
        .expect("curl runs (scripts/test installs it)");
    let server: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(server["state"], "running");
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_a_token() {
    let mut options = HostOptions::new(SERVER);
    options.admin = Some("0.0.0.0:0".into());
    let refused = HostProcess::try_start(options)
        .err()
        .expect("the host refuses to start");
    assert!(
        refused.contains("admin.listen") && refused.contains("token"),
        "{refused}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_per_server() {
    let host = HostProcess::start(&format!(
        "{SERVER}\n[[servers]]\nname = \"Off\"\ntype = \"echo\"\nautostart = false\nlisteners = []\n"
    ));
    let mut client = LineClient::connect(host.port("Cmd", 0).await).await;
    assert_eq!(client.request("PING").await, "PONG");
    let response = reqwest::get(format!("{}/metrics", host.admin)).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let expected = [
        "supersocket_server_state{server=\"Cmd\",type=\"command\",state=\"running\"} 1",
        "supersocket_server_state{server=\"Off\",type=\"echo\",state=\"stopped\"} 1",
        "supersocket_server_state{server=\"Off\",type=\"echo\",state=\"running\"} 0",
        "supersocket_server_sessions{server=\"Cmd\",type=\"command\"} 1",
        "supersocket_server_accepted_total{server=\"Cmd\",type=\"command\"} 1",
        "supersocket_server_packages_total{server=\"Cmd\",type=\"command\"} 1",
        "supersocket_server_received_bytes_total{server=\"Cmd\",type=\"command\"} 6",
        "supersocket_server_sent_bytes_total{server=\"Cmd\",type=\"command\"} 6",
        "# TYPE supersocket_server_rejected_total counter",
        "# TYPE supersocket_host_uptime_seconds gauge",
    ];
    // The reply can reach the client a moment before the session counts the bytes it wrote.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = reqwest::get(format!("{}/metrics", host.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|line| !text.lines().any(|l| l == **line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "missing {missing:?} in:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Named tokens with roles: `read` may only look, `operate` may also start, stop, restart, send,
/// kick and reload, `admin` (and the single `token`) may do everything. A role that may not
/// gets 403 `forbidden`, and `supersocket` exits 4 with the reason; every write is logged with
/// the token's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_may_do_what_its_role_allows() {
    let scratch = Scratch::new("roles");
    let file = scratch.write("ops.token", "ops-secret\n");
    let host = HostProcess::start(&format!(
        r#"[admin]
token = "root-secret"
tokens = [
    {{ name = "ci", token = "ci-secret", role = "read" }},
    {{ name = "ops", token_file = "{}", role = "operate" }},
]
{SERVER}"#,
        file.display()
    ));
    let client = reqwest::Client::new();
    let ask = |method: reqwest::Method, path: &str, token: &str| {
        client
            .request(method, format!("{}{path}", host.admin))
            .bearer_auth(token)
            .send()
    };
    let post = reqwest::Method::POST;
    for token in ["ci-secret", "ops-secret", "root-secret"] {
        let listed = ask(reqwest::Method::GET, "/api/v1/servers", token).await.unwrap();
        assert_eq!(listed.status(), 200, "{token} may read");
    }
    let refused = ask(post.clone(), "/api/v1/servers/Cmd/stop", "ci-secret")
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"ci\""), "{body}");
    let cmd: serde_json::Value = ask(reqwest::Method::GET, "/api/v1/servers/Cmd", "ci-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cmd["state"], "running", "a refused stop stops nothing: {cmd}");

    let denied = host.ctl(&["--token", "ci-secret", "stop", "Cmd"]);
    assert_eq!(denied.code, 4, "{denied:?}");
    assert!(denied.stderr.contains("forbidden"), "{}", denied.stderr);

    let read_refused = ask(reqwest::Method::GET, "/api/v1/servers", "wrong").await.unwrap();
    assert_eq!(read_refused.status(), 401);
    for action in ["stop?timeout=1s", "start", "restart"] {
        let path = format!("/api/v1/servers/Cmd/{action}");
        assert_eq!(
            ask(post.clone(), &path, "ops-secret").await.unwrap().status(),
            200,
            "ops may {action}"
        );
    }
    assert_eq!(
        ask(post.clone(), "/api/v1/reload", "ops-secret")
            .await
            .unwrap()
            .status(),
        200
    );
    // A write no route of `operate` covers takes `admin`: ops is refused before any route is
    // looked at; the root token reaches the router, which knows no such route.
    let create = ask(post.clone(), "/api/v1/servers", "ops-secret").await.unwrap();
    assert_eq!(create.status(), 403);
    assert_ne!(
        ask(post.clone(), "/api/v1/servers", "root-secret")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        ask(post.clone(), "/api/v1/reload", "wrong").await.unwrap().status(),
        401
    );

    let log = host.stderr();
    assert!(
        log.lines().any(|l| l.contains("admin write")
            && l.contains("ops")
            && l.contains("/api/v1/servers/Cmd/stop")
            && l.contains("200")),
        "writes are logged with the token's name:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("admin write") && l.contains("ci") && l.contains("403")),
        "refused writes too:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("admin write") && l.contains("/api/v1/servers/Cmd/stop?timeout=1s")),
        "with their query:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("admin read refused") && l.contains("status=401")),
        "reads refused for their token too:\n{log}"
    );
}

#[test]
fn a_token_with_a_bad_role_or_no_secret_is_refused_with_its_key() {
    let scratch = Scratch::new("roles-bad");
    let config = scratch.write(
        "host.toml",
        "[admin]\ntokens = [\n  { name = \"ci\", token = \"a\", role = \"root\" },\n  { name = \"ci\", role = \"read\" },\n]\n",
    );
    let checked = std::process::Command::new(supersocket_tests::bin("supersocketd"))
        .args(["--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success(), "{stderr}");
    assert!(
        stderr.contains("admin.tokens[0].role") && stderr.contains("\"root\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("admin.tokens[1]") && stderr.contains("no `token` or `token_file`"),
        "{stderr}"
    );

    // Names the log gives to others, and secrets that cannot be sent as a bearer token.
    let config = scratch.write(
        "names.toml",
        "[admin]\ntokens = [\n  { name = \"admin\", token = \"a1\", role = \"read\" },\n  { name = \"-\", token = \"b2\", role = \"read\" },\n  { name = \"sp\", token = \"has space\", role = \"read\" },\n]\n",
    );
    let stderr = check(&config, &[]);
    for key in ["admin.tokens[0].name", "admin.tokens[1].name", "admin.tokens[2].token"] {
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    // A single token from the environment that is a named token's secret would make it admin.
    let config = scratch.write(
        "env.toml",
        "[admin]\ntokens = [{ name = \"ci\", token = \"ci-secret\", role = \"read\" }]\n",
    );
    let stderr = check(&config, &[("SUPERSOCKET_TOKEN", "ci-secret")]);
    assert!(stderr.contains("same secret as token \"ci\""), "{stderr}");
}

/// `supersocketd --check` of `config`; its stderr, which must tell of errors.
fn check(config: &std::path::Path, env: &[(&str, &str)]) -> String {
    let checked = std::process::Command::new(supersocket_tests::bin("supersocketd"))
        .args(["--check", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr).into_owned();
    assert!(!checked.status.success(), "{stderr}");
    stderr
}
