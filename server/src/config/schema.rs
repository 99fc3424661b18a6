//! The schema walk: turns the value tree into config types, collecting every problem (wrong
//! kinds, values out of range, unknown keys) with its key path, server and line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::node::{Node, Value};
use super::{
    AdminAddr, AdminConfig, AdminLimits, Config, ConfigError, ConfigSource, Isolation, ListenerConfig, NamedToken,
    RestartConfig, RestartPolicy, Role, ServerConfig, TlsConfig, parse_duration,
};

/// Lines of the keys that cross-server validation reports on.
#[derive(Debug, Clone, Default)]
pub(super) struct Spots {
    pub path: String,
    pub name: Option<usize>,
    pub server_type: Option<usize>,
    pub listeners: Vec<Option<usize>>,
    pub tls: Option<usize>,
    pub options: Option<usize>,
}

/// The config as read, each server with the lines of its keys.
pub(super) struct Draft {
    pub source: ConfigSource,
    pub isolation: Isolation,
    pub shutdown_timeout: Duration,
    pub admin: AdminConfig,
    pub admin_line: Option<usize>,
    pub servers: Vec<(ServerConfig, Spots)>,
}

impl Draft {
    pub fn into_config(self) -> Config {
        Config {
            source: self.source,
            isolation: self.isolation,
            shutdown_timeout: self.shutdown_timeout,
            admin: self.admin,
            servers: self.servers.into_iter().map(|(server, _)| server).collect(),
        }
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:2020";
const ROOT_KEYS: &str = "isolation, shutdown_timeout, admin, servers";

/// Reads the tree; the draft holds every server that had a usable name and type.
pub(super) fn read(root: &Node, source: ConfigSource) -> (Draft, Vec<ConfigError>) {
    let mut errs = Errors::default();
    let base_dir = source.base_dir();
    let mut draft = Draft {
        source,
        isolation: Isolation::None,
        shutdown_timeout: Duration::from_secs(10),
        admin: AdminConfig {
            listen: AdminAddr::parse(DEFAULT_ADMIN).expect("default admin address parses"),
            token: None,
            tokens: Vec::new(),
            limits: AdminLimits::default(),
        },
        admin_line: None,
        servers: Vec::new(),
    };
    let Some(mut table) = Table::open(root, String::new(), &mut errs) else {
        return (draft, errs.list);
    };
    let isolation = table
        .take("isolation")
        .and_then(|field| isolation(&field, &mut errs))
        .unwrap_or_default();
    draft.isolation = isolation;
    if let Some(field) = table.take("shutdown_timeout") {
        draft.shutdown_timeout = duration(&field, &mut errs).unwrap_or(draft.shutdown_timeout);
    }
    if let Some(field) = table.take("admin") {
        draft.admin_line = field.node.line;
        read_admin(&field, &base_dir, &mut draft.admin, &mut errs);
    }
    if let Some(field) = table.take("servers")
        && let Some(items) = field.array(&mut errs)
    {
        for (index, item) in items.iter().enumerate() {
            let path = format!("servers[{index}]");
            if let Some(read) = read_server(item, path, isolation, &base_dir, &mut errs) {
                draft.servers.extend(read);
            }
        }
    }
    table.finish(ROOT_KEYS, &mut errs);
    (draft, errs.list)
}

fn read_admin(field: &Field<'_>, base_dir: &std::path::Path, admin: &mut AdminConfig, errs: &mut Errors) {
    let Some(mut table) = Table::open(field.node, field.path.clone(), errs) else {
        return;
    };
    if let Some(field) = table.take("listen")
        && let Some(text) = field.string(errs)
    {
        match AdminAddr::parse(&text) {
            Ok(addr) => admin.listen = addr,
            Err(message) => errs.at(&field, message),
        }
    }
    admin.token = read_token(&mut table, base_dir, false, errs);
    if let Some(field) = table.take("tokens") {
        for (index, item) in field.array(errs).unwrap_or_default().iter().enumerate() {
            let path = format!("{}[{index}]", field.path);
            if let Some(named) = read_named_token(item, path, base_dir, errs) {
                if admin.tokens.iter().any(|t| t.name == named.name) {
                    errs.at_line(
                        field.path.clone(),
                        item.line,
                        format!("a second token named {:?}", named.name),
                    );
                } else if admin.tokens.iter().any(|t| t.token == named.token)
                    || admin.token.as_ref() == Some(&named.token)
                {
                    errs.at_line(
                        field.path.clone(),
                        item.line,
                        format!("token {:?} is the same secret as another", named.name),
                    );
                } else {
                    admin.tokens.push(named);
                }
            }
        }
    }
    let limits = &mut admin.limits;
    if let Some(field) = table.take("max_connections")
        && let Some(n) = field.integer(1, 100_000, errs)
    {
        limits.max_connections = n as usize;
    }
    for (key, slot) in [
        ("header_timeout", &mut limits.header_timeout),
        ("idle_timeout", &mut limits.idle_timeout),
    ] {
        if let Some(field) = table.take(key)
            && let Some(bound) = duration(&field, errs)
        {
            if bound.is_zero() {
                errs.at(&field, format!("`{key}` must be above zero"));
            } else {
                *slot = bound;
            }
        }
    }
    table.finish(
        "listen, token, token_file, tokens, max_connections, header_timeout, idle_timeout",
        errs,
    );
}

/// A secret given as `token` or as `token_file` (read from the file, trimmed); an error if it is
/// `required` and neither is there.
fn read_token(table: &mut Table<'_>, base_dir: &std::path::Path, required: bool, errs: &mut Errors) -> Option<String> {
    let (field, text) = match (table.take("token"), table.take("token_file")) {
        (Some(_), Some(file)) => {
            errs.at(&file, "set either `token` or `token_file`, not both".into());
            return None;
        }
        (Some(field), None) => {
            let text = field.string(errs)?;
            (field, text)
        }
        (None, Some(field)) => {
            let path = field.string(errs)?;
            match std::fs::read_to_string(base_dir.join(&path)) {
                Ok(text) => (field, text.trim().to_owned()),
                Err(e) => {
                    errs.at(&field, format!("cannot read token file {path:?}: {e}"));
                    return None;
                }
            }
        }
        (None, None) => {
            if required {
                errs.at_line(
                    table.path.clone(),
                    table.line,
                    "token has no `token` or `token_file`".into(),
                );
            }
            return None;
        }
    };
    if text.is_empty() {
        errs.at(&field, "the admin token is empty".into());
        return None;
    }
    if !visible_ascii(&text) {
        errs.at(
            &field,
            "the admin token has a space, a control or a non-ASCII character (a bearer token is visible ASCII)".into(),
        );
        return None;
    }
    Some(text)
}

/// Whether `text` is all visible ASCII, as a bearer token must be to be sent.
pub(crate) fn visible_ascii(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// Token names the log gives to callers without a named token: `admin` (the single `token`)
/// and `-` (no token set).
const RESERVED_TOKEN_NAMES: [&str; 2] = ["admin", "-"];

/// One of `[admin] tokens`: `{ name, token | token_file, role }`.
fn read_named_token(node: &Node, path: String, base_dir: &std::path::Path, errs: &mut Errors) -> Option<NamedToken> {
    let mut table = Table::open(node, path, errs)?;
    let name = match table.take("name") {
        Some(field) => field.string(errs).filter(|name| {
            let fits = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            let reserved = RESERVED_TOKEN_NAMES.contains(&name.as_str());
            if !fits {
                errs.at(
                    &field,
                    format!("token name {name:?} is not letters, digits, '-', '_' or '.'"),
                );
            } else if reserved {
                errs.at(
                    &field,
                    format!("token name {name:?} is what the log calls the single `token` or no token; choose another"),
                );
            }
            fits && !reserved
        }),
        None => {
            errs.at_line(table.path.clone(), table.line, "token has no `name`".into());
            None
        }
    };
    let token = read_token(&mut table, base_dir, true, errs);
    let role = match table.take("role") {
        Some(field) => field.string(errs).and_then(|text| {
            let role = Role::parse(&text);
            if role.is_none() {
                errs.at(
                    &field,
                    format!("role {text:?} is not \"read\", \"operate\" or \"admin\""),
                );
            }
            role
        }),
        None => {
            errs.at_line(table.path.clone(), table.line, "token has no `role`".into());
            None
        }
    };
    table.finish("name, token, token_file, role", errs);
    Some(NamedToken {
        name: name?,
        token: token?,
        role: role?,
    })
}

/// Listeners a server may have: each is a socket and an accept loop.
const MAX_LISTENERS: usize = 64;

const SERVER_KEYS: &str = "name, type, autostart, isolation, threads, replicas, listeners, port_fallback, \
    max_connections, max_package_length, idle_timeout, send_queue, send_queue_bytes, tls, restart, advertise, options, \
    labels";

fn read_server(
    node: &Node,
    path: String,
    root_isolation: Isolation,
    base_dir: &std::path::Path,
    errs: &mut Errors,
) -> Option<Vec<(ServerConfig, Spots)>> {
    let mut table = Table::open(node, path.clone(), errs)?;
    let mut spots = Spots {
        path,
        ..Spots::default()
    };
    // Read the name first so that every later error of this server carries it.
    let name_field = table.take("name");
    let name = match &name_field {
        Some(field) => field.string(errs).filter(|name| valid_name(name, field, errs)),
        None => {
            errs.at_line(table.path.clone(), table.line, "server has no `name`".into());
            None
        }
    };
    spots.name = name_field.as_ref().and_then(|f| f.node.line);
    errs.server.clone_from(&name);

    let server_type = match table.take("type") {
        Some(field) => {
            spots.server_type = field.node.line;
            field.string(errs)
        }
        None => {
            errs.at_line(table.path.clone(), table.line, "server has no `type`".into());
            None
        }
    };
    let mut server = ServerConfig {
        name: name.clone().unwrap_or_default(),
        server_type: server_type.clone().unwrap_or_default(),
        isolation: root_isolation,
        base_dir: base_dir.to_path_buf(),
        ..ServerConfig::default()
    };
    if let Some(f) = table.take("autostart") {
        server.autostart = f.boolean(errs).unwrap_or(true);
    }
    if let Some(f) = table.take("isolation") {
        server.isolation = isolation(&f, errs).unwrap_or(root_isolation);
    }
    if let Some(f) = table.take("threads") {
        server.threads = f.integer(1, 1024, errs).map(|n| n as usize);
    }
    if server.isolation == Isolation::Runtime {
        // Unset and its default are one config: a reload must not restart the instance for it.
        server.threads.get_or_insert(1);
    }
    let replicas = table
        .take("replicas")
        .and_then(|f| f.integer(1, 1000, errs))
        .unwrap_or(0);
    if let Some(f) = table.take("listeners") {
        let items = f.array(errs).unwrap_or_default();
        if items.len() > MAX_LISTENERS {
            errs.at(
                &f,
                format!("{} listeners; a server has at most {MAX_LISTENERS}", items.len()),
            );
        }
        for (index, item) in items.iter().enumerate().take(MAX_LISTENERS) {
            spots.listeners.push(item.line);
            if let Some(listener) = read_listener(item, format!("{}[{index}]", f.path), errs) {
                server.listeners.push(listener);
            }
        }
    }
    if let Some(f) = table.take("port_fallback") {
        server.port_fallback = f.integer(0, 1000, errs).unwrap_or(0) as u16;
    }
    if let Some(f) = table.take("max_connections") {
        server.max_connections = f.integer(1, 10_000_000, errs).unwrap_or(1) as usize;
    }
    if let Some(f) = table.take("max_package_length") {
        server.max_package_length = f.integer(1, 1 << 30, errs).unwrap_or(1) as usize;
    }
    if let Some(f) = table.take("idle_timeout") {
        server.idle_timeout = duration(&f, errs).filter(|d| !d.is_zero());
    }
    if let Some(f) = table.take("send_queue") {
        server.send_queue = f.integer(1, 1_000_000, errs).unwrap_or(1) as usize;
    }
    if let Some(f) = table.take("send_queue_bytes") {
        server.send_queue_bytes = f.integer(1, 1 << 30, errs).unwrap_or(1) as usize;
    }
    if let Some(f) = table.take("tls") {
        spots.tls = f.node.line;
        server.tls = read_tls(&f, base_dir, errs);
    }
    if let Some(f) = table.take("restart") {
        server.restart = read_restart(&f, errs);
    }
    if let Some(f) = table.take("advertise") {
        server.advertise = f.string(errs);
    }
    if let Some(f) = table.take("options") {
        spots.options = f.node.line;
        if matches!(f.node.value, Value::Table(_)) {
            server.options = f.node.to_json();
        } else {
            errs.at(&f, format!("expected a table, found {}", f.node.kind()));
        }
    }
    if let Some(f) = table.take("labels") {
        server.labels = read_labels(&f, errs);
    }
    table.finish(SERVER_KEYS, errs);
    errs.server = None;
    // A server without a usable name or type is reported above and left out of cross-checks.
    name.and(server_type)?;
    Some(expand_replicas(server, spots, replicas))
}

/// `replicas = N` becomes `name-1..N` on ports `port+0..port+N-1` (pomelo's clusterCount).
fn expand_replicas(server: ServerConfig, spots: Spots, replicas: i64) -> Vec<(ServerConfig, Spots)> {
    if replicas == 0 {
        return vec![(server, spots)];
    }
    (0..replicas as u16)
        .map(|i| {
            let mut replica = server.clone();
            replica.name = format!("{}-{}", server.name, i + 1);
            for listener in &mut replica.listeners {
                if listener.port != 0 {
                    listener.port = listener.port.saturating_add(i);
                }
            }
            (replica, spots.clone())
        })
        .collect()
}

/// `labels = { key = "value" }`: keys of letters, digits, `_ . - /`, string values.
fn read_labels(field: &Field<'_>, errs: &mut Errors) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let Value::Table(entries) = &field.node.value else {
        errs.at(field, format!("expected a table, found {}", field.node.kind()));
        return labels;
    };
    for (key, node) in entries {
        let entry = Field {
            node,
            path: format!("{}.{key}", field.path),
        };
        let fits = !key.is_empty()
            && key.len() <= 63
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
        if !fits {
            errs.at(
                &entry,
                format!("label {key:?} must be 1-63 characters of A-Z a-z 0-9 _ . - /"),
            );
        } else if let Some(value) = entry.string(errs) {
            labels.insert(key.clone(), value);
        }
    }
    labels
}

fn valid_name(name: &str, field: &Field<'_>, errs: &mut Errors) -> bool {
    // `.` and `..` would be path segments no HTTP client sends as they are.
    let ok = !matches!(name, "." | "..")
        && !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        errs.at(
            field,
            format!("server name {name:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"),
        );
    }
    ok
}

fn read_listener(node: &Node, path: String, errs: &mut Errors) -> Option<ListenerConfig> {
    let mut table = Table::open(node, path, errs)?;
    if let Some(field) = table.take("fd_name") {
        return read_passed_listener(table, field, errs);
    }
    let ip = match table.take("ip") {
        Some(f) => f.string(errs).and_then(|text| match parse_ip(&text) {
            Some(ip) => Some(ip),
            None => {
                errs.at(
                    &f,
                    format!("{text:?} is not \"Any\", \"IPv6Any\", \"Loopback\" or an IP address"),
                );
                None
            }
        }),
        None => Some(IpAddr::from([0, 0, 0, 0])),
    };
    let port = match table.take("port") {
        Some(f) => f.integer(0, 65535, errs).map(|p| p as u16),
        None => {
            errs.at_line(
                table.path.clone(),
                table.line,
                "listener has no `port` (or `fd_name`, for a socket systemd passes)".into(),
            );
            None
        }
    };
    let backlog = table
        .take("backlog")
        .map_or(Some(1024), |f| f.integer(1, 65535, errs).map(|b| b as u32));
    table.finish("ip, port, backlog, fd_name", errs);
    Some(ListenerConfig {
        ip: ip?,
        port: port?,
        backlog: backlog?,
        fd_name: None,
    })
}

/// `{ fd_name = "web" }`: a socket systemd passed, which must be there (its address is the
/// listener's); nothing else may be given beside it.
fn read_passed_listener(table: Table<'_>, field: Field<'_>, errs: &mut Errors) -> Option<ListenerConfig> {
    let name = field.string(errs)?;
    table.finish(
        "fd_name (alone: the passed socket has its own address and backlog)",
        errs,
    );
    let Some(addr) = crate::systemd::activation::local_addr(&name) else {
        let passed = crate::systemd::activation::names();
        let passed = if passed.is_empty() {
            "none was passed (LISTEN_FDS)".to_owned()
        } else {
            format!("passed: {}", passed.join(", "))
        };
        errs.at(
            &field,
            format!("no socket named {name:?} was passed by systemd ({passed})"),
        );
        return None;
    };
    Some(ListenerConfig {
        ip: addr.ip(),
        port: addr.port(),
        backlog: 0,
        fd_name: Some(name),
    })
}

/// `Any`, `IPv6Any`, `Loopback`, `IPv6Loopback` (any case) or a literal address.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.to_ascii_lowercase().as_str() {
        "any" => Some(IpAddr::from([0, 0, 0, 0])),
        "ipv6any" => Some(IpAddr::from([0u16; 8])),
        "loopback" => Some(IpAddr::from([127, 0, 0, 1])),
        "ipv6loopback" => Some(IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16])),
        _ => text.trim_matches(|c| c == '[' || c == ']').parse().ok(),
    }
}

fn read_tls(field: &Field<'_>, base_dir: &std::path::Path, errs: &mut Errors) -> Option<TlsConfig> {
    let mut table = Table::open(field.node, field.path.clone(), errs)?;
    let self_signed = table.take("self_signed");
    let cert = table.take("cert");
    let key = table.take("key");
    let result = match (self_signed, cert, key) {
        (Some(flag), None, None) => match flag.boolean(errs) {
            Some(true) => Some(TlsConfig::SelfSigned),
            Some(false) => {
                errs.at(&flag, "`self_signed = false` needs `cert` and `key` instead".into());
                None
            }
            None => None,
        },
        (None, Some(cert), Some(key)) => {
            let cert = cert.string(errs).map(|p| base_dir.join(p));
            let key = key.string(errs).map(|p| base_dir.join(p));
            Some(TlsConfig::Files { cert: cert?, key: key? })
        }
        (Some(flag), _, _) => {
            errs.at(
                &flag,
                "use either `self_signed = true` or `cert` and `key`, not both".into(),
            );
            None
        }
        (None, cert, _) => {
            let missing = if cert.is_none() { "cert" } else { "key" };
            errs.at(
                field,
                format!("tls needs both `cert` and `key` (missing `{missing}`), or `self_signed = true`"),
            );
            None
        }
    };
    table.finish("cert, key, self_signed", errs);
    result
}

fn read_restart(field: &Field<'_>, errs: &mut Errors) -> RestartConfig {
    let mut restart = RestartConfig::default();
    let Some(mut table) = Table::open(field.node, field.path.clone(), errs) else {
        return restart;
    };
    if let Some(f) = table.take("policy") {
        restart.policy = match f.string(errs).as_deref() {
            Some("always") => RestartPolicy::Always,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("never") => RestartPolicy::Never,
            Some(other) => {
                errs.at(
                    &f,
                    format!("unknown policy {other:?} (use \"always\", \"on-failure\" or \"never\")"),
                );
                restart.policy
            }
            None => restart.policy,
        };
    }
    if let Some(f) = table.take("max_retries") {
        restart.max_retries = f.integer(0, 1_000_000, errs).unwrap_or(5) as u32;
    }
    if let Some(f) = table.take("backoff") {
        restart.backoff = duration(&f, errs).unwrap_or(restart.backoff);
    }
    if let Some(f) = table.take("max_backoff") {
        restart.max_backoff = duration(&f, errs).unwrap_or(restart.max_backoff);
    }
    if restart.max_backoff < restart.backoff {
        errs.at(field, "`max_backoff` is shorter than `backoff`".into());
    }
    table.finish("policy, max_retries, backoff, max_backoff", errs);
    restart
}

fn isolation(field: &Field<'_>, errs: &mut Errors) -> Option<Isolation> {
    match field.string(errs)?.as_str() {
        "none" => Some(Isolation::None),
        "runtime" => Some(Isolation::Runtime),
        "process" => Some(Isolation::Process),
        other => {
            errs.at(
                field,
                format!("unknown isolation {other:?} (use \"none\", \"runtime\" or \"process\")"),
            );
            None
        }
    }
}

fn duration(field: &Field<'_>, errs: &mut Errors) -> Option<Duration> {
    let text = field.string(errs)?;
    parse_duration(&text).map_err(|message| errs.at(field, message)).ok()
}

/// Collects errors; knows the server being read so that each error names it.
#[derive(Default)]
struct Errors {
    list: Vec<ConfigError>,
    server: Option<String>,
}

impl Errors {
    fn at(&mut self, field: &Field<'_>, message: String) {
        self.at_line(field.path.clone(), field.node.line, message);
    }

    fn at_line(&mut self, key: String, line: Option<usize>, message: String) {
        self.list.push(ConfigError {
            file: String::new(),
            line,
            server: self.server.clone(),
            key: Some(key).filter(|k| !k.is_empty()),
            message,
        });
    }
}

/// A value and its key path.
struct Field<'n> {
    node: &'n Node,
    path: String,
}

impl<'n> Field<'n> {
    fn string(&self, errs: &mut Errors) -> Option<String> {
        match &self.node.value {
            Value::Str(s) => Some(s.clone()),
            _ => self.wrong_kind("a string", errs),
        }
    }

    fn boolean(&self, errs: &mut Errors) -> Option<bool> {
        match self.node.value {
            Value::Bool(b) => Some(b),
            _ => self.wrong_kind("true or false", errs),
        }
    }

    fn integer(&self, min: i64, max: i64, errs: &mut Errors) -> Option<i64> {
        match self.node.value {
            Value::Int(n) if (min..=max).contains(&n) => Some(n),
            Value::Int(n) => {
                errs.at(self, format!("{n} is out of range ({min} to {max})"));
                None
            }
            _ => self.wrong_kind("an integer", errs),
        }
    }

    fn array(&self, errs: &mut Errors) -> Option<&'n [Node]> {
        match &self.node.value {
            Value::Array(items) => Some(items),
            _ => self.wrong_kind("an array", errs),
        }
    }

    fn wrong_kind<T>(&self, expected: &str, errs: &mut Errors) -> Option<T> {
        errs.at(self, format!("expected {expected}, found {}", self.node.kind()));
        None
    }
}

/// A table being read: remembers which keys were taken so the rest can be reported unknown.
struct Table<'n> {
    entries: &'n [(String, Node)],
    taken: Vec<bool>,
    path: String,
    line: Option<usize>,
}

impl<'n> Table<'n> {
    fn open(node: &'n Node, path: String, errs: &mut Errors) -> Option<Self> {
        match &node.value {
            Value::Table(entries) => Some(Self {
                entries,
                taken: vec![false; entries.len()],
                path,
                line: node.line,
            }),
            _ => {
                let message = format!("expected a table, found {}", node.kind());
                errs.at_line(path, node.line, message);
                None
            }
        }
    }

    fn take(&mut self, key: &str) -> Option<Field<'n>> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        self.taken[index] = true;
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Some(Field {
            node: &self.entries[index].1,
            path,
        })
    }

    fn finish(self, known: &str, errs: &mut Errors) {
        for ((key, node), taken) in self.entries.iter().zip(self.taken) {
            if !taken {
                let path = if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                };
                errs.at_line(path, node.line, format!("unknown key `{key}` (known keys: {known})"));
            }
        }
    }
}
