//! cargo-fuzz entry for `wasmvisor_fuzz::loaders` (its invariants are
//! documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmvisor_fuzz::loaders::fuzz(data));
