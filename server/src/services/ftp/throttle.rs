//! Login throttling: after a wrong password, the next attempts from the same client, and for
//! the same user name, wait before they are checked, longer with each failure. A client's wait
//! is counted from its last failure; a client with too many recent failures, attempts under way
//! included, is refused for a while. A user name's attempts are checked one `delay` apart (at
//! least `FIRST_DELAY`, even before any failure) however many clients make them at once, so
//! that guessing from many addresses is as slow as from one: an attempt waits behind those
//! already waiting, and one that would wait more than `USER_QUEUE` is refused at once. An
//! attempt whose connection closes gives its place back, so a user's own login waits only
//! behind attempts still open. A client is its IPv4 address or its IPv6 /64; a user name is
//! remembered by at most its first `NAME_KEY` bytes.

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
/// Recent failures (and attempts under way) after which a client is refused, until `MEMORY`
/// after its last failure.
const BAN_AFTER: u32 = 10;
/// Most clients, and most user names, remembered; beyond, the oldest are forgotten.
const MAX_REMEMBERED: usize = 10_000;
/// Bytes of a user name that key its record.
const NAME_KEY: usize = 64;
/// The longest an attempt waits behind others for the same user name.
const USER_QUEUE: Duration = Duration::from_secs(30);

/// The answer to a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the password after this long, then report the outcome.
    After(Duration),
    /// The client has failed too often recently.
    Refused,
    /// Too many attempts for this user name wait already.
    Busy,
}

/// Failures by client and by user name.
#[derive(Default)]
pub struct Throttle {
    clients: Mutex<Failures<IpAddr>>,
    users: Mutex<Failures<String>>,
}

impl Throttle {
    /// Whether the client may try at all now.
    pub fn refuses(&self, address: IpAddr) -> bool {
        lock(&self.clients).banned(&client(address), Instant::now())
    }

    /// A login attempt of `user` from `address`: when its password may be checked. An admitted
    /// attempt counts toward the client's ban until its outcome is known ([`UnderWay`]).
    pub fn admit(&self, address: IpAddr, user: &str) -> Admission {
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        let client = client(address);
        if clients.banned(&client, now) {
            return Admission::Refused;
        }
        let Some(by_user) = lock(&self.users).queue(name(user), now) else {
            return Admission::Busy;
        };
        let by_client = clients.begin(client, now);
        Admission::After(by_client.max(by_user))
    }

    /// The outcome of an admitted attempt.
    fn settled(&self, address: IpAddr, user: &str, admitted: bool) {
        let now = Instant::now();
        lock(&self.clients).end(client(address), now, !admitted);
        let mut users = lock(&self.users);
        if admitted {
            // The user's failures are forgotten (the client's are not: one account of its own
            // must not clear a client that guesses at others).
            users.records.remove(user);
        } else {
            users.end(user.to_owned(), now, true);
        }
    }

    /// An admitted attempt ended without an outcome: its connection closed while it waited.
    fn abandoned(&self, address: IpAddr, user: &str) {
        let now = Instant::now();
        lock(&self.clients).end(client(address), now, false);
        lock(&self.users).end(user.to_owned(), now, false);
    }
}

/// An admitted attempt until its outcome is known: settled, or dropped (its connection closed
/// while it waited), when it no longer counts toward the client's ban.
pub struct UnderWay<'a> {
    throttle: &'a Throttle,
    address: IpAddr,
    /// The user name's key.
    user: String,
    open: bool,
}

impl<'a> UnderWay<'a> {
    /// Follows an [`Admission::After`] of `user` from `address`.
    pub fn new(throttle: &'a Throttle, address: IpAddr, user: &str) -> Self {
        Self {
            throttle,
            address,
            user: name(user).to_owned(),
            open: true,
        }
    }

    /// Reports the outcome.
    pub fn settle(mut self, admitted: bool) {
        self.open = false;
        self.throttle.settled(self.address, &self.user, admitted);
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if self.open {
            self.throttle.abandoned(self.address, &self.user);
        }
    }
}

/// The client an address stands for: an IPv4 address, or an IPv6 /64 (one machine's share).
pub(super) fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The key of a user name: at most its first `NAME_KEY` bytes.
fn name(user: &str) -> &str {
    let mut end = user.len().min(NAME_KEY);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    &user[..end]
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

#[derive(Default)]
struct Record {
    /// Failures since the record was last forgotten.
    count: u32,
    /// Attempts admitted and not settled yet.
    under_way: u32,
    last: Option<Instant>,
}

impl<K: Hash + Eq> Failures<K> {
    fn recent<Q>(&mut self, key: &Q, now: Instant) -> Option<&mut Record>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let expired = self
            .records
            .get(key)
            .is_some_and(|r| r.under_way == 0 && r.last.is_none_or(|last| now - last > MEMORY));
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
        self.recent(key, now)
            .is_some_and(|r| r.count + r.under_way >= BAN_AFTER)
    }

    /// How long an attempt for `key` waits: `delay(failures)` after the last failure.
    fn wait<Q>(&mut self, key: &Q, now: Instant) -> Duration
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.recent(key, now) {
            Some(Record {
                count,
                last: Some(last),
                ..
            }) => (*last + delay(*count)).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// An attempt for `key` whose attempts are checked one at a time, `delay(failures)` apart,
    /// behind those waiting already: how long it waits, or `None` when that would be over
    /// `USER_QUEUE`. Admitted, it counts as under way until it [ends](Self::end).
    fn queue(&mut self, key: &str, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<str> + for<'k> From<&'k str>,
    {
        let wait = match self.recent(key, now) {
            // Attempts made at once are spaced even before the first failure, else a burst of
            // them would all be checked before any failed.
            Some(&mut Record { count, under_way, last }) => {
                let after_failure = last.map_or(Duration::ZERO, |last| {
                    (last + delay(count)).saturating_duration_since(now)
                });
                after_failure + delay(count).max(FIRST_DELAY) * under_way
            }
            None => Duration::ZERO,
        };
        if wait > USER_QUEUE {
            return None;
        }
        let key = K::from(key);
        self.make_room(&key, now);
        self.records.entry(key).or_default().under_way += 1;
        Some(wait)
    }

    /// An attempt for `key` begins; how long it waits.
    fn begin(&mut self, key: K, now: Instant) -> Duration {
        let wait = self.wait(&key, now);
        self.make_room(&key, now);
        self.records.entry(key).or_default().under_way += 1;
        wait
    }

    /// An attempt for `key` ended, failed or not.
    fn end(&mut self, key: K, now: Instant, failed: bool) {
        if let Some(record) = self.records.get_mut(&key) {
            record.under_way = record.under_way.saturating_sub(1);
        }
        if failed {
            self.fail(key, now);
        }
    }

    fn fail(&mut self, key: K, now: Instant) {
        self.make_room(&key, now);
        let record = self.records.entry(key).or_default();
        record.count += 1;
        record.last = Some(now);
    }

    /// Forgets what has expired, then the oldest, so that a new key fits.
    fn make_room(&mut self, key: &K, now: Instant) {
        if self.records.contains_key(key) || self.records.len() < MAX_REMEMBERED {
            return;
        }
        self.records
            .retain(|_, r| r.under_way > 0 || r.last.is_some_and(|last| now - last <= MEMORY));
        if self.records.len() >= MAX_REMEMBERED
            && let Some(oldest) = self.records.values().filter_map(|r| r.last).min()
        {
            self.records.retain(|_, r| r.last != Some(oldest));
        }
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

    fn fail(throttle: &Throttle, address: IpAddr, user: &str) {
        assert_ne!(throttle.admit(address, user), Admission::Refused);
        UnderWay::new(throttle, address, user).settle(false);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_with_failures_and_do_not_add_up() {
        let throttle = Throttle::default();
        fail(&throttle, ADDRESS, "alice");
        // Attempts of a client made at once, for different users, all wait the same.
        for n in 0..5 {
            assert_eq!(
                throttle.admit(ADDRESS, &format!("bob{n}")),
                Admission::After(FIRST_DELAY)
            );
        }
        // Another address, the same user: slowed by the user's failures; another user is not.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(throttle.admit(other, "alice"), Admission::After(FIRST_DELAY));
        assert_eq!(throttle.admit(other, "dave"), Admission::After(Duration::ZERO));
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(40), MAX_DELAY);
        // A success forgets the user's failures.
        UnderWay::new(&throttle, other, "alice").settle(true);
        assert_eq!(throttle.admit(other, "alice"), Admission::After(Duration::ZERO));
        // Once the wait has passed, no wait.
        tokio::time::advance(FIRST_DELAY).await;
        assert_eq!(throttle.admit(ADDRESS, "erin"), Admission::After(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_users_attempts_at_once_are_spaced_before_any_failure_too() {
        let throttle = Throttle::default();
        let mut under_way = Vec::new();
        for n in 0..4u32 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n));
            assert_eq!(throttle.admit(address, "carol"), Admission::After(FIRST_DELAY * n));
            under_way.push(UnderWay::new(&throttle, address, "carol"));
        }
        for attempt in under_way {
            attempt.settle(true);
        }
        assert_eq!(throttle.admit(ADDRESS, "carol"), Admission::After(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_users_attempts_from_many_addresses_are_checked_one_delay_apart() {
        let throttle = Throttle::default();
        fail(&throttle, "10.0.0.1".parse().unwrap(), "alice");
        // A thousand addresses try at once: their checks are spaced, up to the queue's length.
        let mut waits = Vec::new();
        let mut under_way = Vec::new();
        for n in 0..1000u32 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n));
            match throttle.admit(address, "alice") {
                Admission::After(wait) => {
                    waits.push(wait);
                    under_way.push(UnderWay::new(&throttle, address, "alice"));
                }
                Admission::Busy => {}
                Admission::Refused => panic!("one attempt per address is no ban"),
            }
        }
        assert_eq!(waits.len() as u32, USER_QUEUE.as_millis() as u32 / 250, "{waits:?}");
        assert!(waits.windows(2).all(|w| w[1] - w[0] == FIRST_DELAY), "{waits:?}");
        // Attempts whose connections closed give their places back.
        under_way.truncate(2);
        let own: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(throttle.admit(own, "alice"), Admission::After(FIRST_DELAY * 3));
        UnderWay::new(&throttle, own, "alice").settle(true);
        // Nobody is shut out for long: once those waiting have failed, the next goes within
        // the longest wait.
        for attempt in under_way {
            attempt.settle(false);
        }
        match throttle.admit(own, "alice") {
            Admission::After(wait) => assert!(wait <= MAX_DELAY, "{wait:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_fails_too_often_is_refused_for_a_while() {
        let throttle = Throttle::default();
        for n in 0..BAN_AFTER {
            assert!(!throttle.refuses(ADDRESS), "after {n}");
            fail(&throttle, ADDRESS, &format!("user{n}"));
        }
        assert!(throttle.refuses(ADDRESS));
        assert_eq!(throttle.admit(ADDRESS, "anyone"), Admission::Refused);
        tokio::time::advance(MEMORY + Duration::from_secs(1)).await;
        assert!(!throttle.refuses(ADDRESS), "forgotten after a while");
        // Attempts under way count: the eleventh at once is refused; one whose connection
        // closed while it waited counts no more.
        let mut under_way = Vec::new();
        for _ in 0..BAN_AFTER {
            assert_ne!(throttle.admit(ADDRESS, "x"), Admission::Refused);
            under_way.push(UnderWay::new(&throttle, ADDRESS, "x"));
        }
        assert_eq!(throttle.admit(ADDRESS, "x"), Admission::Refused);
        drop(under_way.pop());
        assert_ne!(throttle.admit(ADDRESS, "x"), Admission::Refused);
        under_way.push(UnderWay::new(&throttle, ADDRESS, "x"));
        for attempt in under_way {
            attempt.settle(true);
        }
        assert!(!throttle.refuses(ADDRESS), "successes are no failures");
        // An IPv6 /64 is one client.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for n in 0..BAN_AFTER {
            fail(&throttle, if n % 2 == 0 { a } else { b }, "y");
        }
        assert!(throttle.refuses("2001:db8::3".parse().unwrap()));
        assert!(!throttle.refuses("2001:db8:0:1::3".parse().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let throttle = Throttle::default();
        let long = "u".repeat(1 << 20);
        for n in 0..MAX_REMEMBERED as u32 + 100 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(n));
            fail(&throttle, address, &format!("{n}{long}"));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(lock(&throttle.clients).records.len() <= MAX_REMEMBERED);
        let users = lock(&throttle.users);
        assert!(users.records.len() <= MAX_REMEMBERED);
        assert!(users.records.keys().all(|k| k.len() <= NAME_KEY));
    }
}
