//! A format-neutral value tree with line numbers, read from TOML or JSON, so that the schema walk
//! can report every problem (not only serde's first) with its key path and line.

use toml::de::{DeTable, DeValue};

/// A value of the config document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML date or time, kept as text (no key of the schema takes one).
    Datetime(String),
    Array(Vec<Node>),
    /// Entries in document order.
    Table(Vec<(String, Node)>),
}

/// A value and the line it starts on (TOML only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: Option<usize>,
}

impl Node {
    /// The name of the value's kind, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    /// The value as JSON, for type-specific `options` handed to a server type.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Str(s) | Value::Datetime(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            Value::Bool(b) => (*b).into(),
            Value::Array(items) => items.iter().map(Node::to_json).collect(),
            Value::Table(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// A parse failure of the whole document: where, and what.
pub(crate) struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses TOML text into a tree with lines.
pub(crate) fn from_toml(text: &str) -> Result<Node, SyntaxError> {
    let lines = LineIndex::new(text);
    let table = DeTable::parse(text).map_err(|e| SyntaxError {
        line: e.span().map(|s| lines.line_of(s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let line = Some(lines.line_of(table.span().start));
    Ok(Node {
        value: toml_table(table.get_ref(), &lines),
        line,
    })
}

fn toml_table(table: &DeTable<'_>, lines: &LineIndex) -> Value {
    Value::Table(
        table
            .iter()
            .map(|(key, value)| {
                // The key's line is where a reader looks for the entry.
                let line = Some(lines.line_of(key.span().start));
                let node = Node {
                    value: toml_value(value.get_ref(), lines),
                    line,
                };
                (key.get_ref().to_string(), node)
            })
            .collect(),
    )
}

fn toml_value(value: &DeValue<'_>, lines: &LineIndex) -> Value {
    match value {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Int(n),
            Err(_) => Value::Float(f64::INFINITY),
        },
        DeValue::Float(f) => Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| Node {
                    value: toml_value(item.get_ref(), lines),
                    line: Some(lines.line_of(item.span().start)),
                })
                .collect(),
        ),
        DeValue::Table(table) => toml_table(table, lines),
    }
}

/// Parses JSON text into a tree (JSON gives no lines for values).
pub(crate) fn from_json(text: &str) -> Result<Node, SyntaxError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| SyntaxError {
        line: Some(e.line()),
        message: e.to_string(),
    })?;
    Ok(json_node(&value))
}

fn json_node(value: &serde_json::Value) -> Node {
    use serde_json::Value as J;
    let value = match value {
        J::Null => Value::Table(Vec::new()),
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(json_node).collect()),
        J::Object(map) => Value::Table(map.iter().map(|(k, v)| (k.clone(), json_node(v))).collect()),
    };
    Node { value, line: None }
}

/// Byte offset to 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_carry_their_lines() {
        let node = from_toml("a = 1\n\n[[servers]]\nname = \"x\"\n").ok().unwrap();
        let Value::Table(entries) = node.value else {
            panic!("root is a table")
        };
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[0].1.line, Some(1));
        let Value::Array(servers) = &entries[1].1.value else {
            panic!("servers is an array")
        };
        let Value::Table(server) = &servers[0].value else {
            panic!("server is a table")
        };
        assert_eq!(server[0].0, "name");
        assert_eq!(server[0].1.line, Some(4));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = from_toml("a = 1\nb = = 2\n").err().unwrap();
        assert_eq!(err.line, Some(2));
        let err = from_json("{\n\"a\": ,\n}").err().unwrap();
        assert_eq!(err.line, Some(2));
    }
}
