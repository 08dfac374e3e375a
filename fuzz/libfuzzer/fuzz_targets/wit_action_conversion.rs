//! cargo-fuzz entry for `wasmvisor_fuzz::wit_action_conversion` (its invariants are
//! documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmvisor_fuzz::wit_action_conversion::fuzz(data));
