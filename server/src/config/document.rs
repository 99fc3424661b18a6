//! The config file as an editable document: the changes the admin API makes (add, replace or
//! remove a server, replace the whole config, record `autostart`) are made to the file's text in
//! place, so that what they do not touch keeps its comments and layout; the text is then read
//! like any config file, and written back atomically.

use std::path::PathBuf;

use serde_json::{Map, Value as Json};
use toml_edit::{DocumentMut, Item, TableLike};

use super::export;
use super::merge::{self, Merge};
use super::{Config, ConfigSource, EMBEDDED_DEFAULT, Isolation};

/// The file the first change writes when the host runs the embedded default: the one the next
/// start reads.
pub const DEFAULT_FILE: &str = "./supersocket.toml";

/// A config document and where it is written.
#[derive(Debug, Clone)]
pub struct Document {
    doc: DocumentMut,
    /// Written as JSON (a `.json` file), else TOML.
    json: bool,
    path: PathBuf,
    /// The text as last read from or written to `path` (`None`: not written yet, the embedded
    /// default).
    on_disk: Option<String>,
}

/// Why a change cannot be made to the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The body is not a config (syntax, or not a table).
    #[error("{0}")]
    Body(String),
    /// No server of that name is in the file.
    #[error("no server named {0:?}")]
    NoServer(String),
    /// A server of that name exists.
    #[error("a server named {0:?} exists")]
    NameTaken(String),
    /// The server is one of the replicas of a server table.
    #[error("{name:?} is a replica of {of:?} (`replicas` in the config); change {of:?} instead")]
    Replica { name: String, of: String },
    /// The server has `replicas`: it is several instances, changed only in a whole config.
    #[error("{0:?} has `replicas`: it is several servers; change it in a whole config (PUT /api/v1/config)")]
    Replicated(String),
    /// A masked secret with no secret in the file to stand for.
    #[error("{0}: \"***\" stands for a secret the config does not have; give the value")]
    Masked(String),
}

impl Document {
    /// The document of a config's source: the file as it is now, or the embedded default (to
    /// be written to [`DEFAULT_FILE`]).
    pub fn open(source: &ConfigSource) -> std::io::Result<Self> {
        match source {
            ConfigSource::File(path) => {
                let text = std::fs::read_to_string(path)?;
                Self::from_file(path.clone(), text).map_err(std::io::Error::other)
            }
            ConfigSource::Embedded => {
                let doc = EMBEDDED_DEFAULT.parse().map_err(std::io::Error::other)?;
                Ok(Self {
                    doc,
                    json: false,
                    path: PathBuf::from(DEFAULT_FILE),
                    on_disk: None,
                })
            }
        }
    }

    /// The document of a file whose text is `text`.
    pub fn from_file(path: PathBuf, text: String) -> Result<Self, String> {
        let json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let doc = if json {
            let value: Json = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            from_json(&value)?
        } else {
            text.parse().map_err(|e: toml_edit::TomlError| e.to_string())?
        };
        Ok(Self {
            doc,
            json,
            path,
            on_disk: Some(text),
        })
    }

    /// A document for a file that could not be read: changes wait for a reload (the file on
    /// disk differs from this empty text).
    pub fn unreadable(source: &ConfigSource) -> Self {
        let path = match source {
            ConfigSource::File(path) => path.clone(),
            ConfigSource::Embedded => PathBuf::from(DEFAULT_FILE),
        };
        Self {
            doc: DocumentMut::new(),
            json: false,
            path,
            on_disk: Some(String::new()),
        }
    }

    /// Takes the file's text as read again (a reload).
    pub fn reread(&mut self, text: String) {
        *self = Self::from_file(self.path.clone(), text.clone()).unwrap_or_else(|_| Self {
            on_disk: Some(text),
            ..Self::unreadable(&self.source())
        });
    }

    /// Where it is written; what configs read from it say they came from.
    pub fn source(&self) -> ConfigSource {
        ConfigSource::File(self.path.clone())
    }

    /// Where a reload reads the config: the file, or the embedded default while nothing was
    /// written.
    pub fn source_read(&self) -> ConfigSource {
        match self.on_disk {
            Some(_) => self.source(),
            None => ConfigSource::Embedded,
        }
    }

    /// Whether it was ever written (else it is the embedded default, in memory).
    pub fn is_persisted(&self) -> bool {
        self.on_disk.is_some()
    }

    /// Whether the document is JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Its text, as it would be written.
    pub fn text(&self) -> String {
        if self.json {
            let mut text = serde_json::to_string_pretty(&merge::to_json(self.doc.as_item())).unwrap_or_default();
            text.push('\n');
            text
        } else {
            self.doc.to_string()
        }
    }

    /// Whether the file still holds what was last read or written (a missing file counts as
    /// untouched: the next write makes it again). An error when someone else changed it.
    pub fn check_disk(&self) -> Result<(), String> {
        let Some(ours) = &self.on_disk else {
            // The embedded default, never written: a file there now was made by someone else.
            return match self.path.exists() {
                true => Err(format!(
                    "{} was created since the host started on its embedded default; restart the host to use it, or remove it",
                    self.path.display()
                )),
                false => Ok(()),
            };
        };
        match std::fs::read_to_string(&self.path) {
            Ok(theirs) if theirs == *ours => Ok(()),
            Ok(_) => Err(format!(
                "{} was changed on disk since the host read it; reload it first (`supersocket reload`) so that no edit is lost",
                self.path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    /// Writes the text atomically; from then on it is what the file holds.
    pub fn persist(&mut self) -> std::io::Result<()> {
        let text = self.text();
        super::persist::write_atomically(&self.path, text.as_bytes())?;
        self.on_disk = Some(text);
        Ok(())
    }

    /// Appends a server.
    pub fn add_server(&mut self, server: &Map<String, Json>, current: &Config) -> Result<(), EditError> {
        let name = server_name(server)?;
        one_server(server)?;
        if current.server(&name).is_some() || self.position(&name).is_some() {
            return Err(EditError::NameTaken(name));
        }
        let mut table = toml_edit::Table::new();
        let defaults = self.server_defaults();
        let mut merge = Merge::default();
        merge.server(&mut table, server, None, &defaults);
        unmatched(merge)?;
        let root = self.doc.as_table_mut();
        match root.get_mut("servers") {
            Some(Item::ArrayOfTables(tables)) => tables.push(table),
            Some(Item::Value(toml_edit::Value::Array(items))) => items.push(table.into_inline_table()),
            _ => {
                let mut tables = toml_edit::ArrayOfTables::new();
                tables.push(table);
                root.insert("servers", Item::ArrayOfTables(tables));
            }
        }
        Ok(())
    }

    /// Replaces the config of server `name` (the body may leave its name out).
    pub fn replace_server(
        &mut self,
        name: &str,
        server: &Map<String, Json>,
        current: &Config,
    ) -> Result<(), EditError> {
        let mut server = server.clone();
        match server.get("name") {
            None => {
                server.insert("name".into(), name.into());
            }
            Some(given) if given.as_str() != Some(name) => {
                return Err(EditError::Body(format!(
                    "the body names server {given} but the path names {name:?} (a server is renamed by adding the new one and removing the old)"
                )));
            }
            Some(_) => {}
        }
        one_server(&server)?;
        let index = self.table_of(name, current)?;
        let reference = current.server(name).map(export::server);
        let defaults = self.server_defaults();
        let mut merge = Merge::default();
        let table = self.server_table(index).expect("the index was just found");
        merge.server(table, &server, reference.as_ref(), &defaults);
        unmatched(merge)
    }

    /// Removes server `name`.
    pub fn remove_server(&mut self, name: &str, current: &Config) -> Result<(), EditError> {
        let index = self.table_of(name, current)?;
        match self.doc.as_table_mut().get_mut("servers") {
            Some(Item::ArrayOfTables(tables)) => {
                tables.remove(index);
            }
            Some(Item::Value(toml_edit::Value::Array(items))) => {
                items.remove(index);
            }
            _ => unreachable!("a server was found"),
        }
        Ok(())
    }

    /// Sets `autostart` of server `name`.
    pub fn set_autostart(&mut self, name: &str, autostart: bool, current: &Config) -> Result<(), EditError> {
        let index = self.table_of(name, current)?;
        let table = self.server_table(index).expect("the index was just found");
        if autostart {
            // True is the default: said by leaving it out.
            table.remove("autostart");
        } else {
            table.insert("autostart", toml_edit::value(false));
        }
        Ok(())
    }

    /// Replaces the whole config.
    pub fn replace_all(&mut self, config: &Map<String, Json>, current: &Config) -> Result<(), EditError> {
        let reference = export::config(current);
        // Under the root isolation the new config sets (left out, it is "none").
        let defaults = server_defaults(config.get("isolation").and_then(Json::as_str));
        let mut merge = Merge::default();
        merge.root(self.doc.as_table_mut(), config, &reference, &defaults);
        unmatched(merge)
    }

    /// A server's keys with their defaults, under this document's root `isolation`.
    fn server_defaults(&self) -> Json {
        server_defaults(self.doc.get("isolation").and_then(Item::as_str))
    }

    /// The server tables of the file, in order.
    fn server_tables(&self) -> Vec<&dyn TableLike> {
        match self.doc.get("servers") {
            Some(Item::ArrayOfTables(tables)) => tables.iter().map(|t| t as &dyn TableLike).collect(),
            Some(Item::Value(toml_edit::Value::Array(items))) => items
                .iter()
                .filter_map(|v| v.as_inline_table().map(|t| t as &dyn TableLike))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn server_table(&mut self, index: usize) -> Option<&mut dyn TableLike> {
        match self.doc.get_mut("servers")? {
            Item::ArrayOfTables(tables) => tables.get_mut(index).map(|t| t as &mut dyn TableLike),
            Item::Value(toml_edit::Value::Array(items)) => items
                .get_mut(index)?
                .as_inline_table_mut()
                .map(|t| t as &mut dyn TableLike),
            _ => None,
        }
    }

    /// The index of the table named `name`.
    fn position(&self, name: &str) -> Option<usize> {
        self.server_tables()
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
    }

    /// The index of the table of server `name`, which must be one of its own (not a replica,
    /// nor a table of replicas).
    fn table_of(&self, name: &str, current: &Config) -> Result<usize, EditError> {
        if let Some(index) = self.position(name) {
            if self.server_tables()[index].contains_key("replicas") {
                return Err(EditError::Replicated(name.to_owned()));
            }
            return Ok(index);
        }
        let replica_of = self.server_tables().iter().find_map(|t| {
            let base = t.get("name")?.as_str()?;
            let count = t.get("replicas")?.as_integer()?;
            let index = name.strip_prefix(base)?.strip_prefix('-')?.parse::<i64>().ok()?;
            (1..=count).contains(&index).then(|| base.to_owned())
        });
        match replica_of {
            Some(of) if current.server(name).is_some() => Err(EditError::Replica {
                name: name.to_owned(),
                of,
            }),
            _ => Err(EditError::NoServer(name.to_owned())),
        }
    }
}

/// A server's keys with their defaults under root isolation `root`.
fn server_defaults(root: Option<&str>) -> Json {
    let isolation = match root {
        Some("runtime") => Isolation::Runtime,
        Some("process") => Isolation::Process,
        _ => Isolation::None,
    };
    export::server_defaults(isolation)
}

/// The name a server's body gives.
fn server_name(server: &Map<String, Json>) -> Result<String, EditError> {
    match server.get("name") {
        Some(Json::String(name)) => Ok(name.clone()),
        Some(other) => Err(EditError::Body(format!("`name` must be a string, found {other}"))),
        None => Err(EditError::Body("the server has no `name`".into())),
    }
}

/// A change to one server makes one server: `replicas` is for whole configs.
fn one_server(server: &Map<String, Json>) -> Result<(), EditError> {
    match server.contains_key("replicas") {
        true => Err(EditError::Body(
            "`replicas` makes several servers: add them in a whole config (PUT /api/v1/config), or one by one".into(),
        )),
        false => Ok(()),
    }
}

fn unmatched(merge: Merge) -> Result<(), EditError> {
    match merge.unmatched_masks.into_iter().next() {
        Some(path) => Err(EditError::Masked(path)),
        None => Ok(()),
    }
}

/// A document from a JSON config (what a `.json` file holds).
fn from_json(value: &Json) -> Result<DocumentMut, String> {
    let Json::Object(map) = value else {
        return Err("a config is a table (a JSON object)".into());
    };
    let mut doc = DocumentMut::new();
    let mut merge = Merge::default();
    merge.root(doc.as_table_mut(), map, &Json::Null, &Json::Null);
    Ok(doc)
}

/// A request body: a table as JSON, or as TOML when `toml`.
pub fn parse_body(text: &str, toml: bool) -> Result<Map<String, Json>, EditError> {
    let tree = if toml {
        super::node::from_toml(text)
    } else {
        super::node::from_json(text)
    };
    let tree = tree.map_err(|e| match e.line {
        Some(line) => EditError::Body(format!("line {line}: {}", e.message)),
        None => EditError::Body(e.message),
    })?;
    let json = tree.to_json();
    // A JSON `null`, or a float with no number (TOML's `nan`, `inf`), has no place in a config
    // and no form in the file: named rather than written as something else.
    let raw = if toml {
        json.clone()
    } else {
        serde_json::from_str(text).unwrap_or(Json::Null)
    };
    if let Some(path) = first_null(&raw, String::new()) {
        return Err(EditError::Body(format!(
            "{path}: null, NaN and infinite values have no place in a config"
        )));
    }
    match json {
        Json::Object(map) => Ok(map),
        _ => Err(EditError::Body("the body must be a table (a JSON object)".into())),
    }
}

/// The path of the first `null` in `value` (where a TOML float with no number ends up too).
fn first_null(value: &Json, path: String) -> Option<String> {
    match value {
        Json::Null => Some(if path.is_empty() { "the body".into() } else { path }),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| first_null(item, format!("{path}[{i}]"))),
        Json::Object(map) => map.iter().find_map(|(key, item)| {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            first_null(item, here)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::export::MASK;

    const FILE: &str = r#"# The host's config.
shutdown_timeout = "10s" # bound on a stop

[admin]
listen = "127.0.0.1:2020"
token_file = "admin.token"

# Echo for the load balancer.
[[servers]]
name = "A"
type = "echo"
listeners = [{ ip = "Loopback", port = 7000 }] # the public port
max_connections = 100 # tuned in March

[[servers]]
name = "B"
type = "command"
replicas = 2
listeners = [{ ip = "Loopback", port = 7100 }]
"#;

    fn document() -> (Document, Config) {
        let types = crate::host::HostBuilder::new();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ss-doc-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "secret\n").unwrap();
        let path = dir.join("host.toml");
        let config = Config::parse(FILE, false, ConfigSource::File(path.clone()), types.types()).unwrap();
        (Document::from_file(path, FILE.into()).unwrap(), config)
    }

    #[test]
    fn the_whole_config_written_back_as_exported_changes_nothing() {
        let (mut doc, config) = document();
        let exported = export::config(&config);
        doc.replace_all(exported.as_object().unwrap(), &config).unwrap();
        // The replicas come back as servers of their own; everything else is as it was.
        let text = doc.text();
        assert!(
            text.starts_with(&FILE[..FILE.find("[[servers]]\nname = \"B\"").unwrap()]),
            "{text}"
        );
    }

    #[test]
    fn a_changed_limit_keeps_the_comments_around_it() {
        let (mut doc, config) = document();
        let mut server = export::server(config.server("A").unwrap());
        server["max_connections"] = 5.into();
        doc.replace_server("A", server.as_object().unwrap(), &config).unwrap();
        let expected = FILE.replace("max_connections = 100 # tuned", "max_connections = 5 # tuned");
        assert_eq!(doc.text(), expected);
    }

    #[test]
    fn a_server_is_added_with_only_the_keys_it_sets() {
        let (mut doc, config) = document();
        let body = parse_body(
            "name = \"C\"\ntype = \"echo\"\nautostart = true\nmax_connections = 10000\n",
            true,
        )
        .unwrap();
        doc.add_server(&body, &config).unwrap();
        assert_eq!(
            doc.text(),
            format!("{FILE}\n[[servers]]\nname = \"C\"\ntype = \"echo\"\n")
        );
        assert_eq!(doc.add_server(&body, &config), Err(EditError::NameTaken("C".into())));
    }

    #[test]
    fn bodies_with_values_a_file_cannot_hold_are_refused_with_their_key() {
        let refused = |text: &str, toml| match parse_body(text, toml) {
            Err(EditError::Body(message)) => message,
            other => panic!("{text}: {other:?}"),
        };
        assert!(refused("[options]\nx = nan\n", true).starts_with("options.x:"));
        assert!(refused("[options]\ny = [1.0, inf]\n", true).starts_with("options.y[1]:"));
        assert!(refused(r#"{"name": "A", "advertise": null}"#, false).starts_with("advertise:"));
        assert!(parse_body(r#"{"name": "A", "options": {"x": 1.5}}"#, false).is_ok());
    }

    #[test]
    fn replicas_and_unknown_servers_are_named_in_the_error() {
        let (mut doc, config) = document();
        assert_eq!(
            doc.remove_server("B-2", &config),
            Err(EditError::Replica {
                name: "B-2".into(),
                of: "B".into()
            })
        );
        assert_eq!(doc.remove_server("Z", &config), Err(EditError::NoServer("Z".into())));
        doc.remove_server("A", &config).unwrap();
        assert!(!doc.text().contains("name = \"A\""));
    }

    #[test]
    fn a_masked_token_keeps_the_token_file() {
        let (mut doc, config) = document();
        let mut whole = export::config(&config);
        whole["admin"]["listen"] = "127.0.0.1:2021".into();
        doc.replace_all(whole.as_object().unwrap(), &config).unwrap();
        let text = doc.text();
        assert!(text.contains("token_file = \"admin.token\""), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:2021\""), "{text}");
        assert!(!text.contains(MASK), "{text}");
    }

    #[test]
    fn a_mask_with_no_secret_behind_it_is_refused() {
        let (mut doc, config) = document();
        let mut whole = export::config(&config);
        whole["admin"]["tokens"] = serde_json::json!([{ "name": "ci", "token": MASK, "role": "read" }]);
        assert_eq!(
            doc.replace_all(whole.as_object().unwrap(), &config),
            Err(EditError::Masked("admin.tokens[0].token".into()))
        );
    }
}
