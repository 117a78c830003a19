//! The per-worker front of the shared decision cache: a few decoded decisions, checked
//! before proxy-wasm shared data so that a repeated credential on the same worker skips
//! the host copy and the decode. Same rules as the shared slots: an entry is served only
//! for exactly its key (all 32 bytes compared) and never at or past its expiry. It only
//! ever holds what a shared slot held fresh, so it changes nothing across workers: a miss
//! here is a read of shared data as before.

use std::rc::Rc;

use crate::cache::shared::{Decision, Key};

/// Slots per worker: memory ≤ this × `MAX_ENTRY_BYTES`.
pub const LOCAL_SLOTS: usize = 64;

/// A fixed array of slots addressed by the key (bytes other than the shared slot's).
pub struct LocalCache {
    slots: Vec<Option<(Key, u64, Rc<Decision>)>>,
}

impl Default for LocalCache {
    fn default() -> Self {
        LocalCache { slots: vec![None; LOCAL_SLOTS] }
    }
}

impl LocalCache {
    /// The decision for exactly `key`, if it is still fresh at `now_ms` (Unix ms).
    pub fn get(&self, key: &Key, now_ms: u64) -> Option<Rc<Decision>> {
        match &self.slots[index(key)] {
            Some((k, expires_ms, decision)) if k == key && now_ms < *expires_ms => Some(decision.clone()),
            _ => None,
        }
    }

    /// Keeps `decision` for `key` until `expires_ms`, replacing what its slot held.
    pub fn put(&mut self, key: Key, expires_ms: u64, decision: Rc<Decision>) {
        self.slots[index(&key)] = Some((key, expires_ms, decision));
    }
}

fn index(key: &Key) -> usize {
    usize::from(key.0[31]) % LOCAL_SLOTS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn allow(actor: &str) -> Rc<Decision> {
        Rc::new(Decision::Allow { inject: vec![("x-nebula-actor-id".into(), actor.into())], cookies: vec![] })
    }

    #[test]
    fn served_only_for_the_exact_key_and_before_expiry() {
        let mut local = LocalCache::default();
        let key = Key([7; 32]);
        assert_eq!(local.get(&key, 0), None);
        local.put(key, 1_000, allow("alice"));
        assert_eq!(local.get(&key, 999), Some(allow("alice")));
        assert_eq!(local.get(&key, 1_000), None, "expired at its expiry");
        // Same slot (same last byte), one other byte: never served.
        let mut other = key;
        other.0[0] = 8;
        assert_eq!(local.get(&other, 0), None);
        // A colliding key replaces the slot; the first key is then a miss, not a wrong hit.
        local.put(other, 5_000, allow("bob"));
        assert_eq!(local.get(&key, 0), None);
        assert_eq!(local.get(&other, 0), Some(allow("bob")));
    }
}
