//! `sd_notify` in a few lines: one datagram of `KEY=VALUE` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). `READY=1` once the host
//! serves, `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) and `READY=1`
//! around a reload, `STOPPING=1` when the shutdown begins, and `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC` from a task of the host's runtime (so a runtime that stalls stops
//! petting). Failures to notify are logged once at debug level and change nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::debug!("cannot notify systemd at {path:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// `READY=1`, with a status line.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// `RELOADING=1`, stamped with the monotonic clock as systemd asks.
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS=reloading the config"
    ));
}

/// `STOPPING=1`.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

/// The watchdog period systemd asks for this process, if any (`$WATCHDOG_USEC`, and
/// `$WATCHDOG_PID` naming this process when set).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pets the watchdog at half its period, on the current runtime, for the life of the process.
pub fn keep_watchdog() {
    let Some(period) = watchdog_period() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period / 2);
        loop {
            ticks.tick().await;
            notify("WATCHDOG=1");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("ss-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ss-notify-{}", std::process::id());
        let abstract_listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
