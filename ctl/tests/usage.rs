//! The CLI's behaviour without a host: usage errors, an unreachable host, completions.

use std::process::Command;

fn supersocket(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_supersocket"))
        .args(args)
        .env_remove("SUPERSOCKET_URL")
        .env_remove("SUPERSOCKET_TOKEN")
        .output()
        .expect("run supersocket")
}

#[test]
fn usage_errors_exit_2_with_a_short_message() {
    for (args, expected) in [
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
        (
            &["start"],
            "required arguments were not provided: <NAMES|--all|--type <TYPE>|--label <KEY=VALUE>>",
        ),
        (&["stop", "--label", "team"], "\"team\" is not KEY=VALUE"),
        (&["restart", "A", "--type", "echo"], "cannot be used with"),
        (&["apply"], "--file <FILE>"),
        (&["stop", "A", "--all"], "cannot be used with '--all'"),
        (
            &["--timeout", "soon", "list"],
            "duration \"soon\" does not start with a number",
        ),
        (
            &["sessions", "A", "--limit", "many"],
            "invalid value 'many' for '--limit <LIMIT>'",
        ),
        (&["--token", "two words", "list"], "a bearer token is visible ASCII"),
    ] {
        let output = supersocket(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got:\n{stderr}");
        assert!(
            stderr.starts_with("supersocket: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    // No command at all shows the help (still exit 2: nothing was done).
    let output = supersocket(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Usage: supersocket"));
}

#[test]
fn an_unreachable_host_exits_3_naming_the_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}");
    let output = supersocket(&["--url", &url, "list"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    let output = supersocket(&["--url", "unix:/nonexistent/admin.sock", "list"]);
    assert_eq!(output.status.code(), Some(3));
    let output = supersocket(&["--url", "ftp://x", "list"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a URL it cannot use is a failed operation"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = supersocket(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0));
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains("supersocket") && script.contains("restart"), "{shell}");
    }
}
