//! Fuzz target: `kv_fuzzing::gossip` (see crates/fuzzing for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzzing::gossip(data));
