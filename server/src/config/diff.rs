//! What differs between two configs of one server, key by key, and which differences a running
//! instance can take without closing a session.

use super::ServerConfig;

/// One top-level key of a server's config that differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The key, as the file spells it.
    pub key: &'static str,
    /// Whether a running instance takes it live: limits, restart policy, labels, autostart,
    /// `advertise` and listeners (bound anew beside the old ones, which then close while their
    /// sessions stay). Everything else (type, isolation, threads, TLS, options) needs a restart.
    pub live: bool,
}

/// The keys whose values differ between `old` and `new`, in the file's order.
pub fn changes(old: &ServerConfig, new: &ServerConfig) -> Vec<Change> {
    // Every field is listed, so that a new one is a compile error here until it is classified.
    let ServerConfig {
        name: _,
        server_type,
        autostart,
        isolation,
        threads,
        listeners,
        port_fallback,
        max_connections,
        max_package_length,
        idle_timeout,
        send_queue,
        send_queue_bytes,
        tls,
        restart,
        advertise,
        options,
        labels,
        base_dir,
    } = new;
    let restart_keys = [
        ("type", old.server_type != *server_type),
        ("isolation", old.isolation != *isolation),
        ("threads", old.threads != *threads),
        ("tls", old.tls != *tls),
        ("options", old.options != *options || old.base_dir != *base_dir),
    ];
    let live_keys = [
        ("autostart", old.autostart != *autostart),
        ("listeners", old.listeners != *listeners),
        ("port_fallback", old.port_fallback != *port_fallback),
        ("max_connections", old.max_connections != *max_connections),
        ("max_package_length", old.max_package_length != *max_package_length),
        ("idle_timeout", old.idle_timeout != *idle_timeout),
        ("send_queue", old.send_queue != *send_queue),
        ("send_queue_bytes", old.send_queue_bytes != *send_queue_bytes),
        ("restart", old.restart != *restart),
        ("advertise", old.advertise != *advertise),
        ("labels", old.labels != *labels),
    ];
    let restart = restart_keys.into_iter().map(|(key, differs)| (key, differs, false));
    let live = live_keys.iter().map(|&(key, differs)| (key, differs, true));
    restart
        .chain(live)
        .filter(|(_, differs, _)| *differs)
        .map(|(key, _, live)| Change { key, live })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Isolation, ListenerConfig};

    #[test]
    fn limits_are_live_and_the_type_is_not() {
        let old = ServerConfig::default();
        let mut new = old.clone();
        assert!(changes(&old, &new).is_empty());
        new.max_connections = 5;
        new.idle_timeout = Some(Duration::from_secs(1));
        let found = changes(&old, &new);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|c| c.live));
        new.isolation = Isolation::Process;
        let found = changes(&old, &new);
        assert_eq!(
            found[0],
            Change {
                key: "isolation",
                live: false
            }
        );
    }

    #[test]
    fn listeners_move_live_under_every_isolation() {
        let old = ServerConfig::default();
        let mut new = old.clone();
        new.listeners.push(ListenerConfig {
            ip: [127, 0, 0, 1].into(),
            port: 0,
            backlog: 1,
            fd_name: None,
        });
        let live = |live| vec![Change { key: "listeners", live }];
        assert_eq!(changes(&old, &new), live(true));
        let old = ServerConfig {
            isolation: Isolation::Process,
            ..old
        };
        new.isolation = Isolation::Process;
        assert_eq!(changes(&old, &new), live(true));
    }
}
