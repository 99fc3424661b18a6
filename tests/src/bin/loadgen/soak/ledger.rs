//! Counting: what happened to each message of one traffic path, and a few examples of each
//! kind of trouble, told with the faults that preceded them.

use std::collections::BTreeMap;

use serde::Serialize;

/// What happened to the messages of one path. A message is `sent`, then `acked` (the host said
/// yes: OK, a reply, the sender's own chat MSG, FTP's 226), `refused` (an ERR, or a connection
/// the host closed before the outcome was known: the client saw an error) or `stalled` (no
/// outcome within the reply timeout). Deliveries — one per message and intended receiver —
/// are `delivered`, `dropped_with_session` (the receiver's connection closed before it
/// arrived) or lost: `missing`, `duplicate`, `reordered` or `wrong`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub stalled: u64,
    /// Outcomes that took longer than a second.
    pub slow: u64,
    pub delivered: u64,
    pub dropped_with_session: u64,
    /// Arrived after the drain's end (not counted as lost).
    pub late: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub reordered: u64,
    pub wrong: u64,
    /// Refused to the sender, and delivered all the same.
    pub refused_but_delivered: u64,
    /// Refused as undeliverable although the receiver was there before and after (`ERR no
    /// session` for a session that was connected throughout).
    pub wrongly_refused: u64,
    pub connections: u64,
    /// Connections the host closed without answering anything sent on them (a connection
    /// dropped from the listen backlog, or accepted and closed unserved).
    pub unserved_connections: u64,
    /// Connections the host closed while the run was going on.
    pub closed_by_host: u64,
    pub connect_failures: u64,
}

impl Tally {
    pub fn lost(&self) -> u64 {
        self.missing + self.duplicate + self.reordered + self.wrong
    }

    pub fn add(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.refused += other.refused;
        self.stalled += other.stalled;
        self.slow += other.slow;
        self.delivered += other.delivered;
        self.dropped_with_session += other.dropped_with_session;
        self.late += other.late;
        self.missing += other.missing;
        self.duplicate += other.duplicate;
        self.reordered += other.reordered;
        self.wrong += other.wrong;
        self.refused_but_delivered += other.refused_but_delivered;
        self.wrongly_refused += other.wrongly_refused;
        self.connections += other.connections;
        self.unserved_connections += other.unserved_connections;
        self.closed_by_host += other.closed_by_host;
        self.connect_failures += other.connect_failures;
    }
}

/// The first few examples of each kind.
#[derive(Debug, Default)]
pub struct Examples {
    kinds: BTreeMap<String, (u64, Vec<String>)>,
}

/// Examples kept per kind.
const KEPT: usize = 4;

impl Examples {
    pub fn add(&mut self, kind: &str, text: impl FnOnce() -> String) {
        let (count, kept) = self.kinds.entry(kind.to_owned()).or_default();
        *count += 1;
        if kept.len() < KEPT {
            kept.push(text());
        }
    }

    pub fn merge(&mut self, other: Examples) {
        for (kind, (count, texts)) in other.kinds {
            let (mine, kept) = self.kinds.entry(kind).or_default();
            *mine += count;
            for text in texts {
                if kept.len() < KEPT {
                    kept.push(text);
                }
            }
        }
    }

    /// `kind: text` lines, the kinds in order.
    pub fn lines(&self) -> Vec<String> {
        self.kinds
            .iter()
            .flat_map(|(kind, (_, texts))| texts.iter().map(move |t| format!("{kind}: {t}")))
            .collect()
    }
}

/// One path's tally, examples, and why messages were refused.
#[derive(Debug, Default)]
pub struct PathReport {
    pub tally: Tally,
    pub examples: Examples,
    /// Refusals (or drops) by kind (`ERR no session`, `closed before the answer`, ...).
    pub reasons: BTreeMap<String, u64>,
}

impl PathReport {
    pub fn merge(&mut self, other: PathReport) {
        self.tally.add(&other.tally);
        self.examples.merge(other.examples);
        for (reason, n) in other.reasons {
            *self.reasons.entry(reason).or_default() += n;
        }
    }

    /// Counts a refusal by its kind: the text up to the first word with a digit in it (ids
    /// and numbers vary, the kind does not).
    pub fn reason(&mut self, text: &str) {
        self.reasons_n(text, 1);
    }

    /// Counts `n` refusals of one kind: the words up to a number, a quoted name or the id
    /// after `session`.
    pub fn reasons_n(&mut self, text: &str, n: u64) {
        let mut kind: Vec<&str> = Vec::new();
        for word in text.split_whitespace().take(8) {
            if word.chars().any(|c| c.is_ascii_digit() || c == '"') {
                break;
            }
            kind.push(word);
            if word == "session" {
                break;
            }
        }
        *self.reasons.entry(kind.join(" ")).or_default() += n;
    }
}

/// What became of one message the soak sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not known yet.
    Pending,
    /// The host said yes, at this time.
    Acked(std::time::Instant),
    /// The host answered an error.
    Refused,
    /// The connection closed before the outcome was known.
    Closed,
    /// No outcome within the reply timeout.
    Stalled,
}

impl Outcome {
    pub fn acked(&self) -> bool {
        matches!(self, Outcome::Acked(_))
    }

    /// Counts a settled message in `tally`.
    pub fn count(&self, tally: &mut Tally) {
        tally.sent += 1;
        match self {
            Outcome::Acked(_) => tally.acked += 1,
            Outcome::Refused | Outcome::Closed => tally.refused += 1,
            Outcome::Stalled | Outcome::Pending => tally.stalled += 1,
        }
    }
}
