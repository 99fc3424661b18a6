//! The host's live view (SPEC §11): a journal of events (`state`, `stats`, `config`) that event
//! clients follow, each instance's recent history, and each instance's recent log lines. The
//! host fills them; nothing here waits for a reader.

pub mod capture;
mod history;
mod journal;
pub mod logs;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use supersocket_proto::{ServerState, StateEvent};

pub use history::History;
pub use journal::{Behind, Entry, Item, Journal};
pub use usage::Usages;

/// Most events kept for readers that reconnect.
const MAX_EVENTS: usize = 1024;
/// Most bytes of event data kept.
const MAX_EVENT_BYTES: usize = 2 * 1024 * 1024;

/// One live event: its kind (the SSE event name) and its data (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub data: Arc<str>,
}

impl Item for Event {
    fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// What the host keeps for its live view.
pub struct Live {
    pub journal: Journal<Event>,
    pub history: History,
    /// What the host and its agents use.
    pub usages: Usages,
    /// The state (and error) last told of each instance.
    told: Mutex<HashMap<String, (ServerState, Option<String>)>>,
}

impl Live {
    /// A `state` event, unless it tells nothing new of its instance.
    pub fn state(&self, event: StateEvent) {
        let now = (event.state, event.last_error.clone());
        {
            let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
            if told.get(&event.name) == Some(&now) {
                return;
            }
            told.insert(event.name.clone(), now);
        }
        self.push("state", &event);
    }

    /// Appends an event of `kind` with `data` as its JSON.
    pub fn push(&self, kind: &'static str, data: &impl serde::Serialize) {
        if let Ok(json) = serde_json::to_string(data) {
            self.journal.push(Event {
                kind,
                data: json.into(),
            });
        }
    }

    /// Ends the streams of events and logs once what was told is read: the host has stopped.
    pub fn close(&self) {
        self.journal.close();
        logs::logs().close();
    }

    /// Forgets the instances not in `names` (removed ones).
    pub fn keep_only(&self, names: &[&str]) {
        self.history.keep_only(names);
        self.told
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| names.contains(&name.as_str()));
    }
}

impl Default for Live {
    fn default() -> Self {
        Self {
            journal: Journal::new(MAX_EVENTS, MAX_EVENT_BYTES),
            history: History::default(),
            usages: Usages::default(),
            told: Mutex::default(),
        }
    }
}
