//! Tokens this worker has already judged:
//! - verified ones, by the token's exact bytes, so a client repeating its token (as real
//!   clients do) costs a hash of the token's end and a word-wise compare instead of a
//!   signature check (a SHA-256 of the token cost more than the rest of a repeated
//!   token's request in the module; docs/jwt.md, "Performance"). The tokens stay in this worker's memory
//!   only, as the request itself; an entry never outlives the token's `exp` (+ leeway)
//!   nor the key set it was verified with;
//! - recent rejects, by the token's SHA-256 (a collision would be needed to reuse another
//!   token's entry), so the same invalid token sent again and again costs the same, and a
//!   flood of large forged tokens holds 32 bytes each, not the tokens.
//!
//! Both are bounded and evict the oldest entry first, in O(1): a flood of distinct
//! forged tokens holds at most `capacity` entries and never scans the map.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::rc::Rc;

use hashbrown::HashTable;
use serde_json::{Map, Value};

use crate::bytes::same_bytes;
use crate::jwt::reason::Reason;

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
    /// The verified claims, for `require` and `rules` (which depend on the path).
    pub claims: Rc<Map<String, Value>>,
}

#[derive(Debug)]
pub struct VerifiedCache {
    entries: Recent<Rc<str>, Entry>,
    hasher: foldhash::fast::RandomState,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache { entries: Recent::new(capacity), hasher: Default::default() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `token` if it is still valid at `now_ms` for `generation`
    /// (`generation` is asked per provider, hence the closure).
    pub fn get(&self, token: impl AsRef<[u8]>, now_ms: u64, generation: impl Fn(usize) -> u64) -> Option<&Entry> {
        let token = token.as_ref();
        let entry = self.entries.get(hash_token(&self.hasher, token), |key| same_bytes(key.as_bytes(), token))?;
        Some(entry).filter(|e| now_ms <= e.valid_until_ms && e.generation == generation(e.provider))
    }

    /// Remembers a verified token; when full, the oldest entry goes.
    pub fn insert(&mut self, token: &str, entry: Entry) {
        let hash = hash_token(&self.hasher, token.as_bytes());
        self.entries.insert(hash, |key| same_bytes(key.as_bytes(), token.as_bytes()), || Rc::from(token), entry);
    }
}

/// The token's length and its last 32 bytes (the signature's end): enough to spread
/// verified tokens, which differ there, and O(1) whatever the token's size. Only
/// verified tokens are inserted, so a client cannot crowd a bucket; a forged token that
/// shares a bucket costs one compare ([`same_bytes`]).
fn hash_token(hasher: &foldhash::fast::RandomState, bytes: &[u8]) -> u64 {
    let tail = &bytes[bytes.len().saturating_sub(32)..];
    hasher.hash_one((bytes.len(), tail))
}

/// A token found invalid, for the key generation it was judged with (`None`: before
/// any provider was chosen, so no key can change the verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    pub provider: Option<(usize, u64)>,
}

#[derive(Debug)]
pub struct RejectCache {
    entries: Recent<TokenHash, Rejected>,
    /// SipHash with random keys: rejects are inserted for any token a client sends.
    hasher: RandomState,
}

impl RejectCache {
    pub fn new(capacity: usize) -> RejectCache {
        RejectCache { entries: Recent::new(capacity), hasher: RandomState::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earlier verdict on `hash`, unless its provider's keys changed since.
    pub fn get(&self, hash: &TokenHash, generation: impl Fn(usize) -> u64) -> Option<Reason> {
        let r = self.entries.get(self.hasher.hash_one(hash), |key| key == hash)?;
        match r.provider {
            Some((provider, g)) if generation(provider) != g => None,
            _ => Some(r.reason),
        }
    }

    /// Remembers a verdict that stays true for the token: not `not_yet_valid` (time
    /// fixes it).
    pub fn insert(&mut self, hash: TokenHash, rejected: Rejected) {
        if rejected.reason != Reason::NotYetValid {
            self.entries.insert(self.hasher.hash_one(hash), |key| *key == hash, || hash, rejected);
        }
    }
}

/// A bounded map, oldest entry out first, in O(1). Its owner hashes and recognises the
/// keys (a token by its end and word-wise, a SHA-256 by SipHash), so one structure
/// serves both caches.
#[derive(Debug)]
struct Recent<K, V> {
    /// (hash, key, value): the hash kept for the table's growth and for eviction.
    table: HashTable<(u64, K, V)>,
    /// Insertion order; evicting the front keeps the table at `capacity`.
    order: VecDeque<(u64, K)>,
    capacity: usize,
}

impl<K: Clone + PartialEq, V> Recent<K, V> {
    fn new(capacity: usize) -> Recent<K, V> {
        Recent { table: HashTable::new(), order: VecDeque::new(), capacity }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The value of the key that hashes to `hash` and `is_key` recognises.
    fn get(&self, hash: u64, is_key: impl Fn(&K) -> bool) -> Option<&V> {
        self.table.find(hash, |(h, k, _)| *h == hash && is_key(k)).map(|(_, _, v)| v)
    }

    /// Replaces the value of an existing key in place, else inserts `key()` (the oldest
    /// entry goes when full); a capacity of 0 keeps nothing.
    fn insert(&mut self, hash: u64, is_key: impl Fn(&K) -> bool, key: impl FnOnce() -> K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some((_, _, slot)) = self.table.find_mut(hash, |(h, k, _)| *h == hash && is_key(k)) {
            *slot = value;
            return;
        }
        let key = key();
        self.table.insert_unique(hash, (hash, key.clone(), value), |(h, _, _)| *h);
        self.order.push_back((hash, key));
        while self.order.len() > self.capacity {
            let Some((hash, oldest)) = self.order.pop_front() else { break };
            if let Ok(found) = self.table.find_entry(hash, |(h, k, _)| *h == hash && *k == oldest) {
                found.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(provider: usize, generation: u64, valid_until_ms: u64) -> Entry {
        let headers = Rc::from(vec![("x-a".to_owned(), "1".to_owned())]);
        Entry { provider, generation, valid_until_ms, headers, claims: Rc::new(Map::new()) }
    }

    #[test]
    fn entries_expire_and_follow_the_key_generation() {
        let mut c = VerifiedCache::new(4);
        let h = "a.b.c";
        c.insert(h, entry(0, 7, 1_000));
        assert!(c.get(h, 1_000, |_| 7).is_some());
        assert!(c.get(h, 1_001, |_| 7).is_none(), "expired");
        assert!(c.get(h, 10, |_| 8).is_none(), "keys changed since");
        assert!(c.get("a.b.d", 10, |_| 7).is_none());
    }

    #[test]
    fn tokens_sharing_their_end_stay_apart() {
        // Same length and last 32 bytes: the same hash, told apart by the compare.
        let tail = "x".repeat(40);
        let (a, b) = (format!("aaaa.{tail}"), format!("bbbb.{tail}"));
        let mut c = VerifiedCache::new(4);
        c.insert(&a, entry(0, 0, 1_000));
        assert!(c.get(&b, 10, |_| 0).is_none(), "another token with the same end is not this one");
        c.insert(&b, entry(1, 0, 1_000));
        assert_eq!(
            (c.get(&a, 10, |_| 0).map(|e| e.provider), c.get(&b, 10, |_| 0).map(|e| e.provider)),
            (Some(0), Some(1))
        );
        assert!(c.get(&a[..a.len() - 1], 10, |_| 0).is_none(), "a prefix of a token is not the token");
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = VerifiedCache::new(2);
        c.insert("1", entry(0, 0, 10));
        c.insert("2", entry(0, 0, 1_000));
        c.insert("1", entry(0, 0, 20));
        assert_eq!(c.len(), 2, "a replaced entry is not a new one");
        c.insert("3", entry(0, 0, 1_000));
        assert_eq!(c.len(), 2);
        assert!(c.get("1", 5, |_| 0).is_none(), "the oldest went");
        assert!(c.get("2", 500, |_| 0).is_some());
        assert!(c.get("3", 500, |_| 0).is_some());
        let mut off = VerifiedCache::new(0);
        off.insert("1", entry(0, 0, 10));
        assert!(off.is_empty(), "cache_entries 0 disables the cache");
    }

    #[test]
    fn rejects_are_remembered_bounded_and_follow_the_keys() {
        let mut r = RejectCache::new(64);
        for i in 0..10_000 {
            let provider = Some((0, 1));
            r.insert(token_hash(&i.to_string()), Rejected { reason: Reason::Signature, provider });
        }
        assert_eq!((r.len(), r.entries.order.len()), (64, 64), "a flood of distinct tokens stays bounded");
        assert_eq!(r.get(&token_hash("9999"), |_| 1), Some(Reason::Signature));
        assert_eq!(r.get(&token_hash("9999"), |_| 2), None, "new keys: judge again");
        assert_eq!(r.get(&token_hash("0"), |_| 1), None, "evicted");
        r.insert(token_hash("m"), Rejected { reason: Reason::Malformed, provider: None });
        assert_eq!(r.get(&token_hash("m"), |_| 9), Some(Reason::Malformed));
        r.insert(token_hash("n"), Rejected { reason: Reason::NotYetValid, provider: Some((0, 1)) });
        assert_eq!(r.get(&token_hash("n"), |_| 1), None, "not yet valid is not remembered");
    }
}
