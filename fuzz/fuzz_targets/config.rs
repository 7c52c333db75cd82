#![no_main]
//! Fuzz target `config`: the checks live in `kps_fuzz::config` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::config(data));
