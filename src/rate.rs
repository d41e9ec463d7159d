//! Rate limits: a token bucket, and [`Limiter`], a bounded set of buckets
//! keyed by client, for bounding what one client may create (sessions per
//! IP address, say). Time follows tokio's clock.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `burst` tokens, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Reserves one token and returns how long to wait before using it
    /// (zero when one was there). Callers that share a bucket each wait
    /// their turn, so together they keep to the rate.
    pub(crate) fn reserve(&mut self) -> Duration {
        self.refill(Instant::now());
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes one token if one is there.
    fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Allows each key (a client) `burst` actions at once and `per_second`
/// after that; refuses the rest. Memory is bounded: at most `max_keys`
/// clients are tracked; when that many are, clients whose bucket has
/// refilled are forgotten (looked for at most once a second), and if none
/// has, new clients are refused until one does (the limiter fails closed).
///
/// Use it to bound session creation per client, keyed with
/// [`client_key`] of the peer address:
///
/// ```
/// use std::net::IpAddr;
/// use statetemplate::rate::{Limiter, client_key};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pages = Limiter::new(1.0, 3); // 3 page loads at once, then 1 a second
/// let ip: IpAddr = "203.0.113.7".parse().unwrap();
/// assert!((0..3).all(|_| pages.check(client_key(ip))));
/// assert!(!pages.check(client_key(ip))); // answer 429, create no session
/// # }
/// ```
pub struct Limiter<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    map: HashMap<K, Bucket>,
    /// When the map was last swept for refilled buckets: at most one sweep
    /// (a pass over every key) per refill time, so that a stream of new
    /// keys while full costs no pass each.
    swept: Instant,
}

impl<K> fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("per_second", &self.rate)
            .field("burst", &self.burst)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Limiter<K> {
    /// `burst` actions at once per key, then `per_second`; tracks at most
    /// 100,000 keys (see [`Limiter::max_keys`]).
    ///
    /// # Panics
    /// If `per_second` is not positive or `burst` is 0.
    pub fn new(per_second: f64, burst: u32) -> Limiter<K> {
        assert!(per_second > 0.0, "per_second must be positive");
        assert!(burst > 0, "burst must be at least 1");
        Limiter {
            rate: per_second,
            burst: f64::from(burst),
            max_keys: 100_000,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// The most keys tracked at once (each costs about 64 bytes).
    pub fn max_keys(mut self, n: usize) -> Limiter<K> {
        self.max_keys = n.max(1);
        self
    }

    /// Whether `key` may act now; if so, it is counted.
    pub fn check(&self, key: K) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("lock");
        if !b.map.contains_key(&key) && b.map.len() >= self.max_keys {
            let refill = Duration::from_secs_f64(self.burst / self.rate);
            if now.saturating_duration_since(b.swept) >= refill.min(Duration::from_secs(1)) {
                b.map.retain(|_, bucket| !bucket.is_full(now));
                b.swept = now;
            }
            if b.map.len() >= self.max_keys {
                return false;
            }
        }
        b.map
            .entry(key)
            .or_insert_with(|| Bucket {
                at: now,
                ..Bucket::new(self.rate, self.burst)
            })
            .try_take(now)
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().expect("lock").map.len()
    }
}

/// The key of a client address for a [`Limiter`]: the address itself for
/// IPv4, its /64 network for IPv6 (one host holds a whole /64, so keying
/// by the full address would let it rotate without limit).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = Limiter::new(2.0, 3);
        assert_eq!((0..5).filter(|_| l.check("a")).count(), 3);
        assert!(l.check("b"), "keys are separate");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.check("a"));
        assert!(!l.check("a"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            (0..5).filter(|_| l.check("a")).count(),
            3,
            "refilled to the burst only"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_keys_fail_closed_then_recover() {
        let l = Limiter::new(1.0, 1).max_keys(2);
        assert!(l.check(1) && l.check(2));
        assert!(!l.check(3), "two busy keys are tracked: a third is refused");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.check(3), "refilled keys are forgotten to make room");
        assert!(l.tracked() <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_spaces_shared_callers() {
        let mut b = Bucket::new(10.0, 2.0);
        let waits: Vec<u128> = (0..5).map(|_| b.reserve().as_millis()).collect();
        assert_eq!(waits, [0, 0, 100, 200, 300]);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
