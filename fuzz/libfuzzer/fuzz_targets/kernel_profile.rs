//! cargo-fuzz entry for `wasmvisor_fuzz::kernel_profile` (its invariants
//! are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmvisor_fuzz::kernel_profile::fuzz(data));
