//! Each instance's recent log lines: a journal per instance, bounded in lines and bytes, kept
//! for the whole process (log records come from anywhere in it, as the tracing subscriber is
//! the process's). The host's records that name an instance (`server = ...`) and everything
//! its agent writes to stderr land here.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use supersocket_proto::LogLine;

use super::{Item, Journal};
use crate::timefmt::rfc3339;

/// Lines kept per instance.
pub const LINES: usize = 1000;
/// Bytes of lines kept per instance.
pub const BYTES: usize = 256 * 1024;
/// Longer messages are cut to this many bytes.
pub const MAX_MESSAGE: usize = 4096;
/// What a line costs beside its text (its struct, its time, its journal entry).
const LINE_OVERHEAD: usize = 128;

/// A line and when it was taken.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: SystemTime,
    pub line: Arc<LogLine>,
}

impl Item for Logged {
    fn bytes(&self) -> usize {
        LINE_OVERHEAD + self.line.message.len()
    }
}

/// The journals, by instance name.
#[derive(Default)]
pub struct Logs {
    journals: Mutex<HashMap<String, Arc<Journal<Logged>>>>,
}

/// This process's logs.
pub fn logs() -> &'static Logs {
    static LOGS: LazyLock<Logs> = LazyLock::new(Logs::default);
    &LOGS
}

impl Logs {
    fn journals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Journal<Logged>>>> {
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The journal of `name` (empty until it logs).
    pub fn of(&self, name: &str) -> Arc<Journal<Logged>> {
        self.journals()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Journal::new(LINES, BYTES)))
            .clone()
    }

    /// Adds a line to the journal of `name`.
    pub fn push(&self, name: &str, level: &str, source: &str, mut message: String) {
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let at = SystemTime::now();
        let line = LogLine {
            at: rfc3339(at),
            level: level.to_owned(),
            source: source.to_owned(),
            message,
        };
        self.of(name).push(Logged {
            at,
            line: Arc::new(line),
        });
    }

    /// Forgets the instances not in `names` (removed ones); their followers are done.
    pub fn keep_only(&self, names: &[&str]) {
        self.journals().retain(|name, journal| {
            let kept = names.contains(&name.as_str());
            if !kept {
                journal.close();
            }
            kept
        });
    }

    /// Ends every follower: the host has stopped.
    pub fn close(&self) {
        self.journals().values().for_each(|journal| journal.close());
    }
}

/// Adds what an agent wrote to its stderr, one line, to the journal of `name`: a log record in
/// the host's text or JSON format keeps its level and message; anything else is `output`.
pub fn push_agent_line(name: &str, line: &str) {
    let (level, message) = match parse_record(line) {
        // The journal is the instance's: its name in every record says nothing there.
        Some((level, message)) => (level, without_server(&message, name)),
        None => ("output".to_owned(), line.to_owned()),
    };
    logs().push(name, &level, "agent", message);
}

/// `message` without its `server=NAME` field.
fn without_server(message: &str, name: &str) -> String {
    let fields = [format!(" server={name}"), format!(" server=\"{name}\"")];
    let mut message = message.to_owned();
    for field in fields {
        if let Some(at) = message.find(&field) {
            let end = at + field.len();
            if message[end..].is_empty() || message[end..].starts_with(' ') {
                message.replace_range(at..end, "");
            }
        }
    }
    message
}

/// The level and message of a record as `supersocketd --log-format text|json` writes it.
fn parse_record(line: &str) -> Option<(String, String)> {
    let line = line.trim_end();
    if line.starts_with('{') {
        let record: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = record.get("level")?.as_str()?.to_ascii_lowercase();
        let fields = record.get("fields")?.as_object()?;
        let mut message = fields.get("message").and_then(|m| m.as_str()).unwrap_or("").to_owned();
        for (key, value) in fields.iter().filter(|(key, _)| *key != "message") {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            message.push_str(&format!(" {key}={value}"));
        }
        return Some((level, message.trim_start().to_owned()));
    }
    // `2026-11-22T22:29:08.123456Z  INFO target::path: message key=value`
    let (time, rest) = line.split_once(' ')?;
    if !time.starts_with(|c: char| c.is_ascii_digit()) || !time.contains('T') {
        return None;
    }
    let rest = rest.trim_start();
    let (level, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level) {
        return None;
    }
    let rest = rest.trim_start();
    let message = match rest.split_once(": ") {
        Some((target, message)) if !target.contains(' ') => message,
        _ => rest,
    };
    Some((level.to_ascii_lowercase(), message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_either_format_keep_their_level_and_message() {
        let text = "2026-11-22T22:29:08.123456Z  WARN supersocket::runtime::accept: accept failed server=\"echo\"";
        assert_eq!(
            parse_record(text),
            Some(("warn".into(), "accept failed server=\"echo\"".into()))
        );
        let json =
            r#"{"timestamp":"2026-11-22T22:29:08Z","level":"ERROR","fields":{"message":"boom","code":3},"target":"x"}"#;
        assert_eq!(parse_record(json), Some(("error".into(), "boom code=3".into())));
        assert_eq!(parse_record("thread 'main' panicked at src/x.rs:1:1"), None);
        assert_eq!(parse_record("2026 is a year"), None);
        assert_eq!(without_server("started server=P pid=3", "P"), "started pid=3");
        assert_eq!(without_server("started server=\"P\"", "P"), "started");
        assert_eq!(without_server("started server=PQ", "P"), "started server=PQ");
    }

    #[test]
    fn a_long_message_is_cut_on_a_character() {
        let logs = Logs::default();
        logs.push("a", "info", "host", "é".repeat(MAX_MESSAGE));
        let line = logs.of("a").last(1).remove(0).item.line;
        assert!(line.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(line.message.ends_with('…'));
    }
}
