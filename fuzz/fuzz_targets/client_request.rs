//! Fuzz target: `kv_fuzzing::client_request` (see crates/fuzzing for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzzing::client_request(data));
