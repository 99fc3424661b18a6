//! Counting: what happened to each message of one traffic path, and a few examples of each
//! kind of trouble, told with the faults that preceded them; what each receiver got from each
//! sender, judged for duplicates, order and gaps (DISPATCH and chat).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

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

/// A kind of trouble that is counted in the tally and told by examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    Stalled,
    Slow,
    Missing,
    Duplicate,
    Reordered,
    Wrong,
    RefusedButDelivered,
    WronglyRefused,
    UnservedConnection,
}

impl Trouble {
    /// Its kind among the examples.
    fn kind(self) -> &'static str {
        match self {
            Trouble::Stalled => "stalled",
            Trouble::Slow => "slow",
            Trouble::Missing => "missing",
            Trouble::Duplicate => "duplicate",
            Trouble::Reordered => "reordered",
            Trouble::Wrong => "wrong",
            Trouble::RefusedButDelivered => "refused but delivered",
            Trouble::WronglyRefused => "wrongly refused",
            Trouble::UnservedConnection => "unserved connection",
        }
    }

    /// Its count in `tally`.
    fn count(self, tally: &mut Tally) -> &mut u64 {
        match self {
            Trouble::Stalled => &mut tally.stalled,
            Trouble::Slow => &mut tally.slow,
            Trouble::Missing => &mut tally.missing,
            Trouble::Duplicate => &mut tally.duplicate,
            Trouble::Reordered => &mut tally.reordered,
            Trouble::Wrong => &mut tally.wrong,
            Trouble::RefusedButDelivered => &mut tally.refused_but_delivered,
            Trouble::WronglyRefused => &mut tally.wrongly_refused,
            Trouble::UnservedConnection => &mut tally.unserved_connections,
        }
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
    /// Counts one `trouble`, with `text` as an example of it while few are kept.
    pub fn count(&mut self, trouble: Trouble, text: impl FnOnce() -> String) {
        *trouble.count(&mut self.tally) += 1;
        self.examples.add(trouble.kind(), text);
    }

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
    Acked(Instant),
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

/// A message that reached a receiver: `<sender>:<seq>`, and when.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub sender: u32,
    pub seq: u32,
    pub at: Instant,
}

/// A message that reached a receiver out of turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disorder {
    /// It arrived a second time.
    Twice,
    /// It arrived the first time after this later message of the same sender.
    After(u32),
}

impl Disorder {
    /// `twice`, or `after <prefix><sender>:<seq>`.
    pub fn words(self, prefix: char, sender: u32) -> String {
        match self {
            Disorder::Twice => "twice".to_owned(),
            Disorder::After(high) => format!("after {prefix}{sender}:{high}"),
        }
    }
}

/// What became of one acknowledged message owed to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// It arrived by the counting cut.
    Delivered,
    /// It arrived after the cut (not counted as lost).
    Late,
    /// It never arrived, and the receiver's session closed before the cut with nothing later
    /// from the sender arrived.
    DroppedWithSession,
    /// It never arrived although it should have.
    Missing(Missing),
}

/// Why a message that never arrived is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The receiver was still connected at the cut.
    Open,
    /// The receiver closed before the cut, but a later message of the sender (the highest
    /// one, `after`) had arrived: a gap.
    Gap { closed_at: Instant, after: u32 },
}

impl Missing {
    /// The receiver's state in an example: `open` (its path's words for connected at the cut),
    /// or `closed at <t>s, after <prefix><sender>:<after> arrived`.
    pub fn words(self, open: &str, prefix: char, sender: u32, secs: &dyn Fn(Instant) -> f64) -> String {
        match self {
            Missing::Open => open.to_owned(),
            Missing::Gap { closed_at, after } => {
                format!(
                    "closed at {:.2}s, after {prefix}{sender}:{after} arrived",
                    secs(closed_at)
                )
            }
        }
    }
}

impl Judgement {
    /// Counts it in `report`; `tell` words a missing one's example.
    pub fn count(self, report: &mut PathReport, tell: impl FnOnce(Missing) -> String) {
        let tally = &mut report.tally;
        match self {
            Judgement::Delivered => tally.delivered += 1,
            Judgement::Late => tally.late += 1,
            Judgement::DroppedWithSession => tally.dropped_with_session += 1,
            Judgement::Missing(missing) => report.count(Trouble::Missing, || tell(missing)),
        }
    }
}

/// What one receiver got from one sender: when each message first arrived, how many times, and
/// the highest sequence number of an acknowledged one that arrived (order and gaps are judged
/// among acknowledged messages only).
#[derive(Default)]
struct FromSender {
    first: HashMap<u32, (Instant, u32)>,
    highest: Option<u32>,
}

/// What every receiver got from every sender, by (receiver, sender).
#[derive(Default)]
pub struct Receipts {
    pairs: HashMap<(u32, u32), FromSender>,
}

impl Receipts {
    /// Notes that `receiver` got `receipt`, a message its sender heard `outcome` for, and counts
    /// in `report` a second arrival, an acknowledged one arriving after a later one, or a refused
    /// one delivered all the same. `tell` words the example of a duplicate or reordered one.
    pub fn note(
        &mut self,
        receiver: u32,
        receipt: &Receipt,
        outcome: Outcome,
        report: &mut PathReport,
        tell: impl Fn(Disorder) -> String,
    ) {
        let from = self.pairs.entry((receiver, receipt.sender)).or_default();
        let entry = from.first.entry(receipt.seq).or_insert((receipt.at, 0));
        entry.1 += 1;
        let first = entry.1 == 1;
        if entry.1 == 2 {
            report.count(Trouble::Duplicate, || tell(Disorder::Twice));
        } else if first && outcome == Outcome::Refused {
            report.tally.refused_but_delivered += 1;
        }
        match from.highest {
            Some(high) if receipt.seq < high && first && outcome.acked() => {
                report.count(Trouble::Reordered, || tell(Disorder::After(high)));
            }
            _ if !outcome.acked() => {}
            Some(high) if receipt.seq < high => {}
            _ => from.highest = Some(receipt.seq),
        }
    }

    /// What became of message `seq` of `sender`, acknowledged, owed to `receiver`, whose
    /// connection closed at `closed_at` (`None`: still open at the end).
    pub fn judge(&self, receiver: u32, sender: u32, seq: u32, closed_at: Option<Instant>, cut: Instant) -> Judgement {
        let from = self.pairs.get(&(receiver, sender));
        if let Some((at, _)) = from.and_then(|f| f.first.get(&seq)) {
            return if *at <= cut {
                Judgement::Delivered
            } else {
                Judgement::Late
            };
        }
        let highest = from.and_then(|f| f.highest);
        match (closed_at.filter(|closed| *closed <= cut), highest) {
            (None, _) => Judgement::Missing(Missing::Open),
            (Some(closed_at), Some(after)) if after > seq => Judgement::Missing(Missing::Gap { closed_at, after }),
            (Some(_), _) => Judgement::DroppedWithSession,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn receipts_are_judged_for_duplicates_order_and_gaps() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let ok = Outcome::Acked(t(0));
        let cut = t(1_000);
        let mut seen = Receipts::default();
        let mut report = PathReport::default();
        // Receiver 9 gets 0, 2, 1 (out of order), 2 again, 4 refused yet delivered, then 3
        // after the cut, all from sender 1.
        for (seq, ms, outcome) in [
            (0, 1, ok),
            (2, 2, ok),
            (1, 3, ok),
            (2, 4, ok),
            (4, 5, Outcome::Refused),
            (3, 2_000, ok),
        ] {
            let receipt = Receipt {
                sender: 1,
                seq,
                at: t(ms),
            };
            seen.note(9, &receipt, outcome, &mut report, |d| {
                format!("{seq} {}", d.words('d', 1))
            });
        }
        assert_eq!(
            report.examples.lines(),
            ["duplicate: 2 twice", "reordered: 1 after d1:2"]
        );
        let tally = &report.tally;
        assert_eq!(
            (tally.reordered, tally.duplicate, tally.refused_but_delivered),
            (1, 1, 1)
        );
        let (open, closed) = (None, Some(t(500)));
        assert_eq!(seen.judge(9, 1, 0, open, cut), Judgement::Delivered);
        assert_eq!(seen.judge(9, 1, 3, open, cut), Judgement::Late);
        // 5 never came: missing while the receiver is there (or closed after the cut), dropped
        // once it closed, unless a later one came (a gap).
        assert_eq!(seen.judge(9, 1, 5, open, cut), Judgement::Missing(Missing::Open));
        assert_eq!(
            seen.judge(9, 1, 5, Some(t(1_500)), cut),
            Judgement::Missing(Missing::Open)
        );
        assert_eq!(seen.judge(9, 1, 5, closed, cut), Judgement::DroppedWithSession);
        assert_eq!(seen.judge(9, 2, 0, closed, cut), Judgement::DroppedWithSession);
        assert_eq!(seen.judge(8, 1, 0, open, cut), Judgement::Missing(Missing::Open));
        let mut gap = Receipts::default();
        gap.note(
            9,
            &Receipt {
                sender: 1,
                seq: 6,
                at: t(1),
            },
            ok,
            &mut report,
            |_| String::new(),
        );
        let missing = Missing::Gap {
            closed_at: t(500),
            after: 6,
        };
        assert_eq!(gap.judge(9, 1, 5, closed, cut), Judgement::Missing(missing));
        let secs = |at: Instant| at.duration_since(t0).as_secs_f64();
        assert_eq!(
            missing.words("open", 'd', 1, &secs),
            "closed at 0.50s, after d1:6 arrived"
        );
        assert_eq!(Missing::Open.words("open", 'd', 1, &secs), "open");
    }
}
