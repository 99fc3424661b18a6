//! Session ids: unique in the host for its lifetime, and unguessable, so that knowing one's
//! own id (`WHOAMI`) tells nothing of the others'.
//!
//! Each process of the host counts its sessions in a range of its own (an agent gets its range
//! from the host) and shows each count through one secret permutation of the 64-bit numbers:
//! distinct counts give distinct ids, and without the key the ids look random. The permutation
//! is a four-round Feistel network over the two 32-bit halves whose round function is SipHash
//! keyed with the host's 128-bit key (Luby–Rackoff: a pseudo-random permutation when the round
//! function is a pseudo-random function).

use std::fmt;
use std::hash::Hasher;
use std::io::Read;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Opaque session id, unique in the host for its lifetime; shown as lower-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

/// The next count of this process.
static NEXT: AtomicU64 = AtomicU64::new(1);
/// The key of the permutation, the same in the host and its agents.
static KEY: OnceLock<[u64; 2]> = OnceLock::new();

impl SessionId {
    /// A fresh id.
    pub(crate) fn next() -> Self {
        Self(permute(key(), NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Makes this process count from `first` with the host's `key` (an agent gets a range of
    /// its own, so ids stay unique in the host).
    pub(crate) fn start_at(first: u64, key: [u64; 2]) {
        NEXT.store(first.max(1), Ordering::Relaxed);
        let _ = KEY.set(key);
    }

    /// The key of this process, for an agent it starts.
    pub(crate) fn key() -> [u64; 2] {
        key()
    }

    /// The id as it travels between processes.
    pub(crate) fn to_wire(self) -> u64 {
        self.0
    }

    /// An id that travelled between processes.
    pub(crate) fn from_wire(id: u64) -> Self {
        Self(id)
    }
}

fn key() -> [u64; 2] {
    *KEY.get_or_init(random_key)
}

/// 128 bits from the kernel's random source; if it cannot be read, from the standard
/// library's randomly keyed hasher (which the kernel seeded too).
fn random_key() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_ok() {
        let (a, b) = bytes.split_at(8);
        return [
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ];
    }
    let seeded = std::collections::hash_map::RandomState::new();
    [0u64, 1].map(|n| std::hash::BuildHasher::hash_one(&seeded, n))
}

/// The permutation of `count` under `key`.
fn permute(key: [u64; 2], count: u64) -> u64 {
    let (mut left, mut right) = ((count >> 32) as u32, count as u32);
    for round in 0..4u8 {
        (left, right) = (right, left ^ round_function(key, round, right));
    }
    (u64::from(left) << 32) | u64::from(right)
}

fn round_function(key: [u64; 2], round: u8, half: u32) -> u32 {
    // SipHash-2-4 with our own key: std's keyed hasher, deprecated only as a default choice of
    // hasher for maps.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(key[0], key[1]);
    hasher.write_u8(round);
    hasher.write_u32(half);
    hasher.finish() as u32
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn counts_map_to_distinct_ids_that_look_random() {
        let key = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
        let ranges = [1..20_001u64, (1 << 40)..(1 << 40) + 20_000];
        let ids: Vec<u64> = ranges.into_iter().flatten().map(|n| permute(key, n)).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "a permutation");
        // Neighbouring counts are far apart, and about half the bits differ.
        let close = ids.windows(2).filter(|w| w[0].abs_diff(w[1]) < 1 << 32).count();
        assert!(close < 10, "{close} neighbours within 2^32");
        let flipped: u32 = ids.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(flipped) / (ids.len() - 1) as f64;
        assert!((28.0..36.0).contains(&mean), "{mean} bits differ on average");
        // Another key, other ids.
        assert_ne!(permute(key, 1), permute([key[0] ^ 1, key[1]], 1));
    }

    #[test]
    fn ids_read_back_from_their_text() {
        let id = SessionId(0xdead_beef_0042);
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
    }
}
