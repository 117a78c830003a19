//! The per-worker front of the shared decision cache: a few decoded decisions, checked
//! before proxy-wasm shared data so that a repeated credential on the same worker skips
//! the host copy, the decode and the SHA-256 of the key. Same rules as the shared slots:
//! an entry is served only for exactly its inputs (every byte the key would hash,
//! [`CacheSettings::key_input`], compared as they are) and never at or past its expiry.
//! A fast, unkeyed hash only picks the slot: crafted collisions can evict an entry (a
//! read of shared data then, as before), never serve another one. The inputs hold the
//! credential, so they stay in this worker's memory: shared data only ever sees the
//! SHA-256 key. It only ever holds what a shared slot held fresh, so it changes nothing
//! across workers.
//!
//! [`CacheSettings::key_input`]: crate::cache::shared::CacheSettings::key_input

use std::hash::BuildHasher;
use std::rc::Rc;

use crate::bytes::same_bytes;
use crate::cache::shared::{Decision, Key};

/// Slots per worker.
pub const LOCAL_SLOTS: usize = 64;
/// Longer inputs (a huge token) are not kept here: memory ≤ slots × this + decisions.
pub const MAX_LOCAL_INPUT: usize = 4096;

struct Slot {
    input: Box<[u8]>,
    /// The SHA-256 key of `input`, to forget it on a denial.
    key: Key,
    expires_ms: u64,
    decision: Rc<Decision>,
}

/// A fixed array of slots addressed by a hash of the inputs.
pub struct LocalCache {
    slots: Vec<Option<Slot>>,
}

impl Default for LocalCache {
    fn default() -> Self {
        LocalCache { slots: (0..LOCAL_SLOTS).map(|_| None).collect() }
    }
}

impl LocalCache {
    /// The decision for exactly `input`, if it is still fresh at `now_ms` (Unix ms).
    pub fn get(&self, input: &[u8], now_ms: u64) -> Option<Rc<Decision>> {
        match &self.slots[index(input)] {
            Some(slot) if now_ms < slot.expires_ms && same_bytes(&slot.input, input) => Some(slot.decision.clone()),
            _ => None,
        }
    }

    /// Forgets `key`'s decision (a denial of that key ends its allow on this worker).
    /// A scan of the slots: denials are rare next to hits, and the input is not at hand.
    pub fn remove(&mut self, key: &Key) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|slot| slot.key == *key) {
                *slot = None;
            }
        }
    }

    /// Keeps `decision` for `input` (whose SHA-256 key is `key`) until `expires_ms`,
    /// replacing what its slot held.
    pub fn put(&mut self, input: &[u8], key: Key, expires_ms: u64, decision: Rc<Decision>) {
        if input.len() <= MAX_LOCAL_INPUT {
            self.slots[index(input)] = Some(Slot { input: input.into(), key, expires_ms, decision });
        }
    }
}

fn index(input: &[u8]) -> usize {
    // foldhash with its fixed seed: deterministic, and only a slot number (SipHash cost
    // several times as much in the module, measured with `make bench-callgrind`).
    (foldhash::fast::FixedState::default().hash_one(input) % LOCAL_SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn allow(actor: &str) -> Rc<Decision> {
        Rc::new(Decision::Allow {
            inject: vec![("x-nebula-actor-id".into(), actor.into())],
            cookies: vec![],
            extra: None,
        })
    }

    /// Another input in the same slot as `input`.
    fn colliding(input: &[u8]) -> Vec<u8> {
        (0u32..)
            .map(|i| [input, &i.to_be_bytes()].concat())
            .find(|other| index(other) == index(input))
            .expect("some input shares the slot")
    }

    #[test]
    fn served_only_for_the_exact_key_and_before_expiry() {
        let mut local = LocalCache::default();
        let key = [7u8; 32];
        assert_eq!(local.get(&key, 0), None);
        local.put(&key, Key(key), 1_000, allow("alice"));
        assert_eq!(local.get(&key, 999), Some(allow("alice")));
        assert_eq!(local.get(&key, 1_000), None, "expired at its expiry");
        // One other byte: never served.
        let mut other = key;
        other[0] = 8;
        assert_eq!(local.get(&other, 0), None);
        // A colliding input replaces the slot; the first is then a miss, not a wrong hit.
        let other = colliding(&key);
        assert_eq!(local.get(&other, 0), None, "same slot, other input: a miss");
        local.put(&other, Key([9; 32]), 5_000, allow("bob"));
        assert_eq!(local.get(&key, 0), None);
        assert_eq!(local.get(&other, 0), Some(allow("bob")));
        // Removing a key only ever removes that key.
        local.remove(&Key(key));
        assert_eq!(local.get(&other, 0), Some(allow("bob")), "another key in the slot stays");
        local.remove(&Key([9; 32]));
        assert_eq!(local.get(&other, 0), None);
    }

    #[test]
    fn a_prefix_or_an_extension_is_another_input() {
        let mut local = LocalCache::default();
        local.put(b"nebula-authz input", Key([1; 32]), 1_000, allow("alice"));
        assert_eq!(local.get(b"nebula-authz inpu", 0), None);
        assert_eq!(local.get(b"nebula-authz input!", 0), None);
    }

    #[test]
    fn oversized_inputs_are_not_kept() {
        let mut local = LocalCache::default();
        let huge = vec![b'a'; MAX_LOCAL_INPUT + 1];
        local.put(&huge, Key([2; 32]), 1_000, allow("alice"));
        assert_eq!(local.get(&huge, 0), None);
    }
}
