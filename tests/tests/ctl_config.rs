//! The CLI's config commands through the real binaries: `add` (from a file or standard input),
//! `apply` (with `--dry-run`, and refused when the config changed after its plan), `remove`,
//! `config get` and `config check`, their exit codes, selection by `--type` and `--label`, and
//! `start|stop --save` recording `autostart` in the file.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use supersocket_tests::net::LineClient;
use supersocket_tests::{CtlOutput, HostProcess, Scratch, bin, ctl_at};

const HOST: &str = r#"shutdown_timeout = "2s"

[[servers]]
name = "ChatA"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
labels = { team = "chat" }

[[servers]]
name = "ChatB"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
labels = { team = "chat", tier = "edge" }

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_apply_remove_and_config_through_the_cli() {
    let host = HostProcess::start(HOST);
    let files = Scratch::new("ctl-files");
    let server = files.write(
        "added.toml",
        "name = \"Added\"\ntype = \"command\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\n",
    );
    let added = host.ctl(&["add", "-f", server.to_str().unwrap()]);
    assert_eq!(
        (added.code, added.stdout.as_str()),
        (0, "Added: added, running\n"),
        "{added:?}"
    );
    let mut client = LineClient::connect(host.port("Added", 0).await).await;
    assert_eq!(client.request("SERVER").await, "Added");
    let again = host.ctl(&["add", "-f", server.to_str().unwrap()]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("exists"), "{again:?}");

    let got = host.ctl(&["config", "get"]);
    assert_eq!(got.code, 0, "{got:?}");
    assert!(
        got.stdout.contains("[[servers]]") && got.stdout.contains("name = \"Added\""),
        "{}",
        got.stdout
    );
    let json = host.ctl(&["--output", "json", "config", "get"]).json();
    assert_eq!(json["servers"][3]["name"], "Added");

    // A whole config: ChatA's limit changes (live), Echo goes, Fresh comes.
    let whole = HOST.replace(
        "labels = { team = \"chat\" }\n",
        "labels = { team = \"chat\" }\nmax_connections = 50\n",
    );
    let whole = whole[..whole.find("[[servers]]\nname = \"Echo\"").unwrap()].to_owned()
        + "[[servers]]\nname = \"Added\"\ntype = \"command\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\n\n[[servers]]\nname = \"Fresh\"\ntype = \"echo\"\n";
    let path = files.write("host.toml", &whole);
    let path = path.to_str().unwrap();
    let checked = host.ctl(&["config", "check", path]);
    assert_eq!(checked.code, 0, "{checked:?}");
    assert_eq!(
        checked.stdout,
        "NAME  ACTION SESSIONS CHANGES\nChatA update 0        max_connections\nChatB keep   0        -\nAdded keep   0        -\nFresh add    0        -\nEcho  remove 0        -\n"
    );
    let dry = host.ctl(&["apply", "-f", path, "--dry-run"]);
    assert_eq!((dry.code, &dry.stdout), (0, &checked.stdout), "{dry:?}");
    assert_eq!(
        host.get("/api/v1/servers/Fresh").await.0,
        404,
        "a dry run changes nothing"
    );
    let applied = host.ctl(&["apply", "-f", path]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied
            .stdout
            .ends_with("added      Fresh\nremoved    Echo\nchanged    -\nupdated    ChatA\nunchanged  ChatB, Added\n"),
        "{}",
        applied.stdout
    );
    assert_eq!(client.request("SERVER").await, "Added", "untouched");

    let broken = files.write(
        "broken.toml",
        "[[servers]]\nname = \"X\"\ntype = \"echo\"\nsend_queue = 0\n",
    );
    let refused = host.ctl(&["apply", "-f", broken.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stdout.contains("send_queue"),
        "every error is printed: {refused:?}"
    );
    assert!(refused.stderr.contains("nothing was applied"), "{refused:?}");

    let removed = host.ctl(&["remove", "Added", "--timeout", "1s"]);
    assert_eq!(
        (removed.code, removed.stdout.as_str()),
        (0, "Added: removed\n"),
        "{removed:?}"
    );
    assert!(client.closes_within(std::time::Duration::from_secs(5)).await);
    let missing = host.ctl(&["remove", "Added"]);
    assert_eq!(missing.code, 1, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_chosen_by_type_and_label_and_stop_save_is_recorded() {
    let host = HostProcess::start(HOST);
    let stopped = host.ctl(&["stop", "--label", "team=chat", "--label", "tier=edge", "--save"]);
    assert_eq!(
        (stopped.code, stopped.stdout.as_str()),
        (0, "ChatB: stopped\n"),
        "{stopped:?}"
    );
    let file = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(
        file.contains("labels = { team = \"chat\", tier = \"edge\" }\nautostart = false\n"),
        "{file}"
    );
    let restarted = host.ctl(&["restart", "--type", "command"]);
    assert_eq!(restarted.stdout, "ChatA: running\nChatB: running\n", "{restarted:?}");
    let started = host.ctl(&["start", "--label", "team=chat", "--save"]);
    assert_eq!(started.code, 0, "{started:?}");
    let file = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(!file.contains("autostart"), "true is the default, left out: {file}");
    let none = host.ctl(&["stop", "--type", "ftp"]);
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no server is of type \"ftp\""), "{none:?}");
    assert_eq!(host.server("Echo").await["state"], "running", "untouched");
}

/// The CLI against `host`, its standard streams piped, started and left running.
fn spawn_ctl(host: &HostProcess, args: &[&str]) -> Child {
    Command::new(bin("supersocket"))
        .arg("--url")
        .arg(&host.admin)
        .args(args)
        .env_remove("SUPERSOCKET_URL")
        .env_remove("SUPERSOCKET_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run supersocket")
}

/// What a spawned CLI printed once it exited; its errors are one line.
fn finished(child: Child) -> CtlOutput {
    let output = child.wait_with_output().expect("wait for supersocket");
    let out = CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(out.stderr.lines().count() <= 1, "errors are one line: {}", out.stderr);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_reads_standard_input_and_json_and_names_every_error() {
    let host = HostProcess::start(HOST);
    let mut piped = spawn_ctl(&host, &["add", "-f", "-"]);
    let toml = "name = \"Piped\"\ntype = \"command\"\nlisteners = [{ ip = \"Loopback\", port = 0 }]\n";
    piped.stdin.take().unwrap().write_all(toml.as_bytes()).unwrap();
    let piped = finished(piped);
    assert_eq!(
        (piped.code, piped.stdout.as_str()),
        (0, "Piped: added, running\n"),
        "{piped:?}"
    );
    let mut client = LineClient::connect(host.port("Piped", 0).await).await;
    assert_eq!(client.request("SERVER").await, "Piped");

    let files = Scratch::new("ctl-add");
    let json = files.write(
        "added.json",
        r#"{"name": "Json", "type": "echo", "autostart": false, "labels": {"team": "chat"}}"#,
    );
    let added = host
        .ctl(&["--output", "json", "add", "-f", json.to_str().unwrap()])
        .json();
    assert_eq!(
        (&added["name"], &added["state"], &added["labels"]["team"]),
        (&"Json".into(), &"stopped".into(), &"chat".into())
    );

    let broken = files.write(
        "broken.toml",
        "name = \"Broken\"\ntype = \"echo\"\nsend_queue = 0\nidle_timeout = \"5 parsecs\"\n",
    );
    let refused = host.ctl(&["add", "-f", broken.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("send_queue") && refused.stderr.contains("parsecs"),
        "every error, on one line: {refused:?}"
    );
    assert_eq!(host.get("/api/v1/servers/Broken").await.0, 404);

    let whole = files.write(
        "whole.toml",
        "[[servers]]\nname = \"Broken\"\ntype = \"echo\"\nsend_queue = 0\nidle_timeout = \"5 parsecs\"\n",
    );
    let checked = host.ctl(&["config", "check", whole.to_str().unwrap()]);
    assert_eq!(checked.code, 1, "{checked:?}");
    assert_eq!(checked.stdout.lines().count(), 2, "one error a line: {checked:?}");
    assert!(checked.stderr.contains("2 error(s)"), "{checked:?}");
    let missing = host.ctl(&["add", "-f", files.path().join("nowhere.toml").to_str().unwrap()]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("cannot read") && missing.stderr.contains("nowhere.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_may_only_read_exits_4_on_a_change() {
    let admin = "\n[admin]\ntokens = [{ name = \"ci\", token = \"ci-secret\", role = \"read\" }]\n";
    let host = HostProcess::start(&format!("{HOST}{admin}"));
    let files = Scratch::new("ctl-roles");
    let server = files.write("server.toml", "name = \"Added\"\ntype = \"echo\"\n");
    let config = files.write("host.toml", HOST);
    let as_ci = |args: &[&str]| ctl_at(&host.admin, args, &[("SUPERSOCKET_TOKEN", "ci-secret")]);

    let shown = as_ci(&["config", "get"]);
    assert_eq!(shown.code, 0, "read may read: {shown:?}");
    assert!(shown.stdout.contains("token = \"***\""), "{}", shown.stdout);
    for args in [
        &["add", "-f", server.to_str().unwrap()][..],
        &["apply", "-f", config.to_str().unwrap()],
        &["remove", "Echo"],
        &["stop", "--label", "team=chat"],
    ] {
        let refused = as_ci(args);
        assert_eq!(refused.code, 4, "{args:?}: {refused:?}");
        assert!(refused.stderr.contains("forbidden"), "{args:?}: {refused:?}");
    }
    let anonymous = host.ctl(&["remove", "Echo"]);
    assert_eq!(anonymous.code, 4, "{anonymous:?}");
    assert!(anonymous.stderr.contains("unauthorized"), "{anonymous:?}");
    assert_eq!(
        as_ci(&["--output", "json", "list"]).json().as_array().map(Vec::len),
        Some(3),
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_changes_nothing_when_the_config_changed_after_its_plan() {
    use nix::sys::stat::Mode;
    let host = HostProcess::start(HOST);
    let files = Scratch::new("ctl-stale");
    // The plan reads this token file, a FIFO: while the check waits on it, the config the
    // plan was made against is changed by someone else.
    let fifo = files.path().join("ci.token");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let whole = format!(
        "{HOST}\n[[servers]]\nname = \"Fresh\"\ntype = \"echo\"\n\n[admin]\ntokens = [{{ name = \"ci\", token_file = {:?}, role = \"read\" }}]\n",
        fifo.to_str().unwrap()
    );
    let path = files.write("host.toml", whole);
    // A bound on each answer, should the change be made (and the token file read again).
    let apply = spawn_ctl(&host, &["--timeout", "10s", "apply", "-f", path.to_str().unwrap()]);
    let mut token = writer_once_read(&fifo, Duration::from_secs(10));

    let stopped = host.ctl(&["stop", "Echo", "--save"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    token.write_all(b"ci-secret\n").unwrap();
    drop(token);
    let stale = finished(apply);
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(
        stale.stderr.contains("changed since the plan was made") && stale.stderr.contains("nothing was applied"),
        "{stale:?}"
    );
    assert!(stale.stdout.contains("Fresh add"), "the plan was shown: {stale:?}");
    assert_eq!(host.get("/api/v1/servers/Fresh").await.0, 404, "nothing was applied");
    let file = std::fs::read_to_string(host.config_path()).unwrap();
    assert!(!file.contains("Fresh") && !file.contains("tokens"), "{file}");
    assert!(file.contains("autostart = false"), "the other change stays: {file}");
}

/// The FIFO at `path` opened for writing once a reader has it open (opening it without one
/// fails at once), within `timeout`.
fn writer_once_read(path: &std::path::Path, timeout: Duration) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + timeout;
    loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path);
        match opened {
            Ok(file) => return file,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("nobody read {} in time: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_config_get_is_not_applied_over_a_change_made_since() {
    let host = HostProcess::start(HOST);
    let files = Scratch::new("stale-file");
    let got = host.ctl(&["config", "get"]);
    assert!(got.stdout.starts_with("# etag: \""), "{}", got.stdout);
    let path = files.write("host.toml", &got.stdout);
    let path = path.to_str().unwrap();
    // Someone else adds a server; the copy does not have it.
    let added = files.write("z.toml", "name = \"Z\"\ntype = \"echo\"\n");
    assert_eq!(host.ctl(&["add", "-f", added.to_str().unwrap()]).code, 0);
    let stale = host.ctl(&["apply", "-f", path]);
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(stale.stderr.contains("since `config get` wrote the file"), "{stale:?}");
    assert_eq!(host.server("Z").await["state"], "running", "Z was not removed");
    // A fresh copy applies (and changes nothing).
    let fresh = host.ctl(&["config", "get"]);
    let path = files.write("fresh.toml", &fresh.stdout);
    let applied = host.ctl(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stdout.contains("added      -\nremoved    -\n"),
        "{}",
        applied.stdout
    );
}
