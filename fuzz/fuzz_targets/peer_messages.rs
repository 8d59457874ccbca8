//! Fuzz target: `kv_fuzzing::peer_messages` (see crates/fuzzing for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzzing::peer_messages(data));
