//! The CLI's config commands through the real binaries: `add`, `apply` (with `--dry-run`),
//! `remove`, `config get` and `config check`, selection by `--type` and `--label`, and
//! `start|stop --save` recording `autostart` in the file.

use supersocket_tests::net::LineClient;
use supersocket_tests::{HostProcess, Scratch};

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
