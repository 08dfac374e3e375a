//! cargo-fuzz entry for `wasmvisor_fuzz::classify_validate_apply` (its invariants are
//! documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmvisor_fuzz::classify_validate_apply::fuzz(data));
