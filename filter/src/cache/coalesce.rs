//! Request coalescing on one worker: while a callout for a key is in flight, further
//! requests with the same key wait for its answer instead of sending their own.
//! Plain data; flow/worker.rs keeps one table per worker (one VM per worker thread).

use std::collections::HashMap;

use crate::cache::shared::Key;

/// Keys with a callout in flight, each with the context that sent it (its leader) and
/// the contexts waiting for it.
#[derive(Debug, Default)]
pub struct InFlight {
    waiting: HashMap<Key, (u32, Vec<u32>)>,
}

impl InFlight {
    /// `context` sends the callout for `key` unless one is in flight; then it waits.
    /// Returns `true` when it must wait.
    pub fn join(&mut self, key: Key, context: u32) -> bool {
        match self.waiting.get_mut(&key) {
            Some((_, waiters)) => {
                waiters.push(context);
                true
            }
            None => {
                self.waiting.insert(key, (context, Vec::new()));
                false
            }
        }
    }

    /// Whether `context` sent the callout in flight for `key` (others may send an
    /// identical callout without leading it: a request several providers check never
    /// coalesces, and must leave the leader's waiters to the leader's answer).
    pub fn leads(&self, key: &Key, context: u32) -> bool {
        self.waiting.get(key).is_some_and(|(leader, _)| *leader == context)
    }

    /// Whether `context` still waits for `key`'s answer.
    pub fn is_waiting(&self, key: &Key, context: u32) -> bool {
        self.waiting.get(key).is_some_and(|(_, w)| w.contains(&context))
    }

    /// Whether any request waits for `key`'s callout.
    pub fn has_waiters(&self, key: &Key) -> bool {
        self.waiting.get(key).is_some_and(|(_, w)| !w.is_empty())
    }

    /// A waiting request went away (client reset): nothing must be applied to it.
    pub fn leave(&mut self, key: &Key, context: u32) {
        if let Some((_, waiters)) = self.waiting.get_mut(key) {
            waiters.retain(|c| *c != context);
        }
    }

    /// The callout for `key` is over (answered, failed, or its sender went away): the
    /// contexts that waited for it, in arrival order. The next request leads again.
    pub fn finish(&mut self, key: &Key) -> Vec<u32> {
        self.waiting.remove(key).map(|(_, waiters)| waiters).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_many_waiters() {
        let (a, b) = (Key([1; 32]), Key([2; 32]));
        let mut t = InFlight::default();
        assert!(!t.join(a, 1), "first request leads");
        assert!(t.join(a, 2));
        assert!(t.join(a, 3));
        assert!(!t.join(b, 4), "another key leads on its own");
        assert!(t.is_waiting(&a, 2) && !t.is_waiting(&a, 1) && !t.is_waiting(&b, 2));
        assert!(t.leads(&a, 1) && t.leads(&b, 4) && !t.leads(&a, 2) && !t.leads(&a, 9) && !t.leads(&b, 1));
        assert!(t.has_waiters(&a) && !t.has_waiters(&b));
        t.leave(&a, 2);
        assert!(!t.is_waiting(&a, 2));
        assert_eq!(t.finish(&a), vec![3]);
        assert!(!t.is_waiting(&a, 3), "released");
        assert_eq!(t.finish(&a), Vec::<u32>::new());
        assert!(!t.leads(&a, 1), "no callout in flight: nobody leads");
        assert!(!t.join(a, 5), "after the answer, the next request leads");
        assert!(t.leads(&a, 5));
        assert_eq!(t.finish(&b), Vec::<u32>::new());
    }
}
