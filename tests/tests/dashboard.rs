//! The dashboard (`GET /`) in a real headless Chromium driven through ChromeDriver: it lists
//! every instance live; its buttons act on the host; a change made elsewhere shows within two
//! seconds; sessions are sent to and kicked; the config is checked and applied; a host with a
//! token asks for it and shows what a role may not do; a host that restarts is followed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supersocket_tests::browser::Browser;
use supersocket_tests::net::LineClient;
use supersocket_tests::{HostOptions, HostProcess};

const HOST: &str = r#"shutdown_timeout = "1s"

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Spare"
type = "echo"
autostart = false
listeners = [{ ip = "Loopback", port = 0 }]
"#;

const ADMIN_TOKEN: &str = "dashboard-admin-token";
const READ_TOKEN: &str = "dashboard-read-token";

/// How long the page may take to show what the API already says.
const SHOWN: Duration = Duration::from_secs(10);

/// Every instance row of the page: its name and `data-state`, in page order.
const ROWS: &str = "return [...document.querySelectorAll('tr[data-server]')]
    .map(r => [r.getAttribute('data-server'), r.getAttribute('data-state')]);";

/// The `data-state` of the row of `arguments[0]`, if that is `arguments[1]`.
const STATE_IS: &str = "const r = document.querySelector('tr[data-server=\"' + CSS.escape(arguments[0]) + '\"]');
    return r !== null && r.getAttribute('data-state') === arguments[1];";

fn button(server: &str, action: &str) -> String {
    format!("tr[data-server=\"{server}\"] button[data-action=\"{action}\"]")
}

async fn wait_state(browser: &Browser, server: &str, state: &str, within: Duration) {
    let what = format!("the page shows {server} {state}");
    browser.wait_for(&what, within, STATE_IS, json!([server, state])).await;
}

async fn rows(browser: &Browser) -> Value {
    browser.script(ROWS, json!([])).await
}

/// Waits until the events stream is connected.
async fn wait_live(browser: &Browser) {
    let script = "return document.getElementById('live').getAttribute('data-live') === 'on';";
    browser
        .wait_for("the page follows the events", SHOWN, script, json!([]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_every_instance_and_drives_the_host() {
    let host = HostProcess::start(HOST);

    // The page itself, over a socket: one HTML document, not cached, under a strict policy.
    let page = host.http().get(format!("{}/", host.admin)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let policy = headers["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "script-src 'sha256-",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.len() < 40 * 1024,
        "{} bytes",
        html.len()
    );

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", host.admin)).await;

    // a. Every configured instance, in config order, with its state.
    let expected = json!([["Echo", "running"], ["Cmd", "running"], ["Spare", "stopped"]]);
    let script = format!("const rows = (() => {{ {ROWS} }})(); return JSON.stringify(rows) === arguments[0] && rows;");
    browser
        .wait_for("every instance listed", SHOWN, &script, json!([expected.to_string()]))
        .await;
    wait_live(&browser).await;
    // Rates come from the stats events, and the sparkline from the history, then from them.
    let echo_port = host.port("Echo", 0).await;
    let mut echo = LineClient::connect(echo_port).await;
    assert_eq!(
        echo.request("traffic for the sparkline").await,
        "traffic for the sparkline"
    );
    let traffic = "const r = document.querySelector('tr[data-server=\"Echo\"]');
        const rate = r.querySelector('[data-field=\"in\"]').textContent;
        const peak = r.querySelector('svg title').textContent;
        return rate.endsWith('/s') && !peak.startsWith('peak 0 B/s') && [rate, peak];";
    browser
        .wait_for("Echo's rates and traffic", SHOWN, traffic, json!([]))
        .await;
    drop(echo);

    // Sessions: the page lists Cmd's session by the id it has, sends it a line and kicks it.
    let cmd_port = host.port("Cmd", 0).await;
    let mut client = LineClient::connect(cmd_port).await;
    let id = client.request("WHOAMI").await;
    let one_session = "return document.querySelector('tr[data-server=\"Cmd\"] [data-field=\"sessions\"]')
        .textContent.startsWith('1 /');";
    browser
        .wait_for("Cmd shows one session", SHOWN, one_session, json!([]))
        .await;
    browser.click(&button("Cmd", "sessions")).await;
    let session = format!("tr[data-detail=\"Cmd\"] tr[data-session=\"{id}\"]");
    let listed = "return [...document.querySelectorAll('tr[data-detail=\"Cmd\"] tr[data-session]')]
        .map(r => r.getAttribute('data-session'));";
    let only = format!("const ids = (() => {{ {listed} }})(); return ids.length === 1 && ids[0] === arguments[0];");
    browser
        .wait_for("Cmd's session listed", SHOWN, &only, json!([id]))
        .await;
    browser
        .type_into(&format!("{session} input[name=\"text\"]"), "hello from the page")
        .await;
    browser.click(&format!("{session} button[data-action=\"send\"]")).await;
    assert_eq!(client.recv().await, "hello from the page");
    browser.click(&format!("{session} button[data-action=\"kick\"]")).await;
    assert!(
        client.closes_within(Duration::from_secs(5)).await,
        "the kick closed the session"
    );
    let none = "return document.querySelector('tr[data-detail=\"Cmd\"]').textContent.includes('no sessions');";
    browser.wait_for("Cmd's sessions empty", SHOWN, none, json!([])).await;

    // b. A stop clicked in the page stops the instance.
    browser.click(&button("Echo", "stop")).await;
    host.wait_server("Echo", SHOWN, |s| s["state"] == "stopped").await;
    wait_state(&browser, "Echo", "stopped", SHOWN).await;

    // c. A stop made with the CLI shows in the page within two seconds.
    wait_live(&browser).await;
    let stop = host.ctl(&["stop", "Cmd"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let stopped = Instant::now();
    wait_state(&browser, "Cmd", "stopped", Duration::from_secs(2)).await;
    assert!(stopped.elapsed() <= Duration::from_secs(2));

    // A start clicked in the page starts the instance.
    browser.click(&button("Spare", "start")).await;
    host.wait_server("Spare", SHOWN, |s| s["state"] == "running").await;
    wait_state(&browser, "Spare", "running", SHOWN).await;

    // The config: a server added in the editor is checked (the plan shows it), then applied.
    let edit = "const text = document.getElementById('config-text');
        const config = JSON.parse(text.value);
        config.servers.push({ name: 'Added', type: 'echo', listeners: [{ ip: 'Loopback', port: 0 }] });
        text.value = JSON.stringify(config, null, 2);
        text.dispatchEvent(new Event('input'));
        return config.servers.length;";
    let loaded = "return document.getElementById('etag').textContent.length > 0;";
    browser.wait_for("the config loaded", SHOWN, loaded, json!([])).await;
    // Markup in what the API answers (here an error quoting the config) is shown as text.
    let hostile = "const text = document.getElementById('config-text');
        text.value = '[[servers]]\\nname = \"X\"\\ntype = \"<img id=injected src=x>\"\\n';
        text.dispatchEvent(new Event('input'));";
    browser.script(hostile, json!([])).await;
    browser.click("button[data-action=\"check\"]").await;
    let errors = "const r = document.getElementById('config-result');
        return r.querySelector('[data-valid=\"false\"]') !== null && r.textContent;";
    let errors = browser.wait_for("the errors shown", SHOWN, errors, json!([])).await;
    assert!(errors.as_str().unwrap().contains("<img id=injected src=x>"), "{errors}");
    let injected = "return document.getElementById('injected') === null && document.images.length === 0;";
    assert_eq!(browser.script(injected, json!([])).await, true);
    browser.click("button[data-action=\"revert\"]").await;
    let reverted = "return document.getElementById('config-text').value.startsWith('{');";
    browser
        .wait_for("the config reloaded", SHOWN, reverted, json!([]))
        .await;
    assert_eq!(browser.script(edit, json!([])).await, 4);
    browser.click("button[data-action=\"check\"]").await;
    let plan = "const steps = [...document.querySelectorAll('#config-result tr[data-plan]')];
        return steps.length > 0 && steps.map(s => [s.getAttribute('data-plan'), s.getAttribute('data-action-planned')]);";
    let steps = browser.wait_for("the plan shown", SHOWN, plan, json!([])).await;
    assert_eq!(
        steps,
        json!([["Echo", "keep"], ["Cmd", "keep"], ["Spare", "keep"], ["Added", "add"]])
    );
    browser.click("button[data-action=\"apply\"]").await;
    host.wait_for_server("Added", SHOWN).await;
    wait_state(&browser, "Added", "running", SHOWN).await;
    assert_eq!(rows(&browser).await.as_array().unwrap().len(), 4);

    // A log that the host does not serve is "no logs", not an error.
    browser.click(&button("Added", "logs")).await;
    let logs = "const d = document.querySelector('tr[data-detail=\"Added\"]');
        return !d.hidden && d.querySelector('ol.logs, p') !== null && d.textContent;";
    let shown = browser.wait_for("Added's log", SHOWN, logs, json!([])).await;
    let shown = shown.as_str().unwrap_or_default().to_owned();
    let (status, _) = host.get("/api/v1/servers/Added/logs?lines=1").await;
    if status == 404 {
        assert!(shown.contains("no logs"), "{shown}");
    }
    assert!(!shown.contains("(404)"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_token_asks_for_it_and_shows_what_a_role_may_not_do() {
    let config = format!(
        r#"[admin]
token = "{ADMIN_TOKEN}"
tokens = [{{ name = "viewer", token = "{READ_TOKEN}", role = "read" }}]

[[servers]]
name = "A"
type = "echo"
listeners = [{{ ip = "Loopback", port = 0 }}]
"#
    );
    let host = HostProcess::start(&config);
    // The page is open; the API it calls is not.
    let page = host.http().get(format!("{}/", host.admin)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (status, _) = host.get("/api/v1/servers").await;
    assert_eq!(status, 401);

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", host.admin)).await;
    let asking = "return !document.getElementById('token-form').hidden
        && document.querySelectorAll('tr[data-server]').length === 0
        && document.getElementById('token-why').textContent;";
    // d. The prompt, then a wrong token refused, then the right one lists the instances.
    let why = browser.wait_for("the token prompt", SHOWN, asking, json!([])).await;
    assert_eq!(why, "", "nothing refused yet");
    browser
        .type_into("#token-form input[name=\"token\"]", "not-the-token")
        .await;
    browser.click("#token-form button[type=\"submit\"]").await;
    let refused = "return !document.getElementById('token-form').hidden
        && document.getElementById('token-why').textContent.includes('refused');";
    browser
        .wait_for("the wrong token refused", SHOWN, refused, json!([]))
        .await;
    browser
        .type_into("#token-form input[name=\"token\"]", ADMIN_TOKEN)
        .await;
    browser.click("#token-form button[type=\"submit\"]").await;
    wait_state(&browser, "A", "running", SHOWN).await;
    assert!(
        browser
            .script("return document.getElementById('token-form').hidden;", json!([]))
            .await
            == true
    );
    // Kept for the tab only.
    let stored = "return [sessionStorage.getItem('supersocket.token'), localStorage.length];";
    assert_eq!(browser.script(stored, json!([])).await, json!([ADMIN_TOKEN, 0]));
    wait_live(&browser).await;

    // Forgotten, it is asked for again.
    browser.click("#forget").await;
    browser.wait_for("the prompt again", SHOWN, asking, json!([])).await;
    assert_eq!(browser.script(stored, json!([])).await, json!([null, 0]));

    // A read-only token lists the instances; a stop it may not make shows the refusal.
    browser.type_into("#token-form input[name=\"token\"]", READ_TOKEN).await;
    browser.click("#token-form button[type=\"submit\"]").await;
    wait_state(&browser, "A", "running", SHOWN).await;
    browser.click(&button("A", "stop")).await;
    let refusal = "const m = document.querySelector('tr[data-server=\"A\"] [data-role=\"message\"]');
        return m.hasAttribute('data-error') && m.textContent;";
    let message = browser.wait_for("the refusal shown", SHOWN, refusal, json!([])).await;
    let message = message.as_str().unwrap();
    assert!(
        message.contains("403") && message.contains("needs operate"),
        "{message}"
    );
    let a = host
        .http()
        .get(format!("{}/api/v1/servers/A", host.admin))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(a.json::<Value>().await.unwrap()["state"], "running");
    let state = browser.script(STATE_IS, json!(["A", "running"])).await;
    assert_eq!(state, true, "the page still shows A running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_to_a_host_that_restarted() {
    let before = HostProcess::start(HOST);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", before.admin)).await;
    wait_state(&browser, "Echo", "running", SHOWN).await;
    wait_live(&browser).await;
    // Events enough that the page's last event id is beyond any the next host sends soon.
    for _ in 0..10 {
        assert_eq!(before.post("/api/v1/servers/Spare/start").await.0, 200);
        assert_eq!(before.post("/api/v1/servers/Spare/stop").await.0, 200);
    }
    wait_state(&browser, "Spare", "stopped", SHOWN).await;

    // The host goes away: the page says it lost the stream.
    let admin = before.admin.clone();
    drop(before);
    let offline = "return document.getElementById('live').getAttribute('data-live') === 'off';";
    browser
        .wait_for("the page notices the host left", SHOWN, offline, json!([]))
        .await;

    // Another host on the same address, with other instances: the page follows it, though the
    // ids of its events start again.
    let mut options = HostOptions::new(
        r#"[[servers]]
name = "Echo"
type = "echo"
autostart = false
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Newcomer"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#,
    );
    options.admin = Some(admin.trim_start_matches("http://").to_owned());
    let after = HostProcess::start_with(options);
    assert_eq!(after.admin, admin);
    let expected = json!([["Echo", "stopped"], ["Newcomer", "running"]]).to_string();
    let script = format!("const rows = (() => {{ {ROWS} }})(); return JSON.stringify(rows) === arguments[0];");
    browser
        .wait_for(
            "the new host's instances",
            Duration::from_secs(20),
            &script,
            json!([expected]),
        )
        .await;
    wait_live(&browser).await;
    // Its events reach the page: a start made elsewhere shows.
    let start = after.ctl(&["start", "Echo"]);
    assert_eq!(start.code, 0, "{start:?}");
    wait_state(&browser, "Echo", "running", Duration::from_secs(2)).await;
}
