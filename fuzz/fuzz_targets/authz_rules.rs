#![no_main]
// See src/lib.rs for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| nebula_authz_fuzz::authz_rules(data));
