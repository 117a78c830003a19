//! What a step did to the request, in one type: the sequence in flow/request.rs reads
//! each step's answer and either goes on or stops there.

use crate::cache::shared::Lookup;
use crate::flow::worker::Resend;

/// A step's answer. `T` is what it hands the next step.
#[must_use]
pub enum Step<T = ()> {
    /// Nothing decided here: on to the next step with this.
    Next(T),
    /// Decided here: the request goes on upstream now (a public path, a valid JWT in
    /// `local` mode, an allow from the cache).
    Upstream,
    /// A local reply was sent (a denial, or failing closed): the request ends here.
    Replied,
    /// The request was let through already (`resume`, e.g. a stale allow served when the
    /// callout could not even be sent): it stays paused until the host acts on that.
    Resumed,
    /// The request pauses until what it waits for arrives.
    Paused(Waiting),
}

impl<T> Step<T> {
    /// What a step handed on (`Ok`), or where it stopped the request, as any step's
    /// answer (`Err`): the sequence returns it as it is.
    pub fn next<U>(self) -> Result<T, Step<U>> {
        match self {
            Step::Next(value) => Ok(value),
            Step::Upstream => Err(Step::Upstream),
            Step::Replied => Err(Step::Replied),
            Step::Resumed => Err(Step::Resumed),
            Step::Paused(waiting) => Err(Step::Paused(waiting)),
        }
    }
}

/// What a paused request waits for.
pub enum Waiting {
    /// Its own callout (`token`); when caching, what to resend it with for the requests
    /// waiting on it if this stream goes away first; when it was first sent (Unix ms: a
    /// retry gets what is left of the timeout) and whether it is the retry; when it was
    /// sent in Unix µs, read only for the callout-time histogram (0 otherwise).
    Callout { token: u32, resend: Option<Resend>, sent_ms: u64, sent_us: u64, retried: bool },
    /// Another request's identical callout on this worker (coalescing).
    Coalesced { lookup: Lookup },
    /// Its own fetch of a JWT provider's keys (call `token`).
    Jwks { token: u32, provider: usize },
    /// Another context's JWKS fetch: the root context checks the token again when it is
    /// over (flow/steps/jwks_wait.rs).
    JwksElsewhere,
    /// The client's body, before the callout (`with_request_body`/`forward_body`); the
    /// callout's headers.
    Body { callout: Vec<(String, String)> },
}
