//! The host's live view (SPEC §11): a journal of events (`state`, `stats`, `config`) that event
//! clients follow, and each instance's recent history. The host fills both; nothing here waits
//! for a reader.

mod history;
mod journal;

pub use history::History;
pub use journal::{Behind, Journal};

/// What the host keeps for its live view.
#[derive(Default)]
pub struct Live {
    pub journal: Journal,
    pub history: History,
}
