//! Login throttling: after a wrong password, the next attempts from the same client, and for
//! the same user name, wait before they are checked, longer with each failure (the wait is
//! counted from the last failure and does not add up over attempts made at once); a client
//! with too many recent failures, attempts under way included, is refused for a while. A user
//! name is only slowed, never locked out, so that nobody can lock a user out by failing on
//! purpose. A client is its IPv4 address or its IPv6 /64; a user name is remembered by at most
//! its first `NAME_KEY` bytes.

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

/// The answer to a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the password after this long, then report the outcome.
    After(Duration),
    /// The client has failed too often recently.
    Refused,
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
        let by_client = clients.begin(client, now);
        let by_user = lock(&self.users).wait(name(user), now);
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
            users.records.remove(name(user));
        } else {
            users.fail(name(user).to_owned(), now);
        }
    }
}

/// An admitted attempt until its outcome is known: settled, or dropped (its connection closed
/// while it waited), when it no longer counts toward the client's ban.
pub struct UnderWay<'a> {
    throttle: &'a Throttle,
    address: IpAddr,
    open: bool,
}

impl<'a> UnderWay<'a> {
    /// Follows an [`Admission::After`] of `address`.
    pub fn new(throttle: &'a Throttle, address: IpAddr) -> Self {
        Self {
            throttle,
            address,
            open: true,
        }
    }

    /// Reports the outcome.
    pub fn settle(mut self, user: &str, admitted: bool) {
        self.open = false;
        self.throttle.settled(self.address, user, admitted);
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if self.open {
            lock(&self.throttle.clients).end(client(self.address), Instant::now(), false);
        }
    }
}

/// The client an address stands for: an IPv4 address, or an IPv6 /64 (one machine's share).
fn client(address: IpAddr) -> IpAddr {
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
        UnderWay::new(throttle, address).settle(user, false);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_with_failures_and_do_not_add_up() {
        let throttle = Throttle::default();
        fail(&throttle, ADDRESS, "alice");
        // Attempts made at once all wait the same, however many.
        for _ in 0..5 {
            assert_eq!(throttle.admit(ADDRESS, "bob"), Admission::After(FIRST_DELAY));
        }
        // Another address, the same user: slowed by the user's failures; another user is not.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(throttle.admit(other, "alice"), Admission::After(FIRST_DELAY));
        assert_eq!(throttle.admit(other, "dave"), Admission::After(Duration::ZERO));
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(40), MAX_DELAY);
        // A success forgets the user's failures.
        UnderWay::new(&throttle, other).settle("alice", true);
        assert_eq!(throttle.admit(other, "alice"), Admission::After(Duration::ZERO));
        // Once the wait has passed, no wait.
        tokio::time::advance(FIRST_DELAY).await;
        assert_eq!(throttle.admit(ADDRESS, "erin"), Admission::After(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_cannot_be_locked_out_by_others() {
        let throttle = Throttle::default();
        for n in 0..1000u32 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n));
            fail(&throttle, address, "alice");
        }
        // The user's own attempt waits at most the longest wait.
        let own: IpAddr = "10.0.0.1".parse().unwrap();
        match throttle.admit(own, "alice") {
            Admission::After(wait) => assert!(wait <= MAX_DELAY, "{wait:?}"),
            Admission::Refused => panic!("refused"),
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
            under_way.push(UnderWay::new(&throttle, ADDRESS));
        }
        assert_eq!(throttle.admit(ADDRESS, "x"), Admission::Refused);
        drop(under_way.pop());
        assert_ne!(throttle.admit(ADDRESS, "x"), Admission::Refused);
        under_way.push(UnderWay::new(&throttle, ADDRESS));
        for attempt in under_way {
            attempt.settle("x", true);
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
