//! Short-lived copies of rows that every issuance reads and that almost
//! never change (the issuing CA, the profile, an organisation's webhooks).
//!
//! Each read would otherwise be a database round trip on the hot path. A
//! copy is served for at most [`FRESH_FOR`]; every write this process makes
//! to the table clears the copies at once, so on this instance a change
//! takes effect for the next request. Another instance's change reaches
//! this one within [`FRESH_FOR`] — the same bound the OCSP cache has.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);

/// Shared by every clone of a handle, so a write through one clears what
/// the others read.
#[derive(Debug)]
pub(super) struct Recent<K, V> {
    inner: Arc<Inner<K, V>>,
}

#[derive(Debug)]
struct Inner<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    /// Counts clears: a row read before a clear must not be remembered
    /// after it.
    generation: AtomicU64,
}

/// Taken before a read; [`Recent::put`] remembers the row only if no
/// write cleared the cache meanwhile.
pub(super) struct Ticket(u64);

impl<K, V> Clone for Recent<K, V> {
    fn clone(&self) -> Self {
        Recent {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent {
            inner: Arc::new(Inner {
                entries: Mutex::default(),
                generation: AtomicU64::new(0),
            }),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.inner.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        (at.elapsed() < FRESH_FOR).then(|| value.clone())
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.inner.generation.load(Ordering::Acquire))
    }

    pub fn put(&self, key: K, value: V, ticket: Ticket) {
        let Ok(mut entries) = self.inner.entries.lock() else {
            return;
        };
        // Checked under the lock that `clear` takes too.
        if self.inner.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.inner.entries.lock() {
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
        }
    }

    /// The cached value of `key`, or `read`'s (remembered). `read` is
    /// called only on a miss, so a hit builds no query.
    pub async fn get_or_read<E, F, R>(&self, key: K, read: R) -> Result<V, E>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<V, E>>,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let ticket = self.ticket();
        let v = read().await?;
        self.put(key, v.clone(), ticket);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clear_during_a_read_keeps_the_old_row_out() {
        let cache: Recent<u8, &str> = Recent::default();
        let ticket = cache.ticket();
        cache.clear(); // a write lands while the read is in flight
        cache.put(1, "old", ticket);
        assert_eq!(cache.get(&1), None);
        let v: Result<_, ()> = cache.get_or_read(1, || async { Ok("new") }).await;
        assert_eq!(v, Ok("new"));
        assert_eq!(cache.get(&1), Some("new"));
        cache.clear();
        assert_eq!(cache.get(&1), None);
    }
}
