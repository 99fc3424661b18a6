//! A real headless Chromium for the dashboard's tests, driven through ChromeDriver's WebDriver
//! protocol (W3C WebDriver: JSON over HTTP). ChromeDriver runs in a process group of its own
//! with the browser it starts, and the whole group is killed when the [`Browser`] is dropped,
//! whether the test passed or not.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Scratch;

/// How long ChromeDriver and the browser may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; ChromeDriver and the browser are killed when it is dropped.
pub struct Browser {
    driver: Child,
    /// ChromeDriver's port on 127.0.0.1.
    port: u16,
    /// The session's path, `/session/ID`.
    session: String,
    http: reqwest::Client,
    /// The browser's profile, fresh for each browser; removed after the browser is gone.
    _profile: Scratch,
}

/// Where a program is on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Browser {
    /// Starts ChromeDriver on a port of its choosing and a headless Chromium through it.
    /// Panics, saying what to install, when either is missing.
    pub async fn start() -> Self {
        let missing = "the dashboard tests need Chromium and ChromeDriver on PATH: install the Debian packages \
                       chromium and chromium-driver (scripts/test does)";
        let driver_path = on_path("chromedriver").unwrap_or_else(|| panic!("chromedriver not found; {missing}"));
        let chromium = ["chromium", "chromium-browser"]
            .into_iter()
            .find_map(on_path)
            .unwrap_or_else(|| panic!("chromium not found; {missing}"));
        let profile = Scratch::new("chromium");
        // Port 0: ChromeDriver binds a free port and says which, so no other test can take it
        // in between.
        let mut driver = Command::new(&driver_path)
            .arg("--port=0")
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", driver_path.display()));
        let port = match started_on(&mut driver) {
            Some(port) => port,
            None => {
                kill_group(&mut driver);
                panic!("ChromeDriver did not say it started within {START_TIMEOUT:?}");
            }
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(START_TIMEOUT)
            .build()
            .expect("http client");
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
            http,
            _profile: profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(status) = browser.http.get(format!("{base}/status")).send().await {
                let body: Value = status.json().await.unwrap_or(Value::Null);
                if body["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "ChromeDriver never answered ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let user_data = format!("--user-data-dir={}", browser._profile.path().join("profile").display());
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-proxy-server", "--window-size=1400,1000", user_data,
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        });
        let url = format!("{base}/session");
        let created = browser.request(reqwest::Method::POST, &url, Some(capabilities)).await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        browser.session = format!("/session/{id}");
        browser
    }

    /// A WebDriver command; returns its `value`, or panics with the driver's error.
    async fn request(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("ChromeDriver did not answer {method} {url}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            panic!("WebDriver {method} {url} answered {status}: {}", body["value"]);
        }
        body.get("value").cloned().unwrap_or(Value::Null)
    }

    /// A command of this session (`path` after `/session/ID`), answered with an error value
    /// instead of a panic when the driver refuses it.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("http://127.0.0.1:{}{}{path}", self.port, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("ChromeDriver did not answer {path}: {e}"));
        let ok = response.status().is_success();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if ok { Ok(value) } else { Err(value) }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        let body = json!({ "url": url });
        let gone = self.command(reqwest::Method::POST, "/url", Some(body)).await;
        gone.unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; returns what it
    /// returns.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        let run = self.command(reqwest::Method::POST, "/execute/sync", Some(body)).await;
        run.unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null` or `false`, for at most
    /// `timeout`; returns that. On timeout, panics with `what`, the last value and the page's
    /// console.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script, args.clone()).await;
            if !value.is_null() && value != false {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {timeout:?}\nconsole:\n{}",
                    self.console().await.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The element `css` matches, as the driver names it; `None` if nothing matches.
    async fn find(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css });
        let found = self.command(reqwest::Method::POST, "/element", Some(body)).await.ok()?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// Acts on the element `css` matches (`/element/ID/{action}`), as a user would; waits up to
    /// five seconds for it to exist and, when the page replaces it meanwhile, finds it again.
    async fn act(&self, css: &str, action: &str, body: Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let outcome = match self.find(css).await {
                Some(id) => {
                    let path = format!("/element/{id}/{action}");
                    self.command(reqwest::Method::POST, &path, Some(body.clone()))
                        .await
                        .map(drop)
                }
                None => Err(json!({ "error": "no such element" })),
            };
            match outcome {
                Ok(()) => return,
                Err(error) if Instant::now() >= deadline => panic!("{action} on {css}: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Clicks the element `css` matches.
    pub async fn click(&self, css: &str) {
        self.act(css, "click", json!({})).await;
    }

    /// Types `text` into the element `css` matches.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.act(css, "value", json!({ "text": text })).await;
    }

    /// What the page logged to its console (errors included), one line each.
    pub async fn console(&self) -> Vec<String> {
        let body = json!({ "type": "browser" });
        match self.command(reqwest::Method::POST, "/se/log", Some(body)).await {
            Ok(Value::Array(entries)) => entries
                .iter()
                .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]))
                .collect(),
            other => vec![format!("(no console log: {other:?})")],
        }
    }
}

/// Reads ChromeDriver's stdout until it names its port, for at most [`START_TIMEOUT`]; keeps
/// draining it afterwards so that the driver never blocks on a full pipe.
fn started_on(driver: &mut Child) -> Option<u16> {
    let stdout = driver.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        // "ChromeDriver was started successfully on port 41563."
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            return rest.trim_end_matches('.').trim().parse().ok();
        }
    }
}

/// Kills ChromeDriver and everything in its process group (the browser and its helpers), and
/// reaps ChromeDriver.
fn kill_group(driver: &mut Child) {
    let group = nix::unistd::Pid::from_raw(driver.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = driver.kill();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask ChromeDriver to close the browser (it then removes what it made), over a plain
        // socket since no runtime may be left to drive an async client; then kill the group
        // whatever the answer.
        let connected = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let (false, Ok(mut stream)) = (self.session.is_empty(), connected) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read(&mut [0u8; 1024]);
            }
        }
        kill_group(&mut self.driver);
    }
}
