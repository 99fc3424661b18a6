//! Checks that span servers or touch the file system: unique names, known types and their
//! options, listeners that would collide, readable TLS material.

use std::collections::HashMap;
use std::net::IpAddr;

use super::schema::{Draft, Spots};
use super::{ConfigError, ServerConfig, TlsConfig, TypeCatalog};

/// Every cross-server problem of the draft.
pub(super) fn check(draft: &Draft, types: &dyn TypeCatalog) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |server: &ServerConfig, spots: &Spots, key: &str, line: Option<usize>, message: String| {
        errors.push(ConfigError {
            file: String::new(),
            line,
            server: Some(server.name.clone()),
            key: Some(format!("{}.{key}", spots.path)),
            message,
        });
    };

    let mut names: HashMap<&str, &Spots> = HashMap::new();
    for (server, spots) in &draft.servers {
        if let Some(first) = names.insert(&server.name, spots) {
            let message = format!("duplicate server name (also used by {})", first.path);
            push(server, spots, "name", spots.name, message);
        }
    }

    for (server, spots) in &draft.servers {
        if !types.contains(&server.server_type) {
            let message = format!("unknown server type {:?}", server.server_type);
            push(server, spots, "type", spots.server_type, message);
        } else if let Err(message) = types.check_options(server) {
            push(server, spots, "options", spots.options.or(spots.server_type), message);
        }
        if let Some(TlsConfig::Files { cert, key }) = &server.tls
            && let Err(message) = super::tls::check_files(cert, key)
        {
            push(server, spots, "tls", spots.tls, message);
        }
    }

    // Two listeners on one port collide when their addresses overlap (a wildcard covers every
    // address of its family; `::` is bound v6-only, so it does not cover IPv4).
    let mut seen: Vec<(IpAddr, u16, &str)> = Vec::new();
    for (server, spots) in &draft.servers {
        for (index, listener) in server.listeners.iter().enumerate() {
            if listener.port == 0 {
                continue;
            }
            let clash = seen
                .iter()
                .find(|(ip, port, _)| *port == listener.port && overlaps(*ip, listener.ip));
            if let Some((ip, port, other)) = clash {
                let message = format!(
                    "{}:{} overlaps {ip}:{port} of server {other:?}",
                    listener.ip, listener.port
                );
                let line = spots.listeners.get(index).copied().flatten();
                push(server, spots, &format!("listeners[{index}]"), line, message);
            }
            seen.push((listener.ip, listener.port, &server.name));
        }
    }
    errors
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
}
