//! Malformed configs: `supersocketd --check` (and a plain start) exits 1 and every problem
//! names the file, the server, the key and, for TOML, the line.

use std::process::{Command, Output};

use supersocket_tests::{Scratch, bin};

fn check(scratch: &Scratch, name: &str, config: &str) -> Output {
    let path = scratch.write(name, config);
    Command::new(bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(path)
        .env_remove("SUPERSOCKET_TOKEN")
        .output()
        .expect("run supersocketd --check")
}

/// Asserts exit 1 and a stderr line holding every fragment.
fn assert_rejected(config: &str, fragments: &[&str]) {
    let scratch = Scratch::new("config");
    let output = check(&scratch, "bad.toml", config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit code for:\n{config}\nstderr:\n{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let line = stderr.lines().find(|line| fragments.iter().all(|f| line.contains(f)));
    assert!(line.is_some(), "no error line with {fragments:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const GOOD_SERVER: &str = r#"
[[servers]]
name = "Good"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[test]
fn unknown_root_key() {
    assert_rejected(
        "isolaton = \"none\"\n",
        &["bad.toml:1", "key `isolaton`", "unknown key"],
    );
}

#[test]
fn unknown_server_key_names_server_and_line() {
    let config = format!("{GOOD_SERVER}listners = []\n");
    assert_rejected(
        &config,
        &[
            "bad.toml:6",
            "server \"Good\"",
            "key `servers[0].listners`",
            "unknown key",
        ],
    );
}

#[test]
fn duplicate_names() {
    let config = format!("{GOOD_SERVER}{GOOD_SERVER}");
    assert_rejected(
        &config,
        &[
            "bad.toml:8",
            "server \"Good\"",
            "servers[1].name",
            "duplicate server name",
        ],
    );
}

#[test]
fn bad_duration() {
    let config = format!("{GOOD_SERVER}idle_timeout = \"5 parsecs\"\n");
    assert_rejected(&config, &["bad.toml:6", "servers[0].idle_timeout", "unit"]);
    assert_rejected(
        "shutdown_timeout = \"10\"\n",
        &["bad.toml:1", "key `shutdown_timeout`", "no unit"],
    );
}

#[test]
fn bad_address() {
    let config = GOOD_SERVER.replace("Loopback", "999.1.1.1");
    assert_rejected(&config, &["bad.toml:5", "servers[0].listeners[0].ip", "999.1.1.1"]);
    assert_rejected("[admin]\nlisten = \"localhost\"\n", &["bad.toml:2", "admin.listen"]);
}

#[test]
fn port_out_of_range() {
    let config = GOOD_SERVER.replace("port = 0", "port = 70000");
    assert_rejected(
        &config,
        &["bad.toml:5", "servers[0].listeners[0].port", "70000 is out of range"],
    );
}

#[test]
fn unreadable_tls_files() {
    let config = format!("{GOOD_SERVER}tls = {{ cert = \"nope.pem\", key = \"nope.key\" }}\n");
    assert_rejected(
        &config,
        &["bad.toml:6", "server \"Good\"", "servers[0].tls", "nope.pem"],
    );
    let config = format!("{GOOD_SERVER}tls = {{ cert = \"only-cert.pem\" }}\n");
    assert_rejected(&config, &["servers[0].tls", "missing `key`"]);
}

#[test]
fn unknown_type() {
    let config = GOOD_SERVER.replace("\"echo\"", "\"ecko\"");
    assert_rejected(
        &config,
        &["bad.toml:4", "servers[0].type", "unknown server type \"ecko\""],
    );
}

#[test]
fn wrong_kind_of_value() {
    let config = format!("{GOOD_SERVER}max_connections = \"lots\"\n");
    assert_rejected(
        &config,
        &[
            "bad.toml:6",
            "servers[0].max_connections",
            "expected an integer, found a string",
        ],
    );
}

#[test]
fn unknown_isolation_and_restart_policy() {
    let config = format!("{GOOD_SERVER}isolation = \"appdomain\"\nrestart = {{ policy = \"sometimes\" }}\n");
    assert_rejected(&config, &["bad.toml:6", "servers[0].isolation", "\"appdomain\""]);
    assert_rejected(&config, &["bad.toml:7", "servers[0].restart.policy", "\"sometimes\""]);
}

#[test]
fn missing_and_malformed_names() {
    assert_rejected(
        "[[servers]]\ntype = \"echo\"\n",
        &["bad.toml:1", "servers[0]", "no `name`"],
    );
    let config = GOOD_SERVER.replace("\"Good\"", "\"has space\"");
    assert_rejected(&config, &["bad.toml:3", "servers[0].name", "A-Z a-z 0-9"]);
}

#[test]
fn overlapping_listeners() {
    let config = r#"
[[servers]]
name = "A"
type = "echo"
listeners = [{ ip = "Any", port = 4444 }]
[[servers]]
name = "B"
type = "echo"
listeners = [{ ip = "127.0.0.1", port = 4444 }]
"#;
    assert_rejected(
        config,
        &[
            "bad.toml:9",
            "server \"B\"",
            "servers[1].listeners[0]",
            "overlaps 0.0.0.0:4444 of server \"A\"",
        ],
    );
}

#[test]
fn toml_syntax_error_has_a_line() {
    assert_rejected("[[servers]]\nname = \"A\"\ntype = = \"echo\"\n", &["bad.toml:3"]);
}

#[test]
fn json_errors_name_the_key() {
    let scratch = Scratch::new("config");
    let output = check(
        &scratch,
        "bad.json",
        r#"{"servers": [{"name": "J", "type": "echo", "port": 1}]}"#,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("bad.json: server \"J\": key `servers[0].port`: unknown key"),
        "{stderr}"
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let config = r#"
bogus = 1
[[servers]]
name = "A"
type = "nope"
max_package_length = 0
[[servers]]
name = "A"
type = "echo"
listeners = [{ ip = "Any" }]
"#;
    let scratch = Scratch::new("config");
    let output = check(&scratch, "bad.toml", config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    for expected in [
        "key `bogus`",
        "servers[0].type",
        "servers[0].max_package_length",
        "servers[1].name",
        "listener has no `port`",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 5, "one line per problem:\n{stderr}");
}

#[test]
fn a_valid_config_passes_check_and_a_broken_one_does_not_start() {
    let scratch = Scratch::new("config");
    let output = check(&scratch, "good.toml", GOOD_SERVER);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK (1 servers)"));

    let bad = scratch.write("bad.toml", "[[servers]]\nname = 1\n");
    let output = Command::new(bin("supersocketd"))
        .arg("--config")
        .arg(bad)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a plain start refuses a broken config too"
    );
    assert!(output.stdout.is_empty(), "no ready line");
    let missing = Command::new(bin("supersocketd"))
        .args(["--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.toml: cannot read"));
}

#[test]
fn usage_errors_exit_2_and_a_public_admin_needs_a_token() {
    let usage = Command::new(bin("supersocketd")).arg("--frobnicate").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("unexpected argument '--frobnicate'"), "{stderr}");
    let usage = Command::new(bin("supersocketd"))
        .args(["--admin", "not-an-address", "--check"])
        .output()
        .unwrap();
    assert_eq!(
        usage.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&usage.stderr)
    );

    let scratch = Scratch::new("config");
    let path = scratch.write("public.toml", "[admin]\nlisten = \"0.0.0.0:0\"\n");
    let open = Command::new(bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .env_remove("SUPERSOCKET_TOKEN")
        .output()
        .unwrap();
    assert_eq!(open.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&open.stderr).contains("admin.listen"));
    let with_token = Command::new(bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .env("SUPERSOCKET_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        with_token.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
}
