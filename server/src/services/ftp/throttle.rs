//! Login throttling: after a wrong password, the next attempts from the same client address,
//! and for the same user name, wait progressively longer before they are checked (one after
//! the other, however many connections try at once); an address with too many recent failures
//! is refused for a while. A user name is only slowed, never locked out, so that nobody can
//! lock a user out by failing on purpose.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The wait after the first failure; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(4);
/// Failures are forgotten this long after the last one.
const MEMORY: Duration = Duration::from_secs(15 * 60);
/// Recent failures after which an address is refused (for `MEMORY` after its last failure).
const BAN_AFTER: u32 = 10;
/// Most addresses, and most user names, remembered; beyond, the oldest are forgotten.
const MAX_REMEMBERED: usize = 10_000;

/// The answer to a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the password after this long.
    After(Duration),
    /// The address has failed too often recently.
    Refused,
}

/// Failures by client address and by user name.
#[derive(Default)]
pub struct Throttle {
    addresses: Mutex<Failures<IpAddr>>,
    users: Mutex<Failures<String>>,
}

impl Throttle {
    /// Whether the address may try at all now.
    pub fn refuses(&self, address: IpAddr) -> bool {
        lock(&self.addresses).banned(&address, Instant::now())
    }

    /// A login attempt of `user` from `address`: when its password may be checked.
    pub fn admit(&self, address: IpAddr, user: &str) -> Admission {
        let now = Instant::now();
        let mut addresses = lock(&self.addresses);
        if addresses.banned(&address, now) {
            return Admission::Refused;
        }
        let by_address = addresses.take_turn(&address, now);
        let by_user = lock(&self.users).take_turn(user, now);
        Admission::After(by_address.max(by_user))
    }

    /// The attempt failed.
    pub fn failed(&self, address: IpAddr, user: &str) {
        let now = Instant::now();
        lock(&self.addresses).fail(address, now);
        lock(&self.users).fail(user.to_owned(), now);
    }

    /// The attempt succeeded: the user's failures are forgotten (the address's are not: one
    /// account of its own must not clear an address that guesses at others).
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).records.remove(user);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Failures<K> {
    records: HashMap<K, Record>,
}

impl<K> Default for Failures<K> {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
        }
    }
}

struct Record {
    /// Failures since the record was last forgotten.
    count: u32,
    last: Instant,
    /// When the next attempt may be checked.
    next: Instant,
}

impl<K: Hash + Eq> Failures<K> {
    fn recent<Q>(&mut self, key: &Q, now: Instant) -> Option<&mut Record>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let expired = self.records.get(key).is_some_and(|r| now - r.last > MEMORY);
        if expired {
            self.records.remove(key);
        }
        self.records.get_mut(key)
    }

    fn banned<Q>(&mut self, key: &Q, now: Instant) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.recent(key, now).is_some_and(|r| r.count >= BAN_AFTER)
    }

    /// The wait of the next attempt for `key`, which takes its turn: attempts made at once
    /// are checked one after the other.
    fn take_turn<Q>(&mut self, key: &Q, now: Instant) -> Duration
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(record) = self.recent(key, now) else {
            return Duration::ZERO;
        };
        let turn = record.next.max(now);
        record.next = turn + delay(record.count);
        turn - now
    }

    fn fail(&mut self, key: K, now: Instant) {
        if !self.records.contains_key(&key) && self.records.len() >= MAX_REMEMBERED {
            self.records.retain(|_, r| now - r.last <= MEMORY);
            if self.records.len() >= MAX_REMEMBERED
                && let Some(oldest) = self.records.values().map(|r| r.last).min()
            {
                self.records.retain(|_, r| r.last != oldest);
            }
        }
        let record = self.records.entry(key).or_insert(Record {
            count: 0,
            last: now,
            next: now,
        });
        record.count += 1;
        record.last = now;
        record.next = record.next.max(now + delay(record.count));
    }
}

/// The wait after `failures` failures.
fn delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_DELAY.saturating_mul(1 << (n - 1).min(16)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test(start_paused = true)]
    async fn waits_grow_per_address_and_user_and_queue_one_after_another() {
        let throttle = Throttle::default();
        assert_eq!(throttle.admit(ADDRESS, "alice"), Admission::After(Duration::ZERO));
        throttle.failed(ADDRESS, "alice");
        // The next attempt waits; one made at the same moment waits behind it.
        assert_eq!(throttle.admit(ADDRESS, "bob"), Admission::After(FIRST_DELAY));
        assert_eq!(throttle.admit(ADDRESS, "carol"), Admission::After(FIRST_DELAY * 2));
        // Another address, the same user: slowed by the user's failures.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(throttle.admit(other, "alice"), Admission::After(FIRST_DELAY));
        assert_eq!(throttle.admit(other, "dave"), Admission::After(Duration::ZERO));
        // Waits double, up to the bound.
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(40), MAX_DELAY);
        // A success forgets the user's failures, not the address's.
        throttle.succeeded("alice");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.admit(other, "alice"), Admission::After(Duration::ZERO));
        assert_eq!(throttle.admit(ADDRESS, "erin"), Admission::After(Duration::ZERO));
        assert_eq!(
            throttle.admit(ADDRESS, "frank"),
            Admission::After(FIRST_DELAY),
            "the address's failure is remembered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_fails_too_often_is_refused_for_a_while() {
        let throttle = Throttle::default();
        for n in 0..BAN_AFTER {
            assert!(!throttle.refuses(ADDRESS), "after {n}");
            throttle.failed(ADDRESS, &format!("user{n}"));
        }
        assert!(throttle.refuses(ADDRESS));
        assert_eq!(throttle.admit(ADDRESS, "anyone"), Admission::Refused);
        tokio::time::advance(MEMORY + Duration::from_secs(1)).await;
        assert!(!throttle.refuses(ADDRESS), "forgotten after a while");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let throttle = Throttle::default();
        for n in 0..MAX_REMEMBERED as u32 + 100 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(n));
            throttle.failed(address, "same");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(lock(&throttle.addresses).records.len() <= MAX_REMEMBERED);
    }
}
