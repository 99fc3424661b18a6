//! The `ftp` server type against real, unmodified clients: curl, Python's ftplib and lftp.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use supersocket_tests::HostProcess;
use supersocket_tests::net::{LineClient, closes_within, connect, free_consecutive_ports};

const PYTHON_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/ftplib_check.py");

/// A host with one `ftp` server named `FTPServer`; `options` go into its options table. Its
/// root is `root/` in the host's folder, holding `hello.txt` and an empty `sub/`.
struct FtpHost {
    host: HostProcess,
    port: u16,
}

impl FtpHost {
    async fn start(options: &str) -> Self {
        Self::start_with("", options).await
    }

    /// With `top` at the top of the config (e.g. `isolation = "process"`).
    async fn start_with(top: &str, options: &str) -> Self {
        let host = HostProcess::start(&format!(
            r#"
            {top}
            [[servers]]
            name = "FTPServer"
            type = "ftp"
            listeners = [{{ ip = "Loopback", port = 0 }}]
            options = {{ root = "root", {options} }}
            "#
        ));
        let root = host.scratch.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("hello.txt"), "hello\n").unwrap();
        let port = host.port("FTPServer", 0).await;
        Self { host, port }
    }

    /// A control connection, greeted and logged in as `anonymous`.
    async fn anonymous(&self) -> LineClient<tokio::net::TcpStream> {
        let mut control = LineClient::connect(self.port).await;
        assert!(control.recv().await.starts_with("220 "));
        assert!(control.request("USER anonymous").await.starts_with("331 "));
        assert!(control.request("PASS guest").await.starts_with("230 "));
        control
    }

    fn root(&self) -> PathBuf {
        self.host.scratch.path().join("root")
    }

    fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }

    /// Runs the Python client on a scenario; it must succeed.
    fn python(&self, user: &str, password: &str, scenario: &str) -> String {
        let output = Command::new("python3")
            .args([PYTHON_CLIENT, &self.port.to_string(), user, password, scenario])
            .output()
            .expect("python3 runs (scripts/test installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "ftplib {scenario} as {user}:\n{text}");
        text
    }
}

/// Runs curl (bounded in time) with `args`.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test installs it)")
}

fn curl_ok(args: &[&str]) -> Vec<u8> {
    let output = curl(args);
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The port of a `229 Entering Extended Passive Mode (|||port|).` reply.
fn epsv_port(reply: &str) -> u16 {
    reply
        .strip_prefix("229 ")
        .and_then(|text| text.strip_suffix("|).")?.rsplit('|').next()?.parse().ok())
        .unwrap_or_else(|| panic!("not an EPSV reply: {reply}"))
}

/// `size` bytes that show misplaced ones.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}

fn checksum(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_lists_downloads_uploads_resumes_and_creates_folders() {
    let ftp = FtpHost::start("").await;
    let local = ftp.host.scratch.path().join("local");
    std::fs::create_dir_all(&local).unwrap();

    let listing = String::from_utf8(curl_ok(&[&ftp.url("")])).unwrap();
    assert!(
        listing.lines().any(|l| l.starts_with('-') && l.ends_with(" hello.txt")),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.starts_with('d') && l.ends_with(" sub")),
        "{listing}"
    );
    assert_eq!(curl_ok(&[&ftp.url("hello.txt")]), b"hello\n");

    // Upload with -T, creating the folders on the way.
    let upload = local.join("upload.bin");
    std::fs::write(&upload, pattern(300_000)).unwrap();
    curl_ok(&[
        "-T",
        upload.to_str().unwrap(),
        "--ftp-create-dirs",
        &ftp.url("a/b/upload.bin"),
    ]);
    assert_eq!(
        std::fs::read(ftp.root().join("a/b/upload.bin")).unwrap(),
        pattern(300_000)
    );

    // Resume a download: the local file holds the first part.
    std::fs::write(ftp.root().join("resume.bin"), pattern(500_000)).unwrap();
    let partial = local.join("resume.bin");
    std::fs::write(&partial, &pattern(500_000)[..123_456]).unwrap();
    curl_ok(&["-C", "-", "-o", partial.to_str().unwrap(), &ftp.url("resume.bin")]);
    assert_eq!(std::fs::read(&partial).unwrap(), pattern(500_000));

    // Resume an upload: the server holds the first part.
    std::fs::write(ftp.root().join("half.bin"), &pattern(300_000)[..100_000]).unwrap();
    curl_ok(&["-C", "-", "-T", upload.to_str().unwrap(), &ftp.url("half.bin")]);
    assert_eq!(std::fs::read(ftp.root().join("half.bin")).unwrap(), pattern(300_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_mirrors_puts_and_tidies_up() {
    let ftp = FtpHost::start(r#"users = [{ name = "alice", password = "wonder" }]"#).await;
    std::fs::write(ftp.root().join("sub/one.txt"), "one").unwrap();
    std::fs::create_dir_all(ftp.root().join("sub/deeper")).unwrap();
    std::fs::write(ftp.root().join("sub/deeper/two.txt"), "two").unwrap();
    let local = ftp.host.scratch.path().join("lftp");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("upload.txt"), "uploaded").unwrap();
    let script = format!(
        "set net:max-retries 1; set net:timeout 10; set cmd:fail-exit yes; \
         mirror sub {local}/copy; put {local}/upload.txt -o up.txt; mkdir made; rmdir made; cls -1; quit",
        local = local.display()
    );
    let output = Command::new("lftp")
        .args([
            "-u",
            "alice,wonder",
            "-p",
            &ftp.port.to_string(),
            "-e",
            &script,
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("lftp runs (scripts/test installs it)");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(local.join("copy/deeper/two.txt")).unwrap(),
        "two"
    );
    assert_eq!(std::fs::read_to_string(ftp.root().join("up.txt")).unwrap(), "uploaded");
    assert!(!ftp.root().join("made").exists());
    assert!(said.lines().any(|l| l == "up.txt"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_speaks_every_command_anonymously_and_as_a_user() {
    let ftp = FtpHost::start(r#"users = [{ name = "alice", password = "wonder land" }]"#).await;
    assert!(
        ftp.python("anonymous", "guest@example.org", "full")
            .contains("full: ok")
    );
    assert!(ftp.python("alice", "wonder land", "full").contains("full: ok"));
    assert!(ftp.python("alice", "wonderland", "bad-password").contains("530"));
    assert!(ftp.python("mallory", "wonder land", "bad-password").contains("530"));

    let private = FtpHost::start(r#"anonymous = false, users = [{ name = "alice", password = "x" }]"#).await;
    assert!(
        private
            .python("anonymous", "guest@example.org", "bad-password")
            .contains("530")
    );
    // Without logging in, nothing but the login works.
    let listing = curl(&["--user", "alice:nope", &private.url("")]);
    assert!(!listing.status.success());
    assert!(String::from_utf8_lossy(&listing.stderr).contains("530"), "{listing:?}");
}

/// Every file under `dir`, with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            } else {
                files.push((path, Vec::new()));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jail_answers_every_escape_with_550_and_nothing_outside_changes() {
    let ftp = FtpHost::start("").await;
    let scratch = ftp.host.scratch.path();
    let outside = scratch.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(scratch.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, ftp.root().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), ftp.root().join("escape")).unwrap();
    let before = snapshot(scratch);

    assert!(ftp.python("anonymous", "x", "jail").contains("jail: ok"));
    for url in [
        "out/secret.txt",
        "escape",
        "%2e%2e/secret.txt",
        "sub/%2e%2e/%2e%2e/secret.txt",
    ] {
        let output = curl(&["--verbose", &ftp.url(url)]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "curl {url} must fail");
        assert!(said.contains("< 550 "), "curl {url}: {said}");
    }

    let after: Vec<_> = snapshot(scratch)
        .into_iter()
        .filter(|(path, _)| path.file_name().is_none_or(|n| n != "stderr.log"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(path, _)| path.file_name().is_none_or(|n| n != "stderr.log"))
        .collect();
    assert_eq!(after, before, "nothing inside or outside the root changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_every_change_with_550() {
    let ftp = FtpHost::start("read_only = true").await;
    assert!(ftp.python("anonymous", "x", "read-only").contains("read-only: ok"));
    let upload = ftp.host.scratch.path().join("local.txt");
    std::fs::write(&upload, "new").unwrap();
    let output = curl(&["-T", upload.to_str().unwrap(), &ftp.url("new.txt")]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("550"), "{output:?}");
    assert!(!ftp.root().join("new.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_passive_range_answers_425() {
    let port = free_consecutive_ports(1);
    let ftp = FtpHost::start(&format!(r#"passive_ports = "{port}-{port}""#)).await;
    assert!(ftp.python("anonymous", "x", "exhausted").contains("exhausted: ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_gets_554_for_a_rest_past_the_end_and_the_file_stays_as_it_was() {
    let ftp = FtpHost::start("").await;
    assert!(
        ftp.python("anonymous", "x", "rest-past-end")
            .contains("rest-past-end: ok")
    );
    assert_eq!(std::fs::read(ftp.root().join("hello.txt")).unwrap(), b"hello\n");
    assert!(!ftp.root().join("absent.txt").exists());
}

#[tokio::test]
async fn a_rest_past_the_end_moves_nothing_and_closes_the_waiting_data_connection() {
    let ftp = FtpHost::start("").await;
    let mut control = ftp.anonymous().await;
    for verb in ["RETR", "STOR", "APPE"] {
        // Clients connect to the passive port before they send the transfer command.
        let mut data = connect(epsv_port(&control.request("EPSV").await)).await;
        assert!(control.request("REST 7").await.starts_with("350 "));
        assert_eq!(
            control.request(&format!("{verb} hello.txt")).await,
            "554 Requested action not taken: invalid REST parameter."
        );
        assert!(
            closes_within(&mut data, Duration::from_secs(5)).await,
            "{verb}: the data connection is closed, not left waiting"
        );
    }
    assert_eq!(std::fs::read(ftp.root().join("hello.txt")).unwrap(), b"hello\n");
    assert!(
        control.request("NOOP").await.starts_with("200 "),
        "no transfer reply follows"
    );
}

#[tokio::test]
async fn pasv_announces_the_passive_address_and_login_comes_first() {
    let ftp = FtpHost::start(r#"passive_address = "192.0.2.7""#).await;
    let mut control = LineClient::connect(ftp.port).await;
    assert!(control.recv().await.starts_with("220 "));
    assert!(control.request("PASV").await.starts_with("530 "), "log in first");
    assert!(control.request("USER anonymous").await.starts_with("331 "));
    assert!(control.request("PASS guest").await.starts_with("230 "));
    let pasv = control.request("PASV").await;
    assert!(pasv.starts_with("227 ") && pasv.contains("(192,0,2,7,"), "{pasv}");
    let epsv = control.request("EPSV").await;
    assert!(epsv.starts_with("229 ") && epsv.ends_with("|)."), "{epsv}");
    assert!(
        control.request("PORT 127,0,0,1,4,1").await.starts_with("502 "),
        "active mode"
    );
    assert!(control.request("RETR").await.starts_with("501 "), "a path is required");
    assert!(control.request("DELE").await.starts_with("501 "), "a path is required");
    assert!(control.request("QUIT").await.starts_with("221 "));
    assert!(control.closes_within(Duration::from_secs(5)).await);
}

/// A control connection from `source` (any address of 127.0.0.0/8), greeted.
async fn control_from(port: u16, source: [u8; 4]) -> LineClient<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut control = LineClient::new(stream);
    assert!(control.recv().await.starts_with("220 "));
    control
}

/// One login attempt on a new connection from `source`: the PASS reply and how long it took.
async fn login(port: u16, source: [u8; 4], user: &str, password: &str) -> (String, Duration) {
    let mut control = control_from(port, source).await;
    assert!(control.request(&format!("USER {user}")).await.starts_with("331 "));
    let asked = std::time::Instant::now();
    let reply = control.request(&format!("PASS {password}")).await;
    (reply, asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_answered_ever_later_and_echoes_are_short() {
    let ftp = FtpHost::start(r#"anonymous = false, users = [{ name = "alice", password = "right" }]"#).await;
    // Each wrong password from an address waits longer before it is checked, even on a new
    // connection: 0, then 250 ms, then 500 ms.
    let source = [127, 0, 0, 2];
    let mut waits = Vec::new();
    for _ in 0..3 {
        let (reply, took) = login(ftp.port, source, "alice", "guess").await;
        assert!(reply.starts_with("530 "), "{reply}");
        waits.push(took);
    }
    assert!(waits[1] >= Duration::from_millis(200), "{waits:?}");
    assert!(waits[2] >= Duration::from_millis(450), "{waits:?}");
    // The user's failures slow it from another address too; a right password still logs in.
    let (reply, took) = login(ftp.port, [127, 0, 0, 3], "alice", "right").await;
    assert!(reply.starts_with("230 "), "{reply}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    // Someone else from a clean address is not slowed.
    let (reply, took) = login(ftp.port, [127, 0, 0, 4], "bob", "guess").await;
    assert!(
        reply.starts_with("530 ") && took < Duration::from_millis(200),
        "{reply} {took:?}"
    );

    // Arguments echoed back are cut short; a command line over 8 KiB closes the connection.
    let mut control = control_from(ftp.port, [127, 0, 0, 5]).await;
    let long = "x".repeat(8_000);
    let reply = control.request(&format!("USER {long}")).await;
    assert!(reply.starts_with("331 ") && reply.len() < 200, "{} bytes", reply.len());
    control.send(&format!("USER {}", "x".repeat(100_000))).await;
    assert!(control.closes_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_port_nobody_connects_to_is_free_again_after_the_accept_timeout() {
    a_passive_port_is_freed("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_port_of_an_agent_nobody_connects_to_is_free_again_after_the_accept_timeout() {
    a_passive_port_is_freed(r#"isolation = "process""#).await;
}

async fn a_passive_port_is_freed(top: &str) {
    let port = free_consecutive_ports(1);
    let ftp = FtpHost::start_with(top, &format!(r#"passive_ports = "{port}-{port}""#)).await;
    let mut holder = ftp.anonymous().await;
    let mut other = ftp.anonymous().await;
    // One session takes the only port and then does nothing with it.
    assert!(holder.request("EPSV").await.starts_with("229 "));
    let taken = std::time::Instant::now();
    assert!(other.request("EPSV").await.starts_with("425 "));
    // Ten seconds after the EPSV the port is free for another session, though the first one
    // stays and keeps talking.
    let freed = loop {
        assert!(holder.request("NOOP").await.starts_with("200 "));
        let reply = other.request("EPSV").await;
        if reply.starts_with("229 ") {
            break taken.elapsed();
        }
        assert!(reply.starts_with("425 "), "{reply}");
        assert!(taken.elapsed() < Duration::from_secs(20), "the port stayed taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(freed >= Duration::from_secs(9), "freed after {freed:?}");
    // The first session's transfer now finds no data connection.
    assert!(holder.request("LIST").await.starts_with("150 "));
    assert!(holder.recv().await.starts_with("425 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_passwords_guessed_from_many_addresses_at_once_are_checked_one_wait_apart() {
    guesses_are_spaced("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_agent_one_users_passwords_guessed_at_once_are_checked_one_wait_apart() {
    guesses_are_spaced(r#"isolation = "process""#).await;
}

async fn guesses_are_spaced(top: &str) {
    let users = r#"anonymous = false, users = [{ name = "alice", password = "right" }]"#;
    let ftp = FtpHost::start_with(top, users).await;
    let (reply, _) = login(ftp.port, [127, 0, 1, 1], "alice", "guess").await;
    assert!(reply.starts_with("530 "), "{reply}");
    // Twenty addresses guess at once: each waits a quarter of a second more than the one
    // before, however many they are.
    let guesses: Vec<_> = (0..20u8)
        .map(|n| tokio::spawn(login(ftp.port, [127, 0, 1, 10 + n], "alice", "guess")))
        .collect();
    let mut waits = Vec::new();
    for guess in guesses {
        let (reply, took) = guess.await.unwrap();
        assert!(reply.starts_with("530 "), "{reply}");
        waits.push(took);
    }
    waits.sort();
    for (n, wait) in waits.iter().enumerate() {
        assert!(*wait >= Duration::from_millis(250 * (n as u64 + 1) - 50), "{waits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_refused_for_a_full_queue_count_as_failures_of_their_connection() {
    let users = r#"anonymous = false, users = [{ name = "alice", password = "right" }]"#;
    let ftp = FtpHost::start(users).await;
    // 130 addresses each send a password for alice at once: the queue of her checks is full.
    let mut waiting = Vec::new();
    for n in 0..130u16 {
        let mut control = control_from(ftp.port, [127, 0, 2 + (n / 200) as u8, 1 + (n % 200) as u8]).await;
        assert!(control.request("USER alice").await.starts_with("331 "));
        control.send("PASS guess").await;
        waiting.push(control);
    }
    // Another connection is told to try later, at once; its third such attempt closes it, as
    // a third wrong password would.
    let mut control = control_from(ftp.port, [127, 0, 9, 1]).await;
    for _ in 0..2 {
        assert!(control.request("USER alice").await.starts_with("331 "));
        let asked = std::time::Instant::now();
        let reply = control.request("PASS guess").await;
        assert!(reply.starts_with("530 Too many login attempts"), "{reply}");
        assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    }
    assert!(control.request("USER alice").await.starts_with("331 "));
    control.send("PASS guess").await;
    assert!(control.closes_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epsv_all_refuses_pasv() {
    let ftp = FtpHost::start("").await;
    let mut control = ftp.anonymous().await;
    assert!(control.request("PASV").await.starts_with("227 "));
    assert!(control.request("EPSV ALL").await.starts_with("200 "));
    assert!(
        control.request("PASV").await.starts_with("503 "),
        "RFC 2428: only EPSV now"
    );
    assert!(control.request("EPSV").await.starts_with("229 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_goes_up_and_down_intact_in_flat_memory() {
    let ftp = FtpHost::start("").await;
    let local = ftp.host.scratch.path().join("big.bin");
    std::fs::write(&local, pattern(100 << 20)).unwrap();
    let (rss_before, _) = ftp.host.rss_kib();

    curl_ok(&["-T", local.to_str().unwrap(), &ftp.url("big.bin")]);
    let back = ftp.host.scratch.path().join("back.bin");
    curl_ok(&["-o", back.to_str().unwrap(), &ftp.url("big.bin")]);

    let server = ftp.host.server("FTPServer").await;
    let moved = |key: &str| server[key].as_u64().unwrap_or(0);
    assert!(
        moved("bytes_in") >= 100 << 20 && moved("bytes_out") >= 100 << 20,
        "data connections count in the instance's bytes: {server}"
    );
    let expected = checksum(&local);
    assert_eq!(checksum(&ftp.root().join("big.bin")), expected, "upload intact");
    assert_eq!(checksum(&back), expected, "download intact");
    let (_, peak) = ftp.host.rss_kib();
    assert!(
        peak < rss_before + 8 * 1024,
        "200 MiB moved; host RSS {rss_before} KiB before, peak {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_ends_a_transfer_and_the_control_connection_goes_on() {
    let ftp = FtpHost::start("").await;
    std::fs::write(ftp.root().join("big.bin"), pattern(64 << 20)).unwrap();
    assert!(ftp.python("anonymous", "x", "abort").contains("abort: ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_instance_ends_a_transfer_and_start_brings_it_all_back() {
    let ftp = FtpHost::start("").await;
    // Slow enough to be under way at the stop, fast enough that what the client's socket
    // buffers still hold (a few MiB) drains quickly once the data connection closes.
    std::fs::write(ftp.root().join("slow.bin"), pattern(100 << 20)).unwrap();
    let partial = ftp.host.scratch.path().join("partial.bin");
    // Killed if the test fails before it ends.
    let mut download = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "--limit-rate", "10M", "-o"])
        .arg(&partial)
        .arg(ftp.url("slow.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs (scripts/test installs it)");
    ftp.host
        .wait_server("FTPServer", Duration::from_secs(10), |s| {
            s["bytes_out"].as_u64() > Some(100_000)
        })
        .await;
    // Another client waits with a passive listener open.
    let mut idle = LineClient::connect(ftp.port).await;
    idle.recv().await;
    idle.request("USER anonymous").await;
    idle.request("PASS x").await;
    let data_port = epsv_port(&idle.request("EPSV").await);
    let idle_closed = tokio::spawn(async move { idle.closes_within(Duration::from_secs(20)).await });

    let stop = ftp.host.ctl(&["stop", "FTPServer"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    let status = tokio::time::timeout(Duration::from_secs(20), download.wait())
        .await
        .expect("curl still running after the stop")
        .unwrap();
    assert!(!status.success(), "the transfer must end with the instance");
    assert!(std::fs::metadata(&partial).unwrap().len() < 100 << 20);
    assert!(curl(&["--max-time", "5", &ftp.url("")]).status.code() != Some(0));
    assert!(
        idle_closed.await.unwrap(),
        "the idle control connection closed with the instance"
    );
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", data_port)).await;
    assert!(refused.is_err(), "the passive listener closed with the instance");

    let start = ftp.host.ctl(&["start", "FTPServer"]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    let port = ftp.host.port("FTPServer", 0).await;
    let again = curl_ok(&[&format!("ftp://127.0.0.1:{port}/hello.txt")]);
    assert_eq!(again, b"hello\n");
}
