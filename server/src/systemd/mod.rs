//! What systemd gives a service and expects of it, without linking libsystemd: readiness and
//! watchdog notifications on `$NOTIFY_SOCKET` ([`notify`]), and listening sockets passed by
//! socket activation ([`activation`]). Outside systemd both do nothing.

pub mod activation;
pub mod notify;

/// The variables of both, which an agent process must not take for its own.
pub(crate) const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];
