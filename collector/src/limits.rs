//! Limits that keep one peer from taking what others need: token buckets
//! per key (messages per agent, enrollments per address) and counted slots
//! per key (handshakes and connections per address, diagnostics in flight
//! per specialist). Each map forgets keys it no longer needs, so a peer
//! changing its key cannot grow it without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Keys a bucket map holds before it forgets the full ones.
const BUCKETS_REMEMBERED: usize = 50_000;

/// One token bucket: `rate` a second, up to `burst` at once.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Full, with `extra` tokens on top of the burst once.
    pub fn new(rate: f64, burst: f64, extra: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst + extra,
            at: Instant::now(),
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Whether it would be full by `now`: a key holding it can be forgotten.
    fn full_at(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate >= self.burst
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        // Tokens above the burst (the extra) are kept until spent.
        self.tokens = (self.tokens + refill).min(self.burst.max(self.tokens));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket per key: `rate` a second, up to `burst` at once.
pub struct PerKey<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    pub fn new(rate: f64, burst: f64) -> Self {
        PerKey {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, if it has one.
    pub fn allow(&self, key: &K) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > BUCKETS_REMEMBERED {
            let now = Instant::now();
            buckets.retain(|_, b| !b.full_at(now));
        }
        match buckets.get_mut(key) {
            Some(b) => b.take(),
            None => buckets
                .entry(key.clone())
                .or_insert(Bucket::new(self.rate, self.burst, 0.0))
                .take(),
        }
    }
}

/// At most `max` held at once per key.
pub struct Slots<K: Eq + Hash> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One slot, given back when dropped.
pub struct Slot<K: Eq + Hash> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `key`, unless it holds `max` already.
    pub fn try_hold(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key: key.clone(),
        })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_refuses() {
        let b = PerKey::new(0.001, 3.0);
        assert!((0..3).all(|_| b.allow(&"a")));
        assert!(!b.allow(&"a"));
        assert!(b.allow(&"b"), "another key has its own bucket");
    }

    #[test]
    fn a_single_bucket_spends_its_extra_once() {
        let mut b = Bucket::new(0.001, 2.0, 3.0);
        assert!((0..5).all(|_| b.take()));
        assert!(!b.take());
    }

    #[test]
    fn slots_are_counted_per_key_and_given_back() {
        let s = Slots::new(2);
        let a1 = s.try_hold(&1).expect("first");
        let _a2 = s.try_hold(&1).expect("second");
        assert!(s.try_hold(&1).is_none(), "a third is refused");
        assert!(s.try_hold(&2).is_some(), "another key is not held up");
        drop(a1);
        assert_eq!(s.held(&1), 1);
        assert!(s.try_hold(&1).is_some());
    }
}
