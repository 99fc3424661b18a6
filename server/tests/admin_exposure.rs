//! A config that would leave the admin API open to other machines is refused while it listens
//! there: by a reload and by a change through the API, not only at start. (The admin API is not
//! bound here; the host knows the address it was started with.)

use supersocket::HostBuilder;
use supersocket::config::Config;
use supersocket::host::ReloadError;

const EXPOSED: &str = r#"
[admin]
listen = "0.0.0.0:0"
token = "s3cret"

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test]
async fn a_reload_cannot_drop_the_token_of_an_exposed_admin_api() {
    let folder = std::env::temp_dir().join(format!("ss-exposure-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("host.toml");
    std::fs::write(&path, EXPOSED).unwrap();
    let builder = HostBuilder::new();
    let config = Config::load(&path, builder.types()).unwrap();
    let host = builder.build(config);

    // The token gone, and the address moved to loopback (which only takes effect at the next
    // start): refused, the API stays guarded.
    let open = EXPOSED
        .replace("token = \"s3cret\"\n", "")
        .replace("0.0.0.0:0", "127.0.0.1:0");
    std::fs::write(&path, &open).unwrap();
    match host.reload(false).await {
        Err(ReloadError::Invalid(errors)) => {
            let text = errors.to_string();
            assert!(text.contains("admin.token") && text.contains("0.0.0.0"), "{text}");
        }
        other => panic!("a reload that opens the admin API was not refused: {other:?}"),
    }
    assert!(host.admin_config().requires_token(), "the token in force stays");

    // With a token it applies.
    std::fs::write(&path, open.replace("[admin]\n", "[admin]\ntoken = \"other\"\n")).unwrap();
    host.reload(false).await.unwrap();
    let _ = std::fs::remove_dir_all(&folder);
}
