//! `scripts/smoke.sh`, the CI-style smoke test, passes against the binaries just built.

use std::process::Command;

use supersocket_tests::bin;

#[test]
fn the_smoke_script_passes() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/smoke.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("SUPERSOCKETD", bin("supersocketd"))
        .env("SUPERSOCKET", bin("supersocket"))
        .env_remove("SUPERSOCKET_URL")
        .env_remove("SUPERSOCKET_TOKEN")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("smoke: OK\n"), "{stdout}");
    assert!(stdout.contains("kept session"), "{stdout}");
}
