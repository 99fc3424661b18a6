//! The config as JSON in the file's own schema (SPEC §3), for `GET /api/v1/config`: every key
//! written out with its effective value, relative paths as the file gave them, and secrets
//! replaced by [`MASK`].

use std::path::Path;

use serde_json::{Map, Value, json};

use super::{AdminConfig, Config, Isolation, ListenerConfig, RestartPolicy, ServerConfig, TlsConfig, format_duration};

/// What a secret shows as; written back unchanged, it stands for the secret already in the file.
pub const MASK: &str = "***";

/// The whole config, secrets masked.
pub fn config(config: &Config) -> Value {
    json!({
        "isolation": config.isolation.as_str(),
        "shutdown_timeout": format_duration(config.shutdown_timeout),
        "admin": admin(&config.admin),
        "servers": config.servers.iter().map(server).collect::<Vec<_>>(),
    })
}

fn admin(admin: &AdminConfig) -> Value {
    let mut out = Map::new();
    out.insert("listen".into(), admin.listen.to_string().into());
    if admin.token.is_some() {
        out.insert("token".into(), MASK.into());
    }
    if !admin.tokens.is_empty() {
        let tokens = admin
            .tokens
            .iter()
            .map(|t| json!({ "name": t.name, "token": MASK, "role": t.role.as_str() }));
        out.insert("tokens".into(), tokens.collect());
    }
    out.insert("max_connections".into(), admin.limits.max_connections.into());
    out.insert(
        "header_timeout".into(),
        format_duration(admin.limits.header_timeout).into(),
    );
    out.insert("idle_timeout".into(), format_duration(admin.limits.idle_timeout).into());
    Value::Object(out)
}

/// One server with every key, secrets of its `options` masked.
pub fn server(server: &ServerConfig) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    put("name", server.name.clone().into());
    put("type", server.server_type.clone().into());
    put("autostart", server.autostart.into());
    put("isolation", server.isolation.as_str().into());
    if let Some(threads) = server.threads {
        put("threads", threads.into());
    }
    put(
        "listeners",
        server.listeners.iter().map(listener).collect::<Vec<_>>().into(),
    );
    put("port_fallback", server.port_fallback.into());
    put("max_connections", server.max_connections.into());
    put("max_package_length", server.max_package_length.into());
    put(
        "idle_timeout",
        format_duration(server.idle_timeout.unwrap_or_default()).into(),
    );
    put("send_queue", server.send_queue.into());
    put("send_queue_bytes", server.send_queue_bytes.into());
    if let Some(tls) = &server.tls {
        put("tls", self::tls(tls, &server.base_dir));
    }
    let restart = &server.restart;
    put(
        "restart",
        json!({
            "policy": match restart.policy {
                RestartPolicy::Always => "always",
                RestartPolicy::OnFailure => "on-failure",
                RestartPolicy::Never => "never",
            },
            "max_retries": restart.max_retries,
            "backoff": format_duration(restart.backoff),
            "max_backoff": format_duration(restart.max_backoff),
        }),
    );
    if let Some(advertise) = &server.advertise {
        put("advertise", advertise.clone().into());
    }
    put("options", masked(&server.options));
    put("labels", json!(server.labels));
    Value::Object(out)
}

/// A server's keys with their default values, as [`server`] writes them: those a change need
/// not write into a file that leaves them out. `isolation` is the file's root one.
pub fn server_defaults(isolation: Isolation) -> Value {
    let mut defaults = ServerConfig {
        isolation,
        ..ServerConfig::default()
    };
    if isolation == Isolation::Runtime {
        defaults.threads = Some(1);
    }
    server(&defaults)
}

fn listener(listener: &ListenerConfig) -> Value {
    match &listener.fd_name {
        Some(name) => json!({ "fd_name": name }),
        None => json!({ "ip": listener.ip.to_string(), "port": listener.port, "backlog": listener.backlog }),
    }
}

fn tls(tls: &TlsConfig, base_dir: &Path) -> Value {
    // As the file gave them: relative to the file's folder.
    let relative = |path: &Path| path.strip_prefix(base_dir).unwrap_or(path).display().to_string();
    match tls {
        TlsConfig::SelfSigned => json!({ "self_signed": true }),
        TlsConfig::Files { cert, key } => json!({ "cert": relative(cert), "key": relative(key) }),
    }
}

/// Words that, ending a key of type-specific options (in any case, any spelling around them:
/// `password`, `db_passwords`, `api_key`, `apiKey`, `dsn`), make its value a secret.
const SECRET_WORDS: [&str; 9] = [
    "password",
    "passwd",
    "secret",
    "token",
    "passphrase",
    "key",
    "credential",
    "dsn",
    "auth",
];

/// Whether a key of type-specific options holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let key = key.trim_end_matches('s');
    SECRET_WORDS.iter().any(|word| key.ends_with(word))
}

/// `options` with every secret (at any depth) masked: the whole value of a secret key, be it
/// text, a list or a table.
fn masked(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = if is_secret_key(key) { MASK.into() } else { masked(value) };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let options = json!({
            "root": "ftp", "users": [{ "name": "a", "password": "p" }], "api_token": "t",
            "api_key": "k", "db_passwords": ["x"], "secret": { "value": "deep" }, "dsn": "postgres://u:pw@h",
        });
        let shown = masked(&options);
        assert_eq!(shown["users"][0]["password"], MASK);
        assert_eq!(shown["users"][0]["name"], "a");
        for key in ["api_token", "api_key", "db_passwords", "secret", "dsn"] {
            assert_eq!(shown[key], MASK, "{key}");
        }
        assert_eq!(shown["root"], "ftp");
    }
}
