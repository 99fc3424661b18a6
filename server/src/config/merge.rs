//! Writes a config given as JSON into a TOML document in place: values that did not change keep
//! their text, comments and layout; changed ones take the new value beside their old comments;
//! keys the new config leaves out are removed.
//! Arrays of tables that all have a `name` (servers, admin tokens, FTP users) are merged by name.
//! A value written as [`MASK`] keeps the secret the document has there.

use serde_json::{Map, Value as Json};
use toml_edit::{ArrayOfTables, InlineTable, Item, Table, TableLike, Value};

use super::export::MASK;
use super::parse_duration;
use super::schema::parse_ip;

/// A merge under way; it collects what it could not do.
#[derive(Default)]
pub(super) struct Merge {
    /// Paths of masked values that had no secret in the document to stand for.
    pub unmatched_masks: Vec<String>,
}

/// One level of the merge: where it is, what the current config says there (exported, so a
/// value the document spells differently but means the same is left as it is), and the
/// defaults of keys the document may leave out.
#[derive(Clone, Copy)]
struct Level<'j> {
    path: &'j str,
    depth: usize,
    current: Option<&'j Json>,
    defaults: Option<&'j Json>,
    /// A server's keys with their default values: a key the document leaves out and the new
    /// config gives with its default value stays out.
    server_defaults: &'j Json,
}

impl<'j> Level<'j> {
    fn current(&self, key: &str) -> Option<&'j Json> {
        self.current.and_then(|c| c.get(key))
    }

    fn default(&self, key: &str) -> Option<&'j Json> {
        self.defaults.and_then(|d| d.get(key))
    }
}

impl Merge {
    /// Merges `new` into the document's root table; `current` is the current config exported.
    pub fn root(&mut self, root: &mut Table, new: &Map<String, Json>, current: &Json, server_defaults: &Json) {
        let level = Level {
            path: "",
            depth: 0,
            current: Some(current),
            defaults: None,
            server_defaults,
        };
        self.table(root, new, level);
    }

    /// Merges one server's config into its table; `current` is the server as it is, exported.
    pub fn server(
        &mut self,
        table: &mut dyn TableLike,
        new: &Map<String, Json>,
        current: Option<&Json>,
        server_defaults: &Json,
    ) {
        let level = Level {
            path: "",
            depth: 1,
            current,
            defaults: Some(server_defaults),
            server_defaults,
        };
        self.table(table, new, level);
    }

    fn table(&mut self, old: &mut dyn TableLike, new: &Map<String, Json>, level: Level<'_>) {
        let mut kept: Vec<&str> = new.keys().map(String::as_str).collect();
        for (key, value) in new {
            let path = join(level.path, key);
            if value.as_str() == Some(MASK) {
                if old.contains_key(key) {
                    continue;
                }
                if key == "token" && old.contains_key("token_file") {
                    kept.push("token_file");
                    continue;
                }
                // The admin token may come from the environment, not the file: nothing to keep.
                if path == "admin.token" {
                    continue;
                }
                self.unmatched_masks.push(path);
                continue;
            }
            let below = Level {
                path: &path,
                depth: level.depth + 1,
                current: level.current(key),
                defaults: level.default(key),
                server_defaults: level.server_defaults,
            };
            match old.get_mut(key) {
                Some(item) => self.item(item, key, value, below),
                // Left out, the key already means this value (its default, or the root's).
                None if below.defaults.or(below.current).is_some_and(|d| same_at(key, d, value)) => {}
                None => {
                    self.no_masks_in(value, &path);
                    old.insert(key, new_item(key, value, below.depth));
                }
            }
        }
        let gone: Vec<String> = old
            .iter()
            .map(|(key, _)| key.to_owned())
            .filter(|key| !kept.contains(&key.as_str()))
            .collect();
        for key in gone {
            old.remove(&key);
        }
    }

    fn item(&mut self, item: &mut Item, key: &str, new: &Json, level: Level<'_>) {
        if same_at(key, &to_json(item), new) || level.current.is_some_and(|c| same_at(key, c, new)) {
            return;
        }
        if let (Some(table), Some(map)) = (item.as_table_like_mut(), new.as_object()) {
            return self.table(table, map, level);
        }
        if let Some(items) = new.as_array()
            && !items.is_empty()
            && items.iter().all(|i| i.get("name").is_some_and(Json::is_string))
        {
            return self.named(item, key, items, level);
        }
        self.no_masks_in(new, level.path);
        replace(item, key, new, level.depth);
    }

    /// Records every masked value in a value that replaces what the document had.
    fn no_masks_in(&mut self, value: &Json, path: &str) {
        match value {
            Json::String(s) if s == MASK => self.unmatched_masks.push(path.to_owned()),
            Json::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.no_masks_in(item, &format!("{path}[{index}]"));
                }
            }
            Json::Object(map) => {
                for (key, item) in map {
                    self.no_masks_in(item, &join(path, key));
                }
            }
            _ => {}
        }
    }

    /// An array of named tables: each new one merged into the old one of its name, in the new
    /// order.
    fn named(&mut self, item: &mut Item, key: &str, items: &[Json], level: Level<'_>) {
        let defaults = (key == "servers").then_some(level.server_defaults);
        let name_of = |table: &dyn TableLike| table.get("name").and_then(Item::as_str).map(str::to_owned);
        let current_of = |name: Option<String>| {
            level
                .current
                .and_then(Json::as_array)
                .and_then(|all| all.iter().find(|c| json_name(c) == name))
        };
        let paths: Vec<String> = (0..items.len()).map(|i| format!("{}[{i}]", level.path)).collect();
        let element = |index: usize, new: &Json| Level {
            path: &paths[index],
            depth: level.depth,
            current: current_of(json_name(new)),
            defaults,
            server_defaults: level.server_defaults,
        };
        match item {
            Item::ArrayOfTables(old) => {
                let mut merged = ArrayOfTables::new();
                for (index, new) in items.iter().enumerate() {
                    let found = old.iter().find(|t| name_of(*t) == json_name(new));
                    let mut table = found.cloned().unwrap_or_default();
                    self.table(&mut table, object(new), element(index, new));
                    merged.push(table);
                }
                *item = Item::ArrayOfTables(merged);
            }
            Item::Value(Value::Array(old)) => {
                let mut merged = toml_edit::Array::new();
                for (index, new) in items.iter().enumerate() {
                    let found = old
                        .iter()
                        .filter_map(Value::as_inline_table)
                        .find(|t| name_of(*t) == json_name(new));
                    let mut table = found.cloned().unwrap_or_default();
                    self.table(&mut table, object(new), element(index, new));
                    merged.push(table);
                }
                let decor = old.decor().clone();
                *old = merged;
                *old.decor_mut() = decor;
            }
            _ => {
                let new = Json::Array(items.to_vec());
                self.no_masks_in(&new, level.path);
                replace(item, key, &new, level.depth);
            }
        }
    }
}

/// The map of a value known to be a table.
fn object(value: &Json) -> &Map<String, Json> {
    static EMPTY: std::sync::OnceLock<Map<String, Json>> = std::sync::OnceLock::new();
    value.as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn json_name(value: &Json) -> Option<String> {
    value.get("name").and_then(Json::as_str).map(str::to_owned)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Replaces a value, keeping the comments around it.
fn replace(item: &mut Item, key: &str, new: &Json, depth: usize) {
    match (item.as_value_mut(), new_item(key, new, depth)) {
        (Some(old), Item::Value(mut value)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        (_, fresh) => *item = fresh,
    }
}

/// A fresh item for `value`: at the root, tables are `[sections]` and `servers` an array of
/// `[[servers]]`; below, everything is written inline.
fn new_item(key: &str, value: &Json, depth: usize) -> Item {
    match value {
        Json::Object(map) if depth == 1 => {
            let mut table = Table::new();
            for (k, v) in map {
                table.insert(k, Item::Value(to_value(v)));
            }
            Item::Table(table)
        }
        Json::Array(items) if depth == 1 && key == "servers" && items.iter().all(Json::is_object) => {
            let mut tables = ArrayOfTables::new();
            for item in items {
                let mut table = Table::new();
                for (k, v) in item.as_object().into_iter().flatten() {
                    table.insert(k, Item::Value(to_value(v)));
                }
                tables.push(table);
            }
            Item::ArrayOfTables(tables)
        }
        _ => Item::Value(to_value(value)),
    }
}

/// JSON as an inline TOML value (JSON `null` has no TOML form: an empty table).
pub(super) fn to_value(value: &Json) -> Value {
    match value {
        Json::Null => Value::InlineTable(InlineTable::new()),
        Json::Bool(b) => (*b).into(),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or(f64::NAN).into(),
        },
        Json::String(s) => s.as_str().into(),
        Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Json::Object(map) => Value::InlineTable(map.iter().map(|(k, v)| (k.as_str(), to_value(v))).collect()),
    }
}

/// A document item as JSON (dates as their text).
pub(super) fn to_json(item: &Item) -> Json {
    match item {
        Item::None => Json::Null,
        Item::Value(value) => value_json(value),
        Item::Table(table) => table_json(table),
        Item::ArrayOfTables(tables) => tables.iter().map(|t| table_json(t)).collect(),
    }
}

fn table_json(table: &dyn TableLike) -> Json {
    Json::Object(table.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect())
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::String(s) => s.value().clone().into(),
        Value::Integer(i) => (*i.value()).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(Json::Null, Json::Number),
        Value::Boolean(b) => (*b.value()).into(),
        Value::Datetime(d) => d.value().to_string().into(),
        Value::Array(items) => items.iter().map(value_json).collect(),
        Value::InlineTable(table) => table_json(table),
    }
}

/// Keys of the schema whose values are durations.
const DURATION_KEYS: [&str; 5] = [
    "shutdown_timeout",
    "idle_timeout",
    "header_timeout",
    "backoff",
    "max_backoff",
];

/// Whether two values at `key` mean the same config: equal, or, at the schema's duration and
/// address keys, two spellings of one duration (`"10s"`, `"10000ms"`) or one address
/// (`"Loopback"`, `"127.0.0.1"`). Anywhere else (labels, options) text is compared as text.
fn same_at(key: &str, a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::String(x), Json::String(y)) => {
            x == y
                || (DURATION_KEYS.contains(&key)
                    && matches!((parse_duration(x), parse_duration(y)), (Ok(x), Ok(y)) if x == y))
                || (key == "ip" && matches!((parse_ip(x), parse_ip(y)), (Some(x), Some(y)) if x == y))
        }
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_at(key, x, y)),
        (Json::Object(x), Json::Object(y)) if key != "options" && key != "labels" => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_at(k, v, w)))
        }
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}
