//! The soak: mixed traffic from a bounded in-process load generator through phases in
//! which the auth service fails (500s, refused connections, a hang past the timeout,
//! garbage), each followed by recovery; judged from what the upstream actually received.
//!
//! Traffic (by request number): allowed requests with a small pool of credentials (cache
//! hits when the cache is on) and with one-off credentials (always a callout), spoofed
//! identity headers, denied credentials, public paths, the protected hostile targets of
//! paths.tsv, POST bodies, HTTP/2 requests and WebSocket upgrades.
//!
//! What is checked, as it happens:
//! * upstream: a protected request only arrives with a credential the auth service
//!   answered `allow` for (cache off: for that very request, matched by its soak id);
//!   its identity headers are exactly those issued for its credential; public requests
//!   carry none; no spoofed value arrives; bodies arrive whole;
//! * client: during a fault every request that needs a callout gets the filter's
//!   fail-closed reply within `timeout + slack`; public paths keep working; denied and
//!   hostile requests never get a 200;
//! * recovery: after each fault a probe sees an allow within [`RECOVERY_BOUND`];
//! * Envoy: RSS growth (from /proc), no wasm panic or VM failure in its log or stats.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Proto, RawRequest, Response};
use crate::mock_server::Fault;
use crate::{websocket_echo, Env, FILTER_ERROR_BODY, NEBULA_HEADERS};

/// An allow must be back this soon after the auth service recovers: a restart of
/// the auth service must not keep legitimate users out longer than that.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// Added to the callout timeout for the latency bound during faults: a loaded 2-core
/// machine schedules late, the bound is there to catch a hang, not to time the filter.
pub const LATENCY_SLACK: Duration = Duration::from_millis(2500);
/// Pool credentials (repeated: cache hits when the cache is on).
const POOL: u64 = 8;
const BODY_LEN: usize = 4096;
const SPOOFED: &str = "evil-spoofed";

/// One soak run: a plugin configuration and how long each phase lasts.
pub struct Plan {
    pub name: &'static str,
    pub plugin_config: String,
    /// Whether `plugin_config` turns the cache on (cached allows may then answer during
    /// a fault, for the credentials the auth service allowed before).
    pub cache: bool,
    pub timeout: Duration,
    pub phase: Duration,
    pub workers: usize,
}

/// The phases in order: each fault is followed by a healthy phase.
pub const PHASES: [Fault; 9] = [
    Fault::None,
    Fault::Status500,
    Fault::None,
    Fault::Refuse,
    Fault::None,
    Fault::Hang,
    Fault::None,
    Fault::Garbage,
    Fault::None,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pool,
    OneOff,
    Spoofed,
    Denied,
    Public,
    Hostile,
    Post,
    H2,
    WebSocket,
}

fn kind_of(n: u64) -> Kind {
    match n % 16 {
        0..=3 => Kind::Pool,
        4 | 5 => Kind::OneOff,
        6 => Kind::Spoofed,
        7 | 8 => Kind::Denied,
        9 | 10 => Kind::Public,
        11 => Kind::Hostile,
        12 => Kind::Post,
        13 => Kind::H2,
        14 if n % 64 == 14 => Kind::WebSocket,
        _ => Kind::OneOff,
    }
}

/// One finished request, for the analysis after the run.
struct Sample {
    kind: Kind,
    start: Duration,
    took: Duration,
    /// 0 when no response arrived (an error: counted, judged like a non-200).
    status: u16,
    fail_closed_body: bool,
}

/// What the observers saw, shared with the mocks' threads.
#[derive(Default)]
struct Ledger {
    /// Judge "allowed" per credential (the cache may answer) instead of per request.
    cache: bool,
    /// Every identity header must be present; else absent (a config without it) or exact.
    strict: bool,
    /// Path prefixes public in some configuration in force (besides `/api/health`).
    public: Mutex<Vec<String>>,
    /// Credentials the auth service answered `allow:` for, and how often.
    issued: Mutex<HashMap<String, u64>>,
    /// Soak ids of requests the auth service answered `allow:` for (callout per request).
    issued_ids: Mutex<HashSet<u64>>,
    upstream: AtomicU64,
    bypasses: Mutex<Vec<String>>,
    leaks: Mutex<Vec<String>>,
    body_errors: AtomicU64,
}

impl Ledger {
    fn note(list: &Mutex<Vec<String>>, what: String) {
        let mut list = list.lock().expect("ledger");
        if list.len() < 20 {
            list.push(what);
        } else if list.len() == 20 {
            list.push("...".to_owned());
        }
    }
}

fn soak_id(path: &str) -> Option<u64> {
    path.split(['?', '&']).find_map(|p| p.strip_prefix("soak="))?.parse().ok()
}

fn credential(req: &crate::client::RecordedRequest) -> Option<String> {
    req.header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
}

fn is_public(ledger: &Ledger, path: &str) -> bool {
    path.starts_with("/api/health") || ledger.public.lock().expect("ledger").iter().any(|p| path.starts_with(p))
}

/// The upstream's view: every request is judged as it arrives.
fn check_upstream(ledger: &Ledger, req: &crate::client::RecordedRequest) {
    ledger.upstream.fetch_add(1, Ordering::Relaxed);
    let what = || format!("{} {} authorization {:?}", req.method, req.path, req.header("authorization"));
    if req.headers.iter().any(|(_, v)| v.windows(SPOOFED.len()).any(|w| w == SPOOFED.as_bytes())) {
        Ledger::note(&ledger.leaks, format!("a spoofed value reached the upstream: {}", what()));
    }
    if is_public(ledger, &req.path) {
        if NEBULA_HEADERS.iter().any(|h| !req.header_all(h).is_empty()) {
            Ledger::note(&ledger.leaks, format!("identity headers on a public path: {}", what()));
        }
        return;
    }
    let Some(actor) = credential(req).and_then(|c| c.strip_prefix("allow:").map(str::to_owned)) else {
        Ledger::note(&ledger.bypasses, format!("reached the upstream without an allowing credential: {}", what()));
        return;
    };
    let allowed = if ledger.cache {
        ledger.issued.lock().expect("ledger").contains_key(&format!("allow:{actor}"))
    } else {
        soak_id(&req.path).is_some_and(|id| ledger.issued_ids.lock().expect("ledger").contains(&id))
    };
    if !allowed {
        Ledger::note(&ledger.bypasses, format!("no allow was issued for this request: {}", what()));
    }
    let expected = [actor.clone(), "read,write".to_owned(), format!("rl-{actor}"), format!("ll-{actor}")];
    for (name, want) in NEBULA_HEADERS.iter().zip(expected) {
        let got = req.header_all(name);
        if got != [want.clone()] && (ledger.strict || !got.is_empty()) {
            Ledger::note(&ledger.leaks, format!("{name} = {got:?}, issued [{want:?}]: {}", what()));
        }
    }
    if req.method == "POST" && req.body.len() != BODY_LEN {
        ledger.body_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The auth service's view (only requests it answered from the script).
fn check_auth(ledger: &Ledger, req: &crate::client::RecordedRequest) {
    let Some(cred) = credential(req).filter(|c| c.starts_with("allow:")) else {
        return;
    };
    if let Some(id) = req.header("x-forwarded-uri").as_deref().and_then(soak_id) {
        ledger.issued_ids.lock().expect("ledger").insert(id);
    }
    *ledger.issued.lock().expect("ledger").entry(cred).or_default() += 1;
}

/// The protected hostile targets of paths.tsv.
fn hostile_targets() -> Vec<Vec<u8>> {
    crate::paths::load()
        .into_iter()
        .filter(|c| c.expected == crate::paths::Expected::Protected)
        .map(|c| c.target)
        .collect()
}

fn one_request(port: u16, n: u64, hostile: &[Vec<u8>]) -> (Kind, Option<Response>) {
    let kind = kind_of(n);
    let pool = format!("allow:p{}", n % POOL);
    let path = format!("/api/flows/{}?soak={n}", n % 5);
    let result = match kind {
        Kind::Pool => RawRequest::get(&path).bearer(&pool).try_send(port),
        Kind::OneOff => RawRequest::get(&path).bearer(&format!("allow:x{n}")).try_send(port),
        Kind::Spoofed => RawRequest::get(&path)
            .bearer(&pool)
            .header("X-Nebula-Actor-Id", SPOOFED)
            .header("x-nebula-actor-permissions", SPOOFED)
            .header("x-nebula-actor-id", SPOOFED)
            .try_send(port),
        Kind::Denied => RawRequest::get(&path).bearer("deny").try_send(port),
        Kind::Public => RawRequest::get(format!("/api/health?soak={n}"))
            .bearer("deny")
            .header("x-nebula-actor-id", SPOOFED)
            .try_send(port),
        Kind::Hostile => {
            let target = &hostile[(n / 16) as usize % hostile.len()];
            RawRequest::get(target).bearer("deny").try_send(port)
        }
        Kind::Post => RawRequest::post(&path, vec![b'b'; BODY_LEN]).bearer(&pool).try_send(port),
        Kind::H2 => RawRequest::get(&path).bearer(&pool).try_send_over(Proto::H2, port),
        Kind::WebSocket => {
            let auth = format!("Bearer {pool}");
            let ws_path = format!("/api/ws?soak={n}");
            match websocket_echo(port, &ws_path, &[("authorization", &auth)], b"soak-ping") {
                Ok(ws) if ws.response.status == 101 && ws.echoed != b"soak-ping" => {
                    Err(std::io::Error::other(format!("websocket echo changed: {:?}", ws.echoed)))
                }
                Ok(ws) => Ok(ws.response),
                Err(e) => Err(e),
            }
        }
    };
    (kind, result.ok())
}

/// The figures of one run, printed as a table row.
pub struct Figures {
    pub name: &'static str,
    pub requests: u64,
    pub upstream: u64,
    pub bypasses: Vec<String>,
    pub leaks: Vec<String>,
    pub body_errors: u64,
    /// Requests during faults that needed a callout and did not get the fail-closed reply.
    pub not_fail_closed: Vec<String>,
    pub fault_samples: u64,
    pub max_fault_latency: Duration,
    /// Per fault: requests judged that needed a callout, and their longest latency.
    pub per_fault: Vec<(Fault, u64, Duration)>,
    /// Denied or hostile requests answered 200, or public ones not answered 200.
    pub wrong_answers: Vec<String>,
    /// Healthy-phase callout requests that did not get their expected answer (timeouts
    /// under load; reported, not asserted).
    pub healthy_misses: u64,
    pub errors: u64,
    pub recoveries: Vec<(Fault, Option<Duration>)>,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub wasm_failures: Vec<String>,
    pub elapsed: Duration,
}

impl Figures {
    /// Everything that breaks the soak's properties (`rss_bound_kib`: allowed growth).
    pub fn violations(&self, timeout: Duration, rss_bound_kib: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                out.push(format!("{}: {what}:\n  {}", self.name, items.join("\n  ")));
            }
        };
        list("bypasses", &self.bypasses);
        list("identity leaks", &self.leaks);
        list("not failed closed during a fault", &self.not_fail_closed);
        list("wrong answers", &self.wrong_answers);
        list("wasm failures", &self.wasm_failures);
        if self.body_errors > 0 {
            out.push(format!("{}: {} POST bodies arrived changed", self.name, self.body_errors));
        }
        if self.max_fault_latency > timeout + LATENCY_SLACK {
            out.push(format!(
                "{}: a request took {:?} during a fault (bound: timeout {timeout:?} + {LATENCY_SLACK:?})",
                self.name, self.max_fault_latency
            ));
        }
        for (fault, took) in &self.recoveries {
            match took {
                Some(t) if *t <= RECOVERY_BOUND => {}
                Some(t) => out.push(format!("{}: recovery after {fault:?} took {t:?}", self.name)),
                None => out.push(format!("{}: no allow after {fault:?} ended", self.name)),
            }
        }
        if self.rss_end_kib.saturating_sub(self.rss_start_kib) > rss_bound_kib {
            out.push(format!(
                "{}: Envoy's RSS grew from {} to {} KiB (bound: +{rss_bound_kib} KiB)",
                self.name, self.rss_start_kib, self.rss_end_kib
            ));
        }
        if self.fault_samples == 0 {
            out.push(format!("{}: no request was judged during a fault", self.name));
        }
        out
    }
}

/// The figures of several runs as a table.
pub fn table(runs: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | seconds | requests | req/s | reached upstream | bypasses | leaks | bad bodies | fault requests judged | not fail-closed | max latency in faults | healthy misses | client errors | recovery 500 / refuse / hang / garbage | Envoy RSS start → end (growth) | wasm failures |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(16));
    let mut notes = String::new();
    for f in runs {
        let faults: Vec<String> =
            f.per_fault.iter().map(|(fault, n, max)| format!("{fault:?} {n} (max {} ms)", max.as_millis())).collect();
        let _ = writeln!(notes, "{}: requests judged per fault: {}", f.name, faults.join(", "));
        let recoveries: Vec<String> = f
            .recoveries
            .iter()
            .map(|(_, t)| t.map_or("none".to_owned(), |t| format!("{} ms", t.as_millis())))
            .collect();
        let secs = f.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} ms | {} | {} | {} | {} → {} KiB ({:+} KiB) | {} |",
            f.name,
            secs,
            f.requests,
            f.requests as f64 / secs.max(0.001),
            f.upstream,
            f.bypasses.len(),
            f.leaks.len(),
            f.body_errors,
            f.fault_samples,
            f.not_fail_closed.len(),
            f.max_fault_latency.as_millis(),
            f.healthy_misses,
            f.errors,
            recoveries.join(" / "),
            f.rss_start_kib,
            f.rss_end_kib,
            f.rss_end_kib as i64 - f.rss_start_kib as i64,
            f.wasm_failures.len(),
        );
    }
    out.push_str(&notes);
    out
}

/// Envoy's resident set size in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Signs of a wasm panic or VM failure in Envoy's log and `/stats`.
pub fn wasm_failures(env: &Env) -> Vec<String> {
    let mut out: Vec<String> = env
        .log()
        .lines()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("Function: proxy_on")
                || l.contains("wasm vm failed")
                || l.contains("VM failed")
                || l.contains("][critical]")
        })
        .take(10)
        .map(str::to_owned)
        .collect();
    let stats = RawRequest::get("/stats?filter=wasm").try_send(env.admin_port).map(|r| r.text()).unwrap_or_default();
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(": ") else { continue };
        // The filter's own counters (`wasmcustom.nebula_authz.failed.<reason>`: requests
        // it failed closed, which a fault run causes on purpose) are decisions, not VM
        // failures.
        if name.starts_with("wasmcustom.") {
            continue;
        }
        let failed = name.contains("fail") || name.ends_with(".vm_failed") || name.contains("crash");
        if failed && value.trim().parse::<u64>().is_ok_and(|v| v > 0) {
            out.push(format!("stat {name} = {value}"));
        }
    }
    out
}

/// A running load: the workers and the observers on the mocks.
pub struct Load {
    ledger: Arc<Ledger>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<Vec<Sample>>>,
    start: Instant,
}

/// What a load saw, from the upstream's side and the clients'.
pub struct LoadOutcome {
    samples: Vec<Sample>,
    /// (status, count) of the workers' responses (0: no response).
    pub statuses: Vec<(u16, u64)>,
    pub requests: u64,
    pub upstream: u64,
    pub bypasses: Vec<String>,
    pub leaks: Vec<String>,
    pub body_errors: u64,
    /// Denied or hostile requests answered 200/101.
    pub wrong_answers: Vec<String>,
}

impl Load {
    /// Starts `workers` threads of mixed traffic against `env`. `cache`: judge allows
    /// per credential; `strict`: every identity header must arrive (see [`Ledger`]).
    pub fn start(env: &Env, workers: usize, cache: bool, strict: bool) -> Load {
        let ledger = Arc::new(Ledger { cache, strict, ..Ledger::default() });
        env.upstream.keep_records(false);
        env.auth.keep_records(false);
        let up = ledger.clone();
        env.upstream.observe(Arc::new(move |req| check_upstream(&up, req)));
        let au = ledger.clone();
        env.auth.observe(Arc::new(move |req| check_auth(&au, req)));
        let hostile = Arc::new(hostile_targets());
        let next = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let port = env.port;
        let workers = (0..workers)
            .map(|_| {
                let (next, stop, hostile) = (next.clone(), stop.clone(), hostile.clone());
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let begun = start.elapsed();
                        let (kind, resp) = one_request(port, n, &hostile);
                        mine.push(Sample {
                            kind,
                            start: begun,
                            took: start.elapsed() - begun,
                            status: resp.as_ref().map_or(0, |r| r.status),
                            fail_closed_body: resp.as_ref().is_some_and(|r| r.text() == FILTER_ERROR_BODY),
                        });
                    }
                    mine
                })
            })
            .collect();
        Load { ledger, next, stop, workers, start }
    }

    /// A fresh soak id (for requests sent besides the workers' own).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// How many times the auth service answered `credential` (e.g. `allow:t`) so far.
    pub fn callouts_for(&self, credential: &str) -> u64 {
        self.ledger.issued.lock().expect("ledger").get(credential).copied().unwrap_or(0)
    }

    /// Treats `prefix` as a public path from now on (a configuration that makes it one).
    pub fn also_public(&self, prefix: &str) {
        self.ledger.public.lock().expect("ledger").push(prefix.to_owned());
    }

    /// How many requests reached the upstream so far.
    pub fn upstream(&self) -> u64 {
        self.ledger.upstream.load(Ordering::Relaxed)
    }

    /// Stops the workers and collects what they and the observers saw.
    pub fn stop(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        let samples: Vec<Sample> = self.workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
        let wrong_answers = samples
            .iter()
            .filter(|s| matches!(s.kind, Kind::Denied | Kind::Hostile) && matches!(s.status, 200 | 101))
            .take(20)
            .map(|s| format!("{:?} started at {:?}: status {}", s.kind, s.start, s.status))
            .collect();
        let mut statuses: Vec<(u16, u64)> = Vec::new();
        for s in &samples {
            match statuses.iter_mut().find(|(st, _)| *st == s.status) {
                Some((_, n)) => *n += 1,
                None => statuses.push((s.status, 1)),
            }
        }
        statuses.sort_unstable();
        let ledger = &self.ledger;
        LoadOutcome {
            statuses,
            requests: samples.len() as u64,
            samples,
            upstream: ledger.upstream.load(Ordering::Relaxed),
            bypasses: std::mem::take(&mut *ledger.bypasses.lock().expect("ledger")),
            leaks: std::mem::take(&mut *ledger.leaks.lock().expect("ledger")),
            body_errors: ledger.body_errors.load(Ordering::Relaxed),
            wrong_answers,
        }
    }
}

/// Runs `plan` against `env` (started with `plan.plugin_config`) and returns its figures.
pub fn run(env: &Env, plan: &Plan) -> Figures {
    let cache = plan.cache;
    let load = Load::start(env, plan.workers, cache, true);
    let start = load.start;
    let port = env.port;

    // The phases: (fault, from, to) relative to `start`, and a probe for each recovery.
    let mut timeline = Vec::new();
    let mut recoveries = Vec::new();
    let mut rss_start_kib = 0;
    for (i, fault) in PHASES.iter().enumerate() {
        env.auth.set_fault(*fault);
        let from = start.elapsed();
        let recovering = i > 0 && *fault == Fault::None;
        if recovering {
            let t0 = Instant::now();
            let mut took = None;
            while t0.elapsed() < RECOVERY_BOUND * 3 {
                let n = load.next_id();
                let resp = RawRequest::get(format!("/api/flows/probe?soak={n}"))
                    .bearer(&format!("allow:probe-{n}"))
                    .try_send(port);
                if resp.is_ok_and(|r| r.status == 200 && r.proxied()) {
                    took = Some(t0.elapsed());
                    break;
                }
            }
            recoveries.push((PHASES[i - 1], took));
        }
        thread::sleep(plan.phase.saturating_sub(start.elapsed() - from));
        timeline.push((*fault, from, start.elapsed()));
        if i == 0 {
            rss_start_kib = rss_kib(env.pid());
        }
    }
    let outcome = load.stop();
    let elapsed = start.elapsed();
    env.auth.set_fault(Fault::None);

    // Judge the client side against the timeline.
    let samples = outcome.samples;
    let mut figures = Figures {
        name: plan.name,
        requests: outcome.requests,
        upstream: outcome.upstream,
        bypasses: outcome.bypasses,
        leaks: outcome.leaks,
        body_errors: outcome.body_errors,
        not_fail_closed: Vec::new(),
        fault_samples: 0,
        max_fault_latency: Duration::ZERO,
        per_fault: PHASES.iter().filter(|f| **f != Fault::None).map(|f| (*f, 0, Duration::ZERO)).collect(),
        wrong_answers: outcome.wrong_answers,
        healthy_misses: 0,
        errors: samples.iter().filter(|s| s.status == 0).count() as u64,
        recoveries,
        rss_start_kib,
        rss_end_kib: rss_kib(env.pid()),
        wasm_failures: wasm_failures(env),
        elapsed,
    };
    for s in &samples {
        // A request that began after a switch and ended before the next one saw only that
        // phase (its callout comes after it began). One that straddles a switch is judged
        // on its latency only, and only if it began in a fault.
        let Some((fault, _, _)) = timeline.iter().find(|(_, from, to)| s.start >= *from && s.start + s.took <= *to)
        else {
            if timeline.iter().any(|(f, from, to)| *f != Fault::None && s.start >= *from && s.start < *to) {
                figures.max_fault_latency = figures.max_fault_latency.max(s.took);
            }
            continue;
        };
        let case = || format!("{:?} started at {:?}: status {} after {:?}", s.kind, s.start, s.status, s.took);
        // Public paths always 200 (no callout), faults or not.
        if s.kind == Kind::Public && s.status != 200 {
            figures.wrong_answers.push(case());
        }
        let needs_callout = match s.kind {
            Kind::OneOff => true,
            Kind::Pool | Kind::Spoofed | Kind::Post | Kind::H2 | Kind::WebSocket | Kind::Denied => !cache,
            Kind::Public | Kind::Hostile => false,
        };
        if *fault != Fault::None {
            if s.kind != Kind::Public {
                figures.max_fault_latency = figures.max_fault_latency.max(s.took);
            }
            if needs_callout {
                figures.fault_samples += 1;
                if let Some((_, n, max)) = figures.per_fault.iter_mut().find(|(f, _, _)| f == fault) {
                    *n += 1;
                    *max = (*max).max(s.took);
                }
                if s.status != 403 || !s.fail_closed_body {
                    figures.not_fail_closed.push(format!("{fault:?}: {}", case()));
                }
            }
        } else {
            let expected = match s.kind {
                Kind::Pool | Kind::OneOff | Kind::Spoofed | Kind::Post | Kind::H2 => 200,
                Kind::WebSocket => 101,
                Kind::Denied => 401,
                Kind::Public | Kind::Hostile => continue,
            };
            if s.status != expected {
                figures.healthy_misses += 1;
            }
        }
    }
    figures.not_fail_closed.truncate(20);
    figures.wrong_answers.truncate(20);
    figures
}
