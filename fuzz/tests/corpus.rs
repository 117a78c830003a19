//! The smoke `make test` runs: every fuzz target's properties over its committed corpus
//! (`corpus/<target>/`, seeds and the regression inputs of past findings), then over a
//! few hundred deterministic mutations of each input. The real, coverage-guided runs are
//! `make fuzz` (libFuzzer, FUZZ_SECONDS per target).

#![allow(clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 10] = [
    ("config", nebula_authz_fuzz::config),
    ("header_map", nebula_authz_fuzz::header_map),
    ("public_path", nebula_authz_fuzz::public_path),
    ("cache_control", nebula_authz_fuzz::cache_control),
    ("cache_slot", nebula_authz_fuzz::cache_slot),
    ("jwt", nebula_authz_fuzz::jwt),
    ("jwks", nebula_authz_fuzz::jwks),
    ("forward_auth", nebula_authz_fuzz::forward_auth),
    ("access_deny", nebula_authz_fuzz::access_deny),
    ("authz_rules", nebula_authz_fuzz::authz_rules),
];

/// Mutations per corpus input: enough to leave the seeds, cheap in a debug build.
const MUTATIONS: usize = 64;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.display().to_string(), fs::read(&p).expect("corpus file"))).collect()
}

/// Runs `target` on `data`; a failed property is returned with the input, to list them all.
fn check(name: &str, target: Target, what: &str, data: &[u8]) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| target(data));
    outcome.err().map(|_| format!("{name} on {what}: {:?}", String::from_utf8_lossy(data)))
}

#[test]
fn every_target_holds_on_its_corpus() {
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        let inputs = corpus(name);
        assert!(inputs.len() >= 3, "{name}: the corpus needs a few seeds, has {}", inputs.len());
        failed.extend(inputs.iter().filter_map(|(path, data)| check(name, target, path, data)));
    }
    assert!(failed.is_empty(), "properties failed:\n{}", failed.join("\n"));
}

#[test]
fn every_target_holds_on_mutations_of_its_corpus() {
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ name.len() as u64;
        let inputs = corpus(name);
        for (path, seed) in &inputs {
            for i in 0..MUTATIONS {
                let other = &inputs[next(&mut rng) % inputs.len()].1;
                let input = mutate(seed, other, &mut rng);
                failed.extend(check(name, target, &format!("mutation {i} of {path}"), &input));
            }
        }
    }
    assert!(failed.is_empty(), "{} properties failed:\n{}", failed.len(), failed.join("\n"));
}

fn next(state: &mut u64) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 16) as usize
}

/// One to four of libFuzzer's simplest moves: flip, set, insert or erase a byte, splice
/// in a piece of another input, truncate.
fn mutate(seed: &[u8], other: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=next(rng) % 4 {
        let at = if out.is_empty() { 0 } else { next(rng) % out.len() };
        let byte = [b'/', b'.', b'%', b'"', b'{', b'}', b',', b'=', b'\n', b':', 0, 0xff][next(rng) % 12];
        match next(rng) % 6 {
            0 if !out.is_empty() => out[at] ^= 1 << (next(rng) % 8),
            1 if !out.is_empty() => out[at] = byte,
            2 => out.insert(at, byte),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            4 if !other.is_empty() => {
                let from = next(rng) % other.len();
                let len = (next(rng) % 16).min(other.len() - from);
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}
