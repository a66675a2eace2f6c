//! What the outbound side remembers about destinations for a while — not a meshlet proxy
//! (`auto`), proved to be one, virtual (a Service address), bulk — as one bounded map of
//! deadlines: a scan of many addresses cannot grow memory without end, and an expired entry is
//! gone the first time it is asked about. Each new outbound connection asks several of these
//! maps, and most are empty most of the time, so an empty map answers without its lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ExpiringMap<K, V = ()> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    /// `entries.len()`, kept beside it (written under the lock) for the lock-free empty check.
    len: AtomicUsize,
    capacity: usize,
}

impl<K: Eq + Hash + Copy, V: Copy> ExpiringMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        ExpiringMap {
            entries: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// The value remembered for `key`, if its time has not run out.
    pub fn get(&self, key: K) -> Option<V> {
        if self.is_empty() {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        match entries.get(&key) {
            Some((until, value)) if *until > Instant::now() => Some(*value),
            Some(_) => {
                entries.remove(&key);
                self.len.store(entries.len(), Ordering::Release);
                None
            }
            None => None,
        }
    }

    /// Remembers `key` with `value` for `ttl`; true when it was not remembered before (or its
    /// time had run out). When full, expired entries go first, then the one closest to expiry.
    pub fn insert(&self, key: K, value: V, ttl: Duration) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        let now = Instant::now();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= self.capacity {
                if let Some(soonest) = entries.iter().min_by_key(|(_, (u, _))| *u).map(|(k, _)| *k)
                {
                    entries.remove(&soonest);
                }
            }
        }
        let fresh = entries
            .insert(key, (now + ttl, value))
            .is_none_or(|(until, _)| until <= now);
        self.len.store(entries.len(), Ordering::Release);
        fresh
    }

    /// The value remembered for `key`, if its time has not run out; forgotten either way.
    pub fn take(&self, key: K) -> Option<V> {
        if self.is_empty() {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        let taken = entries.remove(&key);
        self.len.store(entries.len(), Ordering::Release);
        taken.and_then(|(until, value)| (until > Instant::now()).then_some(value))
    }

    /// Forgets `key`.
    pub fn remove(&self, key: K) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&key);
            self.len.store(entries.len(), Ordering::Release);
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_new_again_after() {
        let map: ExpiringMap<u16> = ExpiringMap::new(8);
        assert!(map.insert(1, (), Duration::from_millis(30)));
        assert!(
            !map.insert(1, (), Duration::from_millis(30)),
            "still remembered"
        );
        assert_eq!(map.get(1), Some(()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(map.get(1), None);
        assert!(
            map.is_empty(),
            "an expired entry is dropped when asked about"
        );
        assert!(map.insert(1, (), Duration::from_secs(1)));
    }

    #[test]
    fn a_full_map_drops_the_entry_closest_to_expiry() {
        let map: ExpiringMap<u16, u8> = ExpiringMap::new(3);
        map.insert(1, 10, Duration::from_secs(100));
        map.insert(2, 20, Duration::from_secs(1));
        map.insert(3, 30, Duration::from_secs(100));
        map.insert(4, 40, Duration::from_secs(100));
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(2), None);
        assert_eq!(map.get(4), Some(40));
        map.remove(4);
        assert_eq!(map.get(4), None);
        assert_eq!(map.len(), 2, "the count follows removals");
    }
}
