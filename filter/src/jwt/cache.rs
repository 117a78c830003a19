//! Tokens this worker has already verified, so a client repeating its token (as real
//! clients do) costs a SHA-256 and a map lookup instead of a signature check.
//!
//! Keyed by the token's SHA-256 (a collision would be needed to reuse another token's
//! entry), bounded, and an entry never outlives the token's `exp` (+ leeway) nor the
//! key set it was verified with.

use std::collections::HashMap;
use std::rc::Rc;

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    hmac_sha256::Hash::hash(token.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub provider: usize,
    /// The provider's key generation when verified; a key rotation invalidates it.
    pub generation: u64,
    /// Unix time (ms) after which the token is expired.
    pub valid_until_ms: u64,
    /// The claim headers to inject.
    pub headers: Rc<[(String, String)]>,
}

#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<TokenHash, Entry>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache { entries: HashMap::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `hash` if it is still valid at `now_ms` for `generation` (`generation`
    /// is asked per provider, hence the closure).
    pub fn get(&self, hash: &TokenHash, now_ms: u64, generation: impl Fn(usize) -> u64) -> Option<&Entry> {
        self.entries.get(hash).filter(|e| now_ms <= e.valid_until_ms && e.generation == generation(e.provider))
    }

    /// Remembers a verified token; when full, expired entries go first, then any one.
    pub fn insert(&mut self, hash: TokenHash, entry: Entry, now_ms: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, e| now_ms <= e.valid_until_ms);
            if self.entries.len() >= self.capacity {
                if let Some(victim) = self.entries.keys().next().copied() {
                    self.entries.remove(&victim);
                }
            }
        }
        self.entries.insert(hash, entry);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(provider: usize, generation: u64, valid_until_ms: u64) -> Entry {
        Entry { provider, generation, valid_until_ms, headers: Rc::from(vec![("x-a".to_owned(), "1".to_owned())]) }
    }

    #[test]
    fn entries_expire_and_follow_the_key_generation() {
        let mut c = VerifiedCache::new(4);
        let h = token_hash("a.b.c");
        c.insert(h, entry(0, 7, 1_000), 0);
        assert!(c.get(&h, 1_000, |_| 7).is_some());
        assert!(c.get(&h, 1_001, |_| 7).is_none(), "expired");
        assert!(c.get(&h, 10, |_| 8).is_none(), "keys changed since");
        assert!(c.get(&token_hash("a.b.d"), 10, |_| 7).is_none());
    }

    #[test]
    fn bounded_expired_first() {
        let mut c = VerifiedCache::new(2);
        c.insert(token_hash("1"), entry(0, 0, 10), 0);
        c.insert(token_hash("2"), entry(0, 0, 1_000), 0);
        c.insert(token_hash("3"), entry(0, 0, 1_000), 500);
        assert_eq!(c.len(), 2);
        assert!(c.get(&token_hash("2"), 500, |_| 0).is_some(), "the expired entry was evicted, not this one");
        c.insert(token_hash("4"), entry(0, 0, 1_000), 500);
        assert_eq!(c.len(), 2, "still bounded when nothing has expired");
        assert!(c.get(&token_hash("4"), 500, |_| 0).is_some());
        let mut off = VerifiedCache::new(0);
        off.insert(token_hash("1"), entry(0, 0, 10), 0);
        assert!(off.is_empty(), "cache_entries 0 disables the cache");
    }
}
