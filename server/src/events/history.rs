//! The last minutes of each instance's counters, a sample a second, in a ring of fixed size per
//! instance (600 samples of 40 bytes: 24 KB per instance).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use supersocket_proto::HistorySample;

/// Samples kept per instance: ten minutes of one a second.
pub const SAMPLES: usize = 600;

/// Every instance's samples, by name.
#[derive(Default)]
pub struct History {
    rings: Mutex<HashMap<String, VecDeque<HistorySample>>>,
}

impl History {
    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<HistorySample>>> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a sample of `name`, dropping its oldest beyond [`SAMPLES`].
    pub fn record(&self, name: &str, sample: HistorySample) {
        let mut rings = self.rings();
        let ring = rings
            .entry(name.to_owned())
            .or_insert_with(|| VecDeque::with_capacity(SAMPLES));
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The samples of `name`, oldest first.
    pub fn of(&self, name: &str) -> Vec<HistorySample> {
        self.rings()
            .get(name)
            .map(|ring| ring.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets the instances not in `names` (removed ones).
    pub fn keep_only(&self, names: &[&str]) {
        self.rings().retain(|name, _| names.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_ten_minutes() {
        let history = History::default();
        let sample = |at| HistorySample {
            at,
            sessions: 1,
            bytes_in: 0,
            bytes_out: 0,
            packages: 0,
        };
        for at in 0..(SAMPLES as u64 + 5) {
            history.record("A", sample(at));
        }
        let kept = history.of("A");
        assert_eq!((kept.len(), kept[0].at), (SAMPLES, 5));
        history.keep_only(&["B"]);
        assert!(history.of("A").is_empty());
    }
}
